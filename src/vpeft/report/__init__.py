"""Study report: collect run directories into Arrow tables, render them as one HTML page."""
from vpeft.report.collect import (
    GROUPS,
    MissingRunFileError,
    RunDataError,
    StudyResults,
    collect_study,
    read_study_tables,
    summarize,
    write_study_tables,
)
from vpeft.report.published import read_published
from vpeft.report.render import render_html, render_report

__all__ = [
    "GROUPS",
    "MissingRunFileError",
    "RunDataError",
    "StudyResults",
    "collect_study",
    "read_study_tables",
    "read_published",
    "render_html",
    "render_report",
    "summarize",
    "write_study_tables",
]

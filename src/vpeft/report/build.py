"""A study's report from its plan: the report job (``vpeft report``) and the part of it the
analyze job does ahead, per task (``vpeft analyze``).

The rest of the package reads run directories and knows nothing of the study's config; here the
plan says where the runs are, what the study is (:func:`vpeft.protocol.study_metadata`), where the
report goes and which published table it is compared with.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpeft.config import StudyPlan


def save_report_part(plan: StudyPlan, task: str) -> tuple[Path, str | None]:
    """The report's reading and bootstrapping of ``task``, done by its analyze job (on the task's
    node) and saved where the report looks for it (:func:`vpeft.report.collect.save_task_part`):
    (the file, None), or (the file, the error it records instead) when the task cannot be
    collected, its study metadata (prepared manifests) included; the report then reads the task
    itself."""
    from vpeft import layout
    from vpeft.protocol import study_metadata
    from vpeft.report.collect import record_part_error, save_task_part

    runs = layout.runs_dir(plan.cfg)
    try:
        return save_task_part(runs, study_metadata(plan), task)
    except Exception as err:  # the study's metadata (prepared manifests) unreadable
        error = f"{type(err).__name__}: {err}"
        return record_part_error(runs, task, error), error


def write_report(plan: StudyPlan) -> Path:
    """Collect the study's runs into its report directory (Parquet tables, DVC's summary and
    metrics JSON) and render the HTML report; returns the report's index page."""
    from vpeft import layout
    from vpeft.io import write_json
    from vpeft.protocol import git_commit, study_metadata, versions
    from vpeft.report.collect import collect_study, write_study_tables
    from vpeft.report.published import published_csv
    from vpeft.report.render import render_report
    from vpeft.report.robustness import collect_wise  # robustness study: WiSE-FT curves

    runs = layout.runs_dir(plan.cfg)
    study = study_metadata(plan)
    results = collect_study(runs, study)
    collect_wise(results, runs, study)
    out = layout.report_dir(plan.cfg)
    write_study_tables(results, out)
    # DVC reads metrics and plots from JSON, not Parquet (dvc.yaml: metrics, plots).
    summary = results.summary.to_pylist()
    write_json(out / layout.REPORT_SUMMARY_JSON, summary)
    write_json(out / layout.REPORT_METRICS_JSON,
               {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in summary})
    render_report(results, study, out / layout.REPORT_INDEX,
                  published_csv=published_csv(plan.cfg.study.get("published")),
                  provenance={"versions": versions(), "git_commit": git_commit()},
                  published_grid=published_csv(plan.cfg.study.get("published_grid"),
                                               "study.published_grid"))
    return out / layout.REPORT_INDEX

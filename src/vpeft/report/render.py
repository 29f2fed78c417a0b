"""Render a study's tables as a self-contained HTML report: a landing page and one page per task.

All numbers come from the :class:`~vpeft.report.collect.StudyResults` tables (plus the optional
published-reference CSV, shown in its own section). Each value cell carries ``data-value`` (the
raw, unrounded number), ``data-task``, ``data-method`` and ``data-column`` so the page can be
checked against ``results.parquet`` exactly. The page loads nothing: inline CSS, inline SVG,
no scripts. Jinja autoescaping is on, and the SVG (built by the section modules) escapes its own
text.

This module only orchestrates: the Jinja environment, which pages are written, and writing them
atomically. Each page's template context is built by :mod:`vpeft.report.landing` and
:mod:`vpeft.report.taskpage` from the section modules (main table, advice, cost, cross-task
summaries, mistakes, landscapes, published reference, provenance, ...).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import jinja2

from vpeft.io import atomic_dir, atomic_path
from vpeft.layout import REPORT_INDEX
from vpeft.report.collect import StudyResults, report_shape
from vpeft.report.landing import landing_context
from vpeft.report.landscape import task_landscapes
from vpeft.report.pages import TASK_DIR, task_anchor, task_page
from vpeft.report.provenance import report_date
from vpeft.report.reproduction import Reproduction, reproduction_charts, reproduction_of
from vpeft.report.taskpage import task_contexts
from vpeft.report.view import GROUP_TITLES, td

__all__ = ["environment", "render_html", "render_pages", "render_report"]


def environment() -> jinja2.Environment:
    """The report's Jinja environment: its templates, autoescaping on, undefined names fatal."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vpeft.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,   # a typo in the template fails loudly
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["task_page"] = task_page   # the templates link tasks through the one naming rule
    env.globals["td"] = td                 # a table cell, built in Python (view.td)
    return env


def _task_info(study: Mapping) -> list[dict[str, Any]]:
    return [{"name": str(t.get("name")), "group": GROUP_TITLES.get(str(t.get("group")), ""),
             "num_classes": t.get("num_classes"), "description": t.get("description") or "",
             "page": task_page(str(t.get("name"))), "anchor": task_anchor(str(t.get("name")))}
            for t in study.get("tasks") or []]


def _common_context(study: Mapping, provenance: Mapping) -> dict:
    """What every page's template context shares: the study, its title, date, the scope of its
    advice (from its kind) and tasks."""
    return dict(study=study, title=study.get("title") or f"vpeft study {study['name']}",
                date=report_date(provenance), advice_scope=report_shape(study).advice_scope,
                task_info=_task_info(study))


def render_html(results: StudyResults, study: Mapping, *, published_csv: Path | None = None,
                provenance: Mapping | None = None, published_grid: Path | None = None) -> str:
    """The landing page (index.html) as a string (see :func:`render_report`)."""
    provenance = dict(provenance or {})
    return _landing_page(results, study, published_csv, provenance,
                         reproduction_of(results, study, published_grid))


def _landing_page(results: StudyResults, study: Mapping, published_csv: Path | None,
                  provenance: dict, reproduction: Reproduction | None) -> str:
    context = landing_context(results, study, published_csv, provenance,
                              _common_context(study, provenance), reproduction)
    return environment().get_template("report.html.j2").render(**context)


@functools.lru_cache(maxsize=None)
def _task_template() -> jinja2.Template:
    """The task page template, compiled once per process (each worker renders several pages)."""
    return environment().get_template("task.html.j2")


def _render_task_page(context: dict) -> str:
    """One task page from its context (runs in a worker process: module level, picklable).
    The landscape charts, a third of the page's work, are drawn here from their inputs."""
    charts = task_landscapes(context["task"], context["landscapes"])
    reproduction = context["reproduction"]
    if reproduction:   # the same landscapes with the paper's points
        reproduction = reproduction | {
            "charts": reproduction_charts(context["task"], reproduction["charts"])}
    return _task_template().render(**(context | {"landscapes": charts,
                                                 "reproduction": reproduction}))


def render_pages(results: StudyResults, study: Mapping, *, published_csv: Path | None = None,
                 provenance: Mapping | None = None, workers: int | None = None,
                 published_grid: Path | None = None) -> dict[str, str]:
    """Every page of the report, ``{path relative to the report dir: html}``: ``index.html``
    and one ``tasks/<task>.html`` per study task (:func:`vpeft.report.pages.task_page`).

    The task pages are rendered in ``workers`` processes (default
    :func:`vpeft.report.parallel.ordered_map`) from contexts built here, so each page is the
    same whichever process renders it."""
    from vpeft.report.parallel import ordered_map

    provenance = dict(provenance or {})
    reproduction = reproduction_of(results, study, published_grid)  # once, for every page
    contexts = list(task_contexts(results, study, _common_context(study, provenance),
                                  reproduction))
    html_pages = ordered_map(_render_task_page, [ctx for _, ctx in contexts], workers,
                             cells=results.results.num_rows)
    pages = {path: page for (path, _), page in zip(contexts, html_pages)}
    pages[REPORT_INDEX] = _landing_page(results, study, published_csv, provenance,
                                        reproduction)
    return pages


def render_report(results: StudyResults, study: Mapping, out_html: Path, *,
                  published_csv: Path | None = None, provenance: Mapping | None = None,
                  workers: int | None = None, published_grid: Path | None = None) -> None:
    """Render the study report: ``out_html`` (the landing page) and, beside it, ``tasks/`` with
    one self-contained page per task.

    ``published_csv`` (``method,task,test_top1``) adds a published-reference section when it has
    rows for the study's tasks; ``provenance`` (e.g. ``{"generated_by": ..., "date": ...}``) is
    listed in the provenance section. Every page is rendered before anything is written; the
    task pages replace ``tasks/`` as one directory, then the landing page is replaced, so a
    failure leaves no partial file (at worst new task pages beside the previous landing page).
    ``workers``: see :func:`render_pages`. ``published_grid`` (a published grid CSV,
    vpeft.report.published_grid) compares the runs with the paper's grid point by grid point
    (vpeft.report.reproduction); without it that section says the study declares none.
    """
    out_html = Path(out_html)
    pages = render_pages(results, study, published_csv=published_csv, provenance=provenance,
                         workers=workers, published_grid=published_grid)
    with atomic_dir(out_html.parent / TASK_DIR) as tmp:
        for path, page in pages.items():
            if path != REPORT_INDEX:
                (tmp / Path(path).name).write_text(page, encoding="utf-8")
    with atomic_path(out_html) as tmp:
        tmp.write_text(pages[REPORT_INDEX], encoding="utf-8")

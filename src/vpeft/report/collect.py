"""Collect a study's run directories into the report's tables: results, grid and summary, the
seeds, chance, stats and seed-noise tables, and the per-task analysis tables.

The training pipeline leaves one directory per task x method (vpeft.runs)::

    runs/<study>/<task>/<method>/grid/<point>/metrics.json
    runs/<study>/<task>/<method>/selection.json
    runs/<study>/<task>/<method>/final/metrics.json
    runs/<study>/<task>/<method>/final/test_eval.json
    runs/<study>/<task>/<method>/final/test_predictions.parquet
    runs/<study>/<task>/<method>/final-seed<s>/...   (the same files, for every further seed)

The report only reads those files and cross-checks them (vpeft.report.cell: a file in the wrong
directory, a selection that disagrees with its grid, or a test accuracy that disagrees with the
saved predictions is an error, not a silently wrong table), a task at a time
(vpeft.report.taskpart). The report is then rendered from the tables alone
(vpeft.report.tables), so every number on the page has one source.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from vpeft import layout
# The tables and the statistics live in their own modules; the report's pages import them here.
from vpeft.report.outcomes import (TaskStatistics, assemble_statistics, statistics_from_outcomes,
                                   study_scopes, task_outcomes, task_statistics)
from vpeft.report.tables import (ANALYSIS_PREFIX, CHANCE_SCHEMA, GRID_SCHEMA, GROUPS,
                                 OPTIONAL_TABLE_FILES, RESULTS_SCHEMA, SEEDS_SCHEMA, STATS_SCHEMA,
                                 STATUSES, SUMMARY_SCHEMA, TABLE_FILES, MissingRunFileError,
                                 RunDataError, StudyResults, read_study_tables, report_shape,
                                 study_methods, study_tasks, summarize, write_study_tables)
from vpeft.report.taskpart import (TaskJob, collect_task_saved, record_part_error, save_task_part,
                                   task_jobs)
from vpeft.runs import MethodRuns, find_study_dir

__all__ = [
    "ANALYSIS_PREFIX", "CHANCE_SCHEMA", "GRID_SCHEMA", "GROUPS", "OPTIONAL_TABLE_FILES",
    "RESULTS_SCHEMA", "SEEDS_SCHEMA", "STATS_SCHEMA", "STATUSES", "SUMMARY_SCHEMA", "TABLE_FILES",
    "MissingRunFileError", "RunDataError", "StudyResults", "TaskStatistics",
    "assemble_statistics", "collect_analysis", "collect_study", "read_study_tables",
    "record_part_error", "save_task_part", "statistics_from_outcomes", "report_shape",
    "study_methods", "study_scopes", "study_tasks", "summarize", "task_outcomes",
    "task_statistics", "write_study_tables",
]


def _predictions_bytes(job: TaskJob) -> int:
    """Size of the task's first-seed test predictions on disk: what reading and bootstrapping
    the task costs, roughly (test images x methods)."""
    total = 0
    for method in job.methods:
        try:
            total += MethodRuns(job.study_dir, job.task, method).final() \
                .test_predictions_file.stat().st_size
        except OSError:
            pass
    return total


def collect_study(runs_dir: Path, study: Mapping, *, allow_missing: bool = False,
                  check_predictions: bool = True, alpha: float | None = None,
                  num_resamples: int | None = None, workers: int | None = None
                  ) -> StudyResults:
    """Read every task x method of ``study`` from its run directories.

    ``runs_dir`` is the study's directory ``runs/<study>`` (the root ``runs`` is accepted too).
    A missing file raises :class:`MissingRunFileError` listing every missing path, unless
    ``allow_missing`` is set: then the cell gets status ``"missing"`` and null values. With
    ``check_predictions`` the saved test predictions (when present) must reproduce ``test_top1``.
    Every seed's final run is read (``final/`` and ``final-seed<s>/``; ``study["seeds"]``, when
    given, names the expected seeds); from their per-example predictions come the chance levels,
    the bootstrap intervals and the significance tests (``alpha``, ``num_resamples``: defaults of
    :mod:`vpeft.report.significance` and :mod:`vpeft.report.uncertainty`).

    Tasks are read in ``workers`` processes (default: :func:`vpeft.report.parallel.ordered_map`);
    the tables are assembled in study order, so they do not depend on the number of workers.
    The first error in study order is raised (within a task: the run files before the
    prediction checks).
    """
    from vpeft.report.parallel import ordered_map

    tasks, methods = study_tasks(study), study_methods(study)
    jobs = task_jobs(runs_dir, study, check_predictions=check_predictions,
                     num_resamples=num_resamples)
    study_dir = jobs[0].study_dir if jobs else \
        find_study_dir(runs_dir, str(study["name"]), [task for task, _ in tasks])
    parts = ordered_map(collect_task_saved, jobs, workers, cells=len(tasks) * len(methods),
                        costs=[_predictions_bytes(job) for job in jobs])
    missing = [p for part in parts for p in part.missing]
    if missing and not allow_missing:
        raise MissingRunFileError(missing)
    results = pa.Table.from_pylist([r for part in parts for r in part.rows],
                                   schema=RESULTS_SCHEMA)
    grid = pa.Table.from_pylist([r for part in parts for r in part.grid_rows],
                                schema=GRID_SCHEMA)
    summary = summarize(results, study)
    chance, stats, noise = assemble_statistics(
        [part.statistics for part in parts if part.statistics is not None], study, summary,
        alpha=alpha)
    return StudyResults(results=results, grid=grid, summary=summary,
                        analysis=collect_analysis(study_dir, study),
                        seeds=pa.Table.from_pylist([r for part in parts for r in part.seed_rows],
                                                   schema=SEEDS_SCHEMA),
                        chance=chance, stats=stats, seed_noise=noise)


def _analysis_schemas() -> dict[str, pa.Schema]:
    from vpeft.analysis import SCHEMAS  # local: the analysis module pulls in numpy

    return SCHEMAS


def collect_analysis(study_dir: Path, study: Mapping) -> dict[str, pa.Table]:
    """The per-task analysis tables (``<task>/analysis/<name>.parquet``) concatenated over tasks.

    The analysis is optional: tables absent for a task are skipped, and a name with no file for
    any task is left out of the result. A table whose ``task`` column names another task is an
    error (a file copied into the wrong directory).
    """
    schemas = _analysis_schemas()
    parts: dict[str, list[pa.Table]] = {}
    for task, _ in study_tasks(study):
        folder = layout.analysis_dir_in(study_dir, task)
        for name, schema in schemas.items():
            path = folder / f"{name}.parquet"
            if not path.is_file():
                continue
            table = pq.read_table(path)
            absent = [c for c in schema.names if c not in table.column_names]
            if absent:
                raise RunDataError(f"{path}: missing column(s) {absent}")
            table = table.select(schema.names).cast(schema).replace_schema_metadata(None)
            tasks = set(table.column("task").to_pylist())
            if tasks - {task}:
                raise RunDataError(f"{path}: rows for task(s) {sorted(tasks - {task})}, "
                                   f"expected only {task!r}")
            parts.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables) for name, tables in parts.items()}

"""The report's tables of a study: their schemas, the study metadata they are keyed by, the
per-method summary and their files.

vpeft.report.collect fills them from a study's run directories; the report is then rendered from
the tables alone, so every number on the page has one source.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from vpeft import layout
from vpeft.io import write_parquet
from vpeft.kinds import ReportShape, recorded_kind

GROUPS: tuple[str, ...] = ("natural", "specialized", "structured")
STATUSES: tuple[str, ...] = ("ok", "diverged", "missing")

# Explicit schemas: a column that happens to be all-null (e.g. every final run diverged) must keep
# its type, or the parquet files of two studies would not concatenate.
RESULTS_SCHEMA = pa.schema([
    ("study", pa.string()),
    ("task", pa.string()),
    ("group", pa.string()),
    ("method", pa.string()),
    ("status", pa.string()),
    ("test_top1", pa.float64()),
    ("val_top1", pa.float64()),
    ("point", pa.string()),
    ("hparams_json", pa.string()),
    ("optim_json", pa.string()),
    ("lr", pa.float64()),
    ("weight_decay", pa.float64()),
    ("trainable_params", pa.int64()),
    ("trainable_params_with_head", pa.int64()),
    ("total_params", pa.int64()),
    ("trainable_pct", pa.float64()),
    ("seed", pa.int64()),
    ("epochs", pa.int64()),
    ("num_test", pa.int64()),
    ("num_seeds", pa.int64()),           # seeds with a test accuracy (final/ and final-seed*/)
    ("test_top1_mean", pa.float64()),    # mean over those seeds (= test_top1 with one seed)
    ("test_top1_std", pa.float64()),     # standard deviation over seeds (ddof 1); null below 2
    ("wall_time_s", pa.float64()),
    ("train_images_per_s", pa.float64()),
    ("peak_memory_bytes", pa.int64()),
    ("device", pa.string()),
    ("protocol", pa.string()),
    ("grid_wall_time_s", pa.float64()),
    ("num_grid_points", pa.int64()),
    ("num_diverged", pa.int64()),
    ("git_commit", pa.string()),
    ("versions_json", pa.string()),
    ("machine_json", pa.string()),       # vpeft.machine.describe of the final run
    ("config_json", pa.string()),
])

GRID_SCHEMA = pa.schema([
    ("study", pa.string()),
    ("task", pa.string()),
    ("group", pa.string()),
    ("method", pa.string()),
    ("point", pa.string()),
    ("selected", pa.bool_()),
    ("status", pa.string()),
    ("val_top1", pa.float64()),
    ("hparams_json", pa.string()),
    ("optim_json", pa.string()),
    ("lr", pa.float64()),
    ("weight_decay", pa.float64()),
    ("seed", pa.int64()),
    ("epochs", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("train_images_per_s", pa.float64()),
    ("peak_memory_bytes", pa.int64()),
    ("device", pa.string()),
])

SUMMARY_SCHEMA = pa.schema([
    ("method", pa.string()),
    ("natural", pa.float64()),
    ("specialized", pa.float64()),
    ("structured", pa.float64()),
    ("mean", pa.float64()),
    ("num_tasks", pa.int64()),
    ("num_ok", pa.int64()),
    ("num_diverged", pa.int64()),
    ("num_missing", pa.int64()),
    ("trainable_params", pa.float64()),
    ("trainable_pct", pa.float64()),
    ("num_seeds", pa.int64()),           # fewest seeds with a test accuracy over the tasks
])

# One row per final run of every seed (final/ is the first seed, final-seed<s>/ the others).
SEEDS_SCHEMA = pa.schema([
    ("task", pa.string()),
    ("method", pa.string()),
    ("seed", pa.int64()),
    ("primary", pa.bool_()),             # the run in final/
    ("run_dir", pa.string()),            # final or final-seed<s>
    ("status", pa.string()),
    ("test_top1", pa.float64()),
    ("num_test", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("train_images_per_s", pa.float64()),
    ("peak_memory_bytes", pa.int64()),
    ("device", pa.string()),
    ("protocol", pa.string()),
])

# Per task: its chance levels (vpeft.report.uncertainty.chance_levels).
CHANCE_SCHEMA = pa.schema([
    ("task", pa.string()),
    ("num_classes", pa.int64()),
    ("num_test", pa.int64()),
    ("chance", pa.float64()),            # majority-class rate of the test labels (%)
    ("uniform_chance", pa.float64()),    # 1 / num_classes (%)
])

# Per scope (a task, a VTAB group, the mean over tasks) and method: mean, spread, 95 % interval
# and the significance tests of vpeft.report.significance.
STATS_SCHEMA = pa.schema([
    ("scope_kind", pa.string()),         # task | group | overall
    ("scope", pa.string()),              # task name, group name, or "mean"
    ("tasks", pa.string()),              # comma-separated tasks of the scope
    ("method", pa.string()),
    ("num_tasks", pa.int64()),
    ("num_seeds", pa.int64()),
    ("mean", pa.float64()),
    ("std", pa.float64()),
    ("ci_low", pa.float64()),
    ("ci_high", pa.float64()),
    ("ci_kind", pa.string()),
    ("chance", pa.float64()),
    ("uniform_chance", pa.float64()),
    ("p_above_chance", pa.float64()),
    ("p_above_chance_holm", pa.float64()),
    ("above_chance", pa.bool_()),
    ("best", pa.bool_()),
    ("p_vs_best", pa.float64()),
    ("p_vs_best_holm", pa.float64()),
    ("indistinguishable", pa.bool_()),
    ("trainable_params", pa.float64()),
    ("num_resamples", pa.int64()),
    ("alpha", pa.float64()),
])

# File names of the report's tables: vpeft.layout's (the rules and dvc.yaml use the same).
TABLE_FILES: dict[str, str] = layout.REPORT_TABLES
OPTIONAL_TABLE_FILES: dict[str, str] = layout.REPORT_OPTIONAL_TABLES
ANALYSIS_PREFIX = layout.REPORT_ANALYSIS_PREFIX


class RunDataError(ValueError):
    """A run file exists but is inconsistent with its location or with the other run files."""


class MissingRunFileError(FileNotFoundError):
    """One or more run files the report needs do not exist (the message lists them)."""

    def __init__(self, paths: Sequence[Path]):
        shown = "\n  ".join(str(p) for p in paths[:25])
        more = f"\n  ... and {len(paths) - 25} more" if len(paths) > 25 else ""
        super().__init__(
            f"{len(paths)} run file(s) missing (pass allow_missing=True to report them as empty "
            f"cells):\n  {shown}{more}")
        self.paths = list(paths)
        self.filename = str(paths[0]) if paths else None


@dataclass(frozen=True)
class StudyResults:
    """The three tables of one study (schemas: RESULTS_SCHEMA, GRID_SCHEMA, SUMMARY_SCHEMA)."""

    results: pa.Table
    grid: pa.Table
    summary: pa.Table
    # Optional per-task analysis tables (vpeft.analysis), concatenated over tasks and keyed by
    # table name (e.g. "agreement", "ensembles"); empty when no task has been analysed.
    analysis: dict[str, pa.Table] = field(default_factory=dict)
    # Seeds, chance levels, intervals and tests (None when the results were not collected from
    # run directories with per-example predictions).
    seeds: pa.Table | None = None
    chance: pa.Table | None = None
    stats: pa.Table | None = None
    seed_noise: pa.Table | None = None


# --------------------------------------------------------------------------------------------
# study metadata
# --------------------------------------------------------------------------------------------

def study_tasks(study: Mapping) -> list[tuple[str, str]]:
    """``[(task, group), ...]`` in study order, validated (known group, no duplicate task)."""
    tasks: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in study.get("tasks") or []:
        name, group = str(entry["name"]), str(entry["group"])
        if group not in GROUPS:
            raise ValueError(f"task {name!r}: group {group!r} is not one of {GROUPS}")
        if name in seen:
            raise ValueError(f"task {name!r} is listed twice in study {study.get('name')!r}")
        seen.add(name)
        tasks.append((name, group))
    if not tasks:
        raise ValueError(f"study {study.get('name')!r} lists no tasks")
    return tasks


def study_methods(study: Mapping) -> list[str]:
    """The study's methods in order, validated (non-empty, no duplicates)."""
    methods = [str(m) for m in study.get("methods") or []]
    if not methods:
        raise ValueError(f"study {study.get('name')!r} lists no methods")
    if len(set(methods)) != len(methods):
        raise ValueError(f"study {study.get('name')!r} lists a method twice: {methods}")
    return methods


def report_shape(study: Mapping) -> ReportShape:
    """How the study's kind shapes its report (VTAB groups, many-shot datasets x sizes, or the
    robustness study's one in-distribution block), from its recorded metadata."""
    return recorded_kind(study).report


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return math.fsum(values) / len(values) if values else None


def _seed_mean(row: Mapping[str, Any]) -> float | None:
    """The cell's mean over seeds (tables made before seeds existed: its one test top-1)."""
    mean = row.get("test_top1_mean")
    return row["test_top1"] if mean is None else mean


def summarize(results: pa.Table, study: Mapping) -> pa.Table:
    """One row per method: group means, mean over tasks, mean trainable params.

    Accuracies are each cell's mean over its seeds.

    A group mean (and the overall mean) exists only when every task it covers has a test
    accuracy, so a diverged or missing run cannot silently raise a method's average. The overall
    ``mean`` is the plain mean over tasks (the paper's "mean over 19"), not a mean of group means.
    """
    tasks = study_tasks(study)
    by_key = {(r["task"], r["method"]): r for r in results.to_pylist()}
    out: list[dict[str, Any]] = []
    for method in study_methods(study):
        cells = [by_key.get((task, method)) for task, _ in tasks]
        acc = [_seed_mean(c) if c and c["status"] == "ok" else None for c in cells]
        row: dict[str, Any] = {"method": method}
        for group in GROUPS:
            values = [a for a, (_, g) in zip(acc, tasks) if g == group]
            row[group] = _mean(values) if values and None not in values else None
        row["mean"] = _mean(acc) if None not in acc else None
        statuses = [c["status"] if c else "missing" for c in cells]
        row |= {
            "num_tasks": len(tasks),
            "num_ok": statuses.count("ok"),
            "num_diverged": statuses.count("diverged"),
            "num_missing": statuses.count("missing"),
            "trainable_params": _mean(float(c["trainable_params"]) for c in cells
                                      if c and c["trainable_params"] is not None),
            "trainable_pct": _mean(c["trainable_pct"] for c in cells
                                   if c and c["trainable_pct"] is not None),
            "num_seeds": min((c.get("num_seeds") or 1 for c in cells
                              if c and c["status"] == "ok"), default=None),
        }
        out.append(row)
    return pa.Table.from_pylist(out, schema=SUMMARY_SCHEMA)


def write_study_tables(results: StudyResults, out_dir: Path) -> dict[str, Path]:
    """Write ``results.parquet``, ``grid.parquet``, ``summary.parquet`` and, when collected,
    ``seeds``, ``chance``, ``stats`` and ``seed_noise`` (``.parquet``) atomically."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for attr, filename in TABLE_FILES.items():
        table: pa.Table = getattr(results, attr)
        path = out_dir / filename
        write_parquet(path, table)
        written[attr] = path
    for attr, filename in OPTIONAL_TABLE_FILES.items():
        table = getattr(results, attr)
        if table is not None:
            write_parquet(out_dir / filename, table)
            written[attr] = out_dir / filename
    for name, table in results.analysis.items():
        path = out_dir / f"{ANALYSIS_PREFIX}{name}.parquet"
        write_parquet(path, table)
        written[f"{ANALYSIS_PREFIX}{name}"] = path
    return written


def read_study_tables(out_dir: Path) -> StudyResults:
    """Read back the tables written by :func:`write_study_tables`."""
    out_dir = Path(out_dir)
    tables = {attr: pq.read_table(out_dir / filename) for attr, filename in TABLE_FILES.items()}
    analysis = {p.name[len(ANALYSIS_PREFIX):-len(".parquet")]: pq.read_table(p)
                for p in sorted(out_dir.glob(f"{ANALYSIS_PREFIX}*.parquet"))}
    optional = {attr: pq.read_table(out_dir / filename)
                for attr, filename in OPTIONAL_TABLE_FILES.items()
                if (out_dir / filename).is_file()}
    return StudyResults(**tables, analysis=analysis, **optional)

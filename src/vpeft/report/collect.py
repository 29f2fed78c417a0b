"""Collect a study's run directories into three Arrow tables: results, grid and summary.

The training pipeline leaves one directory per task x method::

    runs/<study>/<task>/<method>/grid/<point>/metrics.json
    runs/<study>/<task>/<method>/selection.json
    runs/<study>/<task>/<method>/final/metrics.json
    runs/<study>/<task>/<method>/final/test_eval.json
    runs/<study>/<task>/<method>/final/test_predictions.parquet
    runs/<study>/<task>/<method>/final-seed<s>/...   (the same files, for every further seed)

This module only reads those files and cross-checks them (a file in the wrong directory, a
selection that disagrees with its grid, or a test accuracy that disagrees with the saved
predictions is an error, not a silently wrong table). The report is then rendered from the
tables alone, so every number on the page has one source.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vpeft import layout
from vpeft.io import read_json, write_parquet
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


# --------------------------------------------------------------------------------------------
# reading one task x method directory
# --------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except ValueError as err:   # malformed JSON; vpeft.io names the file and position
        raise RunDataError(str(err)) from err
    if not isinstance(data, dict):
        raise RunDataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _dumps(value: Any) -> str:
    """Canonical JSON (sorted keys) so equal dicts give equal strings across runs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _accuracy(value: Any, where: str) -> float | None:
    """A top-1 value in 0..100 or None; anything else (NaN, out of range, a string) is an error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunDataError(f"{where}: top-1 {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise RunDataError(f"{where}: top-1 {value!r} is outside 0..100 (percent expected)")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _expect(data: Mapping, path: Path, **expected: Any) -> None:
    """Fail if a file's identifying keys disagree with where the file lives."""
    for key, want in expected.items():
        if data.get(key) != want:
            raise RunDataError(f"{path}: {key}={data.get(key)!r}, expected {want!r} "
                               "(file copied into the wrong run directory?)")


def _predictions_top1(table: pa.Table) -> tuple[float, int]:
    """Top-1 (%) and row count recomputed from the saved test predictions (``label``, ``pred``)."""
    n = table.num_rows
    if n == 0:
        return 0.0, 0
    # Compared in Arrow, not row by row in Python (6.2 M rows for VTAB-1K); a null on both
    # sides counts as a match, as the former Python comparison ``None == None`` did.
    labels, preds = table.column("label"), table.column("pred")
    same = pc.fill_null(pc.equal(labels, preds),
                        pc.and_(pc.is_null(labels), pc.is_null(preds)))
    correct = int(pc.sum(same).as_py() or 0)
    return 100.0 * correct / n, n


def _cost(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The cost fields a run records (absent in runs made before they existed: None)."""
    device = metrics.get("device")
    return {"train_images_per_s": _opt_float(metrics.get("train_images_per_s")),
            "peak_memory_bytes": _opt_int(metrics.get("peak_memory_bytes")),
            "device": None if device is None else str(device)}


@dataclass
class _Cell:
    """What was read for one task x method (None fields when absent)."""

    row: dict[str, Any]
    grid_rows: list[dict[str, Any]]
    missing: list[Path]
    seed_rows: list[dict[str, Any]] = field(default_factory=list)
    # (seed, test_predictions.parquet) of every seed with a test accuracy, primary first
    predictions: list[tuple[int | None, Path]] = field(default_factory=list)
    # the predictions that must reproduce their test_top1, checked when they are read for the
    # statistics (each file is read once): path -> (test_eval.json, test_top1, num_test)
    checks: dict[Path, tuple[Path, float, int | None]] = field(default_factory=dict)


def _collect_cell(run_dir: Path, study_name: str, task: str, group: str, method: str,
                  check_predictions: bool, seeds: Sequence[int] | None = None) -> _Cell:
    """Read and cross-check one task x method directory; missing files are returned, not raised."""
    base = {"study": study_name, "task": task, "group": group, "method": method}
    row: dict[str, Any] = {name: None for name in RESULTS_SCHEMA.names} | base
    missing: list[Path] = []
    grid_rows: list[dict[str, Any]] = []

    selection_path = run_dir / layout.SELECTION
    if not selection_path.is_file():
        row["status"] = "missing"
        return _Cell(row, grid_rows, [selection_path])
    selection = _read_json(selection_path)
    _expect(selection, selection_path, task=task, method=method)
    best_point = selection.get("best_point")
    candidates = selection.get("candidates") or []
    points = [str(c["point"]) for c in candidates]
    if len(set(points)) != len(points):
        raise RunDataError(f"{selection_path}: a grid point is listed twice: {points}")
    if best_point is not None and best_point not in points:
        raise RunDataError(f"{selection_path}: best_point {best_point!r} is not a candidate")

    # Grid: the selection's candidate list is the authoritative set of points, so a stale
    # directory left over from an older grid definition is not counted.
    grid_metrics: dict[str, dict[str, Any]] = {}
    for point in points:
        path = run_dir / layout.GRID_DIR / point / layout.METRICS
        if not path.is_file():
            missing.append(path)
            continue
        m = _read_json(path)
        _expect(m, path, study=study_name, task=task, method=method, point=point, phase="grid",
                group=group)
        status = m.get("status")
        if status not in ("ok", "diverged"):
            raise RunDataError(f"{path}: status {status!r} is not 'ok' or 'diverged'")
        grid_metrics[point] = m
        optim = m.get("optim") or {}
        grid_rows.append(base | {
            "point": point,
            "selected": point == best_point,
            "status": status,
            "val_top1": _accuracy(m.get("val_top1"), str(path)),
            "hparams_json": _dumps(m.get("hparams") or {}),
            "optim_json": _dumps(optim),
            "lr": _opt_float(optim.get("lr")),
            "weight_decay": _opt_float(optim.get("weight_decay")),
            "seed": _opt_int(m.get("seed")),
            "epochs": _opt_int(m.get("epochs")),
            "wall_time_s": _opt_float(m.get("wall_time_s")),
        } | _cost(m))

    final_path = run_dir / layout.FINAL_DIR / layout.METRICS
    test_path = run_dir / layout.FINAL_DIR / layout.TEST_EVAL
    # With no selectable point there may legitimately be no final run at all.
    final_required = best_point is not None
    for path in (final_path, test_path):
        if final_required and not path.is_file():
            missing.append(path)
    if missing:
        row["status"] = "missing"
        return _Cell(row, grid_rows, missing)

    row["num_grid_points"] = len(points)
    row["num_diverged"] = sum(1 for p in points if grid_metrics[p]["status"] == "diverged")
    row["grid_wall_time_s"] = math.fsum(float(grid_metrics[p].get("wall_time_s") or 0.0)
                                        for p in points)

    if best_point is None:
        row["status"] = "diverged"
    else:
        best_val = _accuracy(selection.get("best_val_top1"), str(selection_path))
        grid_val = grid_metrics[best_point].get("val_top1")
        if grid_val is None or best_val is None or float(grid_val) != best_val:
            raise RunDataError(f"{selection_path}: best_val_top1 {best_val!r} disagrees with "
                               f"grid/{best_point}/metrics.json val_top1 {grid_val!r}")
        row["val_top1"] = best_val
        row["point"] = best_point

    if final_path.is_file():
        final = _read_json(final_path)
        _expect(final, final_path, study=study_name, task=task, method=method, phase="final",
                group=group, **({"point": best_point} if best_point is not None else {}))
        optim = final.get("optim") or {}
        row |= {
            "point": row["point"] or final.get("point"),
            "hparams_json": _dumps(final.get("hparams") or {}),
            "optim_json": _dumps(optim),
            "lr": _opt_float(optim.get("lr")),
            "weight_decay": _opt_float(optim.get("weight_decay")),
            "trainable_params": _opt_int(final.get("trainable_params")),
            "trainable_params_with_head": _opt_int(final.get("trainable_params_with_head")),
            "total_params": _opt_int(final.get("total_params")),
            "seed": _opt_int(final.get("seed")),
            "epochs": _opt_int(final.get("epochs")),
            "wall_time_s": _opt_float(final.get("wall_time_s")),
            **_cost(final),
            "protocol": final.get("protocol"),
            "git_commit": final.get("git_commit"),
            "versions_json": _dumps(final.get("versions") or {}),
            "config_json": _dumps(final.get("config") or {}),
        }
        row["trainable_pct"] = _trainable_pct(row["trainable_params"],
                                              row["trainable_params_with_head"],
                                              row["total_params"])
        final_status = final.get("status")
    else:
        final_status = "diverged"

    if test_path.is_file():
        test = _read_json(test_path)
        _expect(test, test_path, task=task, method=method,
                **({"point": best_point} if best_point is not None else {}))
        test_top1 = _accuracy(test.get("test_top1"), str(test_path))
        row["num_test"] = _opt_int(test.get("num_test"))
        diverged = (final_status == "diverged" or test.get("status") == "diverged"
                    or best_point is None)
        if diverged:
            row["status"] = "diverged"
        elif test_top1 is None:
            raise RunDataError(f"{test_path}: status ok but test_top1 is null")
        else:
            row["status"] = "ok"
            row["test_top1"] = test_top1
    else:
        row["status"] = "diverged"
    cell = _Cell(row, grid_rows, [])
    if check_predictions and row["status"] == "ok":
        cell.checks[run_dir / layout.FINAL_DIR / layout.TEST_PREDICTIONS] = (
            test_path, row["test_top1"], row["num_test"])
    _collect_seeds(cell, run_dir, base, best_point, seeds, check_predictions)
    return cell


SEED_DIR_PREFIX = layout.FINAL_DIR + layout.SEED_SUFFIX  # final-seed<s>/ (seeds after the first)


def seed_dirs(run_dir: Path, seeds: Sequence[int] | None) -> list[tuple[int | None, Path]]:
    """``[(seed, dir)]`` of the further seeds' final runs (not ``final/``), in seed order.

    With the study's ``seeds`` list these are the expected directories, present or not; without
    it, the ``final-seed<s>`` directories that exist.
    """
    if seeds is not None:
        return [(int(s), run_dir / f"{SEED_DIR_PREFIX}{int(s)}") for s in list(seeds)[1:]]
    found = []
    for path in run_dir.glob(f"{SEED_DIR_PREFIX}*"):
        suffix = path.name[len(SEED_DIR_PREFIX):]
        if path.is_dir() and suffix.lstrip("-").isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def _seed_row(base: Mapping[str, Any], seed: int | None, primary: bool, run_dir: str,
              status: str, test_top1: float | None, num_test: int | None,
              metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": base["task"], "method": base["method"], "seed": seed, "primary": primary,
            "run_dir": run_dir, "status": status, "test_top1": test_top1, "num_test": num_test,
            "wall_time_s": _opt_float(metrics.get("wall_time_s")),
            "protocol": metrics.get("protocol"), **_cost(metrics)}


def _collect_seeds(cell: _Cell, run_dir: Path, base: Mapping[str, Any], best_point: str | None,
                   seeds: Sequence[int] | None, check_predictions: bool) -> None:
    """Add the seed rows (primary first), the prediction files and the mean/std over seeds."""
    row = cell.row
    primary_preds = run_dir / layout.FINAL_DIR / layout.TEST_PREDICTIONS
    final_metrics = {k: row[k] for k in ("wall_time_s", "train_images_per_s",
                                         "peak_memory_bytes", "device", "protocol")}
    cell.seed_rows.append(_seed_row(base, row["seed"], True, "final", row["status"],
                                    row["test_top1"], row["num_test"], final_metrics))
    if row["status"] == "ok" and primary_preds.is_file():
        cell.predictions.append((row["seed"], primary_preds))
    top1 = [row["test_top1"]] if row["status"] == "ok" else []
    where = {"study": base["study"], "task": base["task"], "method": base["method"],
             "phase": "final", "group": base["group"]}
    for seed, folder in seed_dirs(run_dir, seeds):
        metrics_path, test_path = folder / layout.METRICS, folder / layout.TEST_EVAL
        absent = [p for p in (metrics_path, test_path) if not p.is_file()]
        if absent:
            if best_point is not None:
                cell.missing.extend(absent)
            continue
        metrics = _read_json(metrics_path)
        _expect(metrics, metrics_path, **where,
                **({"point": best_point} if best_point is not None else {}))
        if metrics.get("seed") is not None and int(metrics["seed"]) != seed:
            raise RunDataError(f"{metrics_path}: seed={metrics['seed']!r}, expected {seed} "
                               f"(the directory is {folder.name})")
        test = _read_json(test_path)
        _expect(test, test_path, task=base["task"], method=base["method"],
                **({"point": best_point} if best_point is not None else {}))
        value = _accuracy(test.get("test_top1"), str(test_path))
        ok = (metrics.get("status") != "diverged" and test.get("status") != "diverged"
              and value is not None)
        num_test = _opt_int(test.get("num_test"))
        preds = folder / layout.TEST_PREDICTIONS
        if ok:
            top1.append(value)
            if preds.is_file():
                cell.predictions.append((seed, preds))
                if check_predictions:
                    cell.checks[preds] = (test_path, value, num_test)
        cell.seed_rows.append(_seed_row(base, seed, False, folder.name,
                                        "ok" if ok else "diverged", value if ok else None,
                                        num_test, metrics))
    if row["status"] == "ok":
        row["num_seeds"] = len(top1)
        row["test_top1_mean"] = math.fsum(top1) / len(top1)
        row["test_top1_std"] = (statistics.stdev(top1) if len(top1) >= 2 else None)
    else:
        row["num_seeds"] = 0


def _check_predictions(table: pa.Table, preds: Path, test_path: Path, test_top1: float,
                       num_test: int | None) -> None:
    """The reported test accuracy must be the one the saved predictions (``table``, read from
    ``preds``) give."""
    top1, n = _predictions_top1(table)
    if num_test is not None and n != num_test:
        raise RunDataError(f"{preds}: {n} rows but {test_path} says num_test={num_test}")
    # 1e-4 points absorbs float32 accumulation in the evaluator yet is far below one test
    # example (100 / 73728 for the largest VTAB test split), so a real mismatch still fails.
    if abs(top1 - test_top1) > 1e-4:
        raise RunDataError(f"{test_path}: test_top1={test_top1!r} but {preds} gives {top1!r}")


def _trainable_pct(trainable: int | None, with_head: int | None, total: int | None
                   ) -> float | None:
    """Trainable params as % of the model without its classifier head (the paper's convention)."""
    if trainable is None or with_head is None or total is None:
        return None
    backbone = total - (with_head - trainable)
    return 100.0 * trainable / backbone if backbone > 0 else None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def _study_dir(runs_dir: Path, name: str, tasks: Sequence[tuple[str, str]]) -> Path:
    """``runs_dir`` may be the study's own directory (``runs/<study>``, as the CLI passes it) or
    the root above it (``runs``); the study directory is the one holding the task folders."""
    if any((runs_dir / task).is_dir() for task, _ in tasks):
        return runs_dir
    if (runs_dir / name).is_dir():
        return runs_dir / name
    return runs_dir   # nothing there: the missing-file error then names paths under runs_dir


@dataclass(frozen=True)
class _TaskJob:
    """Everything a worker needs to read one task's directories (picklable)."""

    study_dir: Path
    name: str
    task: str
    group: str
    methods: tuple[str, ...]
    check_predictions: bool
    seeds: tuple[int, ...] | None
    num_classes: int | None
    num_resamples: int


@dataclass
class _TaskPart:
    """One task's rows and, when it has test predictions, its statistics."""

    rows: list[dict[str, Any]]
    grid_rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]]
    missing: list[Path]
    statistics: Any   # TaskStatistics | None


def _collect_task(job: _TaskJob) -> _TaskPart:
    """Read every method of one task, then its test predictions (each file once: the accuracy
    check and the statistics share the read) and reduce them to bootstrap distributions.
    Runs in a worker process; depends on nothing but ``job``, so the result is the same
    whichever process runs it."""
    cells = [_collect_cell(job.study_dir / job.task / method, job.name, job.task, job.group,
                           method, job.check_predictions, job.seeds) for method in job.methods]
    files = {m: c.predictions for m, c in zip(job.methods, cells) if c.predictions}
    checks = {path: check for c in cells for path, check in c.checks.items()}
    statistics = None
    if files:
        statistics = task_statistics(task_outcomes(job.task, job.num_classes, files, checks),
                                     job.num_resamples)
    return _TaskPart(rows=[c.row for c in cells],
                     grid_rows=[g for c in cells for g in c.grid_rows],
                     seed_rows=[r for c in cells for r in c.seed_rows],
                     missing=[p for c in cells for p in c.missing], statistics=statistics)


# --- a task's part, saved by its analyze job ---------------------------------------------------
# Reading a task's run files (~500 per task in the paper's grids) and bootstrapping its test
# predictions is most of what `vpeft report` does at the paper's scale (docs/benchmarks.md). The
# task's analyze job, which runs once every run of the task is done (on its own node, beside the
# other tasks'), collects the task and saves the result; the report reuses it while the task's
# run files are still those it was made from (path, size and mtime of each) and the settings are
# the same, and reads the task again otherwise. JSON: floats round-trip exactly, nothing is
# unpickled.
_PART_VERSION = 1


def _files_fingerprint(job: _TaskJob) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of every file under the task's method directories."""
    out: list[list[Any]] = []
    for method in job.methods:
        for dirpath, dirnames, filenames in os.walk(job.study_dir / job.task / method):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                stat = path.stat()
                out.append([path.relative_to(job.study_dir).as_posix(), stat.st_size,
                            stat.st_mtime_ns])
    return out


def _part_key(job: _TaskJob) -> dict[str, Any]:
    from vpeft.report.uncertainty import BOOTSTRAP_SEED

    return {"version": _PART_VERSION, "name": job.name, "task": job.task, "group": job.group,
            "methods": list(job.methods), "check_predictions": job.check_predictions,
            "seeds": None if job.seeds is None else list(job.seeds),
            "num_classes": job.num_classes, "num_resamples": job.num_resamples,
            "bootstrap_seed": BOOTSTRAP_SEED, "files": _files_fingerprint(job)}


def _array(a: Any) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(a)
    return {"dtype": a.dtype.str, "values": a.tolist()}


def _unarray(d: Mapping[str, Any]) -> Any:
    import numpy as np

    return np.array(d["values"], dtype=np.dtype(d["dtype"]))


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot save {type(value).__name__} in a task part")


def _part_to_dict(part: _TaskPart) -> dict[str, Any]:
    stats = part.statistics
    saved = None
    if stats is not None:
        sc = stats.scores
        saved = {"scores": {"task": sc.task, "seeds": sc.seeds,
                            "top1": {m: _array(a) for m, a in sc.top1.items()},
                            "boot": {m: _array(a) for m, a in sc.boot.items()},
                            "chance": sc.chance, "uniform_chance": sc.uniform_chance,
                            "num_test": sc.num_test},
                 "noise_rows": stats.noise_rows, "chance_row": stats.chance_row}
    return {"rows": part.rows, "grid_rows": part.grid_rows, "seed_rows": part.seed_rows,
            "missing": [str(p) for p in part.missing], "statistics": saved}


def _part_from_dict(d: Mapping[str, Any]) -> _TaskPart:
    from vpeft.report.uncertainty import TaskScores

    stats = None
    if d["statistics"] is not None:
        sc = d["statistics"]["scores"]
        stats = TaskStatistics(
            TaskScores(sc["task"], sc["seeds"], {m: _unarray(a) for m, a in sc["top1"].items()},
                       {m: _unarray(a) for m, a in sc["boot"].items()}, sc["chance"],
                       sc["uniform_chance"], sc["num_test"]),
            d["statistics"]["noise_rows"], d["statistics"]["chance_row"])
    return _TaskPart(rows=d["rows"], grid_rows=d["grid_rows"], seed_rows=d["seed_rows"],
                     missing=[Path(p) for p in d["missing"]], statistics=stats)


def _part_path(study_dir: Path, task: str) -> Path:
    return Path(study_dir) / task / layout.ANALYSIS_DIR / layout.REPORT_PART


def _collect_task_saved(job: _TaskJob) -> _TaskPart:
    """The task's saved part when it is still valid (:func:`save_task_part`), else
    :func:`_collect_task`."""
    try:
        saved = json.loads(_part_path(job.study_dir, job.task).read_bytes())
    except (OSError, ValueError):
        return _collect_task(job)
    if saved.get("key") != _part_key(job):
        return _collect_task(job)
    return _part_from_dict(saved["part"])


def save_task_part(runs_dir: Path, study: Mapping, task: str) -> tuple[Path, str | None]:
    """Collect ``task`` as :func:`collect_study` would (run files, prediction checks, bootstrap)
    and save it where the report looks for it: (the file, None). When collecting fails, the file
    records the error instead (the report then reads the task itself and raises it there, in
    context): (the file, the error). ``runs_dir`` as for :func:`collect_study`."""
    study_dir = Path(runs_dir)
    try:
        job = next(j for j in _task_jobs(runs_dir, study) if j.task == task)
        study_dir = job.study_dir
        key = _part_key(job)   # before reading: a file changed meanwhile invalidates the part
        saved = {"key": key, "part": _part_to_dict(_collect_task(job))}
    except Exception as err:  # noqa: BLE001  (recorded; the report raises it)
        error = f"{type(err).__name__}: {err}"
        return record_part_error(study_dir, task, error), error
    return _write_part(_part_path(study_dir, task), saved), None


def record_part_error(study_dir: Path, task: str, error: str) -> Path:
    """Save, in place of the task's part, why it could not be collected (the report then reads
    the task itself). ``study_dir``: the study's run directory ``runs/<study>``."""
    return _write_part(_part_path(study_dir, task), {"key": None, "error": error})


def _write_part(path: Path, saved: Mapping[str, Any]) -> Path:
    from vpeft.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(saved, default=_plain, separators=(",", ":")), encoding="utf-8")
    return path


def _task_jobs(runs_dir: Path, study: Mapping, *, check_predictions: bool = True,
               num_resamples: int | None = None) -> list[_TaskJob]:
    """One :class:`_TaskJob` per task of ``study``, in study order."""
    from vpeft.report.uncertainty import NUM_RESAMPLES

    name = str(study["name"])
    tasks, methods = study_tasks(study), study_methods(study)
    study_dir = _study_dir(Path(runs_dir), name, tasks)
    seeds = study.get("seeds")
    classes = {str(t["name"]): t.get("num_classes") for t in study.get("tasks") or []}
    return [_TaskJob(study_dir, name, task, group, tuple(methods), check_predictions,
                     None if seeds is None else tuple(int(s) for s in seeds),
                     _opt_int(classes.get(task)),
                     NUM_RESAMPLES if num_resamples is None else num_resamples)
            for task, group in tasks]


def _predictions_bytes(job: _TaskJob) -> int:
    """Size of the task's first-seed test predictions on disk: what reading and bootstrapping
    the task costs, roughly (test images x methods)."""
    total = 0
    for method in job.methods:
        try:
            total += (layout.final_dir_in(job.study_dir, job.task, method)
                      / layout.TEST_PREDICTIONS).stat().st_size
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
    jobs = _task_jobs(runs_dir, study, check_predictions=check_predictions,
                      num_resamples=num_resamples)
    study_dir = jobs[0].study_dir if jobs else _study_dir(Path(runs_dir), str(study["name"]), tasks)
    parts = ordered_map(_collect_task_saved, jobs, workers, cells=len(tasks) * len(methods),
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


def report_shape(study: Mapping) -> ReportShape:
    """How the study's kind shapes its report (VTAB groups, many-shot datasets x sizes, or the
    robustness study's one in-distribution block), from its recorded metadata."""
    return recorded_kind(study).report


def _read_outcome(path: Path, check: tuple[Path, float, int | None] | None = None
                  ) -> tuple[Any, Any, Any]:
    """(index, label, pred) of one test_predictions.parquet, sorted by index (logits not read);
    with ``check`` (test_eval.json, test_top1, num_test) the file must reproduce that accuracy."""
    import numpy as np

    # ParquetFile, not pq.read_table: the same columns without the dataset layer, which costs
    # ~25 ms a file (and imports pandas once per process)
    table = pq.ParquetFile(path).read(columns=["index", "label", "pred"])
    if check is not None:
        _check_predictions(table, path, *check)
    index = table.column("index").to_numpy().astype(np.int64)
    order = np.argsort(index, kind="stable")
    return (index[order], table.column("label").to_numpy().astype(np.int64)[order],
            table.column("pred").to_numpy().astype(np.int64)[order])


def task_outcomes(task: str, num_classes: int | None,
                  files: Mapping[str, Sequence[tuple[int | None, Path]]],
                  checks: Mapping[Path, tuple[Path, float, int | None]] | None = None) -> Any:
    """Every method's and seed's per-example outcomes of one task, aligned on the test index
    (the same index and labels in every file, else :class:`RunDataError` naming both files).
    A file in ``checks`` must also reproduce its recorded test accuracy (:func:`_read_outcome`)."""
    import numpy as np

    from vpeft.report.uncertainty import TaskOutcomes

    ref: tuple[Path, Any, Any] | None = None
    out = None
    for method, runs in files.items():
        preds, seeds = [], []
        for seed, path in runs:
            index, labels, pred = _read_outcome(path, (checks or {}).get(path))
            if ref is None:
                ref = (path, index, labels)
                out = TaskOutcomes(task, labels, num_classes)
            elif not np.array_equal(index, ref[1]):
                raise RunDataError(f"test indices differ between {ref[0]} ({len(ref[1])} rows) "
                                   f"and {path} ({len(index)} rows)")
            elif not np.array_equal(labels, ref[2]):
                raise RunDataError(f"test labels differ between {ref[0]} and {path} "
                                   f"({int(np.sum(labels != ref[2]))} examples)")
            preds.append(pred)
            seeds.append(-1 if seed is None else int(seed))
        assert out is not None
        out.preds[method] = np.stack(preds)
        out.correct[method] = out.preds[method] == out.labels[None, :]
        out.seeds[method] = seeds
    return out


def study_scopes(study: Mapping) -> list[tuple[str, str, list[str]]]:
    """``(kind, scope, tasks)`` the statistics cover: every task; for VTAB studies also every
    group present and the mean over all tasks."""
    tasks = study_tasks(study)
    scopes = [("task", t, [t]) for t, _ in tasks]
    if report_shape(study).group_scopes:
        scopes += [("group", g, [t for t, tg in tasks if tg == g]) for g in GROUPS
                   if any(tg == g for _, tg in tasks)]
        scopes.append(("overall", "mean", [t for t, _ in tasks]))
    return scopes


def statistics_from_outcomes(outcomes_per_task: Iterable[Any], study: Mapping, summary: pa.Table,
                             *, alpha: float | None = None, num_resamples: int | None = None
                             ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(chance, stats, seed_noise) from :class:`~vpeft.report.uncertainty.TaskOutcomes`, one
    task at a time (an iterator keeps only one task's per-example arrays alive)."""
    from vpeft.report.uncertainty import NUM_RESAMPLES

    num_resamples = NUM_RESAMPLES if num_resamples is None else num_resamples
    return assemble_statistics((task_statistics(o, num_resamples) for o in outcomes_per_task),
                               study, summary, alpha=alpha)


@dataclass
class TaskStatistics:
    """What the study's statistics need of one task once its per-example arrays are dropped."""

    scores: Any                        # vpeft.report.uncertainty.TaskScores
    noise_rows: list[dict[str, Any]]   # seed_noise.parquet rows
    chance_row: dict[str, Any]         # chance.parquet row


def task_statistics(outcomes: Any, num_resamples: int) -> TaskStatistics:
    """Bootstrap distributions, seed-noise rows and chance levels of one task's outcomes."""
    from vpeft.report.seednoise import seed_noise_rows
    from vpeft.report.uncertainty import score_task

    scores = score_task(outcomes, num_resamples)
    return TaskStatistics(scores, seed_noise_rows(outcomes),
                          {"task": outcomes.task, "num_classes": outcomes.num_classes,
                           "num_test": outcomes.num_test, "chance": scores.chance,
                           "uniform_chance": scores.uniform_chance})


def assemble_statistics(per_task: Iterable[TaskStatistics], study: Mapping, summary: pa.Table,
                        *, alpha: float | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(chance, stats, seed_noise) tables from every task's :class:`TaskStatistics`, in the
    order given (study order), plus the group and overall scopes over them."""
    from vpeft.report.seednoise import SEED_NOISE_SCHEMA
    from vpeft.report.significance import ALPHA, scope_rows
    from vpeft.report.uncertainty import scope_stats

    alpha = ALPHA if alpha is None else alpha
    methods = study_methods(study)
    scores, chance_rows, noise_rows = {}, [], []
    for part in per_task:
        scores[part.scores.task] = part.scores
        noise_rows.extend(part.noise_rows)
        chance_rows.append(part.chance_row)
    params = {r["method"]: r["trainable_params"] for r in summary.to_pylist()}
    stats_rows = []
    for kind, scope, tasks in study_scopes(study):
        stats = scope_stats(scope, tasks, methods, scores)
        if stats is not None:
            stats_rows.extend(scope_rows(stats, kind, params, alpha))
    return (pa.Table.from_pylist(chance_rows, schema=CHANCE_SCHEMA),
            pa.Table.from_pylist(stats_rows, schema=STATS_SCHEMA),
            pa.Table.from_pylist(noise_rows, schema=SEED_NOISE_SCHEMA))


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
        folder = Path(study_dir) / task / layout.ANALYSIS_DIR
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

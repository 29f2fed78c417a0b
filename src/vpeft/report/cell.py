"""Read and cross-check one task x method of a study (vpeft.runs.MethodRuns) into table rows.

A file in the wrong directory, a selection that disagrees with its grid, or a test accuracy that
disagrees with the saved predictions is an error, not a silently wrong table; a missing file is
returned, so that the report can list every one at once.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vpeft.report.tables import RESULTS_SCHEMA, RunDataError
from vpeft.runs import (MethodRuns, Record, RunDir, RunFileError, RunMetrics, Selection,
                        TestEval, read)


def _read(kind: type[Record], path: Path) -> Any:
    try:
        return read(kind, path)
    except RunFileError as err:   # malformed JSON or not an object; vpeft.runs names the file
        raise RunDataError(str(err)) from err


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


def _expect(record: Record, path: Path, **expected: Any) -> None:
    """Fail if a file's identifying keys disagree with where the file lives."""
    for key, want in expected.items():
        if getattr(record, key) != want:
            raise RunDataError(f"{path}: {key}={getattr(record, key)!r}, expected {want!r} "
                               "(file copied into the wrong run directory?)")


def _cost(metrics: RunMetrics) -> dict[str, Any]:
    """The cost fields a run records (absent in runs made before they existed: None)."""
    device = metrics.device
    return {"train_images_per_s": _opt_float(metrics.train_images_per_s),
            "peak_memory_bytes": _opt_int(metrics.peak_memory_bytes),
            "device": None if device is None else str(device)}


def _optim_columns(metrics: RunMetrics) -> dict[str, Any]:
    """A run's hyper-parameter columns (the grid and results tables share them)."""
    optim = metrics.optim or {}
    return {"hparams_json": _dumps(metrics.hparams or {}), "optim_json": _dumps(optim),
            "lr": _opt_float(optim.get("lr")),
            "weight_decay": _opt_float(optim.get("weight_decay"))}


@dataclass
class Cell:
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


def collect_cell(runs: MethodRuns, study_name: str, group: str, check_predictions: bool) -> Cell:
    """Read and cross-check one task x method; missing files are returned, not raised."""
    base = {"study": study_name, "task": runs.task, "group": group, "method": runs.method}
    row: dict[str, Any] = {name: None for name in RESULTS_SCHEMA.names} | base
    if not runs.selection_file.is_file():
        row["status"] = "missing"
        return Cell(row, [], [runs.selection_file])
    selection = _read_selection(runs)
    best_point = selection.best_point
    points = [str(c.point) for c in selection.candidates or ()]
    grid, grid_rows, missing = _read_grid(runs, base, points, best_point)
    final = runs.final()
    # With no selectable point there may legitimately be no final run at all.
    if best_point is not None:
        missing += [p for p in (final.metrics_file, final.test_eval_file) if not p.is_file()]
    if missing:
        row["status"] = "missing"
        return Cell(row, grid_rows, missing)

    row["num_grid_points"] = len(points)
    row["num_diverged"] = sum(1 for p in points if grid[p].status == "diverged")
    row["grid_wall_time_s"] = math.fsum(float(grid[p].wall_time_s or 0.0) for p in points)
    if best_point is None:
        row["status"] = "diverged"
    else:
        row["val_top1"] = _best_val_top1(runs.selection_file, selection, grid[best_point])
        row["point"] = best_point
    final_status = _final_columns(row, final, base, best_point)
    _test_columns(row, final, best_point, final_status)
    cell = Cell(row, grid_rows, [])
    if check_predictions and row["status"] == "ok":
        cell.checks[final.test_predictions_file] = (final.test_eval_file, row["test_top1"],
                                                    row["num_test"])
    _collect_seeds(cell, runs, base, best_point, check_predictions)
    return cell


def _read_selection(runs: MethodRuns) -> Selection:
    """The selection, checked: its task and method, no point twice, the best point a candidate."""
    path = runs.selection_file
    selection = _read(Selection, path)
    _expect(selection, path, task=runs.task, method=runs.method)
    points = [str(c.point) for c in selection.candidates or ()]
    if len(set(points)) != len(points):
        raise RunDataError(f"{path}: a grid point is listed twice: {points}")
    if selection.best_point is not None and selection.best_point not in points:
        raise RunDataError(f"{path}: best_point {selection.best_point!r} is not a candidate")
    return selection


def _read_grid(runs: MethodRuns, base: Mapping[str, Any], points: list[str],
               best_point: str | None
               ) -> tuple[dict[str, RunMetrics], list[dict[str, Any]], list[Path]]:
    """The grid runs' metrics and table rows, and the metrics files missing.

    The selection's candidate list is the authoritative set of points, so a stale directory left
    over from an older grid definition is not counted.
    """
    grid: dict[str, RunMetrics] = {}
    rows: list[dict[str, Any]] = []
    missing: list[Path] = []
    for point, run in runs.grid_runs(points):
        path = run.metrics_file
        if not path.is_file():
            missing.append(path)
            continue
        m = _read(RunMetrics, path)
        _expect(m, path, study=base["study"], task=runs.task, method=runs.method, point=point,
                phase="grid", group=base["group"])
        if m.status not in ("ok", "diverged"):
            raise RunDataError(f"{path}: status {m.status!r} is not 'ok' or 'diverged'")
        grid[point] = m
        optim = _optim_columns(m)
        rows.append(base | {
            "point": point,
            "selected": point == best_point,
            "status": m.status,
            "val_top1": _accuracy(m.val_top1, str(path)),
            "hparams_json": optim["hparams_json"],
            "optim_json": optim["optim_json"],
            "lr": optim["lr"],
            "weight_decay": optim["weight_decay"],
            "seed": _opt_int(m.seed),
            "epochs": _opt_int(m.epochs),
            "wall_time_s": _opt_float(m.wall_time_s),
        } | _cost(m))
    return grid, rows, missing


def _best_val_top1(path: Path, selection: Selection, best: RunMetrics) -> float:
    """The selection's best validation top-1, which must be its grid run's."""
    best_val = _accuracy(selection.best_val_top1, str(path))
    grid_val = best.val_top1
    if grid_val is None or best_val is None or float(grid_val) != best_val:
        raise RunDataError(f"{path}: best_val_top1 {best_val!r} disagrees with "
                           f"grid/{selection.best_point}/metrics.json val_top1 {grid_val!r}")
    return best_val


def _where(best_point: str | None) -> dict[str, Any]:
    """The point a final run's files must name (any, when nothing was selectable)."""
    return {"point": best_point} if best_point is not None else {}


def _final_columns(row: dict[str, Any], final: RunDir, base: Mapping[str, Any],
                   best_point: str | None) -> str | None:
    """Fill ``row`` from the first seed's final metrics; returns the run's status."""
    if not final.metrics_file.is_file():
        return "diverged"
    m = _read(RunMetrics, final.metrics_file)
    _expect(m, final.metrics_file, study=base["study"], task=base["task"],
            method=base["method"], phase="final", group=base["group"], **_where(best_point))
    row |= {
        "point": row["point"] or m.point,
        **_optim_columns(m),
        "trainable_params": _opt_int(m.trainable_params),
        "trainable_params_with_head": _opt_int(m.trainable_params_with_head),
        "total_params": _opt_int(m.total_params),
        "seed": _opt_int(m.seed),
        "epochs": _opt_int(m.epochs),
        "wall_time_s": _opt_float(m.wall_time_s),
        **_cost(m),
        "protocol": protocol_text(m),
        "git_commit": m.git_commit,
        "versions_json": _dumps(m.versions or {}),
        "machine_json": _dumps(m.machine) if m.machine else None,
        "config_json": _dumps(m.config or {}),
    }
    row["trainable_pct"] = _trainable_pct(row["trainable_params"],
                                          row["trainable_params_with_head"], row["total_params"])
    return m.status


def _test_columns(row: dict[str, Any], final: RunDir, best_point: str | None,
                  final_status: str | None) -> None:
    """Fill ``row``'s status, test top-1 and test size from the first seed's test_eval.json."""
    path = final.test_eval_file
    if not path.is_file():
        row["status"] = "diverged"
        return
    test = _read(TestEval, path)
    _expect(test, path, task=row["task"], method=row["method"], **_where(best_point))
    test_top1 = _accuracy(test.test_top1, str(path))
    row["num_test"] = _opt_int(test.num_test)
    if final_status == "diverged" or test.status == "diverged" or best_point is None:
        row["status"] = "diverged"
    elif test_top1 is None:
        raise RunDataError(f"{path}: status ok but test_top1 is null")
    else:
        row["status"] = "ok"
        row["test_top1"] = test_top1


def _seed_row(base: Mapping[str, Any], seed: int | None, primary: bool, run_dir: str,
              status: str, test_top1: float | None, num_test: int | None,
              cost: Mapping[str, Any]) -> dict[str, Any]:
    """A seeds.parquet row; ``cost``: wall time, protocol and :func:`_cost`'s columns."""
    return {"task": base["task"], "method": base["method"], "seed": seed, "primary": primary,
            "run_dir": run_dir, "status": status, "test_top1": test_top1, "num_test": num_test,
            "wall_time_s": _opt_float(cost["wall_time_s"]), "protocol": cost["protocol"],
            "train_images_per_s": _opt_float(cost["train_images_per_s"]),
            "peak_memory_bytes": _opt_int(cost["peak_memory_bytes"]),
            "device": None if cost["device"] is None else str(cost["device"])}


def _collect_seeds(cell: Cell, runs: MethodRuns, base: Mapping[str, Any], best_point: str | None,
                   check_predictions: bool) -> None:
    """Add the seed rows (primary first), the prediction files and the mean/std over seeds."""
    row = cell.row
    primary = runs.final()
    cell.seed_rows.append(_seed_row(base, row["seed"], True, primary.path.name, row["status"],
                                    row["test_top1"], row["num_test"], row))
    if row["status"] == "ok" and primary.test_predictions_file.is_file():
        cell.predictions.append((row["seed"], primary.test_predictions_file))
    top1 = [row["test_top1"]] if row["status"] == "ok" else []
    for run in runs.further_seeds():
        absent = [p for p in (run.metrics_file, run.test_eval_file) if not p.is_file()]
        if absent:
            if best_point is not None:
                cell.missing.extend(absent)
            continue
        value = _further_seed(cell, run, base, best_point, check_predictions)
        if value is not None:
            top1.append(value)
    if row["status"] == "ok":
        row["num_seeds"] = len(top1)
        row["test_top1_mean"] = math.fsum(top1) / len(top1)
        row["test_top1_std"] = (statistics.stdev(top1) if len(top1) >= 2 else None)
    else:
        row["num_seeds"] = 0


def _further_seed(cell: Cell, run: RunDir, base: Mapping[str, Any], best_point: str | None,
                  check_predictions: bool) -> float | None:
    """Read one further seed's final run into ``cell``; returns its test top-1 (None: diverged)."""
    metrics = _read(RunMetrics, run.metrics_file)
    _expect(metrics, run.metrics_file, study=base["study"], task=base["task"],
            method=base["method"], phase="final", group=base["group"], **_where(best_point))
    if metrics.seed is not None and int(metrics.seed) != run.seed:
        raise RunDataError(f"{run.metrics_file}: seed={metrics.seed!r}, expected {run.seed} "
                           f"(the directory is {run.path.name})")
    test = _read(TestEval, run.test_eval_file)
    _expect(test, run.test_eval_file, task=base["task"], method=base["method"],
            **_where(best_point))
    value = _accuracy(test.test_top1, str(run.test_eval_file))
    ok = metrics.status != "diverged" and test.status != "diverged" and value is not None
    num_test = _opt_int(test.num_test)
    preds = run.test_predictions_file
    if ok and preds.is_file():
        cell.predictions.append((run.seed, preds))
        if check_predictions:
            cell.checks[preds] = (run.test_eval_file, value, num_test)
    cell.seed_rows.append(_seed_row(base, run.seed, False, run.path.name,
                                    "ok" if ok else "diverged", value if ok else None, num_test,
                                    {"wall_time_s": metrics.wall_time_s,
                                     "protocol": protocol_text(metrics), **_cost(metrics)}))
    return value if ok else None


def protocol_text(metrics: Any) -> str | None:
    """The run's protocol, marked when it was a rehearsal (train.rehearsal): such a run's
    accuracy is not a result, and the report's provenance must say so."""
    if not getattr(metrics, "rehearsal", None):
        return metrics.protocol
    cut = ", ".join(f"{k} {v}" for k, v in sorted(metrics.rehearsal.items()))
    return f"{metrics.protocol} REHEARSAL ({cut}): not a result"


def _trainable_pct(trainable: int | None, with_head: int | None, total: int | None
                   ) -> float | None:
    """Trainable params as % of the model without its classifier head (the paper's convention)."""
    if trainable is None or with_head is None or total is None:
        return None
    backbone = total - (with_head - trainable)
    return 100.0 * trainable / backbone if backbone > 0 else None

"""Accuracy vs cost: device-hours per task, peak memory and training throughput per method; and
accuracy vs trainable parameters (its own section of the page), each with its Pareto front.

Hours per task = the grid search's wall time plus every seed's final run, averaged over the tasks
that have all of them. The unit follows the runs' recorded ``device``: GPU-hours when every run
used CUDA, CPU-hours when every run used the CPU; runs made before the device was recorded are
counted as plain hours and said to be so. Peak memory is the largest of the method's runs (CUDA
``max_memory_allocated`` on GPU, peak RSS on CPU); throughput the mean over its final runs.
Fields a run did not record show "–".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from markupsafe import Markup

from vpeft.report import svg
from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.numbers import fmt_acc
from vpeft.report.view import Cell, Row, fmt_params, exact_text, pareto_front

__all__ = ["CostView", "cost_view", "device_unit", "params_scatter"]


def device_unit(devices: Iterable[str | None]) -> str:
    """``GPU-h``, ``CPU-h``, or ``h`` when the runs did not record a device or used several kinds
    (:func:`unit_note` says which)."""
    kinds = {None if d is None else ("GPU" if str(d).startswith("cuda") else
                                      "CPU" if str(d).startswith("cpu") else str(d))
             for d in devices}
    if not kinds or None in kinds or len(kinds) > 1:
        return "h"
    kind = kinds.pop()
    return f"{kind}-h" if kind in ("GPU", "CPU") else "h"


def unit_note(devices: Iterable[str | None]) -> str:
    """Why hours are plain hours ("" when they are GPU- or CPU-hours)."""
    devices = list(devices)
    if device_unit(devices) != "h":
        return ""
    if not devices or None in devices:
        return "hours of wall time: some runs did not record their device"
    return "hours of wall time on mixed devices: " + ", ".join(sorted({str(d) for d in devices}))


def _fmt_hours(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value >= 0.01 else f"{value:.2g}"


def _fmt_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass
class CostView:
    rows: list[Row]
    chart: Markup | None
    unit: str
    note: str


def _method_cost(method: str, tasks: list[str], results: Mapping[tuple[str, str], dict],
                 seeds: list[dict[str, Any]], grid: list[dict[str, Any]]) -> dict[str, Any]:
    per_task, devices, peaks, speeds = [], [], [], []
    for t in tasks:
        r = results.get((t, method))
        finals = [s for s in seeds if s["task"] == t and s["method"] == method]
        points = [g for g in grid if g["task"] == t and g["method"] == method]
        devices += [x["device"] for x in finals + points]
        peaks += [x["peak_memory_bytes"] for x in finals + points
                  if x["peak_memory_bytes"] is not None]
        speeds += [x["train_images_per_s"] for x in finals if x["train_images_per_s"] is not None]
        walls = [s["wall_time_s"] for s in finals]
        if r is None or r["grid_wall_time_s"] is None or not finals or None in walls:
            continue
        per_task.append((r["grid_wall_time_s"], math.fsum(walls)))
    complete = len(per_task) == len(tasks)
    grid_h = _mean([g / 3600 for g, _ in per_task]) if complete else None
    final_h = _mean([f / 3600 for _, f in per_task]) if complete else None
    return {"grid_h": grid_h, "final_h": final_h,
            "total_h": None if grid_h is None or final_h is None else grid_h + final_h,
            "devices": devices, "peak": max(peaks) if peaks else None,
            "speed": _mean(speeds)}


def cost_view(results: StudyResults, study: Mapping) -> CostView | None:
    """The cost table and the accuracy-vs-hours chart (None without seed rows)."""
    if results.seeds is None or results.seeds.num_rows == 0:
        return None
    tasks = [t for t, _ in study_tasks(study)]
    by_key = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    seeds, grid = results.seeds.to_pylist(), results.grid.to_pylist()
    costs = {m: _method_cost(m, tasks, by_key, seeds, grid) for m in study_methods(study)}
    devices = [d for c in costs.values() for d in c["devices"]]
    unit, note = device_unit(devices), unit_note(devices)
    rows, points = [], {}
    for m, c in costs.items():
        s = summary.get(m, {})
        acc = s.get("mean")
        if acc is None:   # studies without a mean over tasks: the mean over the tasks it has
            acc = _mean([r["test_top1_mean"] for (t, mm), r in by_key.items()
                         if mm == m and r.get("test_top1_mean") is not None]) \
                if all(by_key.get((t, m), {}).get("test_top1_mean") is not None
                       for t in tasks) else None
        if acc is not None and c["total_h"] is not None:
            points[m] = (c["total_h"], acc)

        def cell(text: str, value: Any, column: str) -> Cell:
            return Cell(text, exact_text(value), column, None, m, ["num"])

        rows.append(Row(m, [
            cell(fmt_acc(acc), acc, "mean"),
            cell(_fmt_hours(c["grid_h"]), c["grid_h"], "grid_hours_per_task"),
            cell(_fmt_hours(c["final_h"]), c["final_h"], "final_hours_per_task"),
            cell(_fmt_hours(c["total_h"]), c["total_h"], "hours_per_task"),
            cell(_fmt_bytes(c["peak"]), c["peak"], "peak_memory_bytes"),
            cell("–" if c["speed"] is None else f"{c['speed']:.1f}", c["speed"],
                 "train_images_per_s"),
            cell(fmt_params(s.get("trainable_params")), s.get("trainable_params"),
                 "trainable_params"),
        ], method=m))
    front = pareto_front(points)
    chart = svg.scatter([svg.ScatterPoint(m, h, a, m in front) for m, (h, a) in points.items()],
                        lambda h: f"{_fmt_hours(h)} {unit}", fmt_acc,
                        x_label=f"{unit} per task: grid search + final runs (log scale)",
                        x_what=f"{unit} per task", kind="costplot") if points else None
    return CostView(rows, chart, unit, note)


def _params_points(results: StudyResults, study: Mapping) -> list[svg.ScatterPoint]:
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    data = {m: (float(summary[m]["trainable_params"]), float(summary[m]["mean"]))
            for m in study_methods(study)
            if m in summary and summary[m]["mean"] is not None
            and summary[m]["trainable_params"] is not None}
    front = pareto_front(data)
    return [svg.ScatterPoint(m, p, a, m in front) for m, (p, a) in data.items()]


def params_scatter(results: StudyResults, study: Mapping) -> Markup | None:
    """Each method's mean test top-1 vs its trainable parameters, the Pareto front highlighted
    (methods without a mean or a parameter count are left out)."""
    return svg.scatter(_params_points(results, study), fmt_params, fmt_acc)

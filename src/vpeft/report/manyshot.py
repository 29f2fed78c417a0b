"""The many-shot section of the report: test top-1 against training-set size, one line per method.

Geometry is computed here (numbers only); the template ``_manyshot.html.j2`` writes the SVG and
the table through the report's autoescaping jinja2 environment, so names cannot inject markup.
Every mark and table cell carries the raw value it shows (``data-value``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from vpeft.report.numbers import fmt_acc
from vpeft.report.svg import PALETTE, spread_labels

__all__ = ["ManyShotCurve", "manyshot_curves"]

LEFT, RIGHT, TOP, BOTTOM, PLOT_W, PLOT_H = 56, 130, 14, 44, 440, 260


@dataclass(frozen=True)
class Column:
    task: str
    subset: str          # "500", "full", ...
    train_images: int    # what the final run trained on: the x value


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    value: str | None    # repr of the float, exactly the number in results.parquet
    text: str


@dataclass(frozen=True)
class Mark:
    task: str
    method: str
    train_images: int
    value: str
    text: str
    x: str
    y: str


@dataclass(frozen=True)
class Line:
    method: str
    colour: str
    points: str          # polyline "x,y x,y"
    marks: list[Mark]
    label_y: str


@dataclass(frozen=True)
class ManyShotCurve:
    dataset: str
    columns: list[Column]
    rows: list[tuple[str, list[Cell]]]
    lines: list[Line]
    x_ticks: list[tuple[str, str]]
    y_ticks: list[tuple[str, str]]
    width: int
    height: int
    plot: dict[str, float]


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def manyshot_curves(results: Any, study: Mapping[str, Any]) -> list[ManyShotCurve]:
    """One curve per many-shot dataset (empty when the study has no many-shot metadata)."""
    meta: Mapping[str, Mapping[str, Any]] = study.get("manyshot") or {}
    if not meta:
        return []
    methods = list(study.get("methods") or [])
    acc: dict[tuple[str, str], float] = {}
    for row in results.results.to_pylist():
        v = row.get("test_top1")
        if row.get("status") == "ok" and v is not None and math.isfinite(v):
            acc[(row["task"], row["method"])] = float(v)
    datasets: dict[str, list[Column]] = {}
    for task, m in meta.items():
        datasets.setdefault(str(m["dataset"]), []).append(
            Column(task, str(m["subset"]), int(m["train_images"])))
    curves = []
    for dataset, columns in datasets.items():
        columns.sort(key=lambda c: (c.train_images, c.task))
        curves.append(_curve(dataset, columns, methods, acc))
    return curves


def _curve(dataset: str, columns: Sequence[Column], methods: Sequence[str],
           acc: Mapping[tuple[str, str], float]) -> ManyShotCurve:
    xs = [c.train_images for c in columns]
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    values = [acc[(c.task, m)] for c in columns for m in methods if (c.task, m) in acc]
    y_lo = max(0.0, math.floor(min(values, default=0.0) / 10) * 10)
    y_hi = min(100.0, math.ceil(max(values, default=100.0) / 10) * 10)
    if y_hi <= y_lo:
        y_lo, y_hi = max(0.0, y_lo - 10), min(100.0, y_hi + 10) if y_hi < 100 else 100.0
        if y_hi <= y_lo:
            y_lo = y_hi - 10

    def sx(n: int) -> float:
        return LEFT + PLOT_W * (math.log10(n) - lo) / (hi - lo)

    def sy(v: float) -> float:
        return TOP + PLOT_H * (1 - (v - y_lo) / (y_hi - y_lo))

    rows, lines = [], []
    for i, method in enumerate(methods):
        cells, marks = [], []
        for c in columns:
            v = acc.get((c.task, method))
            cells.append(Cell(c.task, method, None if v is None else repr(v),
                              "–" if v is None else fmt_acc(v)))
            if v is not None:
                marks.append(Mark(c.task, method, c.train_images, repr(v), fmt_acc(v),
                                  f"{sx(c.train_images):.1f}", f"{sy(v):.1f}"))
        rows.append((method, cells))
        if marks:
            lines.append(Line(method, PALETTE[i % len(PALETTE)],
                              " ".join(f"{m.x},{m.y}" for m in marks), marks, marks[-1].y))
    lines = [replace(line, label_y=f"{y:.1f}")
             for line, y in zip(lines, spread_labels([float(line.label_y) for line in lines]))]
    step = 10 if y_hi - y_lo > 30 else 5
    y_ticks = [(f"{sy(v):.1f}", f"{v:g}") for v in _range(y_lo, y_hi, step)]
    x_ticks = [(f"{sx(n):.1f}", _count(n)) for n in sorted(set(xs))]
    return ManyShotCurve(dataset, list(columns), rows, lines, x_ticks, y_ticks,
                         LEFT + PLOT_W + RIGHT, TOP + PLOT_H + BOTTOM,
                         {"left": LEFT, "right": LEFT + PLOT_W, "top": TOP, "bottom": TOP + PLOT_H,
                          "mid_x": LEFT + PLOT_W / 2, "mid_y": TOP + PLOT_H / 2})


def _range(lo: float, hi: float, step: float) -> list[float]:
    out, v = [], lo
    while v <= hi + 1e-9:
        out.append(v)
        v += step
    return out

"""The robustness section of the report: ID vs OOD accuracy of every method along its WiSE-FT
curve (α = 0 is the zero-shot model, α = 1 the fine-tuned one), and a table per shift.

The numbers come from each method's ``wise/wise.parquet`` (``vpeft.robustness.pipeline.run_wise``),
collected by :func:`collect_wise` into ``results.analysis["wise"]``. Geometry is computed here;
the template ``_robustness.html.j2`` writes the SVG and the tables through the report's
autoescaping jinja2 environment. Every mark and cell carries the raw value (``data-value``).
OOD accuracy is the plain mean over the shift sets. No α is selected: choosing one by test
accuracy would be selection on test data; the whole curve is shown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from markupsafe import Markup

from vpeft import layout
from vpeft.report.numbers import fmt_acc
from vpeft.robustness.tables import WISE_RUN_SCHEMA
from vpeft.report.svg import DASHES, MARKERS, PALETTE, esc, marker, place_end_labels, spread_labels

__all__ = ["WISE_SCHEMA", "RobustnessView", "collect_wise", "robustness_view"]

# The study's WiSE-FT table: every run's curve (WISE_RUN_SCHEMA) with its task and method.
WISE_SCHEMA = pa.schema([("task", pa.string()), ("method", pa.string()), *WISE_RUN_SCHEMA])
ID_SET = layout.WISE_ID_SET
LEFT, RIGHT, TOP, BOTTOM, PLOT_W, PLOT_H = 56, 120, 14, 44, 420, 300


def collect_wise(results: Any, runs_dir: Path, study: Mapping[str, Any]) -> pa.Table | None:
    """Concatenate every ``<task>/<method>/wise/wise.parquet`` of the study (None if there is none)
    and keep it as ``results.analysis["wise"]``."""

    tables = []
    for task in [str(t["name"]) for t in study.get("tasks") or []]:
        for method in study.get("methods") or []:
            path = layout.wise_dir_in(runs_dir, task, method) / layout.WISE_TABLE
            if path.is_file():
                t = pq.read_table(path)
                n = t.num_rows
                t = t.add_column(0, "method", pa.array([method] * n, pa.string()))
                t = t.add_column(0, "task", pa.array([task] * n, pa.string()))
                tables.append(t.select(WISE_SCHEMA.names).cast(WISE_SCHEMA))
    if not tables:
        return None
    table = pa.concat_tables(tables)
    results.analysis["wise"] = table
    return table


@dataclass(frozen=True)
class Mark:
    method: str
    alpha: float
    id_value: str
    ood_value: str
    x: str
    y: str
    text: str


@dataclass(frozen=True)
class Line:
    method: str
    colour: str
    points: str
    marks: list[Mark]
    label_y: str
    dash: str = ""          # stroke-dasharray ("" = solid)
    marker: str = "circle"  # svg.MARKERS


@dataclass(frozen=True)
class Cell:
    method: str
    column: str
    value: str | None
    text: str


@dataclass(frozen=True)
class RobustnessView:
    task: str
    shifts: list[str]
    lines: list[Line]
    zero_shot: Mark | None
    zero_shot_consistent: bool          # every method's α = 0 gave the same numbers
    headers: list[str]
    rows: list[tuple[str, list[Cell]]]  # per method: α = 1 on ID, each shift, OOD mean; α = 0.5
    curve_rows: list[tuple[str, float, list[Cell]]]  # every (method, α): ID, shifts, OOD
    x_ticks: list[tuple[str, str]]
    y_ticks: list[tuple[str, str]]
    width: int
    height: int
    plot: dict[str, float]
    chart: Markup = Markup("")  # the whole SVG (curves, end labels, zero-shot star)


def _span(values: Sequence[float]) -> tuple[float, float]:
    """An axis range in percent covering ``values``, on multiples of 5, at least 10 wide."""
    lo = max(0.0, math.floor(min(values, default=0.0) / 5) * 5)
    hi = min(100.0, math.ceil(max(values, default=100.0) / 5) * 5)
    if hi - lo < 10:
        hi = min(100.0, lo + 10)
        lo = hi - 10
    return lo, hi


def _ticks(lo: float, hi: float) -> list[int]:
    step = 10 if hi - lo > 30 else 5
    return list(range(int(lo), int(hi) + 1, step))


def _cell(method: str, column: str, value: float | None) -> Cell:
    if value is None or not math.isfinite(value):
        return Cell(method, column, None, "–")
    return Cell(method, column, repr(float(value)), fmt_acc(value))


def robustness_view(results: Any, study: Mapping[str, Any]) -> list[RobustnessView]:
    """One view per task that has WiSE-FT results (empty for other studies)."""
    table = results.analysis.get("wise") if getattr(results, "analysis", None) else None
    if table is None or table.num_rows == 0:
        return []
    rows = table.to_pylist()
    views = []
    for task in dict.fromkeys(r["task"] for r in rows):
        views.append(_task_view(task, [r for r in rows if r["task"] == task],
                                list(study.get("methods") or [])))
    return views


def _task_view(task: str, rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> RobustnessView:
    shifts = list(dict.fromkeys(r["eval_set"] for r in rows if r["eval_set"] != ID_SET))
    acc: dict[tuple[str, float, str], float] = {(r["method"], r["alpha"], r["eval_set"]): r["top1"]
                                                for r in rows}
    methods = [m for m in methods if any(k[0] == m for k in acc)]
    alphas = sorted({r["alpha"] for r in rows})

    def ood(m: str, a: float) -> float | None:
        vals = [acc.get((m, a, s)) for s in shifts]
        return None if not shifts or any(v is None for v in vals) else sum(vals) / len(vals)

    points = {(m, a): (acc.get((m, a, ID_SET)), ood(m, a)) for m in methods for a in alphas}
    # Each axis spans its own values (ID and OOD accuracies can sit far apart).
    (x_lo, x_hi), (y_lo, y_hi) = (_span([p[k] for p in points.values() if p[k] is not None])
                                  for k in (0, 1))

    def sx(v: float) -> float:
        return LEFT + PLOT_W * (v - x_lo) / (x_hi - x_lo)

    def sy(v: float) -> float:
        return TOP + PLOT_H * (1 - (v - y_lo) / (y_hi - y_lo))

    def mark(m: str, a: float) -> Mark | None:
        i, o = points[(m, a)]
        if i is None or o is None:
            return None
        return Mark(m, a, repr(float(i)), repr(float(o)), f"{sx(i):.1f}", f"{sy(o):.1f}",
                    f"{m}, α={a:g}: ID {fmt_acc(i)} %, OOD {fmt_acc(o)} %")

    lines = []
    for k, m in enumerate(methods):
        marks = [mk for a in alphas if (mk := mark(m, a)) is not None]
        if marks:
            lines.append(Line(m, PALETTE[k % len(PALETTE)], " ".join(f"{p.x},{p.y}" for p in marks),
                              marks, marks[-1].y, DASHES[k % len(DASHES)],
                              MARKERS[k % len(MARKERS)]))
    lines = [replace(line, label_y=f"{y:.1f}")
             for line, y in zip(lines, spread_labels([float(line.label_y) for line in lines]))]
    zero = [points[(m, 0.0)] for m in methods if (m, 0.0) in points and None not in points[(m, 0.0)]]
    zero_shot = next((mark(m, 0.0) for m in methods if (m, 0.0) in points
                      and None not in points[(m, 0.0)]), None)
    consistent = all(z == zero[0] for z in zero)

    headers = ["ID (α=1)", *[f"{s} (α=1)" for s in shifts], "OOD mean (α=1)", "ID (α=0.5)",
               "OOD mean (α=0.5)"]
    table_rows = []
    if zero_shot is not None:
        m0 = zero_shot.method
        table_rows.append(("zero-shot", [
            _cell("zero-shot", "id", acc.get((m0, 0.0, ID_SET))),
            *[_cell("zero-shot", s, acc.get((m0, 0.0, s))) for s in shifts],
            _cell("zero-shot", "ood_mean", ood(m0, 0.0)), Cell("zero-shot", "id_half", None, ""),
            Cell("zero-shot", "ood_half", None, "")]))
    for m in methods:
        table_rows.append((m, [
            _cell(m, "id", acc.get((m, 1.0, ID_SET))),
            *[_cell(m, s, acc.get((m, 1.0, s))) for s in shifts],
            _cell(m, "ood_mean", ood(m, 1.0)),
            _cell(m, "id_half", acc.get((m, 0.5, ID_SET))), _cell(m, "ood_half", ood(m, 0.5))]))
    curve_rows = [(m, a, [_cell(m, ID_SET, acc.get((m, a, ID_SET))),
                          *[_cell(m, s, acc.get((m, a, s))) for s in shifts],
                          _cell(m, "ood_mean", ood(m, a))]) for m in methods for a in alphas]
    view = RobustnessView(
        task, shifts, lines, zero_shot, consistent, headers, table_rows, curve_rows,
        [(f"{sx(v):.1f}", f"{v:g}") for v in _ticks(x_lo, x_hi)],
        [(f"{sy(v):.1f}", f"{v:g}") for v in _ticks(y_lo, y_hi)],
        LEFT + PLOT_W + RIGHT, TOP + PLOT_H + BOTTOM,
        {"left": LEFT, "right": LEFT + PLOT_W, "top": TOP, "bottom": TOP + PLOT_H,
         "mid_x": LEFT + PLOT_W / 2, "mid_y": TOP + PLOT_H / 2})
    return replace(view, chart=wise_chart(view))


def wise_chart(v: RobustnessView) -> Markup:
    """The ID-vs-OOD SVG: each method's WiSE-FT path from the zero-shot star (α = 0) to its
    fine-tuned model (α = 1, the large marker), drawn in its own colour, dash pattern and marker
    shape, and labelled beside its own α = 1 end (a leader line joins a label pushed off it)."""
    p = v.plot
    parts = [f'<svg class="chart robustness-curve" width="{v.width}" height="{v.height}" '
             f'viewBox="0 0 {v.width} {v.height}" role="img" data-task="{esc(v.task)}" '
             f'aria-label="{esc(f"ID vs OOD top-1 with WiSE-FT, {v.task}")}">']
    for y, label in v.y_ticks:
        parts.append(f'<line x1="{p["left"]}" y1="{y}" x2="{p["right"]}" y2="{y}" class="grid"/>'
                     f'<text x="{p["left"] - 6}" y="{y}" dy="4" class="ytick">{esc(label)}</text>')
    for x, label in v.x_ticks:
        parts.append(f'<line x1="{x}" y1="{p["top"]}" x2="{x}" y2="{p["bottom"]}" class="grid"/>'
                     f'<text x="{x}" y="{p["bottom"] + 16}" class="tick">{esc(label)}</text>')
    parts.append(f'<text x="{p["mid_x"]}" y="{v.height - 6}" class="tick">ID top-1 (%)</text>'
                 f'<text x="14" y="{p["mid_y"]}" class="tick" transform="rotate(-90 14 '
                 f'{p["mid_y"]})">OOD mean top-1 (%)</text>')
    ends = [(float(line.marks[-1].x), float(line.marks[-1].y)) for line in v.lines]
    labels = place_end_labels(ends, [line.method for line in v.lines])
    for line, (ex, ey), (lx, ly) in zip(v.lines, ends, labels):
        dash = f' stroke-dasharray="{esc(line.dash)}"' if line.dash else ""
        parts.append(f'<g class="series" data-method="{esc(line.method)}" '
                     f'data-dash="{esc(line.dash)}" data-marker="{esc(line.marker)}">'
                     f'<polyline points="{esc(line.points)}" fill="none" '
                     f'stroke="{esc(line.colour)}" stroke-width="1.6"{dash}/>')
        for m in line.marks:
            end = m.alpha == 1.0
            attrs = (f'fill="{esc(line.colour) if end else "#ffffff"}" stroke="{esc(line.colour)}" '
                     f'stroke-width="1.3" class="mark" data-method="{esc(m.method)}" '
                     f'data-alpha="{m.alpha}" data-id="{esc(m.id_value)}" '
                     f'data-ood="{esc(m.ood_value)}">')
            parts.append(marker(line.marker, float(m.x), float(m.y), 5.0 if end else 3.0, attrs)
                         + f'<title>{esc(m.text)}</title></{_tag(line.marker)}>')
        if abs(ly - 4 - ey) > 1:  # pushed off its end by another label: a leader line back
            parts.append(f'<line x1="{ex + 4:.1f}" y1="{ey:.1f}" x2="{lx - 1:.1f}" '
                         f'y2="{ly - 4:.1f}" stroke="{esc(line.colour)}" stroke-width="0.8" '
                         f'class="leader"/>')
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{esc(line.colour)}" class="end-label" '
                     f'data-method="{esc(line.method)}" data-end-x="{ex:.1f}" '
                     f'data-end-y="{ey:.1f}">{esc(line.method)}</text></g>')
    if v.zero_shot is not None:
        z = v.zero_shot
        parts.append(f'<g class="zero-shot" data-id="{esc(z.id_value)}" data-ood="{esc(z.ood_value)}">'
                     f'<text x="{z.x}" y="{z.y}" dy="5" text-anchor="middle" font-size="16">★</text>'
                     f'<text x="{z.x}" y="{z.y}" dx="9" dy="-6" class="tick">zero-shot (α = 0)</text>'
                     f'</g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _tag(shape: str) -> str:
    """The SVG element name svg.marker writes for ``shape`` (to close it)."""
    return {"circle": "circle", "square": "rect"}.get(shape, "polygon")

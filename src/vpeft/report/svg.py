"""Inline SVG charts for the report, built by hand.

Every text node and attribute value goes through :func:`esc` (html.escape with quotes), so a
method or task name can never inject markup. No ``xmlns`` attribute: inline SVG in HTML does not
need it, and the page must not contain any URL. Each mark carries ``data-*`` attributes with the
raw value it draws, so tests (and readers of the source) can check it against the tables.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from markupsafe import Markup


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _raw(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def _heat_colour(value: float) -> str:
    """White (0) to dark red (1), linear in each RGB channel."""
    v = min(max(value, 0.0), 1.0)
    lo, hi = (255, 255, 255), (165, 15, 21)
    r, g, b = (round(a + (z - a) * v) for a, z in zip(lo, hi))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(task: str, methods: Sequence[str], values: Mapping[tuple[str, str], float | None],
            *, label: str = "error overlap (Jaccard)") -> Markup:
    """A methods x methods matrix; cell colour and text = ``values[(row, column)]`` in 0..1."""
    n = len(methods)
    cell, label_w = 44, 150
    top = 130   # room for the rotated column labels
    width, height = label_w + n * cell + 10, top + n * cell + 10
    parts = [f'<svg class="chart heatmap" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" data-task="{esc(task)}" '
             f'aria-label="{esc(f"{label}, task {task}")}">']
    for j, m in enumerate(methods):
        x, y = label_w + j * cell + cell / 2, top - 6
        parts.append(f'<text x="{x:.1f}" y="{y}" class="collabel" '
                     f'transform="rotate(-60 {x:.1f} {y})">{esc(m)}</text>')
    for i, a in enumerate(methods):
        y = top + i * cell
        parts.append(f'<text x="{label_w - 6}" y="{y + cell / 2 + 4:.1f}" class="label">'
                     f'{esc(a)}</text>')
        for j, b in enumerate(methods):
            x = label_w + j * cell
            v = values.get((a, b))
            ok = _finite(v)
            fill = _heat_colour(float(v)) if ok else "#eaeef2"  # type: ignore[arg-type]
            text = f"{float(v):.2f}" if ok else "–"  # type: ignore[arg-type]
            dark = ok and float(v) > 0.55  # type: ignore[arg-type]
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" '
                f'class="heat" data-task="{esc(task)}" data-method-a="{esc(a)}" '
                f'data-method-b="{esc(b)}" data-value="{esc(_raw(v) if ok else "")}">'
                f'<title>{esc(a)} vs {esc(b)}: {esc(label)} {esc(text)}</title></rect>')
            parts.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                         f'class="cellvalue{" dark" if dark else ""}">{esc(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class ScatterPoint:
    method: str
    params: float        # trainable parameters (may be 0: plotted at the axis floor)
    accuracy: float
    pareto: bool


def scatter(points: Sequence[ScatterPoint], fmt_params: Callable[[float], str],
            fmt_acc: Callable[[float], str]) -> Markup | None:
    """Accuracy (y) vs trainable parameters (x, log10); Pareto-front points highlighted."""
    if not points:
        return None
    positive = [p.params for p in points if p.params > 0]
    lo_exp = math.floor(math.log10(min(positive))) if positive else 0
    hi_exp = math.ceil(math.log10(max(positive))) if positive else 1
    floor_exp = lo_exp - 1 if any(p.params <= 0 for p in points) else lo_exp
    if hi_exp <= floor_exp:
        hi_exp = floor_exp + 1
    accs = [p.accuracy for p in points]
    y_lo = max(0.0, math.floor(min(accs) / 5) * 5 - 5)
    y_hi = min(100.0, math.ceil(max(accs) / 5) * 5 + 5)
    if y_hi <= y_lo:
        y_hi = y_lo + 5
    left, right, top, bottom, plot_w, plot_h = 60, 170, 16, 44, 480, 300
    width, height = left + plot_w + right, top + plot_h + bottom

    def sx(params: float) -> float:
        e = math.log10(params) if params > 0 else floor_exp
        return left + plot_w * (e - floor_exp) / (hi_exp - floor_exp)

    def sy(acc: float) -> float:
        return top + plot_h * (1 - (acc - y_lo) / (y_hi - y_lo))

    parts = [f'<svg class="chart scatter" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{esc("Mean test top-1 vs trainable parameters")}">']
    for e in range(floor_exp, hi_exp + 1):
        x = left + plot_w * (e - floor_exp) / (hi_exp - floor_exp)
        tick = "0" if e == floor_exp and floor_exp != lo_exp else f"1e{e}"
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                     f'class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="tick">{esc(tick)}</text>')
    step = 5 if y_hi - y_lo <= 40 else 10
    y = y_lo
    while y <= y_hi + 1e-9:
        py = sy(y)
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{left + plot_w}" y2="{py:.1f}" '
                     f'class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{py + 4:.1f}" class="ytick">{y:g}</text>')
        y += step
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" class="tick">'
                 f'{esc("trainable parameters, excluding the head (log scale)")}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2}" class="tick" '
                 f'transform="rotate(-90 14 {top + plot_h / 2})">{esc("mean test top-1 (%)")}'
                 f'</text>')
    front = sorted((p for p in points if p.pareto), key=lambda p: (p.params, p.accuracy))
    if len(front) > 1:
        path = " ".join(f"{sx(p.params):.1f},{sy(p.accuracy):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" class="front"/>')
    for p in points:
        x, yy = sx(p.params), sy(p.accuracy)
        cls = "point pareto" if p.pareto else "point"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{yy:.1f}" r="{6 if p.pareto else 4.5}" class="{cls}" '
            f'data-method="{esc(p.method)}" data-params="{esc(repr(float(p.params)))}" '
            f'data-value="{esc(repr(float(p.accuracy)))}" '
            f'data-pareto="{"true" if p.pareto else "false"}">'
            f'<title>{esc(p.method)}: {esc(fmt_acc(p.accuracy))} % with '
            f'{esc(fmt_params(p.params))} trainable parameters'
            f'{" (Pareto front)" if p.pareto else ""}</title></circle>')
        parts.append(f'<text x="{x + 8:.1f}" y="{yy + 4:.1f}" '
                     f'class="plabel{" pareto" if p.pareto else ""}">{esc(p.method)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

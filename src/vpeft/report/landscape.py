"""Tuning landscapes: each method's val200 top-1 over its hyper-parameter grid, as inline SVG.

The swept axes of one task x method are the settings (method hyper-parameters and optimiser
settings of the grid rows) that take more than one value. One axis gives a line over its values
(ordered, equally spaced); two or more give a matrix whose columns are the axis with the most
values and whose rows are the combinations of the others; a single grid point gives a 1 x 1
matrix. A diverged point is drawn as such (a red cross, a grey "div." cell), never as 0. The
selected point is outlined. Every mark carries the grid row's point name, status and raw
``val_top1`` (``data-*``) so the page can be checked against ``grid.parquet``.

With a ``reference`` (the paper's val200 at the same grid points, vpeft.report.reproduction) the
same chart carries the paper's points too: a dashed line of open diamonds, or a second line in
each matrix cell with the difference (this run − paper) and a dashed box on the paper's selected
point; a shift of every point is then told at a glance from a flip of the selected one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from markupsafe import Markup

from vpeft.report import numbers
from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.svg import esc, mono_width

__all__ = ["Landscape", "landscape", "landscape_inputs", "swept_axes", "task_landscapes"]

_OPTIM_FIRST = ("lr", "weight_decay")
# Sequential colour scale (light to dark), interpolated linearly between the stops.
_STOPS = ((247, 252, 240), (123, 204, 196), (8, 64, 129))


@dataclass
class _Point:
    point: str
    settings: dict[str, Any]
    status: str
    value: float | None
    selected: bool


@dataclass
class Landscape:
    """One task x method landscape: its swept axes and the SVG."""

    task: str
    method: str
    axes: list[str]
    svg: Markup


def _settings(row: Mapping[str, Any]) -> dict[str, Any]:
    hp = json.loads(row["hparams_json"]) if row.get("hparams_json") else {}
    optim = json.loads(row["optim_json"]) if row.get("optim_json") else {}
    if not optim:   # tables built without optim_json still carry lr / weight_decay
        optim = {k: row.get(k) for k in _OPTIM_FIRST if row.get(k) is not None}
    out = dict(hp)
    for k, v in optim.items():
        out[f"optim.{k}" if k in hp else k] = v
    return out


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _order(value: Any) -> tuple:
    """Numbers by value, then booleans, then everything else by its JSON text."""
    if isinstance(value, bool):
        return (1, int(value), "")
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (2, 0.0, _key(value))


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (str, int, bool)) or value is None:
        return str(value)
    return _key(value)


def swept_axes(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Settings that take more than one value: method hyper-parameters first (by name), then
    ``lr``, ``weight_decay`` and other optimiser settings."""
    names = list(dict.fromkeys(k for s in settings for k in s))
    swept = [k for k in names if len({_key(s.get(k)) for s in settings}) > 1]
    optim = [k for k in _OPTIM_FIRST if k in swept]
    rest = sorted(k for k in swept if k not in _OPTIM_FIRST)
    return rest + optim


def _colour(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_STOPS) - 1)
    i = min(int(t), len(_STOPS) - 2)
    f = t - i
    rgb = (round(a + (b - a) * f) for a, b in zip(_STOPS[i], _STOPS[i + 1]))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _mark_attrs(task: str, method: str, p: _Point) -> str:
    raw = "" if p.value is None else repr(float(p.value))
    return (f'data-task="{esc(task)}" data-method="{esc(method)}" data-point="{esc(p.point)}" '
            f'data-status="{esc(p.status)}" data-selected="{"true" if p.selected else "false"}" '
            f'data-value="{esc(raw)}"')


# A point's paper value and whether the paper selected it (None: no paper value there).
Reference = Mapping[str, tuple[float | None, bool]]


def _title(p: _Point, axes: Sequence[str], fmt_acc, reference: Reference | None = None) -> str:
    where = ", ".join(f"{a}={_label(p.settings.get(a))}" for a in axes) or p.point
    what = "diverged" if p.status == "diverged" else f"val200 top-1 {fmt_acc(p.value)} %"
    text = f"{where}: {what}{' (selected)' if p.selected else ''}"
    if reference is not None and p.point in reference:
        value, chosen = reference[p.point]
        text += (f"; paper {'–' if value is None else fmt_acc(value) + ' %'}"
                 f"{' (paper selected)' if chosen else ''}")
    return text


def _paper_marks(task: str, method: str, points: list[_Point], reference: Reference,
                 x_of, y_of) -> list[str]:
    """The paper's values on a line chart: a dashed line of open diamonds (the paper's selected
    one filled orange)."""
    placed = sorted(((x_of(p), reference[p.point]) for p in points
                     if reference.get(p.point, (None, False))[0] is not None),
                    key=lambda t: t[0])
    parts = []
    if len(placed) > 1:
        path = " ".join(f"{x:.1f},{y_of(v):.1f}" for x, (v, _) in placed)
        parts.append(f'<polyline points="{path}" class="pline"/>')
    for x, (v, chosen) in placed:
        y = y_of(v)
        parts.append(f'<path d="M{x:.1f},{y - 6:.1f} l6,6 l-6,6 l-6,-6 z" '
                     f'class="paperpoint{" selected" if chosen else ""}" data-task="{esc(task)}" '
                     f'data-method="{esc(method)}" data-value="{esc(repr(float(v)))}"/>')
    return parts




def _line(task: str, method: str, axis: str, points: list[_Point], fmt_acc,
          reference: Reference | None = None) -> Markup:
    values = sorted({_key(p.settings.get(axis)): p.settings.get(axis) for p in points}.values(),
                    key=_order)
    pos = {_key(v): i for i, v in enumerate(values)}
    finite = [p.value for p in points if p.value is not None]
    if reference is not None:   # one y scale for both, so a shift reads as a gap
        finite += [v for p in points if (v := reference.get(p.point, (None, False))[0]) is not None]
    lo = math.floor(min(finite) / 5) * 5 if finite else 0.0
    hi = math.ceil(max(finite) / 5) * 5 if finite else 100.0
    if hi - lo < 10:
        lo, hi = max(0.0, lo - 5), min(100.0, max(hi, lo + 10))
        if hi - lo < 10:
            lo = hi - 10
    left, top, plot_w, plot_h, band = 44, 32, max(150, 40 * len(values)), 120, 22
    width, height = left + plot_w + 16, top + plot_h + band + 36

    def sx(v: Any) -> float:
        n = len(values)
        return left + plot_w * (pos[_key(v)] + 0.5) / n

    def sy(acc: float) -> float:
        return top + plot_h * (1 - (acc - lo) / (hi - lo))

    parts = [f'<svg class="chart landscape line" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" data-task="{esc(task)}" '
             f'data-method="{esc(method)}" data-axes="{esc(axis)}" '
             f'aria-label="{esc(f"val200 top-1 over {axis}, {method}, task {task}")}">',
             f'<text x="4" y="14" class="ptitle">{esc(method)}</text>']
    step = 5 if hi - lo <= 30 else 10
    y = lo
    while y <= hi + 1e-9:
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + plot_w}" y2="{sy(y):.1f}" '
                     f'class="grid"/><text x="{left - 4}" y="{sy(y) + 4:.1f}" class="ytick">'
                     f'{y:g}</text>')
        y += step
    band_y = top + plot_h + band / 2 + 4
    parts.append(f'<text x="{left - 4}" y="{band_y + 4:.1f}" class="ytick div">div.</text>')
    for v in values:
        parts.append(f'<text x="{sx(v):.1f}" y="{top + plot_h + band + 14}" class="tick">'
                     f'{esc(_label(v))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" class="tick axisname">'
                 f'{esc(axis)}</text>')
    ok = sorted((p for p in points if p.value is not None),
                key=lambda p: _order(p.settings.get(axis)))
    if len(ok) > 1:
        path = " ".join(f"{sx(p.settings.get(axis)):.1f},{sy(p.value):.1f}" for p in ok)
        parts.append(f'<polyline points="{path}" class="lline"/>')
    if reference is not None:
        parts += _paper_marks(task, method, points, reference,
                              lambda p: sx(p.settings.get(axis)), sy)
        parts.append(f'<text x="{width - 4}" y="14" class="hint peak">● this run ◇ paper</text>')
    for p in points:
        x = sx(p.settings.get(axis))
        title = f"<title>{esc(_title(p, [axis], fmt_acc, reference))}</title>"
        attrs = _mark_attrs(task, method, p)
        if p.value is None:   # diverged: a cross in the band below the axis, never a 0
            parts.append(f'<path d="M{x - 5:.1f},{band_y - 5:.1f} l10,10 m0,-10 l-10,10" '
                         f'class="gridpoint diverged" {attrs}>{title}</path>')
            continue
        cls = "gridpoint selected" if p.selected else "gridpoint"
        parts.append(f'<circle cx="{x:.1f}" cy="{sy(p.value):.1f}" '
                     f'r="{6 if p.selected else 4}" class="{cls}" {attrs}>{title}</circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _matrix(task: str, method: str, axes: list[str], points: list[_Point], fmt_acc,
            reference: Reference | None = None) -> Markup:
    def distinct(axis: str) -> list[Any]:
        return sorted({_key(p.settings.get(axis)): p.settings.get(axis)
                       for p in points}.values(), key=_order)

    col_axis = max(axes, key=lambda a: len(distinct(a))) if axes else None
    row_axes = [a for a in axes if a != col_axis]
    cols = distinct(col_axis) if col_axis else [None]

    def row_of(p: _Point) -> tuple:
        return tuple(_order(p.settings.get(a)) for a in row_axes)

    row_keys = sorted({row_of(p): p for p in points}.items())
    row_labels = [", ".join(f"{a}={_label(p.settings.get(a))}" for a in row_axes) or "all"
                  for _, p in row_keys]
    row_index = {k: i for i, (k, _) in enumerate(row_keys)}
    col_index = {_key(v): j for j, v in enumerate(cols)}
    finite = [p.value for p in points if p.value is not None]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)

    cw, ch = 48, (24 if reference is None else 36)   # a paper reference adds a line per cell
    # Row labels are set in the monospace face, whose width is bounded (svg.mono_width): an
    # estimate for the proportional face clipped long labels on the left.
    label_w = max(40.0, max(mono_width(t) for t in row_labels) + 12)
    top = 44
    width = int(max(label_w + cw * len(cols) + 12, 230 if reference is None else 250))
    height = top + ch * len(row_keys) + 26   # + the colour key below
    if reference is not None:
        height += 12                          # + the reference's key, a line of its own
    parts = [f'<svg class="chart landscape matrix" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" data-task="{esc(task)}" '
             f'data-method="{esc(method)}" data-axes="{esc(",".join(axes))}" '
             f'aria-label="{esc(f"val200 top-1 over the grid, {method}, task {task}")}">',
             f'<text x="4" y="14" class="ptitle">{esc(method)}</text>']
    if col_axis:
        parts.append(f'<text x="{label_w + cw * len(cols) / 2:.1f}" y="{top - 20}" '
                     f'class="tick axisname">{esc(col_axis)}</text>')
        for j, v in enumerate(cols):
            parts.append(f'<text x="{label_w + cw * (j + 0.5):.1f}" y="{top - 5}" class="tick">'
                         f'{esc(_label(v))}</text>')
    for i, text in enumerate(row_labels):
        parts.append(f'<text x="{label_w - 6:.1f}" y="{top + ch * i + ch / 2 + 4:.1f}" '
                     f'class="label mono">{esc(text)}</text>')
    selected = paper_selected = None
    for p in points:
        i = row_index[row_of(p)]
        j = col_index[_key(p.settings.get(col_axis))] if col_axis else 0
        x, y = label_w + cw * j, top + ch * i
        title = f"<title>{esc(_title(p, axes, fmt_acc, reference))}</title>"
        if p.value is None:
            fill, text, cls = "#eaeef2", "div.", "gridpoint diverged"
            dark = False
        else:
            t = (p.value - lo) / (hi - lo) if hi > lo else 1.0
            fill, text, cls = _colour(t), fmt_acc(p.value), "gridpoint"
            dark = t > 0.55
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{cw}" height="{ch}" fill="{fill}" '
                     f'class="{cls}" {_mark_attrs(task, method, p)}>{title}</rect>')
        text_y = y + ch / 2 + 4 if reference is None else y + 14
        parts.append(f'<text x="{x + cw / 2:.1f}" y="{text_y:.1f}" '
                     f'class="cellvalue{" dark" if dark else ""}'
                     f'{" div" if p.value is None else ""}">{esc(text)}</text>')
        if reference is not None:
            paper, chosen = reference.get(p.point, (None, False))
            parts.append(_paper_delta(x + cw / 2, y + 29, p.value, paper, dark, task, method))
            if chosen:
                paper_selected = (x, y)
        if p.selected:
            selected = (x, y)
    parts += _matrix_keys(finite, lo, hi, height, fmt_acc, reference is not None)
    if selected:   # drawn last so no neighbour covers the outline
        parts.append(f'<rect x="{selected[0] + 1:.1f}" y="{selected[1] + 1}" width="{cw - 2}" '
                     f'height="{ch - 2}" class="selbox"/>')
    if paper_selected:
        parts.append(f'<rect x="{paper_selected[0] + 4:.1f}" y="{paper_selected[1] + 4}" '
                     f'width="{cw - 8}" height="{ch - 8}" class="paperbox"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _matrix_keys(finite: list[float], lo: float, hi: float, height: int, fmt_acc,
                 with_reference: bool) -> list[str]:
    """The colour key below a matrix and, with a paper reference, the key of its marks."""
    parts = []
    if finite:
        key = (f"colour: {fmt_acc(lo)} (light) to {fmt_acc(hi)} (dark)" if hi > lo
               else f"every point: {fmt_acc(hi)}")
        below = height - 18 if with_reference else height - 6
        parts.append(f'<text x="4" y="{below}" class="hint">{esc(key)}</text>')
    if with_reference:
        parts.append(f'<text x="4" y="{height - 6}" class="hint">2nd line: run − paper; '
                     f'dashed: paper\'s pick</text>')
    return parts


def _paper_delta(x: float, y: float, mine: float | None, paper: float | None, dark: bool,
                 task: str, method: str) -> str:
    """A matrix cell's second line: this run − paper at the point ("no paper" without one)."""
    if paper is None:
        return f'<text x="{x:.1f}" y="{y:.1f}" class="cellvalue delta{" dark" if dark else ""}">' \
               f'no paper</text>'
    text = "–" if mine is None else f"{mine - paper:+.1f}".replace("-", "−")
    return (f'<text x="{x:.1f}" y="{y:.1f}" class="cellvalue delta{" dark" if dark else ""}" '
            f'data-task="{esc(task)}" data-method="{esc(method)}" '
            f'data-paper="{esc(repr(float(paper)))}">{esc(text)}</text>')


def landscape(task: str, method: str, grid_rows: Sequence[Mapping[str, Any]],
              fmt_acc, reference: Reference | None = None) -> Landscape | None:
    """The landscape of one task x method from its ``grid.parquet`` rows (None without rows);
    ``reference``: the paper's ``{point: (val200, selected)}`` to draw on the same axes."""
    if not grid_rows:
        return None
    points = []
    for r in grid_rows:
        value = r["val_top1"]
        ok = r["status"] == "ok" and value is not None and math.isfinite(float(value))
        points.append(_Point(str(r["point"]), _settings(r), str(r["status"]),
                             float(value) if ok else None, bool(r["selected"])))
    axes = swept_axes([p.settings for p in points])
    if len(axes) == 1:
        chart = _line(task, method, axes[0], points, fmt_acc, reference)
    else:
        chart = _matrix(task, method, axes, points, fmt_acc, reference)
    return Landscape(task, method, axes, chart)


def landscape_inputs(results: StudyResults, study: Mapping
                     ) -> dict[str, list[tuple[str, list[dict[str, Any]]]]]:
    """Per task, (method, grid rows) in study order: what :func:`task_landscapes` draws."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in results.grid.to_pylist():
        by_key.setdefault((g["task"], g["method"]), []).append(g)
    return {task: [(m, by_key.get((task, m), [])) for m in study_methods(study)]
            for task, _ in study_tasks(study)}


def task_landscapes(task: str, inputs: Sequence[tuple[str, list[dict[str, Any]]]]
                    ) -> list[Landscape]:
    """Each method's val200 landscape over its grid (drawn in the worker rendering the page)."""
    return [c for m, rows in inputs
            if (c := landscape(task, m, rows, numbers.fmt_acc)) is not None]

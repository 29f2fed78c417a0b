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


# Colour-blind-safe (Okabe-Ito, then greys), cycled over methods in study order (line plots).
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#000000", "#8c959f", "#57606a")


def spread_labels(ys: Sequence[float], gap: float = 12.0) -> list[float]:
    """Label positions at least ``gap`` apart, each as close to its own ``ys`` value as a downward
    push allows (end-of-line labels of curves that end close together would overprint)."""
    out = list(map(float, ys))
    previous = None
    for i in sorted(range(len(out)), key=lambda k: out[k]):
        if previous is not None and out[i] < out[previous] + gap:
            out[i] = out[previous] + gap
        previous = i
    return out


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _raw(value: float | None) -> str:
    """A drawn number's ``data-value``: the repr of its Python float ("" for none).

    Not :func:`vpeft.report.view.exact_text`, which keeps the value's own type: an int stays
    "3" (here "3.0"), a numpy float32 is written by its own str, a numpy float64 (numpy 2) as
    "np.float64(...)" (here both as the Python float's repr), and none gives None, not ""."""
    return "" if value is None else repr(float(value))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def _heat_colour(value: float) -> str:
    """White (0) to dark red (1), linear in each RGB channel."""
    v = min(max(value, 0.0), 1.0)
    lo, hi = (255, 255, 255), (165, 15, 21)
    r, g, b = (round(a + (z - a) * v) for a, z in zip(lo, hi))
    return f"#{r:02x}{g:02x}{b:02x}"


def _text_width(text: str) -> float:
    """Rough width in px of ``text`` at the charts' 12px font (for layout only)."""
    return 6.8 * len(text)


# Labels whose room is computed (landscape row labels, scatter labels) are set in the monospace
# font (CSS class "mono" in the charts): every glyph of the common monospace faces (DejaVu Sans
# Mono, Liberation Mono, Menlo, Consolas, Courier) is at most 0.61 em wide, so this bound holds
# whichever one the browser picks, unlike a per-character guess for a proportional font.
MONO_EM = 0.61


def mono_width(text: str, font_px: float = 12.0) -> float:
    """An upper bound on the rendered width in px of ``text`` in the charts' monospace font."""
    return MONO_EM * font_px * len(text)


Box = tuple[float, float, float, float]   # x0, y0, x1, y1


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_point_labels(points: Sequence[tuple[float, float]], texts: Sequence[str],
                       bounds: Box, radius: float = 6.0, font_px: float = 12.0
                       ) -> list[tuple[float, float]]:
    """A (x, baseline y) for each point's label, left-aligned, so that no two labels overlap, no
    label covers a point, and every label stays inside ``bounds``.

    Points are labelled from left to right; each label takes the first free spot among: right
    of its point, left, above, below, then the same further out. A label that finds no free
    spot keeps the right-hand one (moved inside ``bounds``); with a handful of methods that
    does not happen."""
    # A text's box spans about 0.92 em above its baseline and 0.25-0.33 em below (ascent and
    # descent of the monospace faces): a 1.4-em box with the baseline 1 em down covers it.
    h = 1.4 * font_px
    marks = [(x - radius, y - radius, x + radius, y + radius) for x, y in points]
    placed: list[Box] = []
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)

    def inside(b: Box) -> bool:
        return b[0] >= bounds[0] and b[1] >= bounds[1] and b[2] <= bounds[2] and b[3] <= bounds[3]

    for i in sorted(range(len(points)), key=lambda k: (points[k][0], points[k][1])):
        x, y = points[i]
        w = mono_width(texts[i], font_px)
        spots = []
        for step in range(6):
            d = radius + 2 + step * (h + 2)
            spots += [(x + d, y - h / 2), (x - d - w, y - h / 2),
                      (x - w / 2, y - d - h), (x - w / 2, y + d)]
        spots += [(x + radius + 2, y - h / 2 + k * (h + 2) * sign) for k in range(1, 12)
                  for sign in (1, -1)]
        boxes = [(sx, sy, sx + w, sy + h) for sx, sy in spots]
        free = [b for b in boxes if inside(b) and not any(_overlaps(b, o) for o in placed)
                and not any(_overlaps(b, m) for m in marks)]
        box = free[0] if free else boxes[0]
        if not free:   # keep it inside at least
            dx = min(0.0, bounds[2] - box[2]) + max(0.0, bounds[0] - box[0])
            box = (box[0] + dx, box[1], box[2] + dx, box[3])
        placed.append(box)
        out[i] = (box[0], box[1] + font_px)
    return out


def heatmap(task: str, methods: Sequence[str], values: Mapping[tuple[str, str], float | None],
            *, label: str = "error overlap (Jaccard)", column: str = "error_overlap",
            empty: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset()) -> Markup:
    """A methods x methods matrix; cell colour and text = ``values[(row, column)]`` in 0..1.

    ``column`` names the table column drawn (``data-column`` of the svg and of every cell).
    Pairs in ``empty`` compare two empty sets: their value (1.0 by convention) is kept in
    ``data-value`` but the cell is drawn grey with "∅", since there is nothing to overlap.
    """
    n = len(methods)
    cell = 44 if n <= 8 else 32   # 16 methods: two heat maps side by side in a 1400-px window
    longest = max((mono_width(m) for m in methods), default=0.0)   # labels: monospace
    label_w = max(40, round(longest + 12))
    top = max(30, round(longest * 0.87 + 14))   # room for the column labels, rotated by 60°
    width = round(max(label_w + n * cell + longest * 0.5 + 10, _text_width(label) + 12))
    height = top + 22 + n * cell + 10
    parts = [f'<svg class="chart heatmap" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" data-task="{esc(task)}" '
             f'data-column="{esc(column)}" aria-label="{esc(f"{label}, task {task}")}">',
             f'<text x="4" y="14" class="ctitle">{esc(label)}</text>']
    top += 22   # below the title
    for j, m in enumerate(methods):
        x, y = label_w + j * cell + cell / 2, top - 6
        parts.append(f'<text x="{x:.1f}" y="{y}" class="collabel mono" '
                     f'transform="rotate(-60 {x:.1f} {y})">{esc(m)}</text>')
    for i, a in enumerate(methods):
        y = top + i * cell
        parts.append(f'<text x="{label_w - 6}" y="{y + cell / 2 + 4:.1f}" class="label mono">'
                     f'{esc(a)}</text>')
        for j, b in enumerate(methods):
            x = label_w + j * cell
            v = values.get((a, b))
            ok = _finite(v)
            nothing = (a, b) in empty
            fill = _heat_colour(float(v)) if ok and not nothing else "#eaeef2"  # type: ignore[arg-type]
            text = "∅" if nothing else f"{float(v):.2f}" if ok else "–"  # type: ignore[arg-type]
            dark = ok and not nothing and float(v) > 0.55  # type: ignore[arg-type]
            empty_attr = ' data-empty="true"' if nothing else ""
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" '
                f'class="heat" data-column="{esc(column)}" data-task="{esc(task)}" '
                f'data-method-a="{esc(a)}" '
                f'data-method-b="{esc(b)}" data-value="{esc(_raw(v) if ok else "")}"'
                f'{empty_attr}>'
                f'<title>{esc(a)} vs {esc(b)}: {esc(label)} '
                f'{esc("undefined (both sets empty)" if nothing else text)}</title></rect>')
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
            fmt_acc: Callable[[float], str], *,
            x_label: str = "trainable parameters, excluding the head (log scale)",
            x_what: str = "trainable parameters", kind: str = "scatter") -> Markup | None:
    """Accuracy (y) vs trainable parameters (x, log10); Pareto-front points highlighted.

    ``x_label``/``x_what`` name another cost on x (e.g. device-hours); ``kind`` is the chart's
    extra CSS class, which tells the charts of one page apart."""
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

    parts = [f'<svg class="chart {esc(kind)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{esc("Mean test top-1 vs " + x_what)}">']
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
                 f'{esc(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2}" class="tick" '
                 f'transform="rotate(-90 14 {top + plot_h / 2})">{esc("mean test top-1 (%)")}'
                 f'</text>')
    front = sorted((p for p in points if p.pareto), key=lambda p: (p.params, p.accuracy))
    if len(front) > 1:
        path = " ".join(f"{sx(p.params):.1f},{sy(p.accuracy):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" class="front"/>')
    labels = place_point_labels([(sx(p.params), sy(p.accuracy)) for p in points],
                                [p.method for p in points], (0, 0, width, top + plot_h))
    for p, (lx, ly) in zip(points, labels):
        x, yy = sx(p.params), sy(p.accuracy)
        cls = "point pareto" if p.pareto else "point"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{yy:.1f}" r="{6 if p.pareto else 4.5}" class="{cls}" '
            f'data-method="{esc(p.method)}" data-params="{esc(repr(float(p.params)))}" '
            f'data-value="{esc(repr(float(p.accuracy)))}" '
            f'data-pareto="{"true" if p.pareto else "false"}">'
            f'<title>{esc(p.method)}: {esc(fmt_acc(p.accuracy))} % with '
            f'{esc(fmt_params(p.params))} {esc(x_what)}'
            f'{" (Pareto front)" if p.pareto else ""}</title></circle>')
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" data-method="{esc(p.method)}" '
                     f'class="plabel mono{" pareto" if p.pareto else ""}">{esc(p.method)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class ConfidencePanel:
    """One method's confidence histogram, split into right and wrong predictions.

    ``right[i]`` / ``wrong[i]``: fraction of the task's test examples predicted right / wrong
    with a max softmax probability in bin ``i`` (equal-width bins over [0, 1]).
    """

    method: str
    right: Sequence[float]
    wrong: Sequence[float]


def confidence_histograms(task: str, panels: Sequence[ConfidencePanel], threshold: float,
                          columns: int = 4) -> Markup | None:
    """Small multiples, one per method: right predictions as bars above the baseline, wrong ones
    below, on one y scale shared by every panel of the task; the confidence threshold dashed."""
    if not panels:
        return None
    bins = len(panels[0].right)
    peak = max([v for p in panels for v in (*p.right, *p.wrong) if _finite(v)] + [1e-9])
    pw, ph, gap_x, gap_y, head, foot = 170, 64, 22, 18, 18, 16   # ph: each half's height
    cols = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / cols)
    cell_w, cell_h = pw + gap_x, head + 2 * ph + foot + gap_y
    width, height = 10 + cols * cell_w, 6 + rows * cell_h
    parts = [f'<svg class="chart confhist" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" data-task="{esc(task)}" '
             f'data-threshold="{esc(repr(float(threshold)))}" '
             f'aria-label="{esc(f"confidence histograms, task {task}")}">']
    bar_w = pw / bins
    for k, p in enumerate(panels):
        x0 = 10 + (k % cols) * cell_w
        y0 = 6 + (k // cols) * cell_h
        base = y0 + head + ph
        parts.append(f'<text x="{x0}" y="{y0 + 12}" class="ptitle">{esc(p.method)}</text>')
        for kind, values, sign in (("right", p.right, -1), ("wrong", p.wrong, 1)):
            for i, v in enumerate(values):
                ok = _finite(v)
                h = ph * float(v) / peak if ok else 0.0   # type: ignore[arg-type]
                y = base - h if sign < 0 else base
                lo, hi = i / bins, (i + 1) / bins
                parts.append(
                    f'<rect x="{x0 + i * bar_w + 0.5:.1f}" y="{y:.2f}" width="{bar_w - 1:.1f}" '
                    f'height="{h:.2f}" class="conf {kind}" data-task="{esc(task)}" '
                    f'data-method="{esc(p.method)}" data-kind="{kind}" data-bin="{i}" '
                    f'data-value="{esc(_raw(v) if ok else "")}"><title>{esc(p.method)}: '
                    f'{esc(f"{100 * float(v):.1f}" if ok else "–")} % of test examples '
                    f'{kind} with confidence in [{lo:g}, {hi:g}{"]" if i == bins - 1 else ")"}'
                    f'</title></rect>')  # type: ignore[arg-type]
        parts.append(f'<line x1="{x0}" y1="{base}" x2="{x0 + pw}" y2="{base}" class="axis"/>')
        tx = x0 + pw * threshold
        parts.append(f'<line x1="{tx:.1f}" y1="{base - ph}" x2="{tx:.1f}" y2="{base + ph}" '
                     f'class="threshold"/>')
        for t in (0.0, 0.5, 1.0):
            parts.append(f'<text x="{x0 + pw * t:.1f}" y="{base + ph + 13}" class="tick">'
                         f'{t:g}</text>')
        parts.append(f'<text x="{x0 + 2}" y="{base - ph + 10}" class="hint right">right</text>')
        parts.append(f'<text x="{x0 + pw}" y="{y0 + 12}" class="hint peak">'
                     f'{esc(f"scale: {100 * peak:.1f} %")}</text>')
        parts.append(f'<text x="{x0 + 2}" y="{base + ph - 2}" class="hint wrong">wrong</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# Dash patterns and marker shapes, cycled over methods like PALETTE: a line plot whose series
# differ by colour alone is unreadable in grey print or to a colour-blind reader.
DASHES = ("", "7 3", "2 3", "9 3 2 3", "4 4", "12 4", "5 2 1 2 1 2", "1 3")
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down", "cross", "plus", "x")


def marker(shape: str, x: float, y: float, r: float, attrs: str = "") -> str:
    """One SVG element drawing ``shape`` (a name of MARKERS) centred on (x, y), half-size ``r``.

    ``attrs`` (already escaped) is written into the element, e.g. class and data-* attributes.
    """
    def poly(points: Sequence[tuple[float, float]]) -> str:
        pts = " ".join(f"{x + dx * r:.1f},{y + dy * r:.1f}" for dx, dy in points)
        return f'<polygon points="{pts}" {attrs}'

    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {attrs}'
    if shape == "square":
        s = 0.85 * r
        return (f'<rect x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}" '
                f'{attrs}')
    shapes = {"triangle": ((0, -1.2), (1.05, 0.7), (-1.05, 0.7)),
              "triangle-down": ((0, 1.2), (1.05, -0.7), (-1.05, -0.7)),
              "diamond": ((0, -1.25), (1.0, 0), (0, 1.25), (-1.0, 0)),
              "cross": ((-0.35, -1), (0.35, -1), (0.35, -0.35), (1, -0.35), (1, 0.35),
                        (0.35, 0.35), (0.35, 1), (-0.35, 1), (-0.35, 0.35), (-1, 0.35),
                        (-1, -0.35), (-0.35, -0.35)),
              "plus": ((-0.2, -1.1), (0.2, -1.1), (0.2, -0.2), (1.1, -0.2), (1.1, 0.2),
                       (0.2, 0.2), (0.2, 1.1), (-0.2, 1.1), (-0.2, 0.2), (-1.1, 0.2),
                       (-1.1, -0.2), (-0.2, -0.2)),
              "x": ((-1, -0.6), (-0.6, -1), (0, -0.4), (0.6, -1), (1, -0.6), (0.4, 0), (1, 0.6),
                    (0.6, 1), (0, 0.4), (-0.6, 1), (-1, 0.6), (-0.4, 0))}
    if shape not in shapes:
        raise ValueError(f"marker shape {shape!r}: expected one of {MARKERS}")
    return poly(shapes[shape])


def place_end_labels(ends: Sequence[tuple[float, float]], texts: Sequence[str],
                     gap: float = 13.0, dx: float = 8.0) -> list[tuple[float, float]]:
    """A position (x, baseline y) for each text, just right of its own curve end ``ends[i]``.

    Labels whose boxes would overlap are pushed down, one after another from the top, by the
    least that clears them (labels apart in x are left where they are), so each stays at its
    own end rather than in a column away from the curves.
    """
    placed: list[tuple[float, float, float]] = []  # x0, x1, y of each label already placed
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(ends)
    for i in sorted(range(len(ends)), key=lambda k: (ends[k][1], ends[k][0])):
        x0 = ends[i][0] + dx
        x1 = x0 + _text_width(texts[i])
        y = ends[i][1] + 4
        moved = True
        while moved:
            moved = False
            for a0, a1, ay in placed:
                if x0 < a1 and a0 < x1 and abs(y - ay) < gap:
                    y, moved = ay + gap, True
        placed.append((x0, x1, y))
        out[i] = (x0, y)
    return out

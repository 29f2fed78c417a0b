"""Render a study's tables as one self-contained HTML page.

All numbers come from the :class:`~vpeft.report.collect.StudyResults` tables (plus the optional
published-reference CSV, shown in its own section). Each value cell carries ``data-value`` (the
raw, unrounded number), ``data-task``, ``data-method`` and ``data-column`` so the page can be
checked against ``results.parquet`` exactly. The page loads nothing: inline CSS, inline SVG,
no scripts. Jinja autoescaping is on, and the SVG (built here) escapes its own text.
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import json
import math
import os
from decimal import ROUND_HALF_UP, Decimal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import jinja2
from markupsafe import Markup

from vpeft.io import atomic_path
from vpeft.report.collect import GROUPS, StudyResults, study_methods, study_tasks

GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}
PUBLISHED_TITLE = "Published (ViT-B/16 IN-21K)"
_NOT_COVERED = "the published reference does not cover every task of this column"


# --------------------------------------------------------------------------------------------
# view model: the template only loops over these
# --------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One <td>: display text plus the raw value and the attributes that identify it."""

    text: str
    value: str | None = None          # repr() of the raw number, or the raw string
    column: str = ""
    task: str | None = None
    method: str | None = None
    classes: list[str] = field(default_factory=list)
    title: str | None = None
    note: str | None = None           # a second, smaller line (published deltas)
    delta: str | None = None          # raw delta for data-delta

    @property
    def css(self) -> str:
        return " ".join(self.classes)


@dataclass
class Row:
    label: str
    cells: list[Cell]
    method: str | None = None
    task: str | None = None


@dataclass
class VtabTable:
    """Rows = methods; columns = tasks grouped by VTAB group, group means, mean, extras."""

    groups: list[tuple[str, list[str]]]     # (group title, [task, ...]) for groups present
    mean_groups: list[str]                  # group titles in the group-mean block
    extra_headers: list[str]
    rows: list[Row]


def _raw(value: Any) -> str | None:
    """Exact text form of a table value: repr() round-trips floats bit for bit."""
    if value is None:
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _round1(value: float) -> Decimal:
    """Round half up on the shortest decimal form (70.25 -> 70.3), as a reader would by hand.

    ``f"{x:.1f}"`` rounds the binary value half-to-even, which prints 70.25 as 70.2.
    """
    return Decimal(repr(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _fmt_acc(value: float | None) -> str:
    return "–" if value is None else f"{_round1(value):.1f}"


def _fmt_delta(value: float | None) -> str:
    return "–" if value is None else f"{_round1(value):+.1f}".replace("-", "−")


def _fmt_params(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e5:  # the study's convention: millions
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} K" if value >= 1e3 else f"{value:.0f}"


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} %"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.2f} h"


def _fmt_hparam(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (str, int, bool)) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True)


def _mark_best(rows: list[Row], higher_is_better: bool = True) -> None:
    """Mark the best raw value of each column (all of them on a tie) with class ``best``."""
    if not rows:
        return
    for col in range(len(rows[0].cells)):
        cells = [r.cells[col] for r in rows]
        values = [(c, float(c.value)) for c in cells
                  if c.value is not None and "rankable" in c.classes]
        if not values:
            continue
        best = (max if higher_is_better else min)(v for _, v in values)
        for c, v in values:
            if v == best:
                c.classes.append("best")


def _acc_cell(row: Mapping[str, Any] | None, task: str, method: str) -> Cell:
    if row is None or row["status"] == "missing":
        return Cell("–", column="test_top1", task=task, method=method,
                    classes=["num", "missing"], title="run missing")
    if row["status"] == "diverged":
        return Cell("diverged", column="test_top1", task=task, method=method,
                    classes=["num", "diverged"])
    value = row["test_top1"]
    return Cell(_fmt_acc(value), _raw(value), "test_top1", task, method, ["num", "rankable"])


def _mean_cell(value: float | None, column: str, method: str,
               why_missing: str = "not every task of this column has a test accuracy") -> Cell:
    classes = ["num", "mean-col"] + (["rankable"] if value is not None else [])
    title = None if value is not None else why_missing
    return Cell(_fmt_acc(value), _raw(value), column, None, method, classes, title)


def _present_groups(tasks: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    return [(g, [t for t, tg in tasks if tg == g]) for g in GROUPS
            if any(tg == g for _, tg in tasks)]


def _vtab_table(results: StudyResults, study: Mapping) -> VtabTable:
    tasks, methods = study_tasks(study), study_methods(study)
    by_key = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    groups = _present_groups(tasks)
    rows: list[Row] = []
    for method in methods:
        s = summary.get(method, {})
        cells = [_acc_cell(by_key.get((t, method)), t, method) for _, ts in groups for t in ts]
        cells += [_mean_cell(s.get(g), g, method) for g, _ in groups]
        cells.append(_mean_cell(s.get("mean"), "mean", method))
        cells.append(Cell(_fmt_params(s.get("trainable_params")), _raw(s.get("trainable_params")),
                          "trainable_params", None, method, ["num", "params"]))
        cells.append(Cell(_fmt_pct(s.get("trainable_pct")), _raw(s.get("trainable_pct")),
                          "trainable_pct", None, method, ["num", "params"]))
        rows.append(Row(method, cells, method=method))
    _mark_best(rows)
    return VtabTable(
        groups=[(GROUP_TITLES[g], ts) for g, ts in groups],
        mean_groups=[GROUP_TITLES[g] for g, _ in groups],
        extra_headers=["Trainable params", "% of backbone"],
        rows=rows,
    )


def _runs_in_study_order(results: StudyResults, study: Mapping) -> Iterator[tuple[str, str, dict]]:
    """(task, method, results row) for every collected run, in the study's task x method order."""
    by_key = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    for task, _ in study_tasks(study):
        for method in study_methods(study):
            if (task, method) in by_key:
                yield task, method, by_key[(task, method)]


def _hparam_rows(results: StudyResults, study: Mapping) -> list[Row]:
    """One row per task x method with the selected grid point and its settings."""
    rows: list[Row] = []
    for task, method, r in _runs_in_study_order(results, study):
        hp = json.loads(r["hparams_json"]) if r["hparams_json"] else {}
        hp_text = ", ".join(f"{k}={_fmt_hparam(v)}" for k, v in sorted(hp.items())) or "–"

        def cell(text: str, value: Any, column: str, *classes: str) -> Cell:
            return Cell(text, _raw(value), column, task, method, list(classes))

        rows.append(Row(task, [
            cell(method, method, "method"),
            cell(r["status"], r["status"], "status", f"status-{r['status']}"),
            cell(r["point"] or "–", r["point"], "point", "mono"),
            cell("–" if r["lr"] is None else f"{r['lr']:g}", r["lr"], "lr", "num"),
            cell("–" if r["weight_decay"] is None else f"{r['weight_decay']:g}",
                 r["weight_decay"], "weight_decay", "num"),
            cell(hp_text, r["hparams_json"], "hparams_json", "mono"),
            cell(_fmt_acc(r["val_top1"]), r["val_top1"], "val_top1", "num"),
            cell("–" if r["num_grid_points"] is None else str(r["num_grid_points"]),
                 r["num_grid_points"], "num_grid_points", "num"),
            cell("–" if r["num_diverged"] is None else str(r["num_diverged"]),
                 r["num_diverged"], "num_diverged", "num"),
        ], method=method, task=task))
    return rows


def _grid_rows(results: StudyResults) -> list[Row]:
    rows: list[Row] = []
    for g in results.grid.to_pylist():
        task, method = g["task"], g["method"]
        rows.append(Row(task, [
            Cell(method, method, "method", task, method),
            Cell(g["point"], g["point"], "point", task, method,
                 ["mono"] + (["selected"] if g["selected"] else [])),
            Cell(g["status"], g["status"], "status", task, method, [f"status-{g['status']}"]),
            Cell(_fmt_acc(g["val_top1"]), _raw(g["val_top1"]), "val_top1", task, method, ["num"]),
            Cell(_fmt_seconds(g["wall_time_s"]), _raw(g["wall_time_s"]), "wall_time_s", task,
                 method, ["num"]),
        ], method=method, task=task))
    return rows


# --------------------------------------------------------------------------------------------
# published reference
# --------------------------------------------------------------------------------------------

def read_published(path: Path) -> dict[tuple[str, str], float | None]:
    """``{(task, method): test_top1}`` from a ``method,task,test_top1`` CSV."""
    out: dict[tuple[str, str], float | None] = {}
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"method", "task", "test_top1"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: header must contain {sorted(need)}, "
                             f"got {reader.fieldnames}")
        for line, rec in enumerate(reader, start=2):
            text = (rec["test_top1"] or "").strip()
            try:
                value = float(text) if text else None
            except ValueError as err:
                raise ValueError(f"{path}:{line}: test_top1 {text!r} is not a number") from err
            out[(rec["task"].strip(), rec["method"].strip())] = value
    return out


def _published_table(results: StudyResults, study: Mapping, published: Mapping[
        tuple[str, str], float | None]) -> VtabTable | None:
    """The published numbers for the study's tasks, with deltas (ours - published)."""
    tasks, methods = study_tasks(study), study_methods(study)
    # Rows for tasks outside the study (the CSV covers all 19 VTAB tasks) are ignored.
    published_tasks = {t for t, _ in published}
    shown = [(t, g) for t, g in tasks if t in published_tasks]
    rows_methods = [m for m in methods if any((t, m) in published for t, _ in shown)]
    if not shown or not rows_methods:
        return None
    ours = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    groups = _present_groups(shown)
    rows: list[Row] = []
    for method in rows_methods:
        cells: list[Cell] = []
        deltas: list[float] = []
        for _, ts in groups:
            for t in ts:
                value = published.get((t, method))
                cell = Cell(_fmt_acc(value), _raw(value), "published_top1", t, method,
                            ["num"] + (["rankable"] if value is not None else ["missing"]))
                mine = ours.get((t, method))
                if value is not None and mine is not None and mine["test_top1"] is not None:
                    d = mine["test_top1"] - value
                    deltas.append(d)
                    cell.note, cell.delta = f"Δ {_fmt_delta(d)}", repr(d)
                cells.append(cell)
        for g, _ in groups:
            all_group = [t for t, tg in tasks if tg == g]
            vals = [published.get((t, method)) for t in all_group]
            mean = (math.fsum(vals) / len(vals)
                    if all(v is not None for v in vals) else None)  # type: ignore[arg-type]
            cells.append(_mean_cell(mean, g, method, _NOT_COVERED))
        vals = [published.get((t, method)) for t, _ in tasks]
        mean = math.fsum(vals) / len(vals) if all(v is not None for v in vals) else None  # type: ignore[arg-type]
        cells.append(_mean_cell(mean, "mean", method, _NOT_COVERED))
        d_mean = math.fsum(deltas) / len(deltas) if deltas else None
        cells.append(Cell(_fmt_delta(d_mean), _raw(d_mean),
                          "delta_mean", None, method, ["num"],
                          title=f"mean of (ours − published) over {len(deltas)} task(s)"))
        rows.append(Row(method, cells, method=method))
    _mark_best(rows)
    return VtabTable(
        groups=[(GROUP_TITLES[g], ts) for g, ts in groups],
        mean_groups=[GROUP_TITLES[g] for g, _ in groups],
        extra_headers=["Δ ours − published (mean over common tasks)"],
        rows=rows,
    )


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------

def _versions_text(versions_json: str | None) -> str:
    if not versions_json:
        return "–"
    versions = json.loads(versions_json)
    return " · ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "–"


def _short_commit(commit: str | None) -> str:
    """First 12 hex digits, keeping the pipeline's ``-dirty`` marker visible."""
    if not commit:
        return "–"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _provenance_rows(results: StudyResults, study: Mapping) -> list[Row]:
    rows: list[Row] = []
    for task, method, r in _runs_in_study_order(results, study):
        commit = r["git_commit"]
        rows.append(Row(task, [
            Cell(method, method, "method", task, method),
            Cell(_short_commit(commit), commit, "git_commit", task, method,
                 ["mono"], title=commit),
            Cell("–" if r["seed"] is None else str(r["seed"]), _raw(r["seed"]), "seed", task,
                 method, ["num"]),
            Cell(_fmt_seconds(r["wall_time_s"]), _raw(r["wall_time_s"]), "wall_time_s", task,
                 method, ["num"]),
            Cell(_fmt_seconds(r["grid_wall_time_s"]), _raw(r["grid_wall_time_s"]),
                 "grid_wall_time_s", task, method, ["num"]),
            Cell(_versions_text(r["versions_json"]), r["versions_json"], "versions_json",
                 task, method, ["small"]),
        ], method=method, task=task))
    return rows


def _representative_config(results: StudyResults, study: Mapping) -> tuple[str, str, str] | None:
    """(task, method, pretty JSON) of the first ok run in study order (else any with a config)."""
    rows = results.results.to_pylist()
    order = {(t, m): i for i, (t, m) in enumerate(
        (t, m) for t, _ in study_tasks(study) for m in study_methods(study))}
    rows = sorted((r for r in rows if r["config_json"]),
                  key=lambda r: (r["status"] != "ok", order.get((r["task"], r["method"]), 1 << 30)))
    if not rows:
        return None
    r = rows[0]
    return r["task"], r["method"], json.dumps(json.loads(r["config_json"]), indent=2,
                                               sort_keys=True)


def _consistency_notes(results: StudyResults) -> list[str]:
    """Warnings when runs of one study came from different code or library versions."""
    rows = [r for r in results.results.to_pylist() if r["status"] != "missing"]
    notes = []
    commits = {r["git_commit"] for r in rows if r["git_commit"]}
    if len(commits) > 1:
        notes.append(f"Runs come from {len(commits)} different git commits.")
    if any(r["git_commit"] is None for r in rows):
        notes.append("Some runs have no recorded git commit (uncommitted or non-git checkout).")
    dirty = sum(1 for r in rows if (r["git_commit"] or "").endswith("-dirty"))
    if dirty:
        notes.append(f"{dirty} run(s) were made from a checkout with uncommitted changes "
                     "(commit marked -dirty).")
    versions = {r["versions_json"] for r in rows if r["versions_json"]}
    if len(versions) > 1:
        notes.append(f"Runs used {len(versions)} different sets of library versions.")
    return notes


# --------------------------------------------------------------------------------------------
# inline SVG
# --------------------------------------------------------------------------------------------

def _svg_mean_bars(results: StudyResults, study: Mapping) -> Markup | None:
    """Horizontal bars of each method's mean test top-1 (0..100 axis), as inline SVG.

    Built by hand rather than through the template, so every text node and attribute is escaped
    here with html.escape. No xmlns attribute: inline SVG in HTML does not need it, and the page
    must not contain any URL.
    """
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    bars = [(m, summary[m]["mean"]) for m in study_methods(study)
            if m in summary and summary[m]["mean"] is not None]
    if not bars:
        return None
    label_w, plot_w, bar_h, gap, top, bottom = 150, 420, 18, 6, 10, 30
    height = top + len(bars) * (bar_h + gap) + bottom
    width = label_w + plot_w + 60
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    parts = [f'<svg class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{esc("Mean test top-1 per method")}">']
    axis_y = top + len(bars) * (bar_h + gap)
    for tick in range(0, 101, 20):
        x = label_w + plot_w * tick / 100
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" class="tick">{tick}</text>')
    best = max(v for _, v in bars)
    for i, (method, value) in enumerate(bars):
        y = top + i * (bar_h + gap)
        w = plot_w * value / 100
        cls = "bar best" if value == best else "bar"
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h - 5}" class="label">{esc(method)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.2f}" height="{bar_h}" class="{cls}" '
                     f'data-method="{esc(method)}" data-value="{esc(repr(value))}">'
                     f'<title>{esc(method)}: {esc(_fmt_acc(value))}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.2f}" y="{y + bar_h - 5}" class="value">'
                     f'{esc(_fmt_acc(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------

def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("vpeft.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,   # a typo in the template fails loudly
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _report_date(provenance: Mapping[str, Any]) -> str:
    """The page date: provenance['date'], else $SOURCE_DATE_EPOCH (reproducible), else now."""
    if provenance.get("date"):
        return str(provenance["date"])
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M UTC")


def render_html(results: StudyResults, study: Mapping, *, published_csv: Path | None = None,
                provenance: Mapping | None = None) -> str:
    """The report page as a string (see :func:`render_report`)."""
    provenance = dict(provenance or {})
    published = _published_table(results, study, read_published(published_csv)) \
        if published_csv is not None else None
    tasks = study_tasks(study)
    template = _environment().get_template("report.html.j2")
    return template.render(
        study=study,
        title=study.get("title") or f"vpeft study {study['name']}",
        date=_report_date(provenance),
        task_info=[{"name": str(t.get("name")), "group": GROUP_TITLES.get(str(t.get("group")), ""),
                    "num_classes": t.get("num_classes"), "description": t.get("description") or ""}
                   for t in study.get("tasks") or []],
        num_tasks=len(tasks),
        main=_vtab_table(results, study),
        chart=_svg_mean_bars(results, study),
        chart_omitted=[r["method"] for r in results.summary.to_pylist() if r["mean"] is None],
        hparams=_hparam_rows(results, study),
        grid=_grid_rows(results),
        published=published,
        published_title=PUBLISHED_TITLE,
        provenance=[(str(k), _fmt_hparam(v)) for k, v in provenance.items() if k != "date"],
        runs=_provenance_rows(results, study),
        notes=_consistency_notes(results),
        config=_representative_config(results, study),
    )


def render_report(results: StudyResults, study: Mapping, out_html: Path, *,
                  published_csv: Path | None = None, provenance: Mapping | None = None) -> None:
    """Render the study report to ``out_html`` (one self-contained page, written atomically).

    ``published_csv`` (``method,task,test_top1``) adds a published-reference section when it has
    rows for the study's tasks; ``provenance`` (e.g. ``{"generated_by": ..., "date": ...}``) is
    listed in the provenance section. The page is rendered completely before anything is written,
    so a failure leaves no partial file.
    """
    page = render_html(results, study, published_csv=published_csv, provenance=provenance)
    with atomic_path(Path(out_html)) as tmp:
        tmp.write_text(page, encoding="utf-8")

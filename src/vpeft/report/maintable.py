"""The main results table, shaped by the kind of study, with the uncertainty of every number.

* VTAB (VTAB-1K and its synthetic miniature): tasks under their VTAB group, group means and the
  mean over tasks.
* Many-shot: one column block per dataset, its training-set sizes in increasing order; no group
  means and no mean over tasks (averaging datasets and sizes means nothing).
* Robustness: the in-distribution test accuracy of the final runs; the shifts are in the
  robustness section, by evaluation set.

A cell shows the mean over seeds (``± std`` with two or more seeds) and, below it, the 95 %
bootstrap interval from ``results.stats``; a value not significantly above chance is marked
"≈ chance". ``data-value`` is the unrounded mean over seeds. Below the table, a bar chart of
each method's mean test top-1 (:func:`mean_bars`). A task whose test set shares images with its
training data (a dataset's own duplicates, recorded by ``prepare``) shows their count under its
accuracies.
"""
from __future__ import annotations

import html
from typing import Any, Mapping

from markupsafe import Markup

from vpeft.data.duplicates import duplicate_note
from vpeft.kinds import MainColumns
from vpeft.report.collect import StudyResults, report_shape, study_methods, study_tasks
from vpeft.report.numbers import fmt_acc
from vpeft.report.view import GROUP_TITLES, Cell, Row, VtabTable, fmt_params, fmt_pct, \
    mark_best, present_groups, exact_text

__all__ = ["main_table", "mean_bars", "stats_index"]

StatsKey = tuple[str, str, str]   # (scope_kind, scope, method)


def stats_index(results: StudyResults) -> dict[StatsKey, dict[str, Any]]:
    """``results.stats`` rows keyed by (scope_kind, scope, method); empty without statistics."""
    if results.stats is None:
        return {}
    return {(r["scope_kind"], r["scope"], r["method"]): r for r in results.stats.to_pylist()}


def _size_label(subset: str, images: int) -> str:
    return f"all ({images})" if subset == "full" else f"{images}"


def _columns(study: Mapping, columns: MainColumns
             ) -> tuple[list[tuple[str, list[str]]], dict[str, str], list[str], bool]:
    """(column groups, header per task, group keys with a mean column, show the mean column)."""
    tasks = study_tasks(study)
    if columns is MainColumns.DATASET_SIZES:
        meta: Mapping[str, Mapping[str, Any]] = study.get("manyshot") or {}
        blocks: dict[str, list[tuple[int, str]]] = {}
        for task, _ in tasks:
            m = meta.get(task, {})
            blocks.setdefault(str(m.get("dataset", task)), []).append(
                (int(m.get("train_images", 0)), task))
        groups = [(f"{d} · training images", [t for _, t in sorted(ts)])
                  for d, ts in blocks.items()]
        labels = {t: _size_label(str(meta.get(t, {}).get("subset", "")),
                                 int(meta.get(t, {}).get("train_images", 0)))
                  for t, _ in tasks if t in meta}
        return groups, labels, [], False
    if columns is MainColumns.IN_DISTRIBUTION:
        return [("In-distribution test", [t for t, _ in tasks])], {}, [], False
    present = present_groups(tasks)
    return ([(GROUP_TITLES[g], ts) for g, ts in present], {}, [g for g, _ in present], True)


def _stat_cell(stat: Mapping[str, Any] | None, value: float | None, column: str,
               task: str | None, method: str, classes: list[str], why_missing: str) -> Cell:
    """A mean over seeds (from results / summary: one source for every shown mean) with the
    ± std, the interval and the chance flag of its ``stats`` row."""
    if value is None:
        return Cell("–", None, column, task, method, classes, why_missing)
    text = fmt_acc(value)
    cell = Cell(text, exact_text(value), column, task, method, classes + ["rankable"])
    if stat is None:
        return cell
    if stat["std"] is not None:
        cell.text = f"{text} ± {fmt_acc(stat['std'])}"
    cell.note = f"[{fmt_acc(stat['ci_low'])}, {fmt_acc(stat['ci_high'])}]"
    seeds = stat["num_seeds"]
    cell.title = (f"mean over {seeds} seed(s); 95 % interval over {stat['ci_kind']} "
                  f"({stat['num_resamples']} paired bootstrap resamples)")
    if not stat["above_chance"]:
        cell.classes.append("at-chance")
        cell.note += " ≈ chance"
        cell.title += (f"; not significantly above chance ({fmt_acc(stat['chance'])} %, "
                       f"Holm-corrected p = {stat['p_above_chance_holm']:.3g})")
    return cell


def main_table(results: StudyResults, study: Mapping) -> VtabTable:
    """The study's results table (see the module docstring)."""
    groups, labels, mean_groups, show_mean = _columns(study, report_shape(study).columns)
    methods = study_methods(study)
    by_key = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    stats = stats_index(results)
    rows: list[Row] = []
    for method in methods:
        s = summary.get(method, {})
        cells = []
        for _, ts in groups:
            for t in ts:
                r = by_key.get((t, method))
                if r is None or r["status"] == "missing":
                    cells.append(Cell("–", None, "test_top1", t, method, ["num", "missing"],
                                      "run missing"))
                elif r["status"] == "diverged":
                    cells.append(Cell("diverged", None, "test_top1", t, method,
                                      ["num", "diverged"]))
                else:
                    mean = r["test_top1_mean"] if r.get("test_top1_mean") is not None \
                        else r["test_top1"]
                    cells.append(_stat_cell(stats.get(("task", t, method)), mean, "test_top1",
                                            t, method, ["num"], "no test accuracy"))
        why = "not every task of this column has a test accuracy"
        for g in mean_groups:
            cells.append(_stat_cell(stats.get(("group", g, method)), s.get(g), g, None, method,
                                    ["num", "mean-col"], why))
        if show_mean:
            cells.append(_stat_cell(stats.get(("overall", "mean", method)), s.get("mean"),
                                    "mean", None, method, ["num", "mean-col"], why))
        cells.append(Cell(fmt_params(s.get("trainable_params")), exact_text(s.get("trainable_params")),
                          "trainable_params", None, method, ["num", "params"]))
        cells.append(Cell(fmt_pct(s.get("trainable_pct")), exact_text(s.get("trainable_pct")),
                          "trainable_pct", None, method, ["num", "params"]))
        rows.append(Row(method, cells, method=method))
    mark_best(rows)
    return VtabTable(groups=groups, mean_groups=[GROUP_TITLES[g] for g in mean_groups],
                     extra_headers=["Trainable params", "% of backbone"], rows=rows,
                     task_labels=labels, show_mean=show_mean,
                     footer=_chance_footer(results, groups, mean_groups, show_mean, stats)
                     + _duplicates_footer(study, groups, len(mean_groups) + show_mean))


def _duplicates_footer(study: Mapping, groups: list[tuple[str, list[str]]], means: int) -> list[Row]:
    """One row, when a task's test set shares images with its training data (recorded, not
    refused: vpeft.data.duplicates): their count under the task's accuracies."""
    records = {str(t.get("name")): (t.get("content") or {}).get("duplicates") or {}
               for t in study.get("tasks") or []}
    if not any(r.get("test_in_training") for r in records.values()):
        return []
    cells = []
    for _, ts in groups:
        for t in ts:
            r = records.get(t) or {}
            n = int(r.get("test_in_training") or 0)
            cell = Cell(str(n) if n else "", str(n), "test_in_training", t, None, ["num", "chance"])
            if n:
                cell.title = (f"{duplicate_note(r)} (pixel-identical; {r.get('policy')}): "
                              "the accuracy counts them")
            cells.append(cell)
    cells += [Cell("", None, "test_in_training") for _ in range(means + 2)]
    return [Row("test images also in training", cells)]


def _chance_footer(results: StudyResults, groups: list[tuple[str, list[str]]],
                   mean_groups: list[str], show_mean: bool,
                   stats: Mapping[StatsKey, Mapping[str, Any]]) -> list[Row]:
    """One row: each task's chance level (majority-class rate of its test labels)."""
    if results.chance is None or results.chance.num_rows == 0:
        return []
    chance = {r["task"]: r for r in results.chance.to_pylist()}

    def scope_chance(kind: str, scope: str) -> float | None:
        return next((r["chance"] for (k, sc, _), r in stats.items() if (k, sc) == (kind, scope)),
                    None)

    cells = []
    for _, ts in groups:
        for t in ts:
            c = chance.get(t)
            value = c["chance"] if c else None
            cell = Cell(fmt_acc(value), exact_text(value), "chance", t, None, ["num", "chance"])
            if c and c["uniform_chance"] is not None:
                cell.title = (f"majority class of the {c['num_test']} test labels; "
                              f"1/{c['num_classes']} = {fmt_acc(c['uniform_chance'])} %")
            cells.append(cell)
    for g in mean_groups:
        v = scope_chance("group", g)
        cells.append(Cell(fmt_acc(v), exact_text(v), "chance", None, None, ["num", "mean-col", "chance"]))
    if show_mean:
        v = scope_chance("overall", "mean")
        cells.append(Cell(fmt_acc(v), exact_text(v), "chance", None, None, ["num", "mean-col", "chance"]))
    cells += [Cell("", None, "chance"), Cell("", None, "chance")]
    return [Row("chance (majority class)", cells)]


def mean_bars(results: StudyResults, study: Mapping) -> Markup | None:
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
                     f'<title>{esc(method)}: {esc(fmt_acc(value))}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.2f}" y="{y + bar_h - 5}" class="value">'
                     f'{esc(fmt_acc(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

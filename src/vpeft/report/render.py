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
import functools
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import jinja2
from markupsafe import Markup

from vpeft.io import atomic_dir, atomic_path
from vpeft.layout import REPORT_INDEX
from vpeft.report import svg
from vpeft.report.collect import GROUPS, StudyResults, study_kind, study_methods, study_tasks
from vpeft.report.advice import Advice, recommendations  # noqa: F401  (re-exported)
from vpeft.report.cost import cost_view
from vpeft.report.crosstask import confidence_summary, mean_overlap_heatmap, mean_seed_noise, \
    mistakes_summary
from vpeft.report.pages import TASK_DIR, split_columns, task_anchor, task_page
from vpeft.report.landscape import Landscape, landscape
from vpeft.report.maintable import main_table
from vpeft.report.seednoise import seed_noise_view
from vpeft.report.numbers import fmt_acc, round1
from vpeft.report.view import (  # re-exported: the section modules and the tests use them
    GROUP_TITLES, Cell, Row, VtabTable, acc_cell, fmt_delta, fmt_hparam, fmt_params,
    fmt_pct, fmt_seconds, mark_best, mean_cell, present_groups, exact_text, pareto_front, td)

PUBLISHED_TITLE = "Published (ViT-B/16 IN-21K)"
_NOT_COVERED = "the published reference does not cover every task of this column"


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
        hp_text = ", ".join(f"{k}={fmt_hparam(v)}" for k, v in sorted(hp.items())) or "–"

        def cell(text: str, value: Any, column: str, *classes: str) -> Cell:
            return Cell(text, exact_text(value), column, task, method, list(classes))

        rows.append(Row(task, [
            cell(method, method, "method"),
            cell(r["status"], r["status"], "status", f"status-{r['status']}"),
            cell(r["point"] or "–", r["point"], "point", "mono"),
            cell("–" if r["lr"] is None else f"{r['lr']:g}", r["lr"], "lr", "num"),
            cell("–" if r["weight_decay"] is None else f"{r['weight_decay']:g}",
                 r["weight_decay"], "weight_decay", "num"),
            cell(hp_text, r["hparams_json"], "hparams_json", "mono"),
            cell(fmt_acc(r["val_top1"]), r["val_top1"], "val_top1", "num"),
            cell("–" if r["num_grid_points"] is None else str(r["num_grid_points"]),
                 r["num_grid_points"], "num_grid_points", "num"),
            cell("–" if r["num_diverged"] is None else str(r["num_diverged"]),
                 r["num_diverged"], "num_diverged", "num"),
            cell(fmt_seconds(r["wall_time_s"]), r["wall_time_s"], "wall_time_s", "num"),
            cell(fmt_seconds(r["grid_wall_time_s"]), r["grid_wall_time_s"], "grid_wall_time_s",
                 "num"),
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
            Cell(fmt_acc(g["val_top1"]), exact_text(g["val_top1"]), "val_top1", task, method, ["num"]),
            Cell(fmt_seconds(g["wall_time_s"]), exact_text(g["wall_time_s"]), "wall_time_s", task,
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
    groups = present_groups(shown)
    rows: list[Row] = []
    for method in rows_methods:
        cells: list[Cell] = []
        deltas: list[float] = []
        for _, ts in groups:
            for t in ts:
                value = published.get((t, method))
                cell = Cell(fmt_acc(value), exact_text(value), "published_top1", t, method,
                            ["num"] + (["rankable"] if value is not None else ["missing"]))
                mine = ours.get((t, method))
                if value is not None and mine is not None and mine["test_top1"] is not None:
                    d = mine["test_top1"] - value
                    deltas.append(d)
                    cell.note, cell.delta = f"Δ {fmt_delta(d)}", repr(d)
                cells.append(cell)
        for g, _ in groups:
            all_group = [t for t, tg in tasks if tg == g]
            vals = [published.get((t, method)) for t in all_group]
            mean = (math.fsum(vals) / len(vals)
                    if all(v is not None for v in vals) else None)  # type: ignore[arg-type]
            cells.append(mean_cell(mean, g, method, _NOT_COVERED))
        vals = [published.get((t, method)) for t, _ in tasks]
        mean = math.fsum(vals) / len(vals) if all(v is not None for v in vals) else None  # type: ignore[arg-type]
        cells.append(mean_cell(mean, "mean", method, _NOT_COVERED))
        d_mean = math.fsum(deltas) / len(deltas) if deltas else None
        cells.append(Cell(fmt_delta(d_mean), exact_text(d_mean),
                          "delta_mean", None, method, ["num"],
                          title=f"mean of (ours − published) over {len(deltas)} task(s)"))
        rows.append(Row(method, cells, method=method))
    mark_best(rows)
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


def _input_data_rows(study: Mapping) -> list[Row]:
    """Per task, how its train800val200 was stored and whether it equals train800 + val200 by
    content (vpeft.data.vtab.content_report, recorded in the prepared task's manifest)."""
    rows: list[Row] = []
    for t in study.get("tasks") or []:
        content = t.get("content")
        if not content:
            continue
        task = str(t.get("name"))
        differs = content.get("train800val200_union") == "differs"
        union = ("equals train800 + val200" if not differs else
                 f"differs: {content.get('missing_from_train800val200', 0)} missing, "
                 f"{content.get('extra_in_train800val200', 0)} extra "
                 f"({content.get('relabelled', 0)} relabelled)")
        notes = list(content.get("examples") or []) + [
            f"allowed duplicate: {m}" for m in content.get("allowed_overlaps") or []]
        rows.append(Row(task, [
            Cell(str(content.get("train800val200_layout", "–")), column="layout", task=task),
            Cell(union, column="union", task=task, classes=["warn"] if differs else []),
            Cell("; ".join(notes) or "–", column="notes", task=task, classes=["small"]),
        ], task=task))
    return rows


# The per-run facts of the provenance section: (results column, label, display text).
_FACTS: tuple[tuple[str, str], ...] = (
    ("git_commit", "Git commit"), ("versions_json", "Library versions"),
    ("protocol", "Protocol"), ("seed", "Seed (final/)"), ("num_seeds", "Seeds with a result"))


def _fact_text(column: str, value: Any) -> str:
    if column == "git_commit":
        return _short_commit(value)
    if column == "versions_json":
        return _versions_text(value)
    return "–" if value is None else str(value)


def shared_facts(results: StudyResults, study: Mapping) -> tuple[list[Row], list[Row]]:
    """The provenance of every run without repeating it 304 times: per fact, the value most runs
    share (``shared``: label, text, how many runs), and one row per run whose value differs
    from it (``exceptions``: task, method, fact, value). Missing runs have no provenance."""
    runs = [(t, m, r) for t, m, r in _runs_in_study_order(results, study)
            if r["status"] != "missing"]
    shared, exceptions = [], []
    for column, label in _FACTS:
        counts: dict[Any, int] = {}
        for _, _, r in runs:
            counts[r[column]] = counts.get(r[column], 0) + 1
        if not counts:
            continue
        common = max(counts, key=lambda v: counts[v])   # first seen wins a tie (study order)
        scope = (f"all {len(runs)} runs" if counts[common] == len(runs)
                 else f"{counts[common]} of {len(runs)} runs; the others below")
        shared.append(Row(label, [
            Cell(_fact_text(column, common), exact_text(common), column,
                 classes=["mono" if column == "git_commit" else "wrap"],
                 title=str(common) if column == "git_commit" else None),
            Cell(scope, str(counts[common]), "num_runs", classes=["small"])]))
        for task, method, r in runs:
            if r[column] != common:
                exceptions.append(Row(task, [
                    Cell(method, method, "method", task, method),
                    Cell(label, column, "fact", task, method),
                    Cell(_fact_text(column, r[column]), exact_text(r[column]), column, task, method,
                         ["wrap"])], method=method, task=task))
    return shared, exceptions


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


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``{"a.b": json text}``; lists and scalars are leaves."""
    if isinstance(value, Mapping) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def _config_differences(results: StudyResults, study: Mapping,
                        shown: tuple[str, str, str] | None) -> list[Row]:
    """Per run (study order): the resolved-config settings that differ from the shown config.

    The cell's ``data-value`` is the run's whole resolved config (``config_json``), so every
    run's configuration is on the page, while the text stays short.
    """
    if shown is None:
        return []
    reference = _flatten(json.loads(shown[2]))
    rows = []
    for task, method, r in _runs_in_study_order(results, study):
        if not r["config_json"]:
            continue
        mine = _flatten(json.loads(r["config_json"]))
        diff = [f"{k}={mine[k]}" for k in sorted(mine) if reference.get(k) != mine[k]]
        diff += [f"{k} absent" for k in sorted(reference) if k not in mine]
        rows.append(Row(task, [
            Cell(method, method, "method", task, method),
            Cell("; ".join(diff) or "same as shown", r["config_json"], "config_json", task,
                 method, ["mono", "small"]),
        ], method=method, task=task))
    return rows


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
# different mistakes (per-task analysis tables)
# --------------------------------------------------------------------------------------------

# The pairwise matrices drawn per task: (table, column, title); every value is in [0, 1].
PAIR_HEATMAPS: tuple[tuple[str, str, str], ...] = (
    ("agreement", "agreement", "prediction agreement"),
    ("agreement", "error_overlap", "error overlap (Jaccard)"),
    ("confident_overlap", "confident_right_overlap", "confidently-right overlap (Jaccard)"),
    ("confident_overlap", "confident_wrong_overlap", "confidently-wrong overlap (Jaccard)"),
)


@dataclass
class TaskAnalysis:
    """The "Different mistakes" and "High-confidence predictions" views of one task."""

    task: str
    heatmaps: list[Markup]          # the PAIR_HEATMAPS present for this task, in that order
    oracle: list[Row]
    ensembles: list[Row]
    threshold: float | None = None  # the confidence threshold of this task's analysis
    confidence_chart: Markup | None = None
    confidence: list[Row] = field(default_factory=list)


def _ordered_methods(names: Sequence[str], study: Mapping) -> list[str]:
    """``names`` deduplicated, in study order first, unknown names after in order of appearance."""
    seen = list(dict.fromkeys(names))
    order = {m: i for i, m in enumerate(study_methods(study))}
    return sorted(seen, key=lambda m: (order.get(m, len(order)), seen.index(m)))


def _rows_of(results: StudyResults, name: str, task: str) -> list[dict[str, Any]]:
    """The rows of analysis table ``name`` for ``task`` (each table is converted once)."""
    return _analysis_index(results).get(name, {}).get(task, [])


_INDEX_CACHE: dict[int, tuple[StudyResults, dict[str, dict[str, list[dict[str, Any]]]]]] = {}


def _analysis_index(results: StudyResults) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{table: {task: [row, ...]}}``: every analysis table turned into Python rows once per
    render, not once per task and heat map (19 tasks x 16 methods made that quadratic)."""
    cached = _INDEX_CACHE.get(id(results))
    if cached is not None and cached[0] is results:
        return cached[1]
    index: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, table in results.analysis.items():
        by_task: dict[str, list[dict[str, Any]]] = {}
        for r in table.to_pylist():
            by_task.setdefault(r["task"], []).append(r)
        index[name] = by_task
    _INDEX_CACHE.clear()   # only the results being rendered are kept
    _INDEX_CACHE[id(results)] = (results, index)
    return index


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _num_cell(value: Any, column: str, task: str, fmt=None, method: str | None = None,
              extra: Sequence[str] = ()) -> Cell:
    v = _finite_or_none(value)
    text = (fmt or fmt_acc)(v)
    return Cell(text, exact_text(v), column, task, method, ["num", *extra])


def _analysis_sections(results: StudyResults, study: Mapping) -> list[TaskAnalysis]:
    if not results.analysis:
        return []
    present: list[str] = []
    for table in results.analysis.values():
        present.extend(table.column("task").to_pylist())
    order = [t for t, _ in study_tasks(study)]
    tasks = [t for t in order if t in set(present)]
    tasks += [t for t in dict.fromkeys(present) if t not in order]
    out: list[TaskAnalysis] = []
    for task in tasks:
        heatmaps = []
        for name, column, label in PAIR_HEATMAPS:
            pairs = _rows_of(results, name, task)
            if not pairs:
                continue
            methods = _ordered_methods([r["method_a"] for r in pairs]
                                       + [r["method_b"] for r in pairs], study)
            values = {(r["method_a"], r["method_b"]): _finite_or_none(r[column]) for r in pairs}
            heatmaps.append(svg.heatmap(task, methods, values, label=label, column=column,
                                        empty=_empty_pairs(results, task, column, pairs)))
        oracle_rows = []
        for r in _rows_of(results, "oracle", task):
            gap = (r["oracle_top1"] - r["best_single_top1"]
                   if r["oracle_top1"] is not None and r["best_single_top1"] is not None
                   else None)
            oracle_rows.append(Row(task, [
                _num_cell(r["oracle_top1"], "oracle_top1", task),
                Cell(r["best_single"] or "–", r["best_single"], "best_single", task,
                     r["best_single"]),
                _num_cell(r["best_single_top1"], "best_single_top1", task),
                _num_cell(gap, "oracle_gain", task, fmt_delta),
                _num_cell(r["all_wrong"], "all_wrong", task),
                Cell(str(r["n_methods"]), exact_text(r["n_methods"]), "n_methods", task, None, ["num"]),
            ], task=task))
        ens_rows = []
        for r in _rows_of(results, "ensembles", task):
            gains = []
            for col in ("gain_over_best_member", "gain_over_best_single_by_val"):
                v = _finite_or_none(r[col])
                sign = [] if v is None else ["gain-pos" if v > 0 else "gain-neg" if v < 0 else ""]
                gains.append(_num_cell(v, col, task, fmt_delta, extra=[c for c in sign if c]))
            ens_rows.append(Row(r["rule"], [
                Cell(r["combiner"], r["combiner"], "combiner", task),
                Cell(str(r["k"]), exact_text(r["k"]), "k", task, None, ["num"]),
                Cell(", ".join(r["members"].split(",")) if r["members"] else "–", r["members"],
                     "members", task, None, ["small"]),
                _num_cell(r["test_top1"], "test_top1", task),
                _num_cell(r["best_member_test_top1"], "best_member_test_top1", task,
                          method=r["best_member"]),
                gains[0],
                Cell(r["best_single_by_val"] or "–", r["best_single_by_val"],
                     "best_single_by_val", task, r["best_single_by_val"]),
                gains[1],
            ], task=task))
        threshold, chart, conf_rows = _confidence_view(results, study, task)
        out.append(TaskAnalysis(task, heatmaps, oracle_rows, ens_rows, threshold, chart,
                                conf_rows))
    return out


def _empty_pairs(results: StudyResults, task: str, column: str,
                 pairs: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """Pairs whose Jaccard ``column`` compares two empty sets (stored as 1.0 by convention)."""
    if column == "error_overlap":
        size = {}
        for r in pairs:
            size[r["method_a"]], size[r["method_b"]] = r["n_errors_a"], r["n_errors_b"]
    elif column in ("confident_right_overlap", "confident_wrong_overlap"):
        kind = column.removesuffix("_overlap")
        size = {r["method"]: r[kind] for r in _rows_of(results, "confidence", task)}
    else:
        return set()
    return {(r["method_a"], r["method_b"]) for r in pairs
            if size.get(r["method_a"]) == 0 and size.get(r["method_b"]) == 0}


def _confidence_view(results: StudyResults, study: Mapping, task: str
                     ) -> tuple[float | None, Markup | None, list[Row]]:
    """(threshold, right/wrong confidence histograms, per-method table) of one task."""
    from vpeft.analysis import HIST_BINS  # local: the analysis module pulls in numpy

    conf = {r["method"]: r for r in _rows_of(results, "confidence", task)}
    if not conf:
        return None, None, []
    acc = {r["method"]: r for r in _rows_of(results, "accuracy", task)}
    methods = _ordered_methods(list(conf), study)
    thresholds = {conf[m]["threshold"] for m in methods}
    threshold = thresholds.pop() if len(thresholds) == 1 else None
    if threshold is None:
        raise ValueError(f"task {task}: the confidence table mixes thresholds")
    panels = [svg.ConfidencePanel(m, [conf[m][f"hist_right_{i}"] for i in range(HIST_BINS)],
                                  [conf[m][f"hist_wrong_{i}"] for i in range(HIST_BINS)])
              for m in methods]
    rows = []
    for m in methods:
        c, a = conf[m], acc.get(m, {})
        rows.append(Row(m, [
            _num_cell(a.get("test_top1"), "test_top1", task, method=m),
            _num_cell(a.get("mean_confidence"), "mean_confidence", task, _fmt_frac, m),
            _num_cell(a.get("ece"), "ece", task, fmt_acc, m),
            _num_cell(c["n_confident"], "n_confident", task, _fmt_count, m),
            _num_cell(c["confident_right"], "confident_right", task, _fmt_count, m),
            _num_cell(c["confident_wrong"], "confident_wrong", task, _fmt_count, m),
            _num_cell(c["confident_precision"], "confident_precision", task, fmt_acc, m),
        ], method=m, task=task))
    return threshold, svg.confidence_histograms(task, panels, threshold, columns=6), rows


def _fmt_frac(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_count(value: float | None) -> str:
    return "–" if value is None else f"{int(value)}"


def _ensemble_overview(results: StudyResults, study: Mapping) -> tuple[list[str], list[Row]]:
    """Gain of each ensemble (rule x combiner) over the best single method by validation, one
    column per task plus the mean over the tasks that have it. Nothing is chosen here."""
    table = results.analysis.get("ensembles")
    if table is None or table.num_rows == 0:
        return [], []
    records = table.to_pylist()
    order = [t for t, _ in study_tasks(study)]
    tasks = [t for t in order if any(r["task"] == t for r in records)]
    tasks += [t for t in dict.fromkeys(r["task"] for r in records) if t not in order]
    gains = {(r["task"], r["rule"], r["combiner"]): _finite_or_none(
        r["gain_over_best_single_by_val"]) for r in records}
    keys = list(dict.fromkeys((r["rule"], r["combiner"]) for r in records))
    rows = []
    for rule, combiner in keys:
        cells = []
        for t in tasks:
            v = gains.get((t, rule, combiner))
            sign = [] if v is None or v == 0 else ["gain-pos" if v > 0 else "gain-neg"]
            cell = _num_cell(v, "gain_over_best_single_by_val", t, fmt_delta, extra=sign)
            cell.title = f"{rule} / {combiner}"
            cells.append(cell)
        values = [gains[(t, rule, combiner)] for t in tasks
                  if gains.get((t, rule, combiner)) is not None]
        mean = math.fsum(values) / len(values) if values else None
        cells.append(Cell(fmt_delta(mean), exact_text(mean), "mean_gain", None, None,
                          ["num", "mean-col"], title=f"mean over {len(values)} task(s)"))
        rows.append(Row(f"{rule} · {combiner}", cells))
    return tasks, rows


# --------------------------------------------------------------------------------------------
# tuning landscapes
# --------------------------------------------------------------------------------------------

def _landscape_inputs(results: StudyResults, study: Mapping
                      ) -> dict[str, list[tuple[str, list[dict[str, Any]]]]]:
    """Per task, (method, grid rows) in study order: what :func:`_task_landscapes` draws."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in results.grid.to_pylist():
        by_key.setdefault((g["task"], g["method"]), []).append(g)
    return {task: [(m, by_key.get((task, m), [])) for m in study_methods(study)]
            for task, _ in study_tasks(study)}


def _task_landscapes(task: str, inputs: Sequence[tuple[str, list[dict[str, Any]]]]
                     ) -> list[Landscape]:
    """Each method's val200 landscape over its grid (drawn in the worker rendering the page)."""
    return [c for m, rows in inputs if (c := landscape(task, m, rows, fmt_acc)) is not None]


# --------------------------------------------------------------------------------------------
# accuracy vs trainable parameters; which method should I use?
# --------------------------------------------------------------------------------------------

def _scatter_points(results: StudyResults, study: Mapping) -> list[svg.ScatterPoint]:
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    data = {m: (float(summary[m]["trainable_params"]), float(summary[m]["mean"]))
            for m in study_methods(study)
            if m in summary and summary[m]["mean"] is not None
            and summary[m]["trainable_params"] is not None}
    front = pareto_front(data)
    return [svg.ScatterPoint(m, p, a, m in front) for m, (p, a) in data.items()]


def _svg_scatter(results: StudyResults, study: Mapping) -> Markup | None:
    return svg.scatter(_scatter_points(results, study), fmt_params, fmt_acc)


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
                     f'<title>{esc(method)}: {esc(fmt_acc(value))}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.2f}" y="{y + bar_h - 5}" class="value">'
                     f'{esc(fmt_acc(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------

def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vpeft.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,   # a typo in the template fails loudly
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["task_page"] = task_page   # the templates link tasks through the one naming rule
    env.globals["td"] = td                 # a table cell, built in Python (view.td)
    return env


def _report_date(provenance: Mapping[str, Any]) -> str:
    """The page date: provenance['date'], else $SOURCE_DATE_EPOCH (reproducible), else now."""
    if provenance.get("date"):
        return str(provenance["date"])
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M UTC")


# The widest a main / published table part may be, in value columns, so that it fits a
# 1400-px window (a main-table cell holds "88.5 ± 0.3" over its interval; a published one "88.5"
# over its delta); measured in Chromium by tests/test_report_layout.py.
MAIN_COLUMNS = 12
PUBLISHED_COLUMNS = 16


def _task_info(study: Mapping) -> list[dict[str, Any]]:
    return [{"name": str(t.get("name")), "group": GROUP_TITLES.get(str(t.get("group")), ""),
             "num_classes": t.get("num_classes"), "description": t.get("description") or "",
             "page": task_page(str(t.get("name"))), "anchor": task_anchor(str(t.get("name")))}
            for t in study.get("tasks") or []]


def _common_context(results: StudyResults, study: Mapping, provenance: Mapping) -> dict:
    return dict(study=study, title=study.get("title") or f"vpeft study {study['name']}",
                date=_report_date(provenance), kind=study_kind(study),
                task_info=_task_info(study))


def _landing_context(results: StudyResults, study: Mapping, published_csv: Path | None,
                     provenance: Mapping) -> dict:
    from vpeft.report.manyshot import manyshot_curves
    from vpeft.report.robustness import robustness_view

    published = _published_table(results, study, read_published(published_csv)) \
        if published_csv is not None else None
    tasks = study_tasks(study)
    main = main_table(results, study)
    config = _representative_config(results, study)
    seed_noise = [(t, v) for t, _ in tasks
                  if (v := seed_noise_view(results.seed_noise, t, study_methods(study)))]
    analysis_tasks = _analysis_tasks(results, study)
    return _common_context(results, study, provenance) | dict(
        num_tasks=len(tasks),
        main=main,
        main_parts=split_columns(main, MAIN_COLUMNS),
        chart=_svg_mean_bars(results, study),
        chart_omitted=[r["method"] for r in results.summary.to_pylist() if r["mean"] is None],
        published=published,
        published_parts=split_columns(published, PUBLISHED_COLUMNS) if published else [],
        published_title=PUBLISHED_TITLE,
        provenance=[(str(k), fmt_hparam(v)) for k, v in provenance.items() if k != "date"],
        shared_facts=(facts := shared_facts(results, study))[0],
        fact_exceptions=facts[1],
        input_data=_input_data_rows(study),
        notes=_consistency_notes(results),
        config=config,
        ensemble_overview=_ensemble_overview(results, study),
        mistakes_summary=mistakes_summary(_analysis_index(results), analysis_tasks),
        overlap_chart=mean_overlap_heatmap(_analysis_index(results), study_methods(study)),
        confidence_summary=confidence_summary(_analysis_index(results), study_methods(study)),
        analysis_tasks=analysis_tasks,
        scatter=_svg_scatter(results, study),
        advice=recommendations(results, study),
        manyshot=manyshot_curves(results, study),  # [] unless the study is a many-shot one
        robustness=robustness_view(results, study),  # [] unless the runs have WiSE-FT curves
        cost=cost_view(results, study),
        seed_noise_mean=mean_seed_noise(seed_noise),
        stats=results.stats is not None and results.stats.num_rows > 0,
        ci_kinds=sorted({r["ci_kind"] for r in results.stats.to_pylist()})
        if results.stats is not None else [],
    )


def _analysis_tasks(results: StudyResults, study: Mapping) -> list[str]:
    """Tasks with analysis tables: study order first, then any others in table order."""
    present = list(dict.fromkeys(t for by_task in _analysis_index(results).values()
                                 for t in by_task))
    order = [t for t, _ in study_tasks(study)]
    return [t for t in order if t in present] + [t for t in present if t not in order]


def _task_results_rows(main: VtabTable, task: str) -> list[Row]:
    """The main table's cells of one task (one row per method), for its page."""
    flat = [t for _, ts in main.groups for t in ts]
    if task not in flat:
        return []
    col = flat.index(task)
    return [Row(r.label, [r.cells[col]], method=r.method, task=task)
            for r in main.rows + main.footer]


def _task_contexts(results: StudyResults, study: Mapping, provenance: Mapping
                   ) -> Iterator[tuple[str, dict]]:
    """(path relative to the report dir, template context) of every task page."""
    common = _common_context(results, study, provenance)
    main = main_table(results, study)
    analysis = {a.task: a for a in _analysis_sections(results, study)}
    landscapes = _landscape_inputs(results, study)
    hparams, grid = _hparam_rows(results, study), _grid_rows(results)
    config = _representative_config(results, study)
    diffs = _config_differences(results, study, config)
    names = [t for t, _ in study_tasks(study)]
    for i, (task, group) in enumerate(study_tasks(study)):
        yield task_page(task), common | dict(
            task=task, group=GROUP_TITLES.get(group, ""),
            info=next((t for t in common["task_info"] if t["name"] == task), None),
            back=f"../{REPORT_INDEX}#{task_anchor(task)}",
            prev=(names[i - 1], "../" + task_page(names[i - 1])) if i > 0 else None,
            next=(names[i + 1], "../" + task_page(names[i + 1])) if i + 1 < len(names) else None,
            results_rows=_task_results_rows(main, task),
            analysis=analysis.get(task),
            seed_noise=seed_noise_view(results.seed_noise, task, study_methods(study)),
            hparams=[r for r in hparams if r.task == task],
            grid=[r for r in grid if r.task == task],
            landscapes=landscapes.get(task, []),   # inputs; drawn by _render_task_page
            config=config,
            config_diffs=[r for r in diffs if r.task == task],
        )


def render_html(results: StudyResults, study: Mapping, *, published_csv: Path | None = None,
                provenance: Mapping | None = None) -> str:
    """The landing page (index.html) as a string (see :func:`render_report`)."""
    context = _landing_context(results, study, published_csv, dict(provenance or {}))
    return _environment().get_template("report.html.j2").render(**context)


@functools.lru_cache(maxsize=None)
def _task_template() -> jinja2.Template:
    """The task page template, compiled once per process (each worker renders several pages)."""
    return _environment().get_template("task.html.j2")


def _render_task_page(context: dict) -> str:
    """One task page from its context (runs in a worker process: module level, picklable).
    The landscape charts, a third of the page's work, are drawn here from their inputs."""
    charts = _task_landscapes(context["task"], context["landscapes"])
    return _task_template().render(**(context | {"landscapes": charts}))


def render_pages(results: StudyResults, study: Mapping, *, published_csv: Path | None = None,
                 provenance: Mapping | None = None, workers: int | None = None
                 ) -> dict[str, str]:
    """Every page of the report, ``{path relative to the report dir: html}``: ``index.html``
    and one ``tasks/<task>.html`` per study task (:func:`vpeft.report.pages.task_page`).

    The task pages are rendered in ``workers`` processes (default
    :func:`vpeft.report.parallel.ordered_map`) from contexts built here, so each page is the
    same whichever process renders it."""
    from vpeft.report.parallel import ordered_map

    provenance = dict(provenance or {})
    contexts = list(_task_contexts(results, study, provenance))
    html_pages = ordered_map(_render_task_page, [ctx for _, ctx in contexts], workers,
                             cells=results.results.num_rows)
    pages = {path: page for (path, _), page in zip(contexts, html_pages)}
    pages[REPORT_INDEX] = render_html(results, study, published_csv=published_csv,
                                      provenance=provenance)
    return pages


def render_report(results: StudyResults, study: Mapping, out_html: Path, *,
                  published_csv: Path | None = None, provenance: Mapping | None = None,
                  workers: int | None = None) -> None:
    """Render the study report: ``out_html`` (the landing page) and, beside it, ``tasks/`` with
    one self-contained page per task.

    ``published_csv`` (``method,task,test_top1``) adds a published-reference section when it has
    rows for the study's tasks; ``provenance`` (e.g. ``{"generated_by": ..., "date": ...}``) is
    listed in the provenance section. Every page is rendered before anything is written; the
    task pages replace ``tasks/`` as one directory, then the landing page is replaced, so a
    failure leaves no partial file (at worst new task pages beside the previous landing page).
    ``workers``: see :func:`render_pages`.
    """
    out_html = Path(out_html)
    pages = render_pages(results, study, published_csv=published_csv, provenance=provenance,
                         workers=workers)
    with atomic_dir(out_html.parent / TASK_DIR) as tmp:
        for path, page in pages.items():
            if path != REPORT_INDEX:
                (tmp / Path(path).name).write_text(page, encoding="utf-8")
    with atomic_path(out_html) as tmp:
        tmp.write_text(pages[REPORT_INDEX], encoding="utf-8")

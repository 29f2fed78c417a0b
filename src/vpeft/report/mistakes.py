"""The task pages' "Different mistakes" and "High-confidence predictions" sections.

Per analysed task: the pairwise heat maps (:data:`PAIR_HEATMAPS`), the oracle and the ensembles
(tables), and each method's confidence histograms split into right and wrong predictions with
its confident counts. Every analysis table is turned into Python rows once per render
(:func:`analysis_index`), which the landing page's cross-task summaries
(:mod:`vpeft.report.crosstask`) read too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from markupsafe import Markup

from vpeft.report import svg
from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.numbers import fmt_acc
from vpeft.report.view import Cell, Row, exact_text, fmt_delta

__all__ = ["PAIR_HEATMAPS", "TaskAnalysis", "analysis_index", "analysis_sections",
           "analysis_tasks"]

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
    return analysis_index(results).get(name, {}).get(task, [])


_INDEX_CACHE: dict[int, tuple[StudyResults, dict[str, dict[str, list[dict[str, Any]]]]]] = {}


def analysis_index(results: StudyResults) -> dict[str, dict[str, list[dict[str, Any]]]]:
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


def analysis_sections(results: StudyResults, study: Mapping) -> list[TaskAnalysis]:
    """One :class:`TaskAnalysis` per task with analysis tables (study order first)."""
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


def analysis_tasks(results: StudyResults, study: Mapping) -> list[str]:
    """Tasks with analysis tables: study order first, then any others in table order."""
    present = list(dict.fromkeys(t for by_task in analysis_index(results).values()
                                 for t in by_task))
    order = [t for t, _ in study_tasks(study)]
    return [t for t in order if t in present] + [t for t in present if t not in order]

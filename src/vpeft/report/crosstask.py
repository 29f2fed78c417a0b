"""Cross-task summaries for the landing page: one row per task (agreement, error overlap,
oracle and ensemble gains), each ensemble's gain per task with its mean over tasks, the error
overlap of every method pair averaged over tasks, the calibration of every method averaged over
tasks, and the seed-noise table averaged over tasks.

The per-task detail they summarise lives on the task pages; every value here is a plain mean of
the analysis tables' values (``data-value`` holds it unrounded), so a reader can recompute it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from markupsafe import Markup

from vpeft.report import svg
from vpeft.report.collect import StudyResults, study_tasks
from vpeft.report.numbers import fmt_acc
from vpeft.report.seednoise import SeedNoiseRow
from vpeft.report.view import Cell, Row, fmt_delta, exact_text

__all__ = ["confidence_summary", "ensemble_overview", "mean_overlap", "mean_seed_noise",
           "mistakes_summary"]

Index = Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]   # {table: {task: rows}}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return math.fsum(kept) / len(kept) if kept else None


def _cell(value: float | None, column: str, task: str | None, fmt=fmt_acc,
          method: str | None = None, classes: Sequence[str] = ()) -> Cell:
    return Cell(fmt(value), exact_text(value), column, task, method, ["num", *classes])


def _frac(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def mistakes_summary(index: Index, tasks: Sequence[str]) -> list[Row]:
    """Per analysed task: methods compared, mean pairwise agreement and error overlap (pairs of
    distinct methods), oracle and best single top-1, their gap, and the best ensemble's gain over
    the best single method by validation (which ensemble: the cell's title)."""
    rows = []
    for task in tasks:
        pairs = [r for r in index.get("agreement", {}).get(task, [])
                 if r["method_a"] != r["method_b"]]
        oracle = next(iter(index.get("oracle", {}).get(task, [])), None)
        ensembles = index.get("ensembles", {}).get(task, [])
        gains = [(g, r) for r in ensembles
                 if (g := _finite(r["gain_over_best_single_by_val"])) is not None]
        best = max(gains, key=lambda x: x[0], default=None)
        gap = None
        if oracle and oracle["oracle_top1"] is not None and oracle["best_single_top1"] is not None:
            gap = oracle["oracle_top1"] - oracle["best_single_top1"]
        sign = [] if best is None or best[0] == 0 else ["gain-pos" if best[0] > 0 else "gain-neg"]
        gain = _cell(best[0] if best else None, "best_ensemble_gain", task, fmt_delta,
                     classes=sign)
        if best:
            gain.title = f"{best[1]['rule']} / {best[1]['combiner']}"
        rows.append(Row(task, [
            Cell(str(oracle["n_methods"]) if oracle else "–",
                 exact_text(oracle["n_methods"]) if oracle else None, "n_methods", task, None, ["num"]),
            _cell(_mean([_finite(r["agreement"]) for r in pairs]), "mean_agreement", task, _frac),
            _cell(_mean([_finite(r["error_overlap"]) for r in pairs]), "mean_error_overlap",
                  task, _frac),
            _cell(_finite(oracle["oracle_top1"]) if oracle else None, "oracle_top1", task),
            Cell(oracle["best_single"] or "–" if oracle else "–",
                 oracle["best_single"] if oracle else None, "best_single", task,
                 oracle["best_single"] if oracle else None),
            _cell(_finite(oracle["best_single_top1"]) if oracle else None, "best_single_top1",
                  task),
            _cell(gap, "oracle_gain", task, fmt_delta),
            gain,
        ], task=task))
    return rows


def ensemble_overview(results: StudyResults, study: Mapping) -> tuple[list[str], list[Row]]:
    """Gain of each ensemble (rule x combiner) over the best single method by validation, one
    column per task plus the mean over the tasks that have it. Nothing is chosen here."""
    table = results.analysis.get("ensembles")
    if table is None or table.num_rows == 0:
        return [], []
    records = table.to_pylist()
    order = [t for t, _ in study_tasks(study)]
    tasks = [t for t in order if any(r["task"] == t for r in records)]
    tasks += [t for t in dict.fromkeys(r["task"] for r in records) if t not in order]
    gains = {(r["task"], r["rule"], r["combiner"]): _finite(
        r["gain_over_best_single_by_val"]) for r in records}
    keys = list(dict.fromkeys((r["rule"], r["combiner"]) for r in records))
    rows = []
    for rule, combiner in keys:
        cells = []
        for t in tasks:
            v = gains.get((t, rule, combiner))
            sign = [] if v is None or v == 0 else ["gain-pos" if v > 0 else "gain-neg"]
            cell = _cell(v, "gain_over_best_single_by_val", t, fmt_delta, classes=sign)
            cell.title = f"{rule} / {combiner}"
            cells.append(cell)
        values = [gains[(t, rule, combiner)] for t in tasks
                  if gains.get((t, rule, combiner)) is not None]
        mean = math.fsum(values) / len(values) if values else None
        cells.append(Cell(fmt_delta(mean), exact_text(mean), "mean_gain", None, None,
                          ["num", "mean-col"], title=f"mean over {len(values)} task(s)"))
        rows.append(Row(f"{rule} · {combiner}", cells))
    return tasks, rows


def mean_overlap(index: Index, methods: Sequence[str], column: str = "error_overlap"
                 ) -> tuple[dict[tuple[str, str], float | None], int]:
    """``{(a, b): mean of column over the tasks with both}`` and the number of tasks."""
    sums: dict[tuple[str, str], list[float]] = {}
    by_task = index.get("agreement", {})
    for rows in by_task.values():
        for r in rows:
            if (v := _finite(r[column])) is not None:
                sums.setdefault((r["method_a"], r["method_b"]), []).append(v)
    values = {(a, b): _mean(sums.get((a, b), [])) for a in methods for b in methods}
    return values, len(by_task)


def mean_overlap_heatmap(index: Index, methods: Sequence[str]) -> Markup | None:
    """One heat map: every pair's error overlap averaged over the analysed tasks."""
    values, n = mean_overlap(index, methods)
    shown = [m for m in methods if any(values.get((m, b)) is not None for b in methods)]
    if not shown:
        return None
    return svg.heatmap("all tasks", shown, values,
                       label=f"error overlap (Jaccard), mean over {n} task(s)",
                       column="mean_error_overlap")


def confidence_summary(index: Index, methods: Sequence[str]) -> list[Row]:
    """Per method, means over the analysed tasks: test top-1, mean confidence, ECE and
    confident precision (the per-task histograms are on the task pages)."""
    acc, conf = index.get("accuracy", {}), index.get("confidence", {})
    rows = []
    for m in methods:
        a = [r for rows in acc.values() for r in rows if r["method"] == m]
        c = [r for rows in conf.values() for r in rows if r["method"] == m]
        if not c:
            continue
        rows.append(Row(m, [
            _cell(_mean([_finite(r["test_top1"]) for r in a]), "test_top1", None, method=m),
            _cell(_mean([_finite(r["mean_confidence"]) for r in a]), "mean_confidence", None,
                  lambda v: "–" if v is None else f"{v:.3f}", m),
            _cell(_mean([_finite(r["ece"]) for r in a]), "ece", None, method=m),
            _cell(_mean([_finite(r["confident_precision"]) for r in c]), "confident_precision",
                  None, method=m),
            Cell(str(len(c)), str(len(c)), "num_tasks", None, m, ["num"]),
        ], method=m))
    return rows


def mean_seed_noise(per_task: Sequence[tuple[str, Sequence[SeedNoiseRow]]]
                    ) -> list[SeedNoiseRow]:
    """The per-task seed-noise rows averaged over tasks, per method (a mean of the shown rates)."""
    fields = ("seeds", "methods", "pred_seeds", "pred_methods")
    by_method: dict[str, list[SeedNoiseRow]] = {}
    for _, rows in per_task:
        for r in rows:
            by_method.setdefault(r.method, []).append(r)
    out = []
    for method, rows in by_method.items():
        means = {f: _mean([None if getattr(r, f) is None else float(getattr(r, f))
                           for r in rows]) for f in fields}
        texts = {f"{f}_text": fmt_acc(v) for f, v in means.items()}
        out.append(SeedNoiseRow(method, **{f: exact_text(v) for f, v in means.items()}, **texts))
    return out


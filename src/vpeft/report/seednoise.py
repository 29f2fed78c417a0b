"""Seed noise vs method differences: do two methods disagree more than two seeds of one method?

For one task with per-example predictions of several seeds, two rates per pair of runs:
``pred_disagreement`` (the predicted classes differ) and ``correct_disagreement`` (exactly one of
the two is right: they make different mistakes). For a method with itself the rates are averaged
over its pairs of distinct seeds; for two methods over every pair (seed of a, seed of b). If the
method-vs-method rate is not clearly above the seed-vs-seed rates, the "different mistakes" of
methods are no more than what retraining with another seed already produces.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vpeft.report.numbers import fmt_acc
from vpeft.report.uncertainty import TaskOutcomes

__all__ = ["SEED_NOISE_SCHEMA", "SeedNoiseRow", "seed_noise_rows", "seed_noise_view"]

SEED_NOISE_SCHEMA = pa.schema([
    ("task", pa.string()), ("method_a", pa.string()), ("method_b", pa.string()),
    ("same_method", pa.bool_()), ("num_pairs", pa.int64()),
    ("pred_disagreement", pa.float64()), ("correct_disagreement", pa.float64()),
])


def _pair(preds_a: np.ndarray, correct_a: np.ndarray, preds_b: np.ndarray,
          correct_b: np.ndarray) -> tuple[float, float]:
    return (float(np.mean(preds_a != preds_b)), float(np.mean(correct_a != correct_b)))


def seed_noise_rows(outcomes: TaskOutcomes) -> list[dict[str, Any]]:
    """Rows of :data:`SEED_NOISE_SCHEMA` for one task; empty unless some method has 2+ seeds."""
    methods = [m for m in outcomes.preds if outcomes.preds[m].shape[0] > 0]
    if not any(outcomes.preds[m].shape[0] >= 2 for m in methods):
        return []
    rows = []
    for i, a in enumerate(methods):
        pa_, ca = outcomes.preds[a], outcomes.correct[a]
        for b in methods[i:]:
            pb, cb = outcomes.preds[b], outcomes.correct[b]
            if a == b:
                pairs = list(itertools.combinations(range(len(pa_)), 2))
            else:
                pairs = list(itertools.product(range(len(pa_)), range(len(pb))))
            if not pairs:
                continue
            rates = np.array([_pair(pa_[s], ca[s], pb[t], cb[t]) for s, t in pairs])
            rows.append({"task": outcomes.task, "method_a": a, "method_b": b,
                         "same_method": a == b, "num_pairs": len(pairs),
                         "pred_disagreement": float(rates[:, 0].mean()),
                         "correct_disagreement": float(rates[:, 1].mean())})
    return rows


@dataclass(frozen=True)
class SeedNoiseRow:
    method: str
    seeds: str | None           # raw value of the seed-vs-seed rate
    seeds_text: str
    methods: str | None         # mean rate of this method vs every other method
    methods_text: str
    pred_seeds: str | None
    pred_seeds_text: str
    pred_methods: str | None
    pred_methods_text: str


def _pct(value: float | None) -> tuple[str | None, str]:
    return (None, "–") if value is None else (repr(100.0 * value), fmt_acc(100.0 * value))


def seed_noise_view(table: pa.Table | None, task: str, methods: Sequence[str]
                    ) -> list[SeedNoiseRow]:
    """Per method of ``task``: disagreement between its own seeds beside its mean disagreement
    with the other methods (in %, both rates)."""
    if table is None or table.num_rows == 0:
        return []
    # Filtered in Arrow: converting the whole table for every task was quadratic in tasks.
    rows = table.filter(pc.equal(table.column("task"), task)).to_pylist()
    if not rows:
        return []
    same: Mapping[str, dict] = {r["method_a"]: r for r in rows if r["same_method"]}
    present = [m for m in methods if any(m in (r["method_a"], r["method_b"]) for r in rows)]
    out = []
    for m in present:
        cross = [r for r in rows if not r["same_method"] and m in (r["method_a"], r["method_b"])]
        mean = {k: (float(np.mean([r[k] for r in cross])) if cross else None)
                for k in ("correct_disagreement", "pred_disagreement")}
        own = same.get(m)
        s_c = _pct(own["correct_disagreement"] if own else None)
        m_c = _pct(mean["correct_disagreement"])
        s_p = _pct(own["pred_disagreement"] if own else None)
        m_p = _pct(mean["pred_disagreement"])
        out.append(SeedNoiseRow(m, *s_c, *m_c, *s_p, *m_p))
    return out

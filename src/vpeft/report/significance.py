"""Which methods are statistically indistinguishable from the best, and which beat chance.

Tests (all on the paired bootstrap of :mod:`vpeft.report.uncertainty`, so they cover test-image
and, with several seeds, seed noise, and extend to means over many tasks):

* **vs the best** — the method with the highest mean is compared with every other method;
  two-sided p-value of the difference from the percentile bootstrap,
  ``p = min(1, 2 * (1 + #{d* <= 0}) / (B + 1))``, where ``d*`` is the resampled difference
  best − method on identical resamples. The p-values of one scope are Holm-corrected
  (family: the comparisons against the best in that scope). A method whose corrected p-value is
  at least ``alpha`` is *indistinguishable* from the best.
* **vs chance** — one-sided, ``p = (1 + #{acc* <= chance}) / (B + 1)``, Holm-corrected over the
  scope's methods. Chance is the majority-class rate of the test labels (mean over the scope's
  tasks). A method not significantly above chance is flagged and never recommended.

:func:`mcnemar_exact` is the classical paired test for one task and one seed; the tests check the
bootstrap against it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from vpeft.report.uncertainty import CI_SEEDS, CI_TEST, CONFIDENCE, ScopeStats

__all__ = ["ALPHA", "above_chance_p", "holm", "mcnemar_exact", "paired_bootstrap_p",
           "scope_rows"]

ALPHA = 0.05


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_bootstrap_p(boot_a: np.ndarray, boot_b: np.ndarray) -> float:
    """Two-sided p-value that ``a`` and ``b`` have the same accuracy (paired resamples)."""
    d = np.asarray(boot_a) - np.asarray(boot_b)
    b = len(d)
    tail = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    return min(1.0, 2.0 * (1 + tail) / (b + 1))


def above_chance_p(boot: np.ndarray, chance: float) -> float:
    """One-sided p-value that the accuracy is not above ``chance`` (same unit, %)."""
    return (1 + int(np.sum(np.asarray(boot) <= chance))) / (len(boot) + 1)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value (binomial test on the discordant pairs)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def scope_rows(stats: ScopeStats, kind: str, params: Mapping[str, float | None],
               alpha: float = ALPHA, confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    """One row per method of the scope (schema ``collect.STATS_SCHEMA``), in ``stats`` order."""
    methods = stats.methods
    if not methods:
        return []
    top = max(stats.point[m] for m in methods)
    best = [m for m in methods if stats.point[m] == top]
    ref = best[0]
    others = [m for m in methods if m not in best]
    p_best = {m: paired_bootstrap_p(stats.boot[ref], stats.boot[m]) for m in others}
    p_best_holm = dict(zip(others, holm([p_best[m] for m in others]))) if others else {}
    p_chance = {m: above_chance_p(stats.boot[m], stats.chance) for m in methods}
    p_chance_holm = dict(zip(methods, holm([p_chance[m] for m in methods])))
    rows = []
    for m in methods:
        lo, hi = stats.interval(m, confidence)
        rows.append({
            "scope_kind": kind, "scope": stats.scope, "tasks": ",".join(stats.tasks),
            "method": m, "num_tasks": len(stats.tasks), "num_seeds": stats.num_seeds[m],
            "mean": stats.point[m], "std": stats.std[m], "ci_low": lo, "ci_high": hi,
            "ci_kind": CI_SEEDS if stats.num_seeds[m] >= 2 else CI_TEST,
            "chance": stats.chance, "uniform_chance": stats.uniform_chance,
            "p_above_chance": p_chance[m], "p_above_chance_holm": p_chance_holm[m],
            "above_chance": p_chance_holm[m] < alpha,
            "best": m in best, "p_vs_best": p_best.get(m), "p_vs_best_holm": p_best_holm.get(m),
            "indistinguishable": m in best or p_best_holm[m] >= alpha,
            "trainable_params": params.get(m), "num_resamples": int(len(stats.boot[m])),
            "alpha": alpha,
        })
    return rows

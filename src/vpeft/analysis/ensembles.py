"""Ensembles of a task's methods: which members (all, or the top k by val200 top-1) and how
their predictions combine (probability average, logit average, majority vote)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

COMBINERS: tuple[str, ...] = ("prob_avg", "logit_avg", "majority_vote")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    x = np.array(logits, dtype=np.float64)  # a copy: the steps below work in place
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class Ensemble:
    """Running sums of the members' probabilities, logits and votes over one block of examples.

    Members are added one at a time, so no [members, examples, classes] array is ever built; each
    sum is taken in the members' order, whatever the block size, so the result never depends on
    how the examples are split into blocks.
    """

    def __init__(self, rows: int, classes: int) -> None:
        self.prob_sum = np.zeros((rows, classes), np.float64)
        self.logit_sum = np.zeros((rows, classes), np.float64)
        self.votes = np.zeros((rows, classes), np.int32)

    def add(self, logits: np.ndarray, probs: np.ndarray, preds: np.ndarray) -> None:
        """One member: its logits and softmax [rows, C] and its predictions [rows]."""
        self.prob_sum += probs
        self.logit_sum += logits
        self.votes[np.arange(len(preds)), preds] += 1

    def predict(self) -> dict[str, np.ndarray]:
        """Every combiner's prediction (int64 [rows]); see :func:`ensemble_predict`."""
        tied = self.votes == self.votes.max(axis=1, keepdims=True)
        # argmax of a sum == argmax of the mean (same divisor); the sum avoids a rounding step.
        return {"prob_avg": self.prob_sum.argmax(axis=1).astype(np.int64),
                "logit_avg": self.logit_sum.argmax(axis=1).astype(np.int64),
                "majority_vote": np.where(tied, self.prob_sum, -np.inf).argmax(axis=1)
                .astype(np.int64)}


def ensemble_predict(logits: np.ndarray, combiner: str) -> np.ndarray:
    """Ensemble prediction from members' ``logits`` [K, N, C] (int64 [N]).

    ``prob_avg``: argmax of the mean softmax probability; ``logit_avg``: argmax of the mean logit;
    ``majority_vote``: the most predicted class, ties broken by the tied classes' summed
    probability over the members, then by the lowest class id. Argmax ties go to the lowest id.
    """
    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner {combiner!r}; expected one of {COMBINERS}")
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise ValueError(f"ensemble logits must be [members>=1, N, C], got {logits.shape}")
    ensemble = Ensemble(logits.shape[1], logits.shape[2])
    for member in logits:
        ensemble.add(member, softmax(member), member.argmax(axis=1))
    return ensemble.predict()[combiner]


def top_k_by_val(methods: Sequence[str], val_top1: Mapping[str, float | None],
                 k: int) -> list[str] | None:
    """The ``k`` methods with the highest val200 top-1, in the methods' given order.

    Ties are broken by the given order; methods without a val top-1 are never chosen. Returns
    ``None`` when fewer than ``k`` methods have one. Only validation accuracy is consulted.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = sorted((i for i, m in enumerate(methods) if val_top1.get(m) is not None),
                    key=lambda i: (-float(val_top1[methods[i]]), i))  # type: ignore[arg-type]
    if len(ranked) < k:
        return None
    return [methods[i] for i in sorted(ranked[:k])]


def ensemble_rules(methods: Sequence[str], val_top1: Mapping[str, float | None],
                   top_ks: Sequence[int]) -> list[tuple[str, list[str]]]:
    """The ensembles' (rule, members): all methods, then the top k by val200 top-1 per k."""
    rules: list[tuple[str, list[str]]] = [("all", list(methods))] if methods else []
    for k in top_ks:
        members = top_k_by_val(methods, val_top1, k)
        if members is not None:  # skip a k larger than the methods with a val top-1
            rules.append((f"top{k}_by_val", members))
    return rules


def member_rows(methods: Sequence[str], members: Sequence[str]) -> tuple[int, ...]:
    return tuple(methods.index(m) for m in members)

"""How certain an accuracy is: a paired bootstrap over test images, combined over seeds.

One task's final runs (every method, every seed) are scored on the same test images, so one
resample of the test images is applied to all of them at once: differences between methods are
then measured on identical resamples (a *paired* bootstrap). With several seeds each resample
also draws the method's seeds with replacement, so an interval covers both sources of noise:
which test images were drawn and which seed trained the model. With one seed, the interval is the
test-set bootstrap alone (``ci_kind`` says which).

Everything is deterministic: the resamples of a task depend only on :data:`BOOTSTRAP_SEED`, the
task's name and the test-set size, never on which methods are present. Resamples are drawn in
chunks as count vectors (``count[b, i]`` = how often image ``i`` is in resample ``b``), so the
accuracy of every run on a chunk is one matrix product and memory stays at
``chunk x num_test`` floats (5 MB for sun397's 21,750 images).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["BOOTSTRAP_SEED", "CONFIDENCE", "NUM_RESAMPLES", "ScopeStats", "TaskOutcomes",
           "TaskScores", "bootstrap_task", "chance_levels", "percentile_interval",
           "resample_counts", "scope_stats", "score_task"]

NUM_RESAMPLES = 2000        # Holm over 15 comparisons needs p < .05/15; 2000 resamples reach .001
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 20240924   # fixed: the same runs always give the same intervals
_CHUNK_ELEMENTS = 1_000_000  # resample counts held at once: about 20 MB, whatever the test size

CI_SEEDS = "seeds and test images"
CI_TEST = "test images only (1 seed)"


@dataclass
class TaskOutcomes:
    """Per-example outcomes of one task's final runs, aligned on the sorted test index.

    ``correct[m]`` is a (seeds, num_test) bool array for method ``m``, rows in ``seeds[m]`` order;
    ``preds[m]`` the matching predicted classes (for seed-vs-method disagreement).
    """

    task: str
    labels: np.ndarray
    num_classes: int | None
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_test(self) -> int:
        return int(len(self.labels))

    def per_seed_top1(self, method: str) -> np.ndarray:
        """Top-1 (%) of each seed of ``method``."""
        return 100.0 * self.correct[method].mean(axis=1)


def chance_levels(labels: np.ndarray, num_classes: int | None) -> tuple[float, float | None]:
    """(majority-class rate of the test labels, 1 / num_classes), both in %.

    The majority rate is the report's chance level: always predicting the most frequent test class
    reaches it, and any classifier that ignores its input reaches at most it (on a balanced test
    set it equals 1 / num_classes).
    """
    labels = np.asarray(labels, dtype=np.int64)
    majority = 100.0 * np.bincount(labels).max() / len(labels) if len(labels) else 0.0
    uniform = 100.0 / num_classes if num_classes else None
    return float(majority), uniform


def _task_rng(task: str, num_test: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8")), num_test])


def resample_counts(rng: np.random.Generator, num_test: int, count: int) -> np.ndarray:
    """``count`` bootstrap resamples of ``num_test`` images as (count, num_test) float32 counts."""
    draws = rng.integers(0, num_test, size=(count, num_test))
    draws += (np.arange(count) * num_test)[:, None]
    counts = np.bincount(draws.ravel(), minlength=count * num_test)
    return counts.reshape(count, num_test).astype(np.float32)


def _resample_counts_by_row(rng: np.random.Generator, num_test: int, count: int) -> np.ndarray:
    """:func:`resample_counts`, the same draws and counts, counted one resample at a time: a
    row's ``num_test`` bins stay in cache and no offsets are added (about 2x faster for the
    large VTAB-1K test sets)."""
    draws = rng.integers(0, num_test, size=(count, num_test))
    counts = np.empty((count, num_test), dtype=np.float32)
    for b in range(count):
        counts[b] = np.bincount(draws[b], minlength=num_test)
    return counts


def bootstrap_task(outcomes: TaskOutcomes, num_resamples: int = NUM_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> dict[str, np.ndarray]:
    """Bootstrap top-1 (%) of every method on ``outcomes``: ``{method: (num_resamples,)}``.

    Each resample redraws the test images (the same draw for every method and seed) and, per
    method, its seeds with replacement; the value is the mean over the drawn seeds.
    """
    methods = [m for m in outcomes.correct if outcomes.correct[m].shape[0] > 0]
    n = outcomes.num_test
    if not methods or n == 0:
        return {}
    stacked = np.concatenate([outcomes.correct[m] for m in methods]).astype(np.float32)
    spans, start = {}, 0
    for m in methods:
        spans[m] = (start, start + outcomes.correct[m].shape[0])
        start = spans[m][1]
    rng = _task_rng(outcomes.task, n, seed)
    seed_rngs = {m: np.random.default_rng([seed, zlib.crc32(outcomes.task.encode("utf-8")),
                                           zlib.crc32(m.encode("utf-8"))]) for m in methods}
    out = {m: np.empty(num_resamples) for m in methods}
    chunk = max(1, min(num_resamples, _CHUNK_ELEMENTS // n))
    for lo in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - lo)
        acc = _resample_counts_by_row(rng, n, size) @ stacked.T * np.float32(100.0 / n)
        for m in methods:
            a, b = spans[m]
            runs = acc[:, a:b].astype(np.float64)
            if b - a > 1:
                pick = seed_rngs[m].integers(0, b - a, size=(size, b - a))
                runs = np.take_along_axis(runs, pick, axis=1)
            out[m][lo:lo + size] = runs.mean(axis=1)
    return out


def percentile_interval(boot: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of a bootstrap distribution."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclass
class TaskScores:
    """What the scopes need of one task once its per-example arrays are dropped."""

    task: str
    seeds: dict[str, list[int]]
    top1: dict[str, np.ndarray]       # per-seed top-1 (%), in ``seeds`` order
    boot: dict[str, np.ndarray]       # bootstrap top-1 (%), see :func:`bootstrap_task`
    chance: float                     # majority-class rate of the test labels (%)
    uniform_chance: float | None      # 1 / num_classes (%)
    num_test: int


def score_task(outcomes: TaskOutcomes, num_resamples: int = NUM_RESAMPLES,
               seed: int = BOOTSTRAP_SEED) -> TaskScores:
    chance, uniform = chance_levels(outcomes.labels, outcomes.num_classes)
    methods = [m for m in outcomes.correct if outcomes.correct[m].shape[0] > 0]
    return TaskScores(outcomes.task, {m: list(outcomes.seeds[m]) for m in methods},
                      {m: outcomes.per_seed_top1(m) for m in methods},
                      bootstrap_task(outcomes, num_resamples, seed), chance, uniform,
                      outcomes.num_test)


@dataclass
class ScopeStats:
    """Means, seed spread and bootstrap distributions of every method over a set of tasks."""

    scope: str
    tasks: list[str]
    methods: list[str]
    point: dict[str, float]
    std: dict[str, float | None]
    num_seeds: dict[str, int]
    boot: dict[str, np.ndarray]
    chance: float
    uniform_chance: float | None

    def interval(self, method: str, confidence: float = CONFIDENCE) -> tuple[float, float]:
        return percentile_interval(self.boot[method], confidence)


def scope_stats(scope: str, tasks: Sequence[str], methods: Sequence[str],
                scores: Mapping[str, TaskScores]) -> ScopeStats | None:
    """Statistics of the plain mean over ``tasks`` (the study's "mean over tasks" convention).

    A method enters only if it has outcomes on every task of the scope (as in the summary table).
    The spread over seeds is the standard deviation (ddof 1) of the per-seed scope means over the
    seeds every task has; None with fewer than two such seeds.
    """
    if not tasks or any(t not in scores for t in tasks):
        return None
    tasks = list(tasks)
    usable = [m for m in methods if all(m in scores[t].boot for t in tasks)]
    point, std, num_seeds, boot = {}, {}, {}, {}
    for m in usable:
        point[m] = math.fsum(float(scores[t].top1[m].mean()) for t in tasks) / len(tasks)
        boot[m] = np.mean([scores[t].boot[m] for t in tasks], axis=0)
        num_seeds[m] = min(len(scores[t].seeds[m]) for t in tasks)
        common = set.intersection(*(set(scores[t].seeds[m]) for t in tasks))
        if len(common) >= 2:
            per_seed = [math.fsum(float(scores[t].top1[m][scores[t].seeds[m].index(s)])
                                  for t in tasks) / len(tasks) for s in sorted(common)]
            std[m] = float(np.std(per_seed, ddof=1))
        else:
            std[m] = None
    uniform = [scores[t].uniform_chance for t in tasks]
    return ScopeStats(
        scope=scope, tasks=tasks, methods=usable, point=point, std=std, num_seeds=num_seeds,
        boot=boot, chance=math.fsum(scores[t].chance for t in tasks) / len(tasks),
        uniform_chance=(math.fsum(uniform) / len(uniform)  # type: ignore[arg-type]
                        if None not in uniform else None))

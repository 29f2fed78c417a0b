"""Tests for vpeft.report.significance: known answers for Holm, McNemar and the paired bootstrap."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vpeft.report.significance import above_chance_p, holm, mcnemar_exact, paired_bootstrap_p
from vpeft.report.uncertainty import TaskOutcomes, bootstrap_task


def test_holm_known_answer() -> None:
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone: .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]   # capped at 1
    assert holm([]) == []


def test_mcnemar_exact_known_answer() -> None:
    a = np.array([1] * 10 + [0] * 2 + [1] * 50 + [0] * 38, bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50 + [0] * 38, bool)
    # 10 vs 2 discordant pairs: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79 / 4096
    assert mcnemar_exact(a, b) == pytest.approx(158 / 4096)
    assert mcnemar_exact(a, a) == 1.0


def _pair(n: int, only_a: int, only_b: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    perm = np.random.default_rng(3).permutation(n)   # resampling must not depend on the order
    return a[perm], b[perm]


def _outcomes(**correct: np.ndarray) -> TaskOutcomes:
    n = len(next(iter(correct.values())))
    o = TaskOutcomes("t", np.zeros(n, np.int64), 2)
    for m, c in correct.items():
        o.correct[m] = c[None, :]
        o.seeds[m] = [0]
    return o


def test_paired_bootstrap_agrees_with_mcnemar() -> None:
    a, b = _pair(2000, only_a=120, only_b=80, both=1000)
    exact = mcnemar_exact(a, b)                        # about 0.0057
    boot = bootstrap_task(_outcomes(a=a, b=b), num_resamples=20000)
    p = paired_bootstrap_p(boot["a"], boot["b"])
    assert 0.003 < exact < 0.008
    assert abs(math.log(p / exact)) < math.log(1.6), (p, exact)
    # unpaired resampling would see far more noise: the pairing is what makes it significant
    unpaired = paired_bootstrap_p(boot["a"], np.random.default_rng(0).permutation(boot["b"]))
    assert unpaired > 5 * p


def test_no_difference_gives_p_one() -> None:
    a, _ = _pair(500, 100, 50, 200)
    boot = bootstrap_task(_outcomes(a=a, same=a.copy()), num_resamples=500)
    assert np.array_equal(boot["a"], boot["same"])      # identical resamples for both
    assert paired_bootstrap_p(boot["a"], boot["same"]) == 1.0


def test_above_chance() -> None:
    n = 1000
    at_chance = np.zeros(n, bool)
    at_chance[:100] = True                     # 10 % on 10 classes
    well_above = np.zeros(n, bool)
    well_above[:200] = True                    # 20 %
    boot = bootstrap_task(_outcomes(c=at_chance, w=well_above), num_resamples=2000)
    assert 0.3 < above_chance_p(boot["c"], 10.0) < 0.7
    assert above_chance_p(boot["w"], 10.0) == pytest.approx(1 / 2001)

"""Tests for vpeft.report.uncertainty and the seeds side of the report: intervals with a known
answer, determinism, seeds combined, and a 3-seed study collected from run directories."""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest

from test_report import NUM_TEST, STUDY, TEST_TOP1, parse_cells, render, write_run
from vpeft.report import MissingRunFileError, collect_study
from vpeft.report.cost import device_unit
from vpeft.report.uncertainty import (
    CI_SEEDS,
    CI_TEST,
    TaskOutcomes,
    bootstrap_task,
    chance_levels,
    BOOTSTRAP_SEED,
    _task_rng,
    percentile_interval,
    resample_counts,
    scope_stats,
    score_task,
)


def _outcomes(task: str, rows: dict[str, list[np.ndarray]], labels: np.ndarray | None = None,
              num_classes: int = 10) -> TaskOutcomes:
    n = len(next(iter(rows.values()))[0])
    o = TaskOutcomes(task, np.arange(n) % num_classes if labels is None else labels, num_classes)
    for m, seeds in rows.items():
        o.correct[m] = np.stack(seeds)
        o.preds[m] = np.where(o.correct[m], o.labels, (o.labels + 1) % num_classes)
        o.seeds[m] = list(range(len(seeds)))
    return o


def _right(n: int, k: int, seed: int) -> np.ndarray:
    c = np.zeros(n, bool)
    c[np.random.default_rng(seed).permutation(n)[:k]] = True
    return c


def test_interval_matches_exact_binomial() -> None:
    """One seed: the bootstrap interval of a proportion is close to Clopper-Pearson's."""
    n, k = 1000, 700
    boot = bootstrap_task(_outcomes("t", {"m": [_right(n, k, 1)]}), num_resamples=4000)["m"]
    lo, hi = percentile_interval(boot)
    exact = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert lo == pytest.approx(100 * exact.low, abs=0.6)
    assert hi == pytest.approx(100 * exact.high, abs=0.6)
    assert boot.mean() == pytest.approx(70.0, abs=0.2)


def test_deterministic_and_independent_of_other_methods() -> None:
    a, b = _right(500, 300, 1), _right(500, 200, 2)
    one = bootstrap_task(_outcomes("t", {"a": [a]}), num_resamples=300)
    two = bootstrap_task(_outcomes("t", {"a": [a], "b": [b]}), num_resamples=300)
    again = bootstrap_task(_outcomes("t", {"a": [a], "b": [b]}), num_resamples=300)
    assert np.array_equal(one["a"], two["a"]) and np.array_equal(two["b"], again["b"])
    other_task = bootstrap_task(_outcomes("u", {"a": [a]}), num_resamples=300)
    assert not np.array_equal(one["a"], other_task["a"])   # each task its own resamples


def test_seeds_widen_the_interval_and_give_std() -> None:
    n = 4000
    seeds = [_right(n, k, s) for s, k in enumerate((2400, 2800, 3200))]   # 60, 70, 80 %
    three = score_task(_outcomes("t", {"m": seeds}), num_resamples=2000)
    one = score_task(_outcomes("t", {"m": seeds[1:2]}), num_resamples=2000)
    s3 = scope_stats("t", ["t"], ["m"], {"t": three})
    s1 = scope_stats("t", ["t"], ["m"], {"t": one})
    assert s3.point["m"] == pytest.approx(70.0) and s3.std["m"] == pytest.approx(10.0)
    assert s1.std["m"] is None and s3.num_seeds["m"] == 3
    lo3, hi3 = s3.interval("m")
    lo1, hi1 = s1.interval("m")
    assert hi3 - lo3 > 4 * (hi1 - lo1)            # seed spread dominates test-set noise here
    assert lo3 < 66 and hi3 > 74


def test_scope_mean_over_tasks() -> None:
    n = 1000
    t1 = score_task(_outcomes("a", {"m": [_right(n, 600, 1)], "x": [_right(n, 500, 2)]}), 500)
    t2 = score_task(_outcomes("b", {"m": [_right(n, 800, 3)]}), 500)
    s = scope_stats("g", ["a", "b"], ["m", "x"], {"a": t1, "b": t2})
    assert s.methods == ["m"]                       # x lacks task b: not in the scope
    assert s.point["m"] == pytest.approx(70.0)
    assert np.allclose(s.boot["m"], (t1.boot["m"] + t2.boot["m"]) / 2)
    assert s.chance == pytest.approx(10.0)


def test_chance_levels() -> None:
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    assert chance_levels(labels, 4) == (60.0, 25.0)
    assert chance_levels(np.arange(100) % 10, 10) == (10.0, 10.0)


def test_fast_enough_for_sun397() -> None:
    """21,750 test images x 16 methods x 3 seeds, 2,000 resamples: seconds, not minutes."""
    n = 21750
    rng = np.random.default_rng(0)
    rows = {f"m{i}": [rng.random(n) < 0.6 for _ in range(3)] for i in range(16)}
    o = _outcomes("sun397", rows, labels=np.arange(n) % 397, num_classes=397)
    start = time.perf_counter()
    boot = bootstrap_task(o, num_resamples=2000)
    assert time.perf_counter() - start < 60     # about 3 s unloaded on 2 cores
    assert len(boot) == 16 and boot["m0"].shape == (2000,)


# ------------------------------------------------------------------------------------------
# a 3-seed study from run directories
# ------------------------------------------------------------------------------------------

SEED_SHIFT = {1: 0.0, 7: 1.5, 9: -2.0}   # seed -> test top-1 offset (pp) of the extra seeds


def _add_seed(runs: Path, task: str, method: str, seed: int, delta: float) -> float | None:
    """Copy final/ to final-seed<seed>/ with this seed's accuracy, predictions and cost fields
    (a diverged final run stays diverged)."""
    src = runs / "demo" / task / method / "final"
    dst = src.parent / f"final-seed{seed}"
    shutil.copytree(src, dst)
    m = json.loads((dst / "metrics.json").read_text())
    m |= {"seed": seed, "device": "cuda:0 NVIDIA H200", "peak_memory_bytes": 3 * 2 ** 30,
          "train_images_per_s": 250.0, "protocol": "vpeft"}
    (dst / "metrics.json").write_text(json.dumps(m))
    if TEST_TOP1[(task, method)] is None:
        return None
    top1 = TEST_TOP1[(task, method)] + delta
    ev = json.loads((dst / "test_eval.json").read_text()) | {"test_top1": top1}
    (dst / "test_eval.json").write_text(json.dumps(ev))
    correct = round(top1 * NUM_TEST / 100)
    labels = [i % 7 for i in range(NUM_TEST)]
    # a different set of right examples per seed: seeds disagree on some examples
    order = np.random.default_rng(seed).permutation(NUM_TEST)
    right = set(order[:correct].tolist())
    preds = [y if i in right else (y + 1) % 10 for i, y in enumerate(labels)]
    pq.write_table(pa.table({"index": list(range(NUM_TEST)), "label": labels, "pred": preds,
                             "logits": pa.array([[0.0] * 10] * NUM_TEST, pa.list_(pa.float32()))}),
                   dst / "test_predictions.parquet")
    return top1


@pytest.fixture()
def seeded_runs(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "runs"
    top1s: dict = {}
    for (task, method), top1 in TEST_TOP1.items():
        write_run(root, task, method, top1)
        extra = [_add_seed(root, task, method, s, SEED_SHIFT[s]) for s in (7, 9)]
        if top1 is not None:
            top1s[(task, method)] = [top1] + extra
    return root, top1s


def test_three_seeds_collected(seeded_runs: tuple[Path, dict], tmp_path: Path) -> None:
    runs, top1s = seeded_runs
    study = STUDY | {"seeds": [0, 7, 9]}
    results = collect_study(runs, study, num_resamples=500)
    rows = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    for key, values in top1s.items():
        r = rows[key]
        assert r["num_seeds"] == 3 and r["test_top1"] == values[0]   # final/ stays seed 1
        assert r["test_top1_mean"] == pytest.approx(statistics.fmean(values))
        assert r["test_top1_std"] == pytest.approx(statistics.stdev(values))
    seeds = results.seeds.to_pylist()
    assert len(seeds) == 3 * 9
    assert {s["status"] for s in seeds if (s["task"], s["method"]) == ("dtd", "lora")} == \
        {"diverged"}
    assert {s["run_dir"] for s in seeds} == {"final", "final-seed7", "final-seed9"}
    stats = {(r["scope"], r["method"]): r for r in results.stats.to_pylist()}
    assert stats[("cifar", "bitfit")]["ci_kind"] == CI_SEEDS
    assert stats[("cifar", "bitfit")]["num_seeds"] == 3
    assert stats[("mean", "linear")]["std"] is not None
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    assert summary["linear"]["mean"] == pytest.approx(statistics.fmean(
        statistics.fmean(top1s[(t, "linear")]) for t in ("cifar", "dtd", "eurosat")))
    assert summary["linear"]["num_seeds"] == 3
    # seed noise: lora on cifar, seeds disagree; the table has a same-method row per method
    noise = results.seed_noise.to_pylist()
    same = {(r["task"], r["method_a"]): r for r in noise if r["same_method"]}
    assert same[("cifar", "lora")]["num_pairs"] == 3 and same[("cifar", "lora")][
        "correct_disagreement"] > 0

    page = render(tmp_path, results, study)
    cells = parse_cells(page, "main-table")
    cifar_bitfit = next(c for c in cells if c["attrs"].get("data-task") == "cifar"
                        and c["attrs"].get("data-method") == "bitfit")
    assert "±" in cifar_bitfit["text"] and cifar_bitfit["note"].startswith("[")
    assert float(cifar_bitfit["attrs"]["data-value"]) == rows[("cifar", "bitfit")]["test_top1_mean"]
    assert 'id="seed-noise"' in page
    noise_cells = parse_cells(page, None)
    assert any(c["attrs"].get("data-column") == "seeds_correct_disagreement"
               for c in noise_cells)
    # cost: the extra seeds recorded a GPU, final/ did not -> plain hours, said so
    cost = parse_cells(page, "cost-table")
    peak = {c["attrs"]["data-method"]: c["text"] for c in cost
            if c["attrs"]["data-column"] == "peak_memory_bytes"}
    assert peak["linear"] == "3.0 GiB"
    assert "did not record their device" in page


def test_one_seed_intervals_are_labelled_test_only(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for (task, method), top1 in TEST_TOP1.items():
        write_run(root, task, method, top1)
    results = collect_study(root, STUDY, num_resamples=300)
    assert {r["ci_kind"] for r in results.stats.to_pylist()} == {CI_TEST}
    assert all(r["std"] is None for r in results.stats.to_pylist())
    page = render(tmp_path, results)
    assert CI_TEST in page and "±" not in "".join(
        c["text"] for c in parse_cells(page, "main-table"))
    cost = {c["attrs"]["data-column"]: c["text"] for c in parse_cells(page, "cost-table")
            if c["attrs"].get("data-method") == "linear"}
    assert cost["peak_memory_bytes"] == "–" and cost["train_images_per_s"] == "–"


def test_missing_seed_named(seeded_runs: tuple[Path, dict]) -> None:
    runs, _ = seeded_runs
    gone = runs / "demo" / "eurosat" / "lora" / "final-seed9" / "test_eval.json"
    gone.unlink()
    with pytest.raises(MissingRunFileError) as err:
        collect_study(runs, STUDY | {"seeds": [0, 7, 9]}, num_resamples=100)
    assert str(gone) in str(err.value)


def test_device_unit() -> None:
    assert device_unit(["cuda:0 NVIDIA H200", "cuda:1 NVIDIA H200"]) == "GPU-h"
    assert device_unit(["cpu", "cpu"]) == "CPU-h"
    assert device_unit(["cpu", None]) == "h" and device_unit(["cpu", "cuda:0"]) == "h"


def _bootstrap_reference(outcomes: TaskOutcomes, num_resamples: int, chunk: int
                         ) -> dict[str, np.ndarray]:
    """The straightforward bootstrap (Generator.integers, one bincount over the chunk): what
    bootstrap_task computed before its draws and counts were vectorised."""
    import zlib

    methods = list(outcomes.correct)
    n, seed = outcomes.num_test, BOOTSTRAP_SEED
    stacked = np.concatenate([outcomes.correct[m] for m in methods]).astype(np.float32)
    rng = _task_rng(outcomes.task, n, seed)
    seed_rngs = {m: np.random.default_rng([seed, zlib.crc32(outcomes.task.encode()),
                                           zlib.crc32(m.encode())]) for m in methods}
    out = {m: np.empty(num_resamples) for m in methods}
    start = 0
    spans = {}
    for m in methods:
        spans[m] = (start, start + len(outcomes.correct[m]))
        start = spans[m][1]
    for lo in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - lo)
        acc = resample_counts(rng, n, size) @ stacked.T * np.float32(100.0 / n)
        for m in methods:
            a, b = spans[m]
            runs = acc[:, a:b].astype(np.float64)
            if b - a > 1:
                pick = seed_rngs[m].integers(0, b - a, size=(size, b - a))
                runs = np.take_along_axis(runs, pick, axis=1)
            out[m][lo:lo + size] = runs.mean(axis=1)
    return out


@pytest.mark.parametrize("n", [1, 2, 37, 711, 5000])
def test_bootstrap_equals_straightforward_draws(n: int) -> None:
    """Counting each resample on its own gives bit-identical bootstrap values to the one
    bincount over a chunk with offsets, on random outcomes with 1, 2 and 3 seeds, whatever the
    chunking of either side."""
    rs = np.random.default_rng(n)
    rows = {"a": [rs.random(n) < 0.7], "b": [rs.random(n) < p for p in (0.5, 0.55, 0.6)],
            "c": [rs.random(n) < 0.9 for _ in range(2)]}
    outcomes = _outcomes("taskx", rows)
    fast = bootstrap_task(outcomes, num_resamples=700)
    slow = _bootstrap_reference(outcomes, 700, chunk=7)
    assert fast.keys() == slow.keys()
    for m in fast:
        np.testing.assert_array_equal(fast[m], slow[m])

"""benchmarks.fullsize: a reduced run (2 VTAB tasks + the robustness task, 2 methods, 2 seeds, 5 %
of the test images) completes and writes well-formed results; the full-size settings are the
paper's (19 tasks, real test sizes, 16 methods, 522 grid points). Speed is not asserted: the
figures are in docs/benchmarks.md."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks import fullsize  # noqa: E402


def test_full_size_spec_is_the_papers_study(tmp_path):
    from vpeft.config import load_study

    spec = fullsize.vtab_spec(tmp_path, 1.0, [42, 43, 44], None, None)
    assert len(spec.tasks) == 19
    assert spec.tasks["kitti"] == 711 and spec.tasks["dsprites_loc"] == 73_728
    assert spec.tasks["sun397"] == 21_750 and sum(spec.tasks.values()) == 387_904
    plan = load_study(spec.study, spec.overrides)
    assert plan.tasks == list(spec.tasks) and len(plan.methods) == 16
    assert sum(len(p) for p in plan.points.values()) == 522
    assert list(plan.cfg.train.seeds) == [42, 43, 44]
    robust = fullsize.robustness_spec(tmp_path, 1.0, [42], None)
    assert robust.tasks == {"imagenet": 50_000}


def test_fabricated_logits_hit_the_accuracy_and_share_some_mistakes():
    rng = np.random.default_rng(0)
    labels, difficulty = rng.integers(0, 397, 5000), rng.random(5000)
    a = fullsize.fabricate_logits(labels, 397, 0.55, difficulty, rng)
    b = fullsize.fabricate_logits(labels, 397, 0.70, difficulty, rng)
    wrong_a, wrong_b = a.argmax(1) != labels, b.argmax(1) != labels
    assert abs(1 - wrong_a.mean() - 0.55) < 0.002 and abs(1 - wrong_b.mean() - 0.70) < 0.002
    shared = (wrong_a & wrong_b).sum() / (wrong_a | wrong_b).sum()
    independent = (wrong_a.mean() * wrong_b.mean()) / (wrong_a | wrong_b).mean()
    assert independent < shared < 0.95  # overlapping more than chance, not identical
    assert a.dtype == np.float32 and a.shape == (5000, 397)


@pytest.mark.slow
@pytest.mark.browser
def test_reduced_run_times_every_step_and_writes_results(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    render = ["--render-repeats", "1", "--no-devtools"] if shutil.which("chromium") else \
        ["--no-render"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fullsize", "--out", str(out), "--work", str(work),
         "--scale", "0.05", "--seeds", "2", "--kind", "both", "--tasks", "kitti,dtd",
         "--methods", "linear,bitfit", "--select-sample", "1", "--evaluate-per-task", "1",
         *render], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "fullsize.json").read_text())
    assert set(doc["studies"]) == {"vtab1k", "robustness"}
    from vpeft.protocol import git_commit

    # the commit measured (others may edit the checkout meanwhile: "-dirty" can come and go)
    assert (doc["git_commit"] or "").removesuffix("-dirty") == \
        (git_commit() or "").removesuffix("-dirty")
    assert len(doc["load_before"]) == 3

    vtab = doc["studies"]["vtab1k"]
    assert vtab["fabricated"]["test_images"] == {"kitti": 36, "dtd": 94}   # 5 % of 711, 1880
    assert vtab["fabricated"]["grid_runs"] == 2 * (4 + 4)
    assert vtab["fabricated"]["final_runs"] == 2 * 2 * 2
    timing = vtab["timing"]
    for verb, jobs in (("select", 4), ("evaluate", 8), ("analyze", 2)):
        step = timing[verb]
        assert step["study_jobs"] == jobs and len(step["samples"]) == step["sampled_jobs"]
        for sample in step["samples"]:
            # the job's own peak: a job started from the (larger) benchmark process would show it
            assert sample["wall_s"] > 0 and 20 < sample["peak_rss_mb"] < 2000
    assert timing["evaluate"]["extrapolated"] and not timing["analyze"]["extrapolated"]
    assert {s["task"] for s in timing["evaluate"]["samples"]} == {"kitti", "dtd"}
    from vpeft.layout import ANALYSIS_TABLES

    for task in ("kitti", "dtd"):
        assert set(ANALYSIS_TABLES) <= set(timing["analysis_tables"][task])

    report = work / "vtab" / "reports" / "vtab1k"
    html = (report / "index.html").read_text()
    assert all(task in html for task in ("kitti", "dtd"))
    files = timing["report_files"]
    assert files["index_html_bytes"] == (report / "index.html").stat().st_size > 0
    assert "results.parquet" in files["files"] and files["total_bytes"] >= sum(
        v for v in files["files"].values())
    if "--no-render" not in render:
        assert timing["render"]["available"] and timing["render"]["dom_bytes"] > 1000
        # the largest task page is timed too (its DOM holds that task's grid table)
        task_render = timing["render_task"]
        assert task_render["available"] and task_render["dom_bytes"] > 1000

    # The fabricated runs are what vpeft would have written: evaluate scored every seed's final
    # run against the prepared test labels, and the methods' accuracies differ.
    runs = work / "vtab" / "runs" / "vtab1k" / "dtd"
    top1 = {}
    for method in ("linear", "bitfit"):
        for folder in ("final", "final-seed43"):
            result = json.loads((runs / method / folder / "test_eval.json").read_text())
            table = pq.read_table(runs / method / folder / "test_predictions.parquet")
            labels, preds = table.column("label").to_numpy(), table.column("pred").to_numpy()
            assert result["num_test"] == table.num_rows == 94
            assert abs(result["test_top1"] - 100 * np.mean(labels == preds)) < 1e-9
            top1[method, folder] = result["test_top1"]
    assert top1["linear", "final"] < top1["bitfit", "final"]

    robust = doc["studies"]["robustness"]
    assert robust["fabricated"]["test_images"] == {"imagenet": 2500}
    assert robust["timing"]["report"]["wall_s"] > 0
    wise = work / "robustness" / "runs" / "robustness" / "imagenet" / "linear" / "wise"
    assert pq.read_table(wise / "wise.parquet").num_rows == 11 * 5   # alphas x (ID + 4 shifts)

    md = (out / "fullsize.md").read_text()
    for row in ("| select |", "| evaluate |", "| analyze |", "| report |", "## robustness"):
        assert row in md

"""Several grid points of one method trained together in one process: each point's metrics,
predictions and adapter weights are bit-identical to its solo run (dropout and drop-path on, so
the per-point RNG streams matter), an interrupted fused job resumes every point, and Snakemake
plans one job per (task, method, chunk of points)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from vpeft import cli, layout
from vpeft.config import load_study
from vpeft.io import read_json
from vpeft.protocol import RESUME_CHECKPOINT, run_point, run_points

from conftest import REPO

# Everything in metrics.json that the training computes (not timings, paths or the job size).
RESULT_KEYS = ("status", "val_top1", "loss_curve", "steps", "diverged_at", "trainable_params",
               "trainable_params_with_head", "total_params", "hparams", "optim", "epochs", "seed",
               "feature_cache")


def _overrides(tmp_path: Path, weights: Path, runs: str, *extra: str) -> list[str]:
    # lora dropout 0.1 and drop_path 0.1 draw random numbers at every step
    return [f"paths.data={tmp_path}/data", f"paths.runs={tmp_path}/{runs}",
            f"model.weights={weights}", "study.tasks=[count]", "study.methods=[lora]",
            "train.drop_path=0.1", *extra]


def _plan(tmp_path: Path, prepared_task: Path, weights: Path, runs: str, *extra: str):
    plan = load_study("smoke", _overrides(tmp_path, weights, runs, *extra))
    target = layout.prepared_task(plan.cfg, "count")
    if not target.exists():
        shutil.copytree(prepared_task, target)
    return plan


def _assert_identical(fused: Path, solo: Path) -> None:
    a, b = read_json(fused / layout.METRICS), read_json(solo / layout.METRICS)
    for key in RESULT_KEYS:
        assert a[key] == b[key], key
    ta, tb = load_file(str(fused / layout.ADAPTER)), load_file(str(solo / layout.ADAPTER))
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].equal(tb[name]), name
    assert read_json(fused / layout.ADAPTER_CONFIG) == read_json(solo / layout.ADAPTER_CONFIG)
    pa_, pb = pq.read_table(fused / layout.PREDICTIONS), pq.read_table(solo / layout.PREDICTIONS)
    assert pa_.schema == pb.schema
    for name in ("index", "label", "pred"):
        assert pa_.column(name).equals(pb.column(name)), name
    # logits bit for bit (a diverged point's are NaN, which == would call unequal)
    la, lb = (t.column("logits").combine_chunks().flatten().to_numpy().view(np.uint32)
              for t in (pa_, pb))
    assert np.array_equal(la, lb)
    assert not (fused / RESUME_CHECKPOINT).exists()


@pytest.mark.slow
def test_fused_points_equal_their_solo_runs_bit_for_bit(tmp_path, prepared_task, tiny_weights):
    grid = "study.grid.lora.optim.lr=[0.001,0.01,1.0e12]"  # the last point diverges mid-job
    extra = (grid, "train.epochs=3", "train.batch_size=8")
    solo_plan = _plan(tmp_path, prepared_task, tiny_weights, "solo", *extra)
    for point in solo_plan.points["lora"]:
        run_point(solo_plan, "count", "lora", point, "grid")

    fused_plan = _plan(tmp_path, prepared_task, tiny_weights, "fused", *extra)
    metrics = run_points(fused_plan, "count", "lora", fused_plan.points["lora"], "grid")
    assert [m["fused_points"] for m in metrics] == [3, 3, 3]
    assert [m["status"] for m in metrics] == ["ok", "ok", "diverged"]
    # the two healthy points really differ, so equality below is not trivial
    assert metrics[0]["loss_curve"] != metrics[1]["loss_curve"]
    for point in fused_plan.points["lora"]:
        _assert_identical(layout.grid_dir(fused_plan.cfg, "count", "lora", point.id),
                          layout.grid_dir(solo_plan.cfg, "count", "lora", point.id))


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def _command(overrides: list[str], *points: str) -> list[str]:
    args = [sys.executable, "-m", "vpeft", "train", "--study", "smoke", "--task", "count",
            "--method", "lora", "--phase", "grid", "--threads", "1"]
    for point in points:
        args += ["--point", point]
    for o in overrides:
        args += ["-o", o]
    return args


@pytest.mark.slow
def test_an_interrupted_fused_job_resumes_every_point(tmp_path, prepared_task, tiny_weights):
    # many small steps, a checkpoint every epoch: SIGTERM lands mid-run with checkpoints behind it
    extra = ("train.epochs=40", "train.warmup_epochs=2", "train.batch_size=4",
             "train.checkpoint_every=1", "train.log_every_s=1000")
    solo_plan = _plan(tmp_path, prepared_task, tiny_weights, "solo", *extra)
    points = [p.id for p in solo_plan.points["lora"]]
    assert len(points) == 2
    for point in points:  # the references: each point alone, through the CLI, uninterrupted
        done = subprocess.run(_command(_overrides(tmp_path, tiny_weights, "solo", *extra), point),
                              cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    fused_plan = load_study("smoke", _overrides(tmp_path, tiny_weights, "fused", *extra))
    dirs = [layout.grid_dir(fused_plan.cfg, "count", "lora", p) for p in points]
    cmd = _command(_overrides(tmp_path, tiny_weights, "fused", *extra), *points)
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a hang guard: start-up alone can take minutes under load
    while not all((d / RESUME_CHECKPOINT).exists() for d in dirs):
        assert proc.poll() is None, f"finished before its first checkpoint:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoints within 600 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    for d in dirs:
        assert (d / RESUME_CHECKPOINT).is_file() and not (d / layout.METRICS).exists()

    resumed = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming from") == 2
    for point, d in zip(points, dirs):
        _assert_identical(d, layout.grid_dir(solo_plan.cfg, "count", "lora", point))


def test_a_point_named_twice_is_refused(tmp_path, tiny_weights):
    proc = subprocess.run(_command(_overrides(tmp_path, tiny_weights, "runs"),
                                   "lr0.001-wd0.0001", "lr0.001-wd0.0001"),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "named twice" in proc.stderr


def _dry_run(tmp_path: Path, *overrides: str) -> tuple[dict[str, str], str]:
    for item in ("Snakefile", "rules", "params"):
        target = tmp_path / item
        if not target.exists():
            src = REPO / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
    # per-method jobs unless a test says otherwise, as in the cluster studies (smoke groups)
    overrides = ("train.methods_per_job=1", *overrides)
    override = "overrides=[" + ",".join(f'"{o}"' for o in overrides) + "]"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds",
                           "--cores", "1", "train", "--config", "study=smoke", override],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    return dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M)), out


@pytest.mark.slow
def test_snakemake_trains_the_grid_of_a_method_as_one_job(tmp_path):
    stats, out = _dry_run(tmp_path)
    # smoke: tasks digits and count; linear has 1 point, lora 2: one job per (task, method)
    assert stats["train_grid_linear_1"] == stats["train_grid_lora_1"] == "2"
    assert "train_grid" not in stats
    assert re.search(r"--method lora --point lr0\.001-wd0\.0001 --point lr0\.01-wd0\.0001 ", out)
    assert re.search(r"--method linear --point lr0\.01-wd0\.0001 ", out)
    assert len(re.findall(r"--method lora --point", out)) == 2  # each rule runs its own points

    stats, _ = _dry_run(tmp_path, "train.points_per_job=1")  # the classic one job per point
    assert stats["train_grid"] == "6"


# --- several methods in one process (train.methods_per_job) -------------------------------------

def _grouped_overrides(tmp_path: Path, weights: Path, runs: str) -> list[str]:
    return [f"paths.data={tmp_path}/data", f"paths.runs={tmp_path}/{runs}",
            f"model.weights={weights}", "study.tasks=[count]", "study.methods=[linear,lora]",
            "train.drop_path=0.1", "train.epochs=2", "train.batch_size=8"]


def _vpeft(verb: str, overrides: list[str], *args: str) -> None:
    argv = [verb, "--study", "smoke", "--task", "count", *args]
    for o in overrides:
        argv += ["-o", o]
    if verb != "train":  # bookkeeping: no torch state to carry over, run in this process
        assert cli.main(argv) == 0
        return
    done = subprocess.run([sys.executable, "-m", "vpeft", *argv], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_final_identical(shared: Path, own: Path) -> None:
    a, b = read_json(shared / layout.METRICS), read_json(own / layout.METRICS)
    for key in RESULT_KEYS:
        assert a[key] == b[key], key
    ta, tb = load_file(str(shared / layout.ADAPTER)), load_file(str(own / layout.ADAPTER))
    assert ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)
    la, lb = (pq.read_table(d / layout.TEST_LOGITS) for d in (shared, own))
    assert la.column("index").equals(lb.column("index"))
    assert np.array_equal(*(t.column("logits").combine_chunks().flatten().to_numpy().view(np.uint32)
                            for t in (la, lb)))


@pytest.mark.slow
def test_methods_sharing_a_process_equal_their_own_jobs(tmp_path, prepared_task, tiny_weights):
    # lora runs second in the shared process: whatever linear leaves behind must not reach it
    plans = {runs: load_study("smoke", _grouped_overrides(tmp_path, tiny_weights, runs))
             for runs in ("own", "shared")}
    target = layout.prepared_task(plans["own"].cfg, "count")
    shutil.copytree(prepared_task, target)
    for runs in plans:
        o = _grouped_overrides(tmp_path, tiny_weights, runs)
        methods = [["--method", "lora"]] if runs == "own" else \
            [["--method", "linear", "--method", "lora"]]
        for m in methods:
            _vpeft("train", o, "--phase", "grid", *m, "--points", "all", "--threads", "1")
            _vpeft("select", o, *m)
            _vpeft("train", o, "--phase", "final", *m, "--threads", "1")
            _vpeft("evaluate", o, *m)
    own, shared = plans["own"].cfg, plans["shared"].cfg
    assert len(plans["own"].points["lora"]) == 2
    for point in plans["own"].points["lora"]:
        _assert_identical(layout.grid_dir(shared, "count", "lora", point.id),
                          layout.grid_dir(own, "count", "lora", point.id))
    assert read_json(layout.selection_file(shared, "count", "lora")) == \
        read_json(layout.selection_file(own, "count", "lora"))
    _assert_final_identical(layout.final_dir(shared, "count", "lora"),
                            layout.final_dir(own, "count", "lora"))
    assert read_json(layout.final_dir(shared, "count", "lora") / layout.TEST_EVAL) == \
        read_json(layout.final_dir(own, "count", "lora") / layout.TEST_EVAL)
    # and linear (first in the shared process) was trained, selected and scored too
    assert read_json(layout.final_dir(shared, "count", "linear") / layout.TEST_EVAL)["status"] == "ok"


def test_a_method_named_twice_or_points_across_methods_are_refused(tmp_path, tiny_weights):
    o = _grouped_overrides(tmp_path, tiny_weights, "runs")
    cmd = [sys.executable, "-m", "vpeft", "train", "--study", "smoke", "--task", "count",
           "--phase", "grid"]
    for args, message in (
            (["--method", "lora", "--method", "lora", "--points", "all"], "named twice"),
            (["--method", "linear", "--method", "lora", "--point", "lr0.01-wd0.0001"],
             "--points all")):
        proc = subprocess.run(cmd + args + [x for v in o for x in ("-o", v)], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_snakemake_runs_methods_of_a_task_together(tmp_path):
    stats, out = _dry_run(tmp_path, "train.methods_per_job=2", "train.seeds=[1,2]")
    # smoke: 2 tasks x one group of [linear, lora]; two seeds
    from vpeft.check import count_jobs

    plan = load_study("smoke", ["train.methods_per_job=2", "train.seeds=[1,2]"])
    # `vpeft check` counts the jobs of `all`: those of the target `train` but the rule `train`
    # itself, plus the report
    assert sum(count_jobs(plan).values()) == int(stats["total"])
    for rule in ("train_grid_group1", "select_group1", "train_final_group1", "evaluate_group1",
                 "train_final_seed_group1", "evaluate_seed_group1"):
        assert stats[rule] == "2", rule
    assert not {"train_grid", "select", "train_final", "evaluate", "train_grid_lora_1"} & set(stats)
    assert len(re.findall(r"--method linear --method lora --points all", out)) == 2
    # evaluation asks for the memory of its task's test logits (30 test images in smoke)
    from vpeft.kinds import study_kind
    from vpeft.protocol import evaluate_memory_mb

    jobs = re.findall(r"^[ \t]*(?:local)?rule evaluate_group1:\n((?:[ \t]+\S[^\n]*\n)+)", out, flags=re.M)
    asked = {re.search(r"wildcards: task=(\w+)", j).group(1):
             int(re.search(r"resources: .*\bmem_mb=(\d+)", j).group(1)) for j in jobs}
    assert asked == {task: evaluate_memory_mb(30, study_kind(plan.cfg).task_entry(task).num_classes)
                     for task in ("digits", "count")}
    assert len(re.findall(r"--phase final --task \w+ --method linear --method lora --seed 2", out)) == 2

    for bad in ("train.methods_per_job=-1", "train.methods_per_job=two"):
        override = f'overrides=["{bad}"]'
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1",
                               "train", "--config", "study=smoke", override],
                              cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "train.methods_per_job" in proc.stdout + proc.stderr


def test_method_groups_deal_methods_round_robin_and_never_exceed_the_size():
    from vpeft import jobs

    plan = load_study("demo")
    methods = plan.methods
    assert jobs.method_groups(plan) == [methods[0::2], methods[1::2]]  # demo: 8 methods a job
    for size, sizes in ((6, [6, 5, 5]), (1, [1] * 16), (0, [16]), (16, [16]), (20, [16])):
        plan = load_study("demo", [f"train.methods_per_job={size}"])
        groups = jobs.method_groups(plan)
        assert [len(g) for g in groups] == sizes, size
        assert sorted(m for g in groups for m in g) == sorted(methods)  # each method once

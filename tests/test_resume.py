"""Preemption: a real training process is killed (SIGKILL) or preempted (SIGTERM) mid-run; running
the same command again resumes from its checkpoint and ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from vpeft import layout
from vpeft.config import load_study
from vpeft.io import read_json
from vpeft.protocol import RESUME_CHECKPOINT

from conftest import REPO

POINT = "lr0.001-wd0.0001"


def _overrides(tmp_path: Path, weights: Path, runs: str) -> list[str]:
    # many small steps, a checkpoint every epoch: a kill lands mid-run with a checkpoint behind it
    return [f"paths.data={tmp_path}/data", f"paths.runs={tmp_path}/{runs}",
            f"model.weights={weights}", "study.tasks=[count]", "study.methods=[lora]",
            "train.epochs=60", "train.warmup_epochs=2", "train.batch_size=4",
            "train.checkpoint_every=1", "train.log_every_s=1000"]


def _command(overrides: list[str]) -> list[str]:
    args = [sys.executable, "-m", "vpeft", "train", "--study", "smoke", "--task", "count",
            "--method", "lora", "--point", POINT, "--phase", "grid", "--threads", "1"]
    for o in overrides:
        args += ["-o", o]
    return args


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def setup(tmp_path, prepared_task, tiny_weights):
    plan = load_study("smoke", _overrides(tmp_path, tiny_weights, "runs"))
    shutil.copytree(prepared_task, layout.prepared_task(plan.cfg, "count"))
    return tmp_path, tiny_weights


def _run_dir(tmp_path: Path, weights: Path, runs: str) -> Path:
    plan = load_study("smoke", _overrides(tmp_path, weights, runs))
    return layout.grid_dir(plan.cfg, "count", "lora", POINT)


def _interrupt(cmd: list[str], checkpoint: Path, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a hang guard: start-up alone can take minutes under load
    while not checkpoint.exists():
        assert proc.poll() is None, f"finished before its first checkpoint:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_identical(resumed: Path, reference: Path) -> None:
    a, b = read_json(resumed / layout.METRICS), read_json(reference / layout.METRICS)
    for key in ("status", "val_top1", "loss_curve", "steps"):
        assert a[key] == b[key], key
    ta, tb = load_file(str(resumed / layout.ADAPTER)), load_file(str(reference / layout.ADAPTER))
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].equal(tb[name]), name
    assert pq.read_table(resumed / layout.PREDICTIONS).equals(pq.read_table(reference / layout.PREDICTIONS))
    assert not (resumed / RESUME_CHECKPOINT).exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_resumes_bit_identical(setup, sig):
    tmp_path, weights = setup
    reference_cmd = _command(_overrides(tmp_path, weights, "reference"))
    done = subprocess.run(reference_cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = _run_dir(tmp_path, weights, "runs")
    cmd = _command(_overrides(tmp_path, weights, "runs"))
    interrupted = _interrupt(cmd, run_dir / RESUME_CHECKPOINT, sig)
    if sig == signal.SIGTERM:
        assert interrupted.returncode == 143, interrupted.stderr[-3000:]
        assert "state saved" in interrupted.stderr
    else:
        assert interrupted.returncode == -signal.SIGKILL
    assert (run_dir / RESUME_CHECKPOINT).is_file()
    assert not (run_dir / layout.METRICS).exists()

    resumed = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    _assert_identical(run_dir, _run_dir(tmp_path, weights, "reference"))

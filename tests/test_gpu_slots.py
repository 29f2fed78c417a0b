"""One GPU per concurrent local training job (vpeft.gpu_slots), checked with real processes and a
fake device list (``VPEFT_GPUS``): K jobs see K distinct devices, more jobs than devices wait
instead of sharing, a killed job's device is free again, and `vpeft train` takes its slot before
anything else."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpeft import gpu_slots

from conftest import REPO

# A training process reduced to what matters here: claim a slot as `vpeft train` does, record what
# CUDA would see, hold the device a while, exit (which drops the lock).
WORKER = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO)
from vpeft.gpu_slots import claim_for_training
out, hold = sys.argv[1], float(sys.argv[2])
started = time.time()
slot = claim_for_training("auto")
acquired = time.time()
open(out + ".ready", "w").close()
time.sleep(hold)
json.dump({"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "slot": slot.device, "started": started, "acquired": acquired,
           "released": time.time()}, open(out, "w"))
"""


def _env(tmp_path: Path, devices: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    return {**env, "VPEFT_GPUS": devices, "VPEFT_GPU_LOCK_DIR": str(tmp_path / "locks"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def _start(tmp_path: Path, env: dict[str, str], name: str, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / name), str(hold)],
                            env=env, stderr=subprocess.PIPE, text=True)


def _records(tmp_path: Path, procs: list[subprocess.Popen], timeout: float = 120) -> list[dict]:
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("job-*")) if p.suffix != ".ready"]


def test_concurrent_jobs_each_get_a_distinct_device(tmp_path):
    env = _env(tmp_path, "0,1,2")
    # Held long enough that all three are alive together: one after another, each would find
    # device 0 free again, so three distinct devices can only come from concurrent holders.
    procs = [_start(tmp_path, env, f"job-{i}", hold=4.0) for i in range(3)]
    records = _records(tmp_path, procs)
    assert len(records) == 3
    assert sorted(r["visible"] for r in records) == ["0", "1", "2"]
    assert all(r["visible"] == r["slot"] for r in records)
    assert max(r["acquired"] for r in records) < min(r["released"] for r in records)


def test_more_jobs_than_devices_wait_and_never_share(tmp_path):
    env = _env(tmp_path, "3,5")
    procs = [_start(tmp_path, env, f"job-{i}", hold=1.5) for i in range(5)]
    records = _records(tmp_path, procs)
    assert len(records) == 5
    assert {r["visible"] for r in records} == {"3", "5"}
    for device in ("3", "5"):
        spans = sorted((r["acquired"], r["released"]) for r in records if r["visible"] == device)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"two jobs held device {device} at once: {spans}"
    # Five 1.5 s holds on two devices: at least one job waited ~3 s for its slot.
    assert max(r["acquired"] - r["started"] for r in records) >= 2.5


def test_a_killed_job_frees_its_device(tmp_path):
    env = _env(tmp_path, "0")
    holder = _start(tmp_path, env, "job-holder", hold=300)
    deadline = time.time() + 60
    while not (tmp_path / "job-holder.ready").exists():
        assert holder.poll() is None and time.time() < deadline, holder.stderr.read()
        time.sleep(0.1)
    waiter = _start(tmp_path, env, "job-waiter", hold=0)
    time.sleep(2.0)
    assert waiter.poll() is None, "the second job did not wait for the only device"
    holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the flock
    holder.wait(timeout=30)
    _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    record = json.loads((tmp_path / "job-waiter").read_text())
    assert record["visible"] == "0"
    assert "all 1 GPU slots are taken" in err  # it said why it waited


@pytest.mark.parametrize("env, device", [
    ({"SLURM_JOB_ID": "42", "VPEFT_GPUS": "0,1"}, "auto"),   # the scheduler assigns devices
    ({"VPEFT_GPUS": "none"}, "auto"),                        # slots turned off
    ({"VPEFT_GPUS": "0,1"}, "cpu"),                          # the run does not use CUDA
    ({"VPEFT_GPUS": "0,1"}, "cuda:1"),                       # the user pinned a device
])
def test_nothing_is_claimed_where_slots_do_not_apply(tmp_path, monkeypatch, env, device):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = {**env, "VPEFT_GPU_LOCK_DIR": str(tmp_path / "locks")}
    assert gpu_slots.claim_for_training(device, env=env) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_device_pool_sources(monkeypatch):
    monkeypatch.setattr(gpu_slots, "nvidia_driver_present", lambda: False)
    assert gpu_slots.device_pool({"VPEFT_GPUS": " 0, 1,GPU-ab12 "}) == ["0", "1", "GPU-ab12"]
    # CUDA_VISIBLE_DEVICES exported on a machine without an NVIDIA driver: no slots.
    assert gpu_slots.device_pool({"CUDA_VISIBLE_DEVICES": "2,3"}) is None
    monkeypatch.setattr(gpu_slots, "nvidia_driver_present", lambda: True)
    assert gpu_slots.device_pool({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert gpu_slots.device_pool({"CUDA_VISIBLE_DEVICES": ""}) is None
    with pytest.raises(gpu_slots.GpuSlotError, match="VPEFT_GPUS='0,1,0': a device is listed twice"):
        gpu_slots.device_pool({"VPEFT_GPUS": "0,1,0"})


def test_waiting_gives_up_after_its_timeout_naming_the_pool(tmp_path):
    held = gpu_slots._try_lock(tmp_path / "gpu-0.lock")
    try:
        with pytest.raises(gpu_slots.GpuSlotError, match=r"no free GPU among \['0'\] after 1s"):
            gpu_slots.acquire(["0"], tmp_path, poll_s=0.2, timeout_s=1.0)
    finally:
        held.close()


def test_vpeft_train_takes_its_slot_first(tmp_path):
    """The real CLI: the slot is taken right after the plan is read, before the arguments are
    checked against it (here they are incomplete, so the verb stops with its usage error)."""
    env = _env(tmp_path, "7")
    cmd = [sys.executable, "-m", "vpeft", "train", "--study", "smoke", "--task", "digits",
           "--method", "lora"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "needs --point ID" in proc.stderr
    lock = tmp_path / "locks" / "gpu-7.lock"
    assert lock.read_text().startswith("pid "), proc.stderr
    assert "GPU slot: device 7" in proc.stderr

    lock.unlink()
    proc = subprocess.run([*cmd, "-o", "train.device=cpu"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not lock.exists(), proc.stderr

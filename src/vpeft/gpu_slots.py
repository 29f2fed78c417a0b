"""One GPU per local training process: a pool of lock files, one per device.

``snakemake --cores N --resources gpu=K`` runs at most K training jobs at once (each asks for
``gpu: 1``), but nothing tells a job *which* GPU is its own: every process would pick
``cuda:0``. :func:`claim_for_training` (called by ``vpeft train`` before anything touches CUDA)
takes the first free slot of the machine's device list and sets ``CUDA_VISIBLE_DEVICES`` to that
one device, so the job's ``cuda`` is its own GPU. A slot is an exclusive ``fcntl.flock`` on
``<lock dir>/gpu-<id>.lock``, held by the open file for the life of the process; the kernel
drops it when the process ends, however it ends (exit, exception, SIGKILL), so a killed job never
leaves its GPU taken. With every slot taken a process waits for one rather than share a GPU.

Device list, first match wins:

- ``VPEFT_GPUS=0,1,2,3`` (ids as ``CUDA_VISIBLE_DEVICES`` takes them: indices or UUIDs);
  ``VPEFT_GPUS=none`` turns slots off (jobs share devices as before);
- on a machine with an NVIDIA driver: ``CUDA_VISIBLE_DEVICES`` when it is set (the pool is the
  devices the user made visible), else ``nvidia-smi --query-gpu=index`` (every GPU);
- otherwise (a CPU machine): no slots, nothing changes.

Nothing happens under SLURM (``SLURM_JOB_ID`` set: the scheduler hands each job its own device),
nor when the run does not use CUDA by default (``train.device`` is ``cpu`` or an explicit
``cuda:N``). ``VPEFT_GPU_LOCK_DIR`` moves the lock files (default: a per-user directory under
the system's temporary directory; all jobs of one machine must use the same one).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

from vpeft.errors import UserError

log = logging.getLogger("vpeft.gpu_slots")

DEVICES_ENV = "VPEFT_GPUS"
LOCK_DIR_ENV = "VPEFT_GPU_LOCK_DIR"
OFF = "none"


class GpuSlotError(UserError):
    """The device list or lock directory cannot be used (the message says which and why)."""


@dataclass
class Slot:
    """A held device: ``CUDA_VISIBLE_DEVICES`` is ``device`` while ``handle`` stays open."""

    device: str
    lock_file: Path
    handle: IO[str]

    def release(self) -> None:
        """Give the device back now (closing the file drops the lock; exit does it too)."""
        if not self.handle.closed:
            self.handle.close()


_held: Slot | None = None  # the process's own slot, kept open until the process ends


def parse_devices(text: str, source: str) -> list[str]:
    """``"0, 1,GPU-ab12"`` -> ``["0", "1", "GPU-ab12"]``; ids must be unique."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if len(set(devices)) != len(devices):
        raise GpuSlotError(f"{source}={text!r}: a device is listed twice")
    return devices


def _nvidia_smi_devices() -> list[str] | None:
    """GPU indices from ``nvidia-smi`` (not torch: asking torch would fix its device count
    before ``CUDA_VISIBLE_DEVICES`` is set); None where there is no working nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()] or None


def device_pool(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The devices local jobs share out (module docstring), or None when slots are off."""
    env = os.environ if env is None else env
    if env.get(DEVICES_ENV) is not None:
        value = env[DEVICES_ENV]
        if value.strip().lower() == OFF:
            return None
        return parse_devices(value, DEVICES_ENV) or None
    if not nvidia_driver_present():  # e.g. CUDA_VISIBLE_DEVICES exported on a CPU machine
        return None
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return parse_devices(env["CUDA_VISIBLE_DEVICES"], "CUDA_VISIBLE_DEVICES") or None
    return _nvidia_smi_devices()


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (checked without starting CUDA)."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi") is not None


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(LOCK_DIR_ENV):
        return Path(env[LOCK_DIR_ENV])
    return Path(tempfile.gettempdir()) / f"vpeft-gpu-slots-{os.getuid()}"


def _lock_path(directory: Path, device: str) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_lock(path: Path) -> IO[str] | None:
    """The open, exclusively locked ``path``; None if another process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return handle


def acquire(devices: Sequence[str], directory: Path, *, poll_s: float = 1.0,
            timeout_s: float | None = None) -> Slot:
    """Lock the first free device of ``devices`` (waiting while all are taken) and point
    ``CUDA_VISIBLE_DEVICES`` at it. Raises :class:`GpuSlotError` after ``timeout_s``."""
    if not devices:
        raise GpuSlotError("no devices to share out")
    _refuse_if_cuda_started()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GpuSlotError(f"{LOCK_DIR_ENV}: cannot create {directory}: {err}") from err
    started = time.monotonic()
    waiting_logged = False
    while True:
        for device in devices:
            path = _lock_path(directory, device)
            try:
                handle = _try_lock(path)
            except OSError as err:
                raise GpuSlotError(f"{path}: cannot open the GPU lock file: {err}") from err
            if handle is None:
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            handle.flush()  # who holds it, for a human reading the file; the lock is the flock
            os.environ["CUDA_VISIBLE_DEVICES"] = device
            log.info("GPU slot: device %s (%s)%s", device, path,
                     f" after waiting {time.monotonic() - started:.0f}s" if waiting_logged else "")
            return Slot(device, path, handle)
        if timeout_s is not None and time.monotonic() - started >= timeout_s:
            raise GpuSlotError(f"no free GPU among {list(devices)} after {timeout_s:.0f}s "
                               f"(lock files in {directory})")
        if not waiting_logged:
            log.info("all %d GPU slots are taken (%s); waiting for one", len(devices), directory)
            waiting_logged = True
        time.sleep(poll_s)


def _refuse_if_cuda_started() -> None:
    """CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when it starts: setting it later does nothing."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("vpeft.gpu_slots: CUDA was initialised before a GPU slot was taken; "
                           "claim the slot first")


def claim_for_training(device: str | None = "auto",
                       env: Mapping[str, str] | None = None) -> Slot | None:
    """Give this process a GPU of its own for its lifetime when it is a local job on a machine
    with a device pool; None (nothing done) otherwise. See the module docstring."""
    global _held
    env = os.environ if env is None else env
    if _held is not None and not _held.handle.closed:
        return _held
    if env.get("SLURM_JOB_ID"):
        return None
    if str(device or "auto") not in ("auto", "cuda"):
        return None
    devices = device_pool(env)
    if not devices:
        return None
    _held = acquire(devices, lock_dir(env))
    return _held


def main() -> int:
    """``python -m vpeft.gpu_slots``: the pool, the lock directory and who holds which slot."""
    devices = device_pool()
    directory = lock_dir()
    print(f"device pool: {devices if devices else 'none (slots off)'}; lock files: {directory}")
    for device in devices or []:
        path = _lock_path(directory, device)
        handle = _try_lock(path) if path.exists() else None
        free = handle is not None or not path.exists()
        if handle is not None:
            handle.close()
        print(f"  {device}: {'free' if free else 'taken, ' + path.read_text().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

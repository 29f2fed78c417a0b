"""Which machine made a result: CPU model and vector extensions, core count, the torch build and
its math libraries, the GPU, and the CPU-kernel choice (``train.cpu_kernels``).

Recorded beside every result (``metrics.json`` ``machine``) and summarised in the report's
provenance, because the same code, seed and data give different (equally valid) numbers on
different CPU types: torch picks its kernels (ATen's AVX2/AVX-512 paths, MKL's, oneDNN's) by the
CPU it finds, and they round differently. Every probe is cheap and none can fail: what cannot be
read is ``"unknown"``.

``train.cpu_kernels: portable`` pins those choices (ATen and oneDNN to AVX2, MKL to its
vendor-independent branch) through the libraries' own switches (:data:`PORTABLE_ENV`), which must
be set before torch runs its first operation: :func:`apply_cpu_kernels` sets them at process start
(``python -m vpeft``) and :func:`check_cpu_kernels` refuses a run whose torch already chose
otherwise. An environment that already sets them is respected in ``native`` mode, and recorded.
docs/benchmarks.md has what it costs and what it was shown to change.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping

from vpeft.errors import ConfigError, UserError

__all__ = ["CPU_KERNELS", "PORTABLE_ENV", "apply_cpu_kernels", "check_cpu_kernels", "cpu_info",
           "describe", "machine_key", "nvidia_driver", "summary", "torch_info"]

CPU_KERNELS = ("native", "portable")
# The libraries' documented switches: ATen's kernel dispatch level, MKL's Conditional Numerical
# Reproducibility branch, oneDNN's highest instruction set. AVX2 rather than ATen's scalar
# ``default``: every x86 CPU of the last decade has it. MKL's branch is COMPATIBLE, not AVX2:
# MKL documents its AVX2 branch for Intel CPUs only (elsewhere it falls back to AUTO).
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE",
                "ONEDNN_MAX_CPU_ISA": "AVX2"}
PORTABLE_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() must then say
# The environment that decides kernels and threads, recorded as the run saw it.
_KERNEL_ENV = (*PORTABLE_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# /proc/cpuinfo flags worth naming: the vector units the math libraries choose kernels by.
_VECTOR_PREFIXES = ("sse4_2", "avx", "fma", "f16c", "amx", "neon", "asimd", "sve")
UNKNOWN = "unknown"


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's ``key: value`` lines (empty when the file is missing or unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: a machine's cores are alike
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, vendor, vector extensions and core counts (``unknown`` where unreadable)."""
    info = _cpuinfo(path)
    flags = (info.get("flags") or info.get("Features") or "").split()  # x86 | ARM
    vector = sorted(f for f in flags if f.startswith(_VECTOR_PREFIXES))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "model": info.get("model name") or info.get("Model") or platform.processor() or UNKNOWN,
        "vendor": info.get("vendor_id") or info.get("CPU implementer") or UNKNOWN,
        "vector_extensions": vector if flags else UNKNOWN,
        "cores": os.cpu_count() or UNKNOWN, "usable_cores": usable or UNKNOWN,
        "arch": platform.machine() or UNKNOWN}


def _build_line(config: str, marker: str) -> str:
    return next((line.strip(" -") for line in config.splitlines() if marker in line), UNKNOWN)


def _build_setting(config: str, name: str) -> str:
    for part in config.replace("\n", ",").split(","):
        key, sep, value = part.partition("=")
        if sep and key.split()[-1:] == [name]:
            return value
    return UNKNOWN


def _numpy_blas() -> str:
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', UNKNOWN)} {blas.get('version', '')}".strip()
    except Exception:  # an old numpy without mode=, or a different layout: not worth a failure
        return UNKNOWN


def nvidia_driver(path: Path = Path("/proc/driver/nvidia/version")) -> str:
    """The NVIDIA kernel driver's version, read without an nvidia-smi subprocess."""
    try:
        first = path.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return UNKNOWN
    return next((w for w in first.split() if w[:1].isdigit() and "." in w), UNKNOWN)


def _gpu(torch: Any) -> dict[str, Any] | None:
    try:
        if not torch.cuda.is_available():
            return None
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return {"names": names, "driver": nvidia_driver(), "cuda": torch.version.cuda or UNKNOWN,
                "cudnn": str(torch.backends.cudnn.version() or UNKNOWN)}
    except Exception as err:  # a broken driver must not lose the result being recorded
        return {"error": f"{type(err).__name__}: {err}"}


def torch_info() -> dict[str, Any]:
    """The torch build and its math libraries, the kernel level it chose, its threads, the GPU.
    Only when torch is already imported (recording must not pay for importing it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        config = torch.__config__.show()
        info = {
            "version": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": _build_setting(config, "BLAS_INFO"), "mkl": _build_line(config, "Math Kernel"),
            "onednn": _build_line(config, "MKL-DNN"), "openmp": _build_line(config, "OpenMP"),
            "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
            "threads": torch.get_num_threads(), "numpy_blas": _numpy_blas()}
    except Exception as err:
        info = {"version": getattr(torch, "__version__", UNKNOWN),
                "error": f"{type(err).__name__}: {err}"}
    info["gpu"] = _gpu(torch)
    return info


def describe(cpu_kernels: str | None = None) -> dict[str, Any]:
    """Everything above, with the kernel environment as this process saw it."""
    return {"cpu": cpu_info(), "torch": torch_info(), "cpu_kernels": cpu_kernels,
            "kernel_env": {k: os.environ[k] for k in _KERNEL_ENV if k in os.environ}}


def machine_key(machine: Mapping[str, Any] | None) -> str:
    """What decides whether two runs' numbers can agree bit for bit: on a GPU machine the GPU
    model and CUDA version (training runs there); else the CPU model, the kernel level torch
    chose and the thread count. Runs with different keys give different, equally valid numbers."""
    if not machine:
        return UNKNOWN
    cpu, torch = machine.get("cpu") or {}, machine.get("torch") or {}
    gpu = torch.get("gpu") or {}
    if gpu.get("names"):
        return f"{', '.join(gpu['names'])} · CUDA {gpu.get('cuda', UNKNOWN)}"
    return " · ".join([str(cpu.get("model", UNKNOWN)),
                       f"{torch.get('cpu_capability', UNKNOWN)} kernels",
                       f"{torch.get('threads', '?')} thread(s)"])


def summary(machine: Mapping[str, Any] | None) -> str:
    """One line for the report: the key plus the torch build and kernel choice."""
    if not machine:
        return "not recorded"
    torch = machine.get("torch") or {}
    extra = [f"torch {torch.get('version', UNKNOWN)} ({torch.get('blas', UNKNOWN)} BLAS)",
             f"cpu_kernels {machine.get('cpu_kernels') or 'native'}"]
    return " · ".join([machine_key(machine), *extra])


def apply_cpu_kernels(mode: str) -> None:
    """Set the switches of ``train.cpu_kernels`` in this process's environment (inherited by its
    children). Call before torch runs an operation; :func:`check_cpu_kernels` verifies."""
    if mode not in CPU_KERNELS:
        raise ConfigError(f"config key 'train.cpu_kernels': {mode!r}; expected one of "
                          f"{', '.join(CPU_KERNELS)}")
    if mode == "portable":
        os.environ.update(PORTABLE_ENV)


def check_cpu_kernels(mode: str) -> None:
    """Refuse a portable run whose torch does not run the portable kernels (it chose before the
    switches were set, or the CPU lacks AVX2): its numbers would not be what it claims."""
    apply_cpu_kernels(mode)
    if mode != "portable":
        return
    import torch

    chosen = torch.backends.cpu.get_cpu_capability()
    if chosen != PORTABLE_CAPABILITY:
        raise UserError(
            f"train.cpu_kernels: portable needs torch's CPU kernels at {PORTABLE_CAPABILITY}, but "
            f"this process runs {chosen} ({cpu_info()['model']}): either the CPU lacks AVX2 or "
            f"torch ran before ATEN_CPU_CAPABILITY was set (start a fresh `python -m vpeft` "
            f"process, or export {' '.join(f'{k}={v}' for k, v in PORTABLE_ENV.items())})")

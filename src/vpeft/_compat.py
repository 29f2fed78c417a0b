"""Import-time guard for the CPU environment of these machines.

The only ``torchvision`` build matching ``torch==2.13.0`` without pulling CUDA wheels is a CUDA
build whose C++ ops are absent on a CPU-only torch, so ``import torchvision`` (and therefore
``import timm``) fails with ``operator torchvision::nms does not exist``. Declaring the two op
schemas that torchvision registers fake kernels for lets it import; only the detection ops
(nms) stay unusable, and vpeft never calls them. On a normal install (a torchvision built for
this torch, e.g. the GPU machines' torch 2.11.0+cu130 with torchvision 0.26.0) the schemas must
NOT be declared: torchvision's own library registers them when it loads and aborts the process
on a second registration. So its library is loaded first, and only if that fails are they
declared.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment: torch.library.Library | None = None


def ensure_torchvision_importable() -> None:
    global _fragment
    if _fragment is not None or "torchvision" in sys.modules:
        return
    missing = [name for name in _MISSING_OPS if not torch._C._dispatch_has_kernel(f"torchvision::{name}")
               and not _op_exists(name)]
    if not missing or _load_torchvision_ops():
        return
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _fragment.define(_MISSING_OPS[name])


def _load_torchvision_ops() -> bool:
    """Load torchvision's compiled ops the way its import does (same path, same loader), without
    running its __init__; True if they loaded, False if absent or built for another torch."""
    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            library = Path(folder) / f"_C{suffix}"
            if library.is_file():
                try:
                    torch.ops.load_library(str(library))
                except (OSError, RuntimeError):  # undefined symbols: a build for another torch
                    return False
                return True
    return False


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False

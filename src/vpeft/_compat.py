"""Import-time guard for the CPU environment of these machines.

The only ``torchvision`` build matching ``torch==2.13.0`` without pulling CUDA wheels is a CUDA
build whose C++ ops are absent on a CPU-only torch, so ``import torchvision`` (and therefore
``import timm``) fails with ``operator torchvision::nms does not exist``. Declaring the two op
schemas that torchvision registers fake kernels for lets it import; only the detection ops
(nms) stay unusable, and vpeft never calls them. On a normal install (ops present) this does
nothing.
"""
from __future__ import annotations

import torch

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment: torch.library.Library | None = None


def ensure_torchvision_importable() -> None:
    global _fragment
    if _fragment is not None:
        return
    missing = [name for name in _MISSING_OPS if not torch._C._dispatch_has_kernel(f"torchvision::{name}")
               and not _op_exists(name)]
    if not missing:
        return
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _fragment.define(_MISSING_OPS[name])


def _op_exists(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False

"""The zero-shot head as a module of the model: its class, its file, and installing it on a ViT.

A CLIP classifier is ``exp(logit_scale) · <normalise(visual_proj(features)), t̂_c>``. timm's CLIP
ViTs (``vit_base_patch16_clip_224.*``) keep ``visual.proj`` as their ``head`` (768→512, zero bias)
and have no normalisation after it, so the classifier cannot be a single ``nn.Linear``.
:class:`ZeroShotHead` is that whole function — projection, L2 normalisation, linear classifier
(weights ``exp(logit_scale)·t̂``, bias zero) — installed as the ViT's ``head``: it is what
``get_classifier()`` returns, so every method trains all of it (the head is always trainable)
and WiSE-FT interpolates it.

The head file (safetensors) holds ``proj.weight`` and ``classifier.{weight,bias}``; its metadata
records the CLIP model, the number of templates and the class names. Computing the head from a
CLIP text tower is the robustness study's work (:mod:`vpeft.robustness.zeroshot`); this module is
what a backbone needs to start from that file (``model.init_head``,
:func:`vpeft.models.backbone.study_backbone`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vpeft import layout
from vpeft.errors import UserError
from vpeft.io import atomic_path, write_json

METADATA_KEY = "vpeft_zeroshot_head"


class ZeroShotError(UserError):
    """The CLIP text tower or the head file cannot be used."""


class ZeroShotHead(nn.Module):
    """``classifier(normalise(proj(x)))``: CLIP's visual projection and zero-shot classifier."""

    def __init__(self, width: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.normalize(self.proj(x), dim=-1))

    @classmethod
    def from_tensors(cls, proj_weight: torch.Tensor, class_weight: torch.Tensor,
                     class_bias: torch.Tensor | None = None) -> "ZeroShotHead":
        embed_dim, width = proj_weight.shape
        head = cls(width, embed_dim, class_weight.shape[0])
        with torch.no_grad():
            head.proj.weight.copy_(proj_weight)
            head.classifier.weight.copy_(class_weight)
            head.classifier.bias.copy_(torch.zeros(class_weight.shape[0]) if class_bias is None
                                       else class_bias)
        return head


def save_head(head: ZeroShotHead, path: str | Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    write_json(layout.weights_info(path),
               {**meta, "tensors": {k: list(v.shape) for k, v in state.items()}})


def load_head(path: str | Path) -> ZeroShotHead:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ZeroShotError(f"model.init_head: zero-shot head file not found: {path}")
    state = load_file(str(path))
    expected = {"proj.weight", "classifier.weight", "classifier.bias"}
    if set(state) != expected:
        raise ZeroShotError(f"{path}: tensors {sorted(state)}; expected {sorted(expected)} "
                            "(a head written by `vpeft zeroshot-head`)")
    return ZeroShotHead.from_tensors(state["proj.weight"], state["classifier.weight"],
                                     state["classifier.bias"])


def install_head(model: nn.Module, head: ZeroShotHead | str | Path) -> nn.Module:
    """Make ``head`` (or the head file) the classification head of a timm ViT, in place."""
    if not isinstance(head, ZeroShotHead):
        head = load_head(head)
    width = int(model.num_features)
    if head.proj.in_features != width:
        raise ZeroShotError(f"zero-shot head expects {head.proj.in_features}-wide features; the "
                            f"backbone {type(model).__name__} has {width}")
    ref = next(model.parameters())
    model.head = head.to(device=ref.device, dtype=ref.dtype)
    model.num_classes = head.classifier.out_features
    return model

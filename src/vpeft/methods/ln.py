"""LN tuning: train the affine weight and bias of every LayerNorm of the backbone.

The LayerNorm-tuning baseline of the study (arXiv 2409.16434; cf. Basu et al., 2023 and
Zhao et al., 2024, "Tuning LayerNorm in Attention"): ``norm1``/``norm2`` of every block, the
final ``norm``, and ``fc_norm``/``norm_pre``/the patch-embedding norm whenever those are
LayerNorms. LayerNorms are found by type (timm's ``LayerNorm`` subclasses ``nn.LayerNorm``).
Nothing is inserted, so the model stays a plain timm ViT and there is nothing to merge.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import merge_nothing, register


def layernorm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weight and bias of every affine ``nn.LayerNorm`` in ``model``, in module order."""
    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            params += [p for p in (module.weight, module.bias) if isinstance(p, nn.Parameter)]
    return params


@dataclass(frozen=True)
class LNConfig:
    pass


@register("ln", LNConfig, "every LayerNorm weight and bias", identity_at_init=True,
          merge=merge_nothing)
def attach(model: nn.Module, config: LNConfig) -> list[nn.Parameter]:
    params = layernorm_parameters(model)
    if not params:
        raise ValueError("ln: the model has no affine LayerNorm to train")
    return params

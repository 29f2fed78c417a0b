"""Pfeiffer adapter (Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for
Transfer Learning"): one bottleneck adapter per block, after the MLP branch only.

The MLP branch output ``h`` becomes ``h + s · up(dropout(relu(down(h))))``; ``down`` is D→b
(xavier-uniform weight, zero bias), ``up`` is b→D zero-initialised (the pretrained function is
unchanged at init), dropout 0.1. Attached by wrapping ``block.ls2`` with the shared
:class:`~vpeft.methods.adapter.SequentialAdapter` (see ``adapter`` for the placement with respect
to LayerScale).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.adapter import (BOTTLENECK_LINEARS, check_bottleneck_config, timm_blocks,
                                   wrap_branch_output)
from vpeft.methods.base import register


@dataclass(frozen=True)
class PfeifferConfig:
    bottleneck: int = 8   # b, the hidden width of the adapter
    scale: float = 1.0    # s, multiplies the adapter output
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_bottleneck_config("pfeiffer", self.bottleneck, self.scale, self.dropout)


@register("pfeiffer", PfeifferConfig,
          "bottleneck adapter (down, ReLU, up; residual) after the MLP branch output only",
          identity_at_init=True, public_linears=BOTTLENECK_LINEARS)
def attach(model: nn.Module, config: PfeifferConfig) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for block in timm_blocks(model, "pfeiffer"):
        params += wrap_branch_output(block, "ls2", config)
    return params

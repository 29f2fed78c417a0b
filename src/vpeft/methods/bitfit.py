"""BitFit (Ben Zaken et al., 2022): train every bias of the backbone.

Biases are found by module identity: the ``bias`` parameter of every Linear, Conv2d and LayerNorm
(attention qkv/proj, MLP fc1/fc2, all LayerNorms, the patch embedding).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import merge_nothing, register

BIASED_MODULES = (nn.Linear, nn.Conv2d, nn.LayerNorm)


@dataclass(frozen=True)
class BitFitConfig:
    pass


@register("bitfit", BitFitConfig, "every bias", identity_at_init=True, merge=merge_nothing)
def attach(model: nn.Module, config: BitFitConfig) -> list[nn.Parameter]:
    return [m.bias for m in model.modules()
            if isinstance(m, BIASED_MODULES) and isinstance(m.bias, nn.Parameter)]

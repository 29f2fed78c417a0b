"""Linear probing: the backbone stays frozen; only the head (always trainable) learns."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import merge_nothing, register


@dataclass(frozen=True)
class LinearConfig:
    pass


@register("linear", LinearConfig, "head only", identity_at_init=True, merge=merge_nothing)
def attach(model: nn.Module, config: LinearConfig) -> list[nn.Parameter]:
    return []

"""Linear probing: the backbone stays frozen; only the head (always trainable) learns."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import register


@dataclass(frozen=True)
class LinearConfig:
    pass


@register("linear", LinearConfig, "head only")
def attach(model: nn.Module, config: LinearConfig) -> list[nn.Parameter]:
    return []

"""Full fine-tuning: every parameter of the backbone is trained."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import merge_nothing, register


@dataclass(frozen=True)
class FullConfig:
    pass


@register("full", FullConfig, "every parameter", identity_at_init=True, merge=merge_nothing)
def attach(model: nn.Module, config: FullConfig) -> list[nn.Parameter]:
    return list(model.parameters())

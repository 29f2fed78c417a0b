"""Full fine-tuning: every parameter of the backbone is trained."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import register


@dataclass(frozen=True)
class FullConfig:
    pass


@register("full", FullConfig, "every parameter")
def attach(model: nn.Module, config: FullConfig) -> list[nn.Parameter]:
    return list(model.parameters())

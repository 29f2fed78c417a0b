"""LoRA (Hu et al., 2022) on the fused qkv projection of every attention block.

``qkv(x) + scale * B(A(dropout(x)))`` with A kaiming-uniform, B zero (so the pretrained function
is unchanged at init) and ``scale = alpha / rank``; the study uses alpha = rank (scale 1).
The wrapper keeps the original ``nn.Linear`` as ``base`` so it can be merged back (#3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from vpeft.methods.base import check_range, register


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank, i.e. scale 1 (the study's choice)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_range("lora", "rank", self.rank, low=1, integer=True)
        check_range("lora", "dropout", self.dropout, low=0.0, high=0.99)
        if self.alpha is not None:
            check_range("lora", "alpha", self.alpha, low=0.0)

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        self.dropout = nn.Dropout(dropout)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        down = nn.functional.linear(self.dropout(x), self.lora_a)
        # out + scale * down @ B^T as one addmm: no separate scale and add passes over the
        # [tokens, 3 * width] output, forward or backward (about 7 % of a ViT LoRA training step
        # on CPU; docs/benchmarks.md).
        fused = torch.addmm(out.reshape(-1, out.shape[-1]), down.reshape(-1, down.shape[-1]),
                            self.lora_b.t(), alpha=self.scale)
        return fused.view(out.shape)

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * self.lora_b @ self.lora_a


def merge(model: nn.Module) -> None:
    """Fold every LoRA update into its qkv Linear and put the plain Linear back."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight.copy_(child.merged_weight())
                setattr(parent, child_name, child.base)


@register("lora", LoRAConfig, "low-rank update of the fused qkv projection",
          identity_at_init=True, merge=merge,
          public_linears={LoRALinear: ("lora_a", "lora_b")})  # nn.Linear A and B there
def attach(model: nn.Module, config: LoRAConfig) -> list[nn.Parameter]:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Attention  # lazy: timm is slow to import

    params: list[nn.Parameter] = []
    for attn in [m for m in model.modules() if isinstance(m, Attention)]:
        wrapped = LoRALinear(attn.qkv, int(config.rank), config.scale, config.dropout)
        attn.qkv = wrapped
        params += [wrapped.lora_a, wrapped.lora_b]
    if not params:
        raise ValueError("lora: the model has no timm Attention module to attach to")
    return params

"""Adapter (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP"), as used in the
study: a bottleneck after the attention branch and after the MLP branch of every block.

Each adapter is applied *sequentially* to its branch's output ``h`` with its own residual::

    h ↦ h + s · up(dropout(relu(down(h))))

``down`` is D→b (xavier-uniform weight, zero bias), ``up`` is b→D with zero weight and bias, so the
pretrained function is unchanged at init; dropout 0.1. The adapter is attached by wrapping
``block.ls1`` and ``block.ls2`` (:class:`SequentialAdapter`), the modules that receive the branch
outputs: the adapter acts on the branch output first and the block's own LayerScale (an identity
in the study's ViT-B) then scales the sum, i.e. the adapter sits exactly where Houlsby puts it,
"after the projection back to input size, before adding the skip connection".

This module also defines the shared pieces of the bottleneck family (:class:`Bottleneck`,
:class:`SequentialAdapter`, :func:`timm_blocks`), reused by ``pfeiffer`` and ``adaptformer``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from vpeft.methods.base import MethodError, check_range, register

Init = Literal["xavier", "kaiming"]


class BottleneckConfig(Protocol):
    """What the bottleneck-adapter configs (adapter, pfeiffer, adaptformer) share."""

    bottleneck: int
    scale: float
    dropout: float


@dataclass(frozen=True)
class AdapterConfig:
    bottleneck: int = 8   # b, the hidden width of each adapter
    scale: float = 1.0    # s, multiplies the adapter output
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_bottleneck_config("adapter", self.bottleneck, self.scale, self.dropout)


def check_bottleneck_config(method: str, bottleneck: int, scale: float, dropout: float) -> None:
    """The ranges shared by every bottleneck-adapter config (adapter, pfeiffer, adaptformer)."""
    check_range(method, "bottleneck", bottleneck, low=1, integer=True)
    check_range(method, "scale", scale, low=0.0)
    check_range(method, "dropout", dropout, low=0.0, high=0.99)


class Bottleneck(nn.Module):
    """``up(dropout(relu(down(h))))`` with ``up`` zero-initialised (weight and bias).

    ``init`` picks the published init of ``down`` (bias zero either way): ``"xavier"``
    (xavier-uniform; Houlsby/Pfeiffer as used in the study) or ``"kaiming"`` (kaiming-uniform with
    a = sqrt(5), AdaptFormer's "lora" init).
    """

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.1,
                 init: Init = "xavier") -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        if init == "xavier":
            nn.init.xavier_uniform_(self.down.weight)
        elif init == "kaiming":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        else:
            raise ValueError(f"unknown bottleneck init {init!r}")
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero output at init: the pretrained function is kept
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(h))))

    @staticmethod
    def num_params(dim: int, bottleneck: int) -> int:
        """``D·b + b + b·D + D``: down weight and bias, up weight and bias."""
        return 2 * dim * bottleneck + bottleneck + dim


class SequentialAdapter(nn.Module):
    """A bottleneck adapter in series before ``base``: ``base(h + s · adapter(h))``.

    Wraps a block's ``ls1``/``ls2`` (LayerScale or Identity), whose input is the branch output.
    """

    def __init__(self, base: nn.Module, adapter: Bottleneck, scale: float) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h + self.scale * self.adapter(h))


def timm_blocks(model: nn.Module, method: str) -> list[nn.Module]:
    """Every timm ``Block`` of ``model`` (by type), or a MethodError when there is none."""
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Block  # lazy: timm is slow to import

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise MethodError(f"{method}: the model has no timm Block to attach to")
    return blocks


def block_width(block: nn.Module) -> int:
    """The token width D of a timm Block (the width its first LayerNorm normalises)."""
    return int(block.norm1.normalized_shape[-1])


def wrap_branch_output(block: nn.Module, ls_name: str, config: BottleneckConfig,
                       init: Init = "xavier") -> list[nn.Parameter]:
    """Replace ``block.<ls_name>`` by a :class:`SequentialAdapter`; returns the adapter's params."""
    adapter = Bottleneck(block_width(block), int(config.bottleneck), float(config.dropout), init)
    adapter.to(next(block.parameters()))  # same device and dtype as the backbone
    setattr(block, ls_name, SequentialAdapter(getattr(block, ls_name), adapter, float(config.scale)))
    return list(adapter.parameters())


# As published, the down- and up-projections of every bottleneck adapter (adapter, pfeiffer,
# adaptformer) are redrawn by timm's init_weights (MethodSpec.public_linears).
BOTTLENECK_LINEARS = {Bottleneck: ("down", "up")}


@register("adapter", AdapterConfig,
          "Houlsby bottleneck adapter (down, ReLU, up; residual) after the attention and the MLP "
          "branch outputs", identity_at_init=True, public_linears=BOTTLENECK_LINEARS)
def attach(model: nn.Module, config: AdapterConfig) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for block in timm_blocks(model, "adapter"):
        params += wrap_branch_output(block, "ls1", config)
        params += wrap_branch_output(block, "ls2", config)
    return params

"""AdaptFormer (Chen et al., 2022, "AdaptFormer: Adapting Vision Transformers for Scalable Visual
Recognition"): a bottleneck adapter *parallel* to the MLP of every block.

With ``x`` the residual stream after the attention sub-layer (the input of ``norm2``)::

    x ↦ x + drop_path2(ls2(mlp(norm2(x)))) + s · up(dropout(relu(down(x))))

``down`` is D→b, kaiming-uniform (a = sqrt(5)) with zero bias (the official "lora" init), ``up``
is b→D with zero weight and bias (the pretrained function is unchanged at init); dropout 0.1; no
adapter LayerNorm (the official ViT setting). As in the official code, the adapter reads the
un-normalised stream and its output is added *outside* the MLP's drop-path.

To be exact without forking timm, each ``Block`` is wrapped in :class:`AdaptFormerBlock`, which
calls the original block's own submodules in ``Block.forward``'s order and adds the adapter term
outside ``drop_path2``/``ls2``. (Replacing ``norm2``/``mlp`` instead would send the adapter through
``ls2`` and drop-path, which the original does not do.) Blocks whose class overrides
``Block.forward`` are refused, since the wrapper re-states that forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.adapter import (BOTTLENECK_LINEARS, Bottleneck, block_width,
                                   check_bottleneck_config, timm_blocks)
from vpeft.methods.base import MethodError, register


@dataclass(frozen=True)
class AdaptFormerConfig:
    bottleneck: int = 16  # b, the hidden width of the adapter
    scale: float = 0.1    # s, multiplies the adapter output (the official default)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_bottleneck_config("adaptformer", self.bottleneck, self.scale, self.dropout)


class AdaptFormerBlock(nn.Module):
    """A timm ``Block`` (kept as ``block``) plus an adapter parallel to its MLP sub-layer."""

    def __init__(self, block: nn.Module, adapter: Bottleneck, scale: float) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter
        self.scale = scale

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        b = self.block
        # timm's Block.forward, line for line, with the parallel adapter term added at the end
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x)))) + self.scale * self.adapter(x)


def _wrap_block(parent: nn.Module, child_name: str, block: nn.Module,
                config: AdaptFormerConfig) -> list[nn.Parameter]:
    adapter = Bottleneck(block_width(block), int(config.bottleneck), float(config.dropout),
                         init="kaiming")
    adapter.to(next(block.parameters()))  # same device and dtype as the backbone
    setattr(parent, child_name, AdaptFormerBlock(block, adapter, float(config.scale)))
    return list(adapter.parameters())


@register("adaptformer", AdaptFormerConfig,
          "bottleneck adapter (down, ReLU, up) parallel to the MLP, on the residual stream",
          identity_at_init=True, public_linears=BOTTLENECK_LINEARS)
def attach(model: nn.Module, config: AdaptFormerConfig) -> list[nn.Parameter]:
    targets = {id(b) for b in timm_blocks(model, "adaptformer")}  # also makes timm importable
    from timm.models.vision_transformer import Block

    params: list[nn.Parameter] = []
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) not in targets:
                continue
            if type(child).forward is not Block.forward:
                raise MethodError(f"adaptformer: {type(child).__name__} overrides Block.forward; "
                                  "only plain timm Blocks can be wrapped exactly")
            params += _wrap_block(parent, child_name, child, config)
    return params

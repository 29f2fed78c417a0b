"""VPT-Shallow (Jia et al., 2022, "Visual Prompt Tuning"): p learnable prompt tokens inserted into
the token sequence before the first block and kept through every block.

After patch embedding, position embedding and ``norm_pre``, the sequence is
``[prefix tokens (CLS, registers), patches]``; the prompts go right after the prefix tokens::

    [prefix, P, patches] → block_0 → … → block_{L-1} → drop the p prompt positions → norm → head

The prompts carry no position embedding. They are removed after the last block, so ``norm``,
pooling ('token' or 'avg' over the tokens after ``num_prefix_tokens``) and the head see the
original token layout. Prompts are drawn uniform(-v, v) with ``v = sqrt(6 / (3·patch_h·patch_w
+ D))`` (xavier on the patch-embedding fan, as the VPT code does) and pass through dropout 0.1
(a fresh mask per sample). Unlike the study's public code, which drops the prompts after block 0,
they stay in the sequence to the end, as in VPT. ``drop_prompts_after_block0=True`` reproduces
the public code (set by the protocol switch ``train.protocol.vpt_shallow_drop_prompts_after_block0``,
docs/protocol.md).

Attached by replacing ``model.blocks`` (the ``nn.Sequential`` that ``forward_features`` runs) by
:class:`PromptedBlocks`, which holds the original blocks as ``blocks`` and the prompts as
``prompts``. Paths that iterate or slice ``model.blocks`` themselves (masked attention,
``forward_intermediates``, gradient checkpointing) are not supported: ``PromptedBlocks`` is not
iterable, so they fail loudly rather than silently skipping the prompts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import MethodError, check_range, register


@dataclass(frozen=True)
class VPTShallowConfig:
    num_prompts: int = 10  # p, the prompt tokens
    dropout: float = 0.1   # on the prompts
    drop_prompts_after_block0: bool = False  # True: the study's public code (prompts seen by block 0 only)

    def __post_init__(self) -> None:
        check_vpt_config("vpt_shallow", self.num_prompts, self.dropout)
        if not isinstance(self.drop_prompts_after_block0, bool):
            raise MethodError(f"vpt_shallow: drop_prompts_after_block0 must be true or false, "
                              f"got {self.drop_prompts_after_block0!r}")


def check_vpt_config(method: str, num_prompts: int, dropout: float) -> None:
    check_range(method, "num_prompts", num_prompts, low=1, integer=True)
    check_range(method, "dropout", dropout, low=0.0, high=0.99)


class PromptedBlocks(nn.Module):
    """The ViT's blocks with prompt tokens in the sequence after the ``num_prefix`` prefix tokens.

    ``prompts`` has shape ``(sets, p, D)``: one set (shallow: inserted before block 0) or one set
    per block (deep: set i occupies the prompt positions at block i's input).
    """

    def __init__(self, blocks: nn.Sequential, prompts: torch.Tensor, num_prefix: int,
                 dropout: float, drop_after_block0: bool = False) -> None:
        super().__init__()
        self.drop_after_block0 = bool(drop_after_block0)  # shallow, as the public code ran it
        if prompts.shape[0] not in (1, len(blocks)):
            raise ValueError(f"{prompts.shape[0]} prompt sets for {len(blocks)} blocks")
        self.blocks = blocks
        self.prompts = nn.Parameter(prompts)
        self.num_prefix = int(num_prefix)
        self.dropout = nn.Dropout(dropout)

    @property
    def num_prompts(self) -> int:
        return int(self.prompts.shape[1])

    def _prompt_set(self, i: int, batch: int) -> torch.Tensor:
        # expand first, then dropout: an independent mask per sample, as in the VPT code
        return self.dropout(self.prompts[i].unsqueeze(0).expand(batch, -1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, batch = self.num_prefix, self.num_prompts, x.shape[0]
        x = torch.cat([x[:, :n], self._prompt_set(0, batch), x[:, n:]], dim=1)
        for i, block in enumerate(self.blocks):
            if i > 0 and self.prompts.shape[0] > 1:  # deep: block i gets its own prompts
                x = torch.cat([x[:, :n], self._prompt_set(i, batch), x[:, n + p:]], dim=1)
            x = block(x)
            if i == 0 and self.drop_after_block0:
                x, p = torch.cat([x[:, :n], x[:, n + p:]], dim=1), 0  # prompts gone from here on
        return torch.cat([x[:, :n], x[:, n + p:]], dim=1)  # the original layout for norm/pool


def attach_prompts(model: nn.Module, method: str, num_prompts: int, dropout: float,
                   deep: bool, drop_after_block0: bool = False) -> list[nn.Parameter]:
    """Replace ``model.blocks`` by :class:`PromptedBlocks` with VPT-initialised prompts."""
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    # lazy: timm is slow to import
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or not isinstance(model.blocks, nn.Sequential):
        raise MethodError(f"{method}: needs a timm VisionTransformer whose blocks are an "
                          f"nn.Sequential (got {type(model).__name__})")
    patch_h, patch_w = model.patch_embed.patch_size
    dim = int(model.embed_dim)
    ref = next(model.parameters())
    # VPT: xavier-uniform bound on the patch embedding's fan (3 channels x patch area, D)
    bound = math.sqrt(6.0 / (3 * patch_h * patch_w + dim))
    sets = len(model.blocks) if deep else 1
    prompts = torch.empty(sets, int(num_prompts), dim, device=ref.device, dtype=ref.dtype)
    nn.init.uniform_(prompts, -bound, bound)
    model.blocks = PromptedBlocks(model.blocks, prompts, model.num_prefix_tokens, dropout,
                                  drop_after_block0)
    return [model.blocks.prompts]


@register("vpt_shallow", VPTShallowConfig,
          "p prompt tokens inserted before the first block, kept through every block",
          identity_at_init=False)
def attach(model: nn.Module, config: VPTShallowConfig) -> list[nn.Parameter]:
    return attach_prompts(model, "vpt_shallow", config.num_prompts, config.dropout, deep=False,
                          drop_after_block0=config.drop_prompts_after_block0)

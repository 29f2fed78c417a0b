"""VPT-Deep (Jia et al., 2022, "Visual Prompt Tuning"): a new set of p prompt tokens at every block.

Before block 0 the prompts of block 0 are inserted after the prefix tokens (CLS, registers);
before block i > 0 the tokens at those p positions (block i-1's outputs there) are *replaced* by
block i's own prompts. The prompts are removed after the last block, so norm, pooling and head see
the original token layout. Init uniform(-v, v), ``v = sqrt(6 / (3·patch_h·patch_w + D))``, and
dropout 0.1, as for VPT-Shallow (see :mod:`vpeft.methods.vpt_shallow`, which holds the shared
:class:`~vpeft.methods.vpt_shallow.PromptedBlocks`). Trains depth·p·D parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vpeft.methods.base import register
from vpeft.methods.vpt_shallow import attach_prompts, check_vpt_config


@dataclass(frozen=True)
class VPTDeepConfig:
    num_prompts: int = 10  # p, the prompt tokens per block
    dropout: float = 0.1   # on the prompts

    def __post_init__(self) -> None:
        check_vpt_config("vpt_deep", self.num_prompts, self.dropout)


@register("vpt_deep", VPTDeepConfig,
          "p new prompt tokens at every block (replacing the previous block's)",
          identity_at_init=False)
def attach(model: nn.Module, config: VPTDeepConfig) -> list[nn.Parameter]:
    return attach_prompts(model, "vpt_deep", config.num_prompts, config.dropout, deep=True)

"""RepAdapter (Luo et al., 2023, "Towards Efficient Visual Adaption via Structural
Re-parameterization").

A linear adapter after ``norm1`` (before attention) and after ``norm2`` (before the MLP) of every
block::

    h = LN(x);  h + s · B(dropout(A(h)))

A is dense D→r (xavier-uniform weight, zero bias); B is a grouped r→D projection with 2 groups
(a kernel-1 ``nn.Conv1d(r, D, 1, groups=2)``, as in the official code), zero-initialised weight and
bias, so the pretrained function is unchanged at init; dropout 0.1 between A and B. The adapter is
attached by wrapping ``block.norm1``/``block.norm2`` (:class:`NormRepAdapter`, the LayerNorm kept
as ``norm``).

The adapter has no non-linearity, so in eval it is the affine map ``h ↦ M h + c`` with
``M = I + s·B_full·A`` (B_full the block-diagonal dense form of B) and ``c = s·(B_full a + b)``;
``merge`` folds it into the next Linear (``attn.qkv`` or ``mlp.fc1``): ``W' = W M``,
``b' = W c + b``, and restores the plain LayerNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import MethodError, check_range, register

GROUPS = 2  # the published grouping of B


@dataclass(frozen=True)
class RepAdapterConfig:
    bottleneck: int = 8  # r, the hidden width; must be divisible by GROUPS
    scale: float = 1.0   # s
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_range("repadapter", "bottleneck", self.bottleneck, low=GROUPS, integer=True)
        if int(self.bottleneck) % GROUPS:
            raise MethodError(f"method 'repadapter': bottleneck={self.bottleneck!r} must be "
                              f"divisible by {GROUPS} (B is a {GROUPS}-group projection)")
        check_range("repadapter", "scale", self.scale, low=0.0)
        check_range("repadapter", "dropout", self.dropout, low=0.0, high=0.99)


class RepAdapter(nn.Module):
    """``h + scale · B(dropout(A(h)))`` with A dense D→r and B grouped r→D (zero init)."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float,
                 groups: int = GROUPS) -> None:
        super().__init__()
        if dim % groups:
            raise MethodError(f"repadapter: width {dim} is not divisible by {groups} groups")
        self.scale = scale
        self.groups = groups
        self.down = nn.Linear(dim, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Conv1d(bottleneck, dim, kernel_size=1, groups=groups)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.down(h))
        # tokens as a batch of length-1 sequences: the kernel-1 grouped conv needs (M, r, 1)
        z = self.up(z.reshape(-1, z.shape[-1], 1)).reshape(*h.shape[:-1], -1)
        return h + self.scale * z

    def dense_up(self) -> torch.Tensor:
        """B as a dense (D, r) block-diagonal matrix."""
        w = self.up.weight[..., 0]  # (D, r / groups)
        out_per = w.shape[0] // self.groups
        return torch.block_diag(*[w[g * out_per:(g + 1) * out_per] for g in range(self.groups)])

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with adapter(h) = M h + c in eval mode (dropout off), in float64."""
        a_w, a_b = self.down.weight.double(), self.down.bias.double()
        b_w, b_b = self.dense_up().double(), self.up.bias.double()
        eye = torch.eye(a_w.shape[1], dtype=torch.float64, device=a_w.device)
        return eye + self.scale * b_w @ a_w, self.scale * (b_w @ a_b + b_b)


class NormRepAdapter(nn.Module):
    """A block's LayerNorm followed by its RepAdapter: ``adapter(norm(x))``."""

    def __init__(self, norm: nn.Module, adapter: RepAdapter) -> None:
        super().__init__()
        self.norm = norm
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.norm(x))


def merge(model: nn.Module) -> None:
    """Re-parameterise every adapter into the following Linear and restore the LayerNorms.

    All sites are checked before any is changed, so a model that cannot be merged is left as it
    was. Idempotent: a model without adapters (already merged, or never attached) is unchanged.
    """
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Block

    found: list[tuple[nn.Module, str, NormRepAdapter, nn.Linear]] = []
    for block_name, block in model.named_modules():
        if not isinstance(block, Block):
            continue
        for norm_name, branch, linear_name in (("norm1", "attn", "qkv"), ("norm2", "mlp", "fc1")):
            wrapper = getattr(block, norm_name)
            if not isinstance(wrapper, NormRepAdapter):
                continue
            linear = getattr(getattr(block, branch), linear_name, None)
            where = f"{block_name}.{branch}.{linear_name}"
            if not isinstance(linear, nn.Linear):
                raise MethodError(f"repadapter: cannot merge into {where}: not an nn.Linear")
            if linear.bias is None:
                # c would need a bias tensor; adding one would change timm's state_dict keys
                raise MethodError(f"repadapter: cannot merge into {where}: it has no bias")
            found.append((block, norm_name, wrapper, linear))
    with torch.no_grad():
        for block, norm_name, wrapper, linear in found:
            m, c = wrapper.adapter.affine()
            w = linear.weight.double()
            linear.bias.copy_(w @ c + linear.bias.double())
            linear.weight.copy_(w @ m)
            setattr(block, norm_name, wrapper.norm)


@register("repadapter", RepAdapterConfig,
          "re-parameterisable linear adapter (dense down, 2-group up) after norm1 and norm2",
          identity_at_init=True, merge=merge)  # as published: Conv1d, nothing redrawn
def attach(model: nn.Module, config: RepAdapterConfig) -> list[nn.Parameter]:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Block  # lazy: timm is slow to import

    params: list[nn.Parameter] = []
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        for norm_name in ("norm1", "norm2"):
            norm = getattr(block, norm_name)
            adapter = RepAdapter(norm.normalized_shape[-1], int(config.bottleneck),
                                 float(config.scale), config.dropout)
            adapter.to(norm.weight)  # same device and dtype as the backbone
            setattr(block, norm_name, NormRepAdapter(norm, adapter))
            params += list(adapter.parameters())
    if not params:
        raise ValueError("repadapter: the model has no timm Block to attach to")
    return params

"""DiffFit (Xie et al., ICCV 2023, "DiffFit: Unlocking Transferability of Large Diffusion Models
via Simple Parameter-Efficient Fine-Tuning"), as adapted to ViTs by the study (arXiv 2409.16434).

Trains every bias (as BitFit), the weight of every LayerNorm, and two learnable per-channel
scale vectors per block, γ₁ and γ₂ (size D, initialised to 1), that multiply the attention and
MLP branch outputs before the residual addition::

    x = x + drop_path1(γ₁ ⊙ ls1(attn(norm1(x))))
    x = x + drop_path2(γ₂ ⊙ ls2(mlp(norm2(x))))

γ is inserted by replacing ``block.ls1``/``block.ls2`` (``nn.Identity`` or timm ``LayerScale``)
with a :class:`GammaScale` that keeps the original as its child. With γ = 1 the pretrained
function is unchanged. ``merge`` folds γ into ``attn.proj``/``mlp.fc2`` (or into the LayerScale's
gamma when there is one) and puts the original module back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import MethodError, register
from vpeft.methods.bitfit import BIASED_MODULES
from vpeft.methods.ln import layernorm_parameters


@dataclass(frozen=True)
class DiffFitConfig:
    pass


class GammaScale(nn.Module):
    """``inner(x) * gamma``: DiffFit's per-channel scale on a residual branch (γ init 1)."""

    def __init__(self, inner: nn.Module, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.gamma


def merge(model: nn.Module) -> None:
    """Fold every γ into the branch's LayerScale, or else its last Linear, and restore ls1/ls2.

    γ⊙(g⊙y) = (γ⊙g)⊙y folds into a timm LayerScale; with ``nn.Identity``,
    γ⊙(Wx + b) = (γW)x + γ⊙b folds into ``attn.proj`` / ``mlp.fc2``. All sites are checked before
    any is changed, so a model that cannot be merged is left as it was. Idempotent: a model
    without GammaScale modules (already merged, or never attached) is unchanged.
    """
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.layers import LayerScale

    found: list[tuple[nn.Module, str, GammaScale, nn.Linear | None]] = []
    for block_name, block in model.named_modules():
        for ls_name, branch, linear_name in (("ls1", "attn", "proj"), ("ls2", "mlp", "fc2")):
            wrapper = getattr(block, ls_name, None)
            if not isinstance(wrapper, GammaScale):
                continue
            if isinstance(wrapper.inner, LayerScale):
                found.append((block, ls_name, wrapper, None))
                continue
            linear = getattr(getattr(block, branch, None), linear_name, None)
            if not isinstance(wrapper.inner, nn.Identity) or not isinstance(linear, nn.Linear):
                raise MethodError(f"difffit: cannot merge {block_name}.{ls_name}: expected an "
                                  f"Identity or LayerScale {ls_name} after an nn.Linear "
                                  f"{branch}.{linear_name}")
            found.append((block, ls_name, wrapper, linear))
    with torch.no_grad():
        for block, ls_name, wrapper, linear in found:
            gamma = wrapper.gamma.detach()
            if linear is None:
                wrapper.inner.gamma.mul_(gamma)
            else:
                linear.weight.mul_(gamma[:, None])
                if linear.bias is not None:
                    linear.bias.mul_(gamma)
            setattr(block, ls_name, wrapper.inner)


@register("difffit", DiffFitConfig, "biases, LayerNorms and a per-block scale γ on each branch",
          identity_at_init=True, merge=merge)
def attach(model: nn.Module, config: DiffFitConfig) -> list[nn.Parameter]:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Block  # lazy: timm is slow to import

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError("difffit: the model has no timm Block to attach to")
    # existing tensors first (biases, then LayerNorm weights); dedupe by identity because
    # LayerNorm biases are both biases and LayerNorm parameters
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    existing = [m.bias for m in model.modules() if isinstance(m, BIASED_MODULES)
                and isinstance(m.bias, nn.Parameter)] + layernorm_parameters(model)
    for p in existing:
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    for block in blocks:
        dim = block.norm1.normalized_shape[0]
        for ls_name in ("ls1", "ls2"):
            wrapper = GammaScale(getattr(block, ls_name), dim)
            wrapper.to(block.norm1.weight)  # same device and dtype as the backbone
            setattr(block, ls_name, wrapper)
            params.append(wrapper.gamma)
    return params

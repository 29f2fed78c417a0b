"""SSF (Lian et al., NeurIPS 2022, "Scaling & Shifting Your Features: A New Baseline for
Efficient Model Tuning").

A learnable per-channel affine ``y * scale + shift`` (scale ~ N(1, 0.02), shift ~ N(0, 0.02),
as in the official code) after the patch embedding, after ``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1`` and ``mlp.fc2`` of every block, and after the final LayerNorm. Each site is
wrapped by an :class:`SSF` module that keeps the original as ``inner``.

The patch-embedding site wraps ``patch_embed.norm`` (``nn.Identity`` in the standard ViT), the
last operation of timm's ``PatchEmbed``, whose output is (B, N, C): the same point as "after the
patch embedding", while ``model.patch_embed`` itself stays a ``PatchEmbed`` (timm reads its
attributes, e.g. ``grid_size``, ``dynamic_feat_size``).

The random init is not the identity, so ``identity_at_init`` is False. Every site follows a
Linear, LayerNorm or the patch-embedding conv, so ``merge`` folds the affine into that layer's
weight and bias and restores the original module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import MethodError, register

INIT_STD = 0.02  # the official SSF init: scale ~ N(1, 0.02), shift ~ N(0, 0.02)


@dataclass(frozen=True)
class SSFConfig:
    pass


class SSF(nn.Module):
    """``inner(x) * scale + shift`` over the last (channel) dimension."""

    def __init__(self, inner: nn.Module, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.scale = nn.Parameter(torch.empty(dim))
        self.shift = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.scale, mean=1.0, std=INIT_STD)
        nn.init.normal_(self.shift, mean=0.0, std=INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale + self.shift


def _sites(model: nn.Module) -> list[tuple[nn.Module, str, int]]:
    """(parent, attribute, channels) of every SSF site, in forward order."""
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Block  # lazy: timm is slow to import

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError("ssf: the model has no timm Block to attach to")
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(getattr(patch_embed, "proj", None), nn.Conv2d) or not hasattr(patch_embed, "norm"):
        raise ValueError("ssf: expected a timm PatchEmbed with a Conv2d 'proj' and a 'norm'")
    sites = [(patch_embed, "norm", patch_embed.proj.out_channels)]
    for block in blocks:
        attn, mlp = block.attn, block.mlp
        for parent, attr in ((block, "norm1"), (attn, "qkv"), (attn, "proj"), (block, "norm2"),
                             (mlp, "fc1"), (mlp, "fc2")):
            module = getattr(parent, attr)
            if isinstance(module, nn.Linear):
                channels = module.out_features
            elif isinstance(module, nn.LayerNorm):
                channels = module.normalized_shape[-1]
            else:
                raise ValueError(f"ssf: {attr} is a {type(module).__name__}, expected nn.Linear "
                                 "or nn.LayerNorm")
            sites.append((parent, attr, channels))
    # the final norm: 'norm' for class-token pooling, 'fc_norm' for average pooling
    for attr in ("norm", "fc_norm"):
        module = getattr(model, attr, None)
        if isinstance(module, nn.LayerNorm):
            sites.append((model, attr, module.normalized_shape[-1]))
    return sites


def _check_foldable(layer: nn.Module, where: str) -> None:
    """Raise a MethodError unless ``y * s + t`` can be folded exactly into ``layer``."""
    if not isinstance(layer, (nn.Linear, nn.LayerNorm, nn.Conv2d)):
        raise MethodError(f"ssf: cannot merge at {where}: no Linear, LayerNorm or Conv2d to fold "
                          f"into (found {type(layer).__name__})")
    if getattr(layer, "weight", None) is None or layer.bias is None:
        # a shift needs a bias tensor; adding one would change timm's state_dict keys
        raise MethodError(f"ssf: cannot merge at {where}: the {type(layer).__name__} has no "
                          "weight or no bias")


def _fold(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Fold ``y * s + t`` into the layer producing y: W' = diag(s) W, b' = s ⊙ b + t."""
    view = (-1,) + (1,) * (layer.weight.dim() - 1)  # the output channel is dim 0 for all three
    layer.weight.mul_(scale.view(view))
    layer.bias.mul_(scale).add_(shift)


def merge(model: nn.Module) -> None:
    """Fold every SSF into the preceding layer and restore the original modules.

    All sites are checked before any is changed, so a model that cannot be merged is left as it
    was. Idempotent: a model without SSF modules (already merged, or never attached) is unchanged.
    """
    found: list[tuple[nn.Module, str, SSF, nn.Module]] = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if not isinstance(child, SSF):
                continue
            layer, where = child.inner, f"{parent_name}.{name}".lstrip(".")
            if isinstance(layer, nn.Identity) and isinstance(getattr(parent, "proj", None), nn.Conv2d):
                # the patch-embedding site with no norm: flatten/transpose only move the channel
                # axis, so the per-channel affine folds into the conv's output channels
                layer, where = parent.proj, f"{parent_name}.proj".lstrip(".")
            _check_foldable(layer, where)
            found.append((parent, name, child, layer))
    with torch.no_grad():
        for parent, name, child, layer in found:
            _fold(layer, child.scale.detach(), child.shift.detach())
            setattr(parent, name, child.inner)


@register("ssf", SSFConfig, "per-channel scale and shift after every layer",
          identity_at_init=False, merge=merge)
def attach(model: nn.Module, config: SSFConfig) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for parent, attr, channels in _sites(model):
        wrapper = SSF(getattr(parent, attr), channels)
        wrapper.to(model.patch_embed.proj.weight)  # same device and dtype as the backbone
        setattr(parent, attr, wrapper)
        params += [wrapper.scale, wrapper.shift]
    return params

"""Convpass (Jie & Deng, 2022, "Convolutional Bypasses Are Better Vision Transformer Adapters").

A convolutional bypass runs in parallel to the attention and to the MLP of every block, on the
same normed input the branch receives::

    x = x + attn(h1) + s · convpass(h1),   h1 = norm1(x)
    x = x + mlp(h2)  + s · convpass(h2),   h2 = norm2(x)

    convpass(h) = up(dropout(qgelu(conv3x3(qgelu(down(h))))))

``down`` is D→b (xavier-uniform weight, zero bias), ``qgelu(z) = z·sigmoid(1.702 z)``, ``conv3x3``
is a b→b 3×3 convolution (padding 1, zero bias) run on the patch tokens laid out on the patch grid
(``patch_embed.grid_size``); the CLS token (and any other prefix token) is run through the *same*
convolution as a 1×1 map, i.e. only the centre tap and the bias touch it, exactly as in the
official code. Dropout is 0.1 and ``up`` is b→D with zero weight and bias, so the pretrained
function is unchanged at init.

Conv init, as in the official code (and the study's, where it is the switch
``convpass_xavier_init``): ``xavier_init=True`` draws the conv weight xavier-uniform;
``xavier_init=False`` zeroes it and puts the identity on the centre tap (the conv starts as the
identity map). Either way the bias is zero. The default here is xavier.

The bypass is attached by wrapping ``block.attn`` and ``block.mlp`` (:class:`ConvpassBranch`), whose
input is exactly the normed input; the official code adds both terms inside one ``drop_path``
call each, here ``drop_path``/``ls`` of the block act on the sum (identical when drop-path is off,
the study's setting). Convpass is non-linear and spatial, so it cannot be merged into the ViT.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import MethodError, check_range, register


@dataclass(frozen=True)
class ConvpassConfig:
    bottleneck: int = 8        # b, the width of the bypass
    scale: float = 1.0         # s, multiplies the bypass output
    dropout: float = 0.1
    xavier_init: bool = True   # conv weight xavier-uniform (True) or identity centre tap (False)

    def __post_init__(self) -> None:
        check_range("convpass", "bottleneck", self.bottleneck, low=1, integer=True)
        check_range("convpass", "scale", self.scale, low=0.0)
        check_range("convpass", "dropout", self.dropout, low=0.0, high=0.99)
        if not isinstance(self.xavier_init, bool):
            raise MethodError(f"method 'convpass': xavier_init={self.xavier_init!r} must be "
                              "true or false")


def quick_gelu(z: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU used by the official code (from CLIP)."""
    return z * torch.sigmoid(1.702 * z)


class ConvpassAdapter(nn.Module):
    """``up(dropout(qgelu(conv(qgelu(down(h))))))``: the conv sees the patch grid, prefix tokens 1×1."""

    def __init__(self, dim: int, bottleneck: int, grid: tuple[int, int], num_prefix_tokens: int,
                 dropout: float = 0.1, xavier_init: bool = True) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv2d(bottleneck, bottleneck, kernel_size=3, stride=1, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        with torch.no_grad():
            if xavier_init:
                nn.init.xavier_uniform_(self.conv.weight)
            else:  # the conv starts as the identity: only the centre tap, one-to-one
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1, 1] += torch.eye(bottleneck)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)  # zero output at init: the pretrained function is kept
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = h.shape
        p, (rows, cols) = self.num_prefix_tokens, self.grid
        if tokens - p != rows * cols:
            raise MethodError(f"convpass: {tokens} tokens do not fit {p} prefix token(s) plus a "
                              f"{rows}x{cols} patch grid (the grid is fixed when attaching)")
        z = quick_gelu(self.down(h))
        b = z.shape[-1]
        patches = z[:, p:].reshape(batch, rows, cols, b).permute(0, 3, 1, 2)
        patches = self.conv(patches).permute(0, 2, 3, 1).reshape(batch, rows * cols, b)
        if p:
            # each prefix token on its own as a 1x1 map, through the same conv (official code)
            prefix = z[:, :p].reshape(batch * p, b, 1, 1)
            prefix = self.conv(prefix).reshape(batch, p, b)
            patches = torch.cat([prefix, patches], dim=1)
        return self.up(self.dropout(quick_gelu(patches)))


class ConvpassBranch(nn.Module):
    """A block's attention or MLP plus a parallel bypass on its input: ``branch(h) + s·adapter(h)``."""

    def __init__(self, branch: nn.Module, adapter: ConvpassAdapter, scale: float) -> None:
        super().__init__()
        self.branch = branch
        self.adapter = adapter
        self.scale = scale

    def forward(self, h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # extra arguments (attn_mask, is_causal) belong to the wrapped attention only
        return self.branch(h, *args, **kwargs) + self.scale * self.adapter(h)


@register("convpass", ConvpassConfig,
          "3x3-conv bypass (down, QuickGELU, conv on the patch grid, QuickGELU, up) parallel to "
          "attention and MLP", identity_at_init=True,
          public_linears={ConvpassAdapter: ("down", "up")})  # its conv is no Linear there
def attach(model: nn.Module, config: ConvpassConfig) -> list[nn.Parameter]:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import Block  # lazy: timm is slow to import

    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    if grid is None:
        raise MethodError("convpass: the model has no patch_embed.grid_size to lay tokens out on")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    params: list[nn.Parameter] = []
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        dim = block.norm1.normalized_shape[-1]
        ref = next(block.parameters())
        for branch_name in ("attn", "mlp"):
            adapter = ConvpassAdapter(dim, int(config.bottleneck), tuple(grid), prefix,
                                      config.dropout, config.xavier_init)
            adapter.to(ref)  # same device and dtype as the backbone
            setattr(block, branch_name,
                    ConvpassBranch(getattr(block, branch_name), adapter, float(config.scale)))
            params += list(adapter.parameters())
    if not params:
        raise ValueError("convpass: the model has no timm Block to attach to")
    return params

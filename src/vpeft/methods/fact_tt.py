"""FacT-TT (Jie & Deng, AAAI 2023, "FacT: Factor-Tuning for Lightweight Adaptation on Vision
Transformer"), plus the pieces FacT-TK (:mod:`vpeft.methods.fact_tk`) shares with it.

FacT stacks the weight increments of every layer's q, k, v, o (attention ``qkv`` split in three
and ``proj``) and of the MLP ``fc1``/``fc2`` into one tensor and factorises it with factors
SHARED by all layers and sites: ``U`` (r×D, the official ``FacTu``) and ``V`` (D×r, ``FacTv``).
A site's increment is ``ΔW = s · (I_nout ⊗ V) · M · (I_nin ⊗ U)`` where ``M`` is the site's core
(column convention: ``M`` maps r·n_in to r·n_out) and ``n_in``, ``n_out`` count D-wide chunks of the
site's input and output: q, k, v, o are D×D (1, 1); the MLP's k·D side (k = hidden / D = 4 in
ViTs) is cut into k chunks of D, each projected by the same U or V (the official reshape to
``(…, 4, D)``), so fc1 has (n_in, n_out) = (1, k) and fc2 (k, 1).

The forward of a wrapped Linear is, with dropout on the r-wide code right before V (where the
official code puts it)::

    y = W x + b + s · (I ⊗ V) · dropout(M · (I ⊗ U) x)

FacT-TT (this module) gives each (layer, site) its own core, initialised like the official
``nn.Linear(…, bias=False)`` cores (uniform ±1/√fan_in):

    q, k, v, o: M ∈ R^{r×r}      (``q_FacTs`` … ``proj_FacTs``; stored as ``attn_cores[L, 4, r, r]``)
    fc1:        M ∈ R^{kr×r}     (``fc1_FacTs``; ``fc1_cores[L, k·r, r]``)
    fc2:        M ∈ R^{r×kr}     (``fc2_FacTs``; ``fc2_cores[L, r, k·r]``)

so it trains ``2·D·r + L·(4 + 2k)·r²`` parameters (``2Dr + 12Lr²`` for k = 4). U is drawn like the
official ``nn.Linear(D, r)`` weight (kaiming-uniform, a = √5) and V is zero, so the pretrained
function is unchanged at init.

The shared factors live in ONE container module registered on the model as ``model.fact`` (as the
official code hangs ``FacTu``/``FacTv`` on the ViT); every :class:`FacTLinear` only references it,
unregistered, so each shared parameter is listed (and saved) exactly once. ``merge`` folds every
ΔW into its Linear, puts the plain Linears back and removes ``model.fact``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import MethodError, check_range, register

FACTORS_ATTR = "fact"  # where the shared factors are registered on the model


def check_fact_config(method: str, dim: object, scale: object, dropout: object) -> None:
    check_range(method, "dim", dim, low=1, integer=True)
    check_range(method, "scale", scale, low=0.0)
    check_range(method, "dropout", dropout, low=0.0, high=0.99)


@dataclass(frozen=True)
class FacTTTConfig:
    dim: int = 8          # r, the rank of the shared factors and of each core
    scale: float = 1.0    # s, multiplies every increment
    dropout: float = 0.1  # on the r-wide code before V

    def __post_init__(self) -> None:
        check_fact_config("fact_tt", self.dim, self.scale, self.dropout)


def linear_init_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """The default init of an ``nn.Linear`` weight (kaiming-uniform, a = √5): U(±1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def site_chunks(site: str, ratio: int) -> tuple[int, int]:
    """(n_in, n_out): how many D-wide chunks a site's input and output have."""
    return {"qkv": (1, 3), "proj": (1, 1), "fc1": (1, ratio), "fc2": (ratio, 1)}[site]


class FacTFactors(nn.Module):
    """The factors shared by every layer and site: U (r×D) and V (D×r, zero), plus the cores.

    Subclasses hold the cores and return, from :meth:`core`, the (r·n_out × r·n_in) matrix M of a
    (layer, site).
    """

    def __init__(self, dim: int, rank: int, depth: int, ratio: int) -> None:
        super().__init__()
        self.dim, self.rank, self.depth, self.ratio = dim, rank, depth, ratio
        self.u = nn.Parameter(linear_init_(torch.empty(rank, dim), fan_in=dim))
        self.v = nn.Parameter(torch.zeros(dim, rank))  # zero: no change at init

    def core(self, layer: int, site: str) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self, layer: int, site: str) -> torch.Tensor:
        """``(I ⊗ V) M (I ⊗ U)`` of a (layer, site), unscaled, in float64."""
        n_in, n_out = site_chunks(site, self.ratio)
        left = torch.block_diag(*[self.v.double()] * n_out)
        right = torch.block_diag(*[self.u.double()] * n_in)
        return left @ self.core(layer, site).double() @ right


class TTFactors(FacTFactors):
    """FacT-TT: per-(layer, site) cores, as the official ``*_FacTs`` Linears."""

    def __init__(self, dim: int, rank: int, depth: int, ratio: int) -> None:
        super().__init__(dim, rank, depth, ratio)
        # q, k, v, o cores of each layer
        self.attn_cores = nn.Parameter(linear_init_(torch.empty(depth, 4, rank, rank), fan_in=rank))
        self.fc1_cores = nn.Parameter(linear_init_(torch.empty(depth, ratio * rank, rank),
                                                   fan_in=rank))
        self.fc2_cores = nn.Parameter(linear_init_(torch.empty(depth, rank, ratio * rank),
                                                   fan_in=ratio * rank))

    def core(self, layer: int, site: str) -> torch.Tensor:
        r = self.rank
        if site == "qkv":  # q, k, v stacked on the output side: [M_q; M_k; M_v]
            return self.attn_cores[layer, :3].reshape(3 * r, r)
        if site == "proj":
            return self.attn_cores[layer, 3]
        if site == "fc1":
            return self.fc1_cores[layer]
        return self.fc2_cores[layer]


class FacTLinear(nn.Module):
    """A frozen ``nn.Linear`` plus its FacT increment ``s · (I⊗V) dropout(M (I⊗U) x)``.

    The shared factors are referenced, not registered (they are registered once, on the model).
    """

    def __init__(self, base: nn.Linear, factors: FacTFactors, layer: int, site: str,
                 scale: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        object.__setattr__(self, "factors", factors)  # bypass nn.Module: no second registration
        self.layer, self.site, self.scale = layer, site, scale
        self.n_in, self.n_out = site_chunks(site, factors.ratio)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f: FacTFactors = self.factors
        lead = x.shape[:-1]
        code = (x.reshape(*lead, self.n_in, f.dim) @ f.u.T).reshape(*lead, self.n_in * f.rank)
        code = self.dropout(code @ f.core(self.layer, self.site).T)
        update = (code.reshape(*lead, self.n_out, f.rank) @ f.v.T).reshape(*lead, -1)
        return self.base(x) + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        """The increment ``s · ΔW`` this wrapper adds to ``base.weight`` (eval mode), float64."""
        return self.scale * self.factors.delta_weight(self.layer, self.site)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, site={self.site!r}, scale={self.scale}"


def attach_fact(model: nn.Module, method: str, rank: int, scale: float, dropout: float,
                make_factors: Callable[[int, int, int, int], FacTFactors]) -> list[nn.Parameter]:
    """Wrap qkv, proj, fc1 and fc2 of every block and register the shared factors on ``model``.

    ``make_factors(dim, rank, depth, ratio)`` builds the method's factor container.
    """
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.models.vision_transformer import (  # lazy: timm is slow
        Attention,
        Block,
        Mlp,
    )

    if hasattr(model, FACTORS_ATTR):
        raise MethodError(f"{method}: the model already has a '{FACTORS_ATTR}' attribute "
                          "(FacT attached twice?)")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"{method}: the model has no timm Block to attach to")
    sites: list[tuple[nn.Module, str, int, str]] = []  # (parent, attribute, layer, site)
    dim = ratio = None
    for layer, block in enumerate(blocks):
        attn, mlp = block.attn, block.mlp
        if not isinstance(attn, Attention) or not isinstance(mlp, Mlp):
            raise MethodError(f"{method}: block {layer} is not a timm Attention + Mlp block")
        linears = {"qkv": attn.qkv, "proj": attn.proj, "fc1": mlp.fc1, "fc2": mlp.fc2}
        if not all(isinstance(lin, nn.Linear) for lin in linears.values()):
            raise MethodError(f"{method}: block {layer}: qkv, proj, fc1, fc2 must be nn.Linear")
        d, hidden = attn.qkv.in_features, mlp.fc1.out_features
        if hidden % d:
            raise MethodError(f"{method}: block {layer}: MLP width {hidden} is not a multiple of "
                              f"the width {d} (FacT cuts it into D-wide chunks)")
        shapes = {"qkv": (3 * d, d), "proj": (d, d), "fc1": (hidden, d), "fc2": (d, hidden)}
        for site, lin in linears.items():
            if tuple(lin.weight.shape) != shapes[site]:
                raise MethodError(f"{method}: block {layer}: {site} weight has shape "
                                  f"{tuple(lin.weight.shape)}, expected {shapes[site]}")
        if (dim, ratio) not in ((None, None), (d, hidden // d)):
            raise MethodError(f"{method}: blocks differ in width; shared factors need one width")
        dim, ratio = d, hidden // d
        sites += [(attn, "qkv", layer, "qkv"), (attn, "proj", layer, "proj"),
                  (mlp, "fc1", layer, "fc1"), (mlp, "fc2", layer, "fc2")]
    factors = make_factors(dim, rank, len(blocks), ratio)
    factors.to(blocks[0].attn.qkv.weight)  # same device and dtype as the backbone
    setattr(model, FACTORS_ATTR, factors)
    for parent, attr, layer, site in sites:
        setattr(parent, attr, FacTLinear(getattr(parent, attr), factors, layer, site, scale, dropout))
    return list(factors.parameters())


def merge(model: nn.Module) -> None:
    """Fold every FacT increment into its Linear (eval mode: no dropout), put the plain Linears
    back and remove the shared factors. Idempotent: a model without FacT is left unchanged."""
    found = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if isinstance(child, FacTLinear)]
    with torch.no_grad():
        deltas = [child.delta_weight() for _, _, child in found]  # all before any change
        for (parent, name, child), delta in zip(found, deltas):
            weight = child.base.weight
            weight.copy_(weight.double() + delta)
            setattr(parent, name, child.base)
    if isinstance(getattr(model, FACTORS_ATTR, None), FacTFactors):
        delattr(model, FACTORS_ATTR)


@register("fact_tt", FacTTTConfig,
          "FacT-TT: qkv/proj/fc1/fc2 increments factorised with shared U, V and per-site cores",
          identity_at_init=True, merge=merge,
          public_linears={TTFactors: ("u", "v", "attn_cores", "fc1_cores", "fc2_cores")})
def attach(model: nn.Module, config: FacTTTConfig) -> list[nn.Parameter]:
    return attach_fact(model, "fact_tt", int(config.dim), float(config.scale), config.dropout,
                       TTFactors)

"""WiSE-FT (Wortsman et al., 2022) for every vpeft method, by module identity.

The fine-tuned model is the zero-shot model (backbone + zero-shot head) with a method attached and
its trained tensors loaded. For a mixing coefficient α:

- every tensor the zero-shot model already had (backbone and head) becomes
  ``θ = (1-α)·θ_zero-shot + α·θ_fine-tuned``. The two states are matched by *parameter identity*
  (the same ``nn.Parameter`` objects before and after the method is attached), never by name:
  methods rename what they wrap (``qkv`` → ``qkv.base``), which is where a name-keyed full-state
  merge fails on a key mismatch. For full / bitfit / ln / linear this is all there is:
  whole-state (or head-only) interpolation.
- every module the method put in place of an original one (a LoRA-wrapped ``qkv``, an adapter
  around ``ls1``, the prompted block stack of VPT, an SSF-wrapped layer, ...) has its *output*
  mixed: ``out = base(x) + α·(tuned(x) − base(x))`` with ``base`` the module it replaced, so the
  method's contribution is scaled by α whatever its non-linearity (interpolating an adapter's
  parameters toward zero would not do that).

At α = 0 every tensor is the zero-shot one and every site runs only its original module: the
computation is the zero-shot model's, bit for bit. At α = 1 every tensor is the fine-tuned one and
every site runs only the method's module: the fine-tuned model, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from vpeft.errors import UserError

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1 (the study's grid)


class WiseError(UserError):
    """A method changed the model in a way WiSE-FT cannot mix (see the message)."""


def mix(zero: torch.Tensor, tuned: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1-α)·zero + α·tuned``, exactly ``zero`` at α = 0 and exactly ``tuned`` at α = 1."""
    if alpha == 0.0:
        return zero
    if alpha == 1.0:
        return tuned
    return (1.0 - alpha) * zero + alpha * tuned


class AlphaMix(nn.Module):
    """A method's module in place of the original one, its contribution scaled by ``alpha``."""

    def __init__(self, base: nn.Module, tuned: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.tuned = tuned
        self.alpha = 1.0

    def forward(self, *args, **kwargs):
        if self.alpha == 0.0:
            return self.base(*args, **kwargs)
        out = self.tuned(*args, **kwargs)
        if self.alpha == 1.0:
            return out
        return mix(self.base(*args, **kwargs), out, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


@dataclass
class WiseFT:
    """A fine-tuned model that can be moved along the WiSE-FT path with :meth:`set_alpha`."""

    model: nn.Module
    params: list[nn.Parameter]                      # the zero-shot model's parameters
    zero: list[torch.Tensor]                        # their zero-shot values
    tuned: list[torch.Tensor]                       # their fine-tuned values
    sites: list[AlphaMix] = field(default_factory=list)
    alpha: float = 1.0

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> nn.Module:
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise WiseError(f"WiSE-FT alpha {alpha} outside [0, 1]")
        for p, z, t in zip(self.params, self.zero, self.tuned):
            # untouched tensors stay exact (a mix of equal values can round off by an ulp)
            p.copy_(t if t is z else mix(z, t, alpha))
        for site in self.sites:
            site.alpha = alpha
        self.alpha = alpha
        return self.model

    @property
    def changed_tensors(self) -> int:
        return sum(t is not z for z, t in zip(self.zero, self.tuned))


def _children(model: nn.Module) -> dict[tuple[int, str], nn.Module]:
    return {(id(parent), name): child for parent in model.modules()
            for name, child in parent.named_children()}


def prepare_wise(model: nn.Module, attach_tuned: Callable[[nn.Module], object]) -> WiseFT:
    """Turn the zero-shot ``model`` into a WiSE-FT model, in place.

    ``attach_tuned(model)`` attaches the method and loads the fine-tuned tensors (e.g.
    ``lambda m: load_adapter(m, path)``). Returns a :class:`WiseFT` at α = 1.
    """
    originals = list(model.modules())
    children = _children(model)
    params = list(dict.fromkeys(model.parameters()))  # identity, deduplicated (tied weights)
    own_params = {id(m): {n: id(p) for n, p in m.named_parameters(recurse=False)} for m in originals}
    zero = [p.detach().clone() for p in params]

    attach_tuned(model)

    present = {id(p) for p in model.parameters()}
    dropped = [i for i, p in enumerate(params) if id(p) not in present]
    if dropped:
        raise WiseError(f"the method replaced {len(dropped)} of the backbone's parameter objects "
                        "instead of wrapping their modules; WiSE-FT cannot pair them")
    sites: list[AlphaMix] = []
    holders: list[tuple[str, nn.Module]] = []
    hooked = [type(m).__name__ for m in originals
              if m._forward_hooks or m._forward_pre_hooks]  # an unmixable way to change outputs
    if hooked:
        raise WiseError(f"the method hooked the forward of {hooked[:4]}; WiSE-FT mixes only "
                        "modules it can swap")
    for parent in originals:
        for name, child in list(parent.named_children()):
            before = children.get((id(parent), name))
            if child is before:
                continue
            if before is None:  # state the replacing modules share (see below)
                holders.append((f"{type(parent).__name__}.{name}", child))
                continue
            site = AlphaMix(before, child)
            setattr(parent, name, site)
            sites.append(site)
        added = {n for n, p in parent.named_parameters(recurse=False)
                 if own_params[id(parent)].get(n) != id(p)}
        if added:
            raise WiseError(f"the method put parameters {sorted(added)} directly on "
                            f"{type(parent).__name__}; WiSE-FT mixes only whole modules")
    # A module the method added under a new name (FacT's shared U, V, cores) is never called by
    # the backbone's own forward code, which does not know that name (forward hooks, the other
    # way in, are refused above): it can only be state that the replacing modules use, so its
    # effect is inside the sites and scaled with them.
    reachable = {id(p) for s in sites for p in s.tuned.parameters()} | {id(p) for p in params}
    reachable |= {id(p) for _, holder in holders for p in holder.parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in reachable]
    if stray:
        raise WiseError(f"parameters outside any replaced module: {stray[:8]}")
    tuned = []
    for p, z in zip(params, zero):
        t = p.detach().clone()
        tuned.append(z if torch.equal(t, z) else t)
    return WiseFT(model=model, params=params, zero=zero, tuned=tuned, sites=sites)

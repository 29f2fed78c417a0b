"""The study's protocol as its public code ran it (design.md §7), one switch key per behaviour.

vpeft's defaults are a corrected protocol; ``train=vtab_as_published`` flips every key below to
what OSU-MLB/PETL_Vision did, so a user can reproduce the published numbers as they were produced
(docs/protocol.md tables each difference). Each key changes exactly one behaviour:

``train.protocol.normalize_inputs``      true: mean/std normalisation; false: pixels in [0, 1]
``train.protocol.drop_last``             false: last short batch kept; true: dropped
``train.protocol.lr_step_at_epoch_end``  false: schedule stepped at each epoch's start;
                                         true: ``scheduler.step(epoch)`` after the epoch
``train.protocol.redraw_added_linears``  false: methods' published inits; true: every weight that
                                         is an ``nn.Linear`` in the public code redrawn
                                         trunc-normal(std .02), bias 0, after the method attaches
``train.protocol.vpt_shallow_drop_prompts_after_block0``  VPT-shallow prompts removed after block 0
``train.protocol.selection_ties``        first | last grid point wins a val200 tie
``train.cache_linear_features``          (the existing speed key) true: linear trains on cached
                                         eval-mode features; false: back-propagated through the
                                         frozen model in train mode, drop-path on (as published)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # torch only where a model is touched: select reads switches() without it
    from torch import nn

from vpeft.errors import UserError

# key -> (vpeft's corrected default, the public code's behaviour)
SWITCHES: dict[str, tuple[Any, Any]] = {
    "normalize_inputs": (True, False),
    "drop_last": (False, True),
    "lr_step_at_epoch_end": (False, True),
    "redraw_added_linears": (False, True),
    "vpt_shallow_drop_prompts_after_block0": (False, True),
    "selection_ties": ("first", "last"),
}
LINEAR_CACHE_KEY = "cache_linear_features"  # under train.*, shared with the speed feature
LINEAR_CACHE = (True, False)
SELECTION_TIES = ("first", "last")


class ProtocolError(UserError):
    """A ``train.protocol`` key is unknown or holds a value of the wrong kind."""


def switches(train: Mapping[str, Any]) -> dict[str, Any]:
    """Every switch's value from the ``train`` config section (defaults where unset), checked."""
    given = dict(train.get("protocol") or {})
    unknown = sorted(set(given) - set(SWITCHES))
    if unknown:
        raise ProtocolError(f"train.protocol: unknown key(s) {unknown}; known: {sorted(SWITCHES)}")
    values = {key: given.get(key, default) for key, (default, _) in SWITCHES.items()}
    for key, value in values.items():
        if key == "selection_ties":
            if value not in SELECTION_TIES:
                raise ProtocolError(f"train.protocol.selection_ties: {value!r}; expected one of "
                                    f"{SELECTION_TIES}")
        elif not isinstance(value, bool):
            raise ProtocolError(f"train.protocol.{key}: {value!r}; expected true or false")
    values[LINEAR_CACHE_KEY] = bool(train.get(LINEAR_CACHE_KEY, LINEAR_CACHE[0]))
    return values


def protocol_name(train: Mapping[str, Any]) -> str:
    """"vpeft" when every switch is at vpeft's default, "as_published" when every one is at the
    public code's behaviour, else "custom" (recorded in every run's metrics.json)."""
    values = switches(train)
    table = {**SWITCHES, LINEAR_CACHE_KEY: LINEAR_CACHE}
    if all(values[k] == corrected for k, (corrected, _) in table.items()):
        return "vpeft"
    if all(values[k] == published for k, (_, published) in table.items()):
        return "as_published"
    return "custom"


def redraw_added_linears(model: nn.Module) -> list[str]:
    """Redraw, as timm's ``init_weights`` does in the public code after the method's modules are
    built, every weight of the attached method that is an ``nn.Linear`` there: trunc-normal
    std .02 (±2 absolute bounds, timm's ``trunc_normal_``), bias 0. The backbone and head are left
    alone (the public code loads the pretrained weights after that init). Which tensors those are
    the method declares (``MethodSpec.public_linears``). Returns the names of the redrawn
    tensors."""
    import torch
    from torch import nn

    from vpeft.methods import spec

    attached = getattr(model, "vpeft_method", None)
    if attached is None:
        raise ValueError("redraw_added_linears: no method attached (vpeft.methods.apply first)")
    table = spec(attached[0]).public_linears
    redrawn = []
    with torch.no_grad():
        for name, module in model.named_modules():
            for attr in table.get(type(module), ()):
                target = getattr(module, attr)
                weight = target.weight if isinstance(target, nn.Linear) else target
                nn.init.trunc_normal_(weight, std=0.02)
                redrawn.append(f"{name}.{attr}")
                if isinstance(target, nn.Linear) and target.bias is not None:
                    nn.init.zeros_(target.bias)
    return redrawn

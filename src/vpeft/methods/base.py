"""Method registry: a PEFT method attaches to an unmodified timm ``VisionTransformer``.

A method is a typed config (a dataclass whose fields are its hyper-parameters, validated in
``__post_init__``) and an ``attach`` function that inserts the method's modules into the model and
returns the parameters it trains. The registry freezes everything else by module identity, never
by parameter-name substrings, and always trains the classification head.
"""
from __future__ import annotations

from vpeft.errors import UserError

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from torch import nn

AttachFn = Callable[[nn.Module, Any], Iterable[nn.Parameter]]
MergeFn = Callable[[nn.Module], None]


class MethodError(UserError):
    """Unknown method, unknown hyper-parameter, or a value out of range."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    attach: AttachFn
    description: str
    identity_at_init: bool  # the published init leaves the pretrained function unchanged
    merge: MergeFn | None   # folds the method into plain timm modules in place (None: cannot)
    # As published (train.protocol.redraw_added_linears): module class -> its tensors (or
    # nn.Linear modules) that are nn.Linear weights in the public code, which timm's init_weights
    # redraws there. Named, not found by type: vpeft keeps some as plain parameters (LoRA's A, B).
    public_linears: Mapping[type, tuple[str, ...]] = field(default_factory=dict)


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, config_cls: type, description: str, *, identity_at_init: bool,
             merge: MergeFn | None = None,
             public_linears: Mapping[type, tuple[str, ...]] | None = None,
             ) -> Callable[[AttachFn], AttachFn]:
    """Register ``attach`` under ``name`` with its typed hyper-parameter config.

    ``merge`` (optional) folds the attached method back into the plain timm modules, in place,
    so the merged model is an ordinary timm ViT with identical outputs. ``public_linears``
    (optional) is the method's as-published initialisation (:attr:`MethodSpec.public_linears`).
    """

    def decorator(attach: AttachFn) -> AttachFn:
        if name in _REGISTRY:
            raise MethodError(f"method '{name}' registered twice")
        _REGISTRY[name] = MethodSpec(name, config_cls, attach, description, identity_at_init,
                                     merge, dict(public_linears or {}))
        return attach

    return decorator


def merge_nothing(model: nn.Module) -> None:
    """For methods that only train existing timm parameters: the model already is plain timm."""


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def spec(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method '{name}'; known methods: {', '.join(names())}") from None


def make_config(name: str, **hparams: Any) -> Any:
    """Build the typed config of ``name``; an unknown hyper-parameter lists the allowed ones."""
    cls = spec(name).config_cls
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise MethodError(f"method '{name}': unknown hyper-parameter(s) {unknown}; "
                          f"allowed: {allowed or 'none'}")
    return cls(**hparams)


def check_range(method: str, key: str, value: Any, *, low: float | None = None,
                high: float | None = None, integer: bool = False) -> None:
    """Raise a MethodError naming method, key and the allowed range when ``value`` is outside it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if integer:
        ok = ok and float(value).is_integer()
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise MethodError(f"method '{method}': {key}={value!r} out of range; expected "
                          f"{'an integer' if integer else 'a number'} in {bounds}")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classification head (``model.get_classifier()``), by identity."""
    return list(model.get_classifier().parameters())


def apply(model: nn.Module, name: str, **hparams: Any) -> nn.Module:
    """Attach method ``name`` to ``model`` in place and leave only its parameters and the head trainable.

    Returns the model. The method's name and config are recorded on ``model.vpeft_method``.
    """
    method = spec(name)
    config = make_config(name, **hparams)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(method.attach(model, config))
    for p in [*trainable, *head_parameters(model)]:
        p.requires_grad_(True)
    model.vpeft_method = (name, config)
    return model


def count_trainable(model: nn.Module) -> dict[str, int]:
    """Trainable parameters with and without the head, and the model's total."""
    head = {id(p) for p in head_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    with_head = sum(p.numel() for p in trainable)
    without_head = sum(p.numel() for p in trainable if id(p) not in head)
    return {"trainable_params": without_head, "trainable_params_with_head": with_head,
            "total_params": sum(p.numel() for p in model.parameters())}


def trainable_on_timm(model_name: str, method: str, hparams: dict[str, Any],
                      num_classes: int) -> dict[str, Any]:
    """``vpeft params``: ``method`` (with ``hparams``) attached to the timm model ``model_name``
    with a ``num_classes`` head, built on the meta device (no weights, no memory): the counts of
    :func:`count_trainable` and the method's share of the backbone (the model without its head)."""
    import torch

    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    except RuntimeError as err:
        raise UserError(f"--model {model_name!r}: {err}") from err
    apply(model, method, **hparams)
    counts = count_trainable(model)
    head = counts["trainable_params_with_head"] - counts["trainable_params"]
    backbone = counts["total_params"] - head
    return {"model": model_name, "method": method, "hparams": hparams,
            "num_classes": num_classes, **counts,
            "trainable_pct_of_backbone": 100.0 * counts["trainable_params"] / backbone}

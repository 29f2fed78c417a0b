"""Adapter-only checkpoints: the trained tensors of a method (and the head), nothing frozen.

The file is safetensors; its metadata holds the method name and hyper-parameters, so
``load_adapter`` can re-attach the method to a fresh backbone before loading the tensors.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vpeft.io import atomic_path, write_json
from vpeft.methods.base import MethodError, apply

METADATA_KEY = "vpeft"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors (method parameters and head) by their name in ``model``."""
    return {name: p.detach().cpu().contiguous().clone() for name, p in model.named_parameters()
            if p.requires_grad}


def method_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The method ``apply`` attached to ``model`` and its hyper-parameters."""
    try:
        name, config = model.vpeft_method
    except AttributeError:
        raise MethodError("the model has no vpeft method attached (use vpeft.methods.apply)") from None
    return name, dataclasses.asdict(config)


def save_adapter(model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the trainable tensors to ``path`` (.safetensors) and ``<path>.json`` beside it
    (here: ``adapter_config.json`` when the file is ``adapter.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    name, hparams = method_of(model)
    state = trainable_state(model)
    meta = {"method": name, "hparams": hparams, **dict(extra or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    write_json(config_path(path), {**meta, "tensors": sorted(state)})


def config_path(path: Path) -> Path:
    return path.with_name(path.stem + "_config.json")


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Attach the saved method to ``model`` (a fresh backbone) and load the saved tensors.

    Every saved tensor must land on a trainable parameter of the same shape and every trainable
    parameter must be in the file; anything else is an error naming the tensors.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "null") or "null")
    if not meta or "method" not in meta:
        raise MethodError(f"{path}: no vpeft metadata; not an adapter written by vpeft")
    apply(model, meta["method"], **meta.get("hparams", {}))
    state = load_file(str(path))
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(trainable - set(state)), sorted(set(state) - trainable)
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(params[k].shape)}"
             for k, v in state.items() if k in params and v.shape != params[k].shape]
    if missing or unexpected or wrong:
        raise MethodError(f"{path}: does not fit this model: missing {missing[:8]}, "
                          f"unexpected {unexpected[:8]}, shape mismatch {wrong[:8]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return model

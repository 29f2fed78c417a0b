"""PEFT methods for timm Vision Transformers: ``apply(model, name, **hparams)`` and ``names()``.

Each method lives in its own module of this package and registers itself on import; every module
here is imported below, in a fixed order (the study's table order, then any others).
"""
import importlib
import pkgutil

from vpeft.methods.base import (MethodError, apply, count_trainable, head_parameters, make_config,
                                names, spec, trainable_on_timm)
from vpeft.methods.checkpoint import load_adapter, save_adapter, trainable_state

_INFRASTRUCTURE = {"base", "checkpoint", "layers"}
_STUDY_ORDER = ["linear", "full", "bitfit", "ln", "difffit", "ssf", "vpt_shallow", "vpt_deep",
                "lora", "adapter", "pfeiffer", "adaptformer", "convpass", "repadapter", "fact_tt",
                "fact_tk"]


def _method_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__)} - _INFRASTRUCTURE
    ordered = [m for m in _STUDY_ORDER if m in found]
    return ordered + sorted(found - set(ordered))


for _module in _method_modules():
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["MethodError", "apply", "count_trainable", "head_parameters", "load_adapter",
           "make_config", "names", "save_adapter", "spec", "trainable_on_timm", "trainable_state"]

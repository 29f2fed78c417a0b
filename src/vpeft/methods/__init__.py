"""PEFT methods for timm Vision Transformers: ``apply(model, name, **hparams)`` and ``names()``.

Each method lives in its own module of this package and registers itself on import; every module
here is imported below, in a fixed order (the study's table order, then any others).
"""
from vpeft.methods.base import (MethodError, apply, count_trainable, head_parameters, make_config,
                                names, spec, trainable_on_timm)
from vpeft.methods.checkpoint import load_adapter, save_adapter, trainable_state
from vpeft.plugins import import_plugins

_INFRASTRUCTURE = {"base", "checkpoint", "layers"}
_STUDY_ORDER = ["linear", "full", "bitfit", "ln", "difffit", "ssf", "vpt_shallow", "vpt_deep",
                "lora", "adapter", "pfeiffer", "adaptformer", "convpass", "repadapter", "fact_tt",
                "fact_tk"]

import_plugins(__name__, __path__, infrastructure=_INFRASTRUCTURE, order=_STUDY_ORDER)

__all__ = ["MethodError", "apply", "count_trainable", "head_parameters", "load_adapter",
           "make_config", "names", "save_adapter", "spec", "trainable_on_timm", "trainable_state"]

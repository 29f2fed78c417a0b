"""PEFT methods for timm Vision Transformers: ``apply(model, name, **hparams)`` and ``names()``.

Each method lives in its own module and registers itself on import.
"""
from vpeft.methods import bitfit, full, linear, lora  # noqa: F401  (registration side effect)
from vpeft.methods.base import (MethodError, apply, count_trainable, head_parameters, make_config,
                                names, spec)

__all__ = ["MethodError", "apply", "count_trainable", "head_parameters", "make_config", "names",
           "spec"]

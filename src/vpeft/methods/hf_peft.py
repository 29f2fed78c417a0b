"""The ``peft`` method family: Hugging Face ``peft`` tuners (LoRA, DoRA, rsLoRA, LoHa, LoKr) on the
same timm ViT, through the same pipeline, grids and reports as vpeft's own methods.

``peft.inject_adapter_in_model`` inserts the tuner layers in place (no ``PeftModel`` wrapper), so
the model stays a timm ``VisionTransformer`` and checkpoints keep timm's parameter names. The
trainable parameters are those of each injected tuner layer minus its frozen base layer, by
identity. ``peft`` is imported lazily: it pulls in ``transformers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vpeft.methods.base import MethodError, check_range, register

TUNERS = ("lora", "dora", "rslora", "loha", "lokr")


@dataclass(frozen=True)
class PeftTunerConfig:
    tuner: str = "lora"
    rank: int = 8
    alpha: float | None = None   # None: alpha = rank
    dropout: float = 0.1
    target: tuple[str, ...] = ("qkv",)  # module names (peft's target_modules), e.g. qkv, proj, fc1

    def __post_init__(self) -> None:
        if self.tuner not in TUNERS:
            raise MethodError(f"method 'peft': tuner={self.tuner!r} unknown; allowed: {list(TUNERS)}")
        check_range("peft", "rank", self.rank, low=1, integer=True)
        check_range("peft", "dropout", self.dropout, low=0.0, high=0.99)
        if self.alpha is not None:
            check_range("peft", "alpha", self.alpha, low=0.0)
        target = (self.target,) if isinstance(self.target, str) else tuple(self.target)
        if not target or not all(isinstance(t, str) and t for t in target):
            raise MethodError(f"method 'peft': target={self.target!r}; expected module names")
        object.__setattr__(self, "target", target)


def import_peft():
    """``peft`` after the torchvision guard (transformers imports torchvision)."""
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import peft

    return peft


def peft_config(config: PeftTunerConfig) -> Any:
    """The ``peft`` config object for a vpeft tuner config."""
    peft = import_peft()
    alpha = config.rank if config.alpha is None else config.alpha
    common = {"r": int(config.rank), "target_modules": list(config.target)}
    if config.tuner in ("lora", "dora", "rslora"):
        return peft.LoraConfig(**common, lora_alpha=alpha, lora_dropout=config.dropout,
                               use_dora=config.tuner == "dora", use_rslora=config.tuner == "rslora")
    if config.tuner == "loha":
        return peft.LoHaConfig(**common, alpha=alpha, module_dropout=config.dropout)
    return peft.LoKrConfig(**common, alpha=alpha, module_dropout=config.dropout)


def _tuner_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, tuner layer) for every injected ``peft`` layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children() if isinstance(child, BaseTunerLayer)]


def merge(model: nn.Module) -> None:
    """Fold every tuner into its base layer and put the plain layer back."""
    import_peft()
    for parent, name, layer in _tuner_layers(model):
        layer.merge()
        setattr(parent, name, layer.get_base_layer())


@register("peft", PeftTunerConfig, "a Hugging Face peft tuner (LoRA family) on named modules",
          identity_at_init=True, merge=merge)
def attach(model: nn.Module, config: PeftTunerConfig) -> list[nn.Parameter]:
    peft = import_peft()
    peft.inject_adapter_in_model(peft_config(config), model)
    params: list[nn.Parameter] = []
    for _, _, layer in _tuner_layers(model):
        base = {id(p) for p in layer.get_base_layer().parameters()}
        params += [p for p in layer.parameters() if id(p) not in base]
    if not params:
        raise MethodError(f"method 'peft': no module matched target={list(config.target)}")
    return params

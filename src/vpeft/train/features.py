"""Linear probing through cached frozen features.

When nothing but the head trains (method ``linear``), the backbone is a fixed function: its
pre-logits features are computed once per split and the head trains on that feature tensor with
the very same loop (:class:`vpeft.train.loop.Run`: AdamW, per-epoch cosine schedule with warm-up,
seeded shuffling, checkpoints), instead of running the frozen backbone forward every epoch.
Features are taken in eval mode (drop-path and dropout off): this is a linear probe of the frozen
model. With ``drop_path: 0`` back-propagating through the frozen model computes the same function,
so both paths train the same head up to floating-point rounding (``tests/test_features.py``).

:class:`HeadProbe` holds the model's own head modules under the same attribute names, so its
parameter names (``head.weight``, ``head.bias``), the saved adapter and the resume checkpoint are
exactly those of a run through the whole model.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vpeft.methods import count_trainable
from vpeft.train.loop import Normaliser, eval_batches


class HeadProbe(nn.Module):
    """The head of a timm ViT applied to its cached pre-logits features (shares the modules)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.head_drop = getattr(model, "head_drop", nn.Identity())
        self.head = model.get_classifier()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(features))


def head_only(model: nn.Module) -> bool:
    """True when no parameter outside the head trains: the backbone is then a fixed function."""
    counts = count_trainable(model)
    return counts["trainable_params"] == 0 and counts["trainable_params_with_head"] > 0


@torch.no_grad()
def extract_features(model: nn.Module, normaliser: Normaliser, images: torch.Tensor,
                     batch_size: int = 256,
                     transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     precision: str = "fp32") -> torch.Tensor:
    """Pre-logits features [N, D] (float32, on the model's device) of uint8 ``images`` in eval
    mode: what the head sees. ``transform`` maps each uint8 batch first (as in ``predict``)."""
    was_training = model.training
    model.eval()
    out = eval_batches(model, normaliser, images,
                       lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
                       batch_size, transform, precision)
    model.train(was_training)
    if not out:
        return torch.empty(0, getattr(model, "head_hidden_size", model.num_features),
                           device=next(model.parameters()).device)
    return torch.cat(out)


@torch.no_grad()
def predict_features(probe: HeadProbe, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits [N, C] (float32, CPU) of cached features, in eval mode like ``loop.predict``."""
    probe.eval()
    out = [probe(features[i:i + batch_size]).float().cpu()
           for i in range(0, len(features), batch_size)]
    return torch.cat(out) if out else torch.empty(0)

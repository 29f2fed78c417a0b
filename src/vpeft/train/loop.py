"""The one training loop every method (and the demo's pretraining) goes through.

AdamW on the trainable parameters (weight decay on all of them, as in the study), timm's per-epoch
cosine schedule with linear warm-up, cross-entropy, seeded shuffling. Images arrive as a uint8
NHWC tensor already resized by data preparation, so an epoch does no decoding: each batch is only
converted to float and normalised. A non-finite loss stops the run with status ``diverged``; it
is a result to record, not an error.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("vpeft.train")


@dataclass(frozen=True)
class TrainSettings:
    """Loop settings (``params/train/*.yaml``) plus the grid point's optimiser values."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 64
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    lr_min: float = 1e-5
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    eval_batch_size: int = 256
    log_every_s: float = 15.0

    @classmethod
    def from_config(cls, train: Mapping[str, Any], optim: Mapping[str, Any]) -> "TrainSettings":
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in dict(train).items() if k in names}
        values.update(lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"]))
        return cls(**values)


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged"
    loss_curve: list[float | None] = field(default_factory=list)
    diverged_at: dict[str, int] | None = None
    steps: int = 0
    images_per_s: float = 0.0


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Normaliser(nn.Module):
    """uint8 NHWC batch -> normalised float NCHW at the model's input size."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, img_size: int) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", mean / std)
        self.img_size = img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic",
                              align_corners=False).clamp_(0, 255)
        return x * self.scale - self.shift


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: apply a method first")
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings):
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=settings.epochs, lr_min=settings.lr_min,
                             warmup_t=settings.warmup_epochs, warmup_lr_init=settings.warmup_lr,
                             t_in_epochs=True)


def train(model: nn.Module, normaliser: Normaliser, images: torch.Tensor, labels: torch.Tensor,
          settings: TrainSettings, *, seed: int, desc: str = "train") -> TrainResult:
    """Train ``model`` in place on uint8 ``images`` [N,H,W,3] with integer ``labels`` [N].

    Runs on the device of the model's parameters; the uint8 images move there once.
    """
    seed_everything(seed)
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    normaliser = normaliser.to(device)
    optimizer = _optimizer(model, settings)
    scheduler = _scheduler(optimizer, settings)
    generator = torch.Generator().manual_seed(seed)
    n = len(images)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    result = TrainResult(status="ok")
    trainable = [p for p in model.parameters() if p.requires_grad]
    started = last_log = time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        scheduler.step(epoch)
        order = torch.randperm(n, generator=generator)
        epoch_loss, seen = 0.0, 0
        for batch_idx, start in enumerate(range(0, n, settings.batch_size)):
            idx = order[start:start + settings.batch_size].to(device)
            x, y = normaliser(images[idx]), labels[idx]
            loss = F.cross_entropy(model(x), y, label_smoothing=settings.label_smoothing)
            if not torch.isfinite(loss):
                result.status = "diverged"
                result.diverged_at = {"epoch": epoch, "step": result.steps}
                result.loss_curve.append(None)
                log.warning("%s: loss became %s at epoch %d step %d; recorded as diverged",
                            desc, loss.item(), epoch, result.steps)
                return _finish(result, started, n)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimizer.step()
            result.steps += 1
            epoch_loss += loss.item() * len(idx)
            seen += len(idx)
            now = time.perf_counter()
            if now - last_log >= settings.log_every_s:
                last_log = now
                _log_progress(desc, epoch, settings.epochs, result.steps, total_steps,
                              epoch_loss / seen, optimizer, now - started)
        result.loss_curve.append(epoch_loss / seen)
    _log_progress(desc, settings.epochs - 1, settings.epochs, result.steps, total_steps,
                  result.loss_curve[-1], optimizer, time.perf_counter() - started)
    return _finish(result, started, n * settings.epochs)


def _finish(result: TrainResult, started: float, images_seen: int) -> TrainResult:
    elapsed = max(time.perf_counter() - started, 1e-9)
    result.images_per_s = images_seen / elapsed
    return result


def _log_progress(desc: str, epoch: int, epochs: int, step: int, total: int, loss: float | None,
                  optimizer: torch.optim.Optimizer, elapsed: float) -> None:
    eta = elapsed / max(step, 1) * (total - step)
    log.info("%s: epoch %d/%d step %d/%d (%3.0f%%) loss %.4f lr %.2e elapsed %.0fs eta %.0fs",
             desc, epoch + 1, epochs, step, total, 100.0 * step / max(total, 1),
             float("nan") if loss is None else loss, optimizer.param_groups[0]["lr"], elapsed, eta)


@torch.no_grad()
def predict(model: nn.Module, normaliser: Normaliser, images: torch.Tensor,
            batch_size: int = 256) -> torch.Tensor:
    """Logits [N, C] in eval mode (float32, CPU)."""
    model.eval()
    device = next(model.parameters()).device
    normaliser = normaliser.to(device)
    out = [model(normaliser(images[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def top1(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy in percent (exact: an integer count over the split size)."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if len(labels) == 0:
        raise ValueError("top1 of an empty split")
    correct = int((logits.argmax(dim=1) == labels).sum().item())
    return 100.0 * correct / len(labels)

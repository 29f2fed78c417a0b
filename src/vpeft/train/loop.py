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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vpeft.errors import Preempted

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
    checkpoint_every: int = 10  # epochs between resumable checkpoints (when a path is given)

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


_stop_requested = False


def _request_stop(signum, frame) -> None:  # noqa: ARG001  (signal handler signature)
    global _stop_requested
    _stop_requested = True


def train(model: nn.Module, normaliser: Normaliser, images: torch.Tensor, labels: torch.Tensor,
          settings: TrainSettings, *, seed: int, desc: str = "train",
          checkpoint: Path | None = None) -> TrainResult:
    """Train ``model`` in place on uint8 ``images`` [N,H,W,3] with integer ``labels`` [N].

    Runs on the device of the model's parameters; the uint8 images move there once. With a
    ``checkpoint`` path, the full training state (trainable tensors, optimizer, epoch and batch
    position, RNG states) is saved atomically every ``settings.checkpoint_every`` epochs and when
    SIGTERM arrives (then ``Preempted`` is raised); a later call with the same path resumes from
    it, and on CPU ends bit-identical to an uninterrupted run.
    """
    global _stop_requested
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
    position = {"epoch": 0, "batch": 0, "order": None, "epoch_loss": 0.0, "seen": 0}
    if checkpoint is not None and Path(checkpoint).is_file():
        position = _load_checkpoint(Path(checkpoint), model, optimizer, generator, result)
        log.info("%s: resuming from %s at epoch %d, batch %d", desc, checkpoint,
                 position["epoch"] + 1, position["batch"])
    previous_handler = _install_sigterm_handler() if checkpoint is not None else None
    started = last_log = time.perf_counter()
    model.train()
    try:
        for epoch in range(position["epoch"], settings.epochs):
            scheduler.step(epoch)
            resumed_mid_epoch = epoch == position["epoch"] and position["order"] is not None
            order = position["order"] if resumed_mid_epoch else torch.randperm(n, generator=generator)
            first = position["batch"] if resumed_mid_epoch else 0
            epoch_loss, seen = ((position["epoch_loss"], position["seen"]) if resumed_mid_epoch
                                else (0.0, 0))
            for batch_idx in range(first, steps_per_epoch):
                start = batch_idx * settings.batch_size
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
                if _stop_requested and checkpoint is not None:
                    _save_checkpoint(Path(checkpoint), model, optimizer, generator, result,
                                     {"epoch": epoch, "batch": batch_idx + 1, "order": order,
                                      "epoch_loss": epoch_loss, "seen": seen})
                    raise Preempted(f"{desc}: SIGTERM at epoch {epoch + 1} step {result.steps}; "
                                    f"state saved to {checkpoint}, rerun to resume")
                now = time.perf_counter()
                if now - last_log >= settings.log_every_s:
                    last_log = now
                    _log_progress(desc, epoch, settings.epochs, result.steps, total_steps,
                                  epoch_loss / seen, optimizer, now - started)
            result.loss_curve.append(epoch_loss / seen)
            if checkpoint is not None and (epoch + 1) % settings.checkpoint_every == 0 \
                    and epoch + 1 < settings.epochs:
                _save_checkpoint(Path(checkpoint), model, optimizer, generator, result,
                                 {"epoch": epoch + 1, "batch": 0, "order": None,
                                  "epoch_loss": 0.0, "seen": 0})
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        _stop_requested = False
    _log_progress(desc, settings.epochs - 1, settings.epochs, result.steps, total_steps,
                  result.loss_curve[-1], optimizer, time.perf_counter() - started)
    return _finish(result, started, n * settings.epochs)


def _install_sigterm_handler():
    """Route SIGTERM to a flag checked after every step (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _request_stop)


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, result: TrainResult,
                     position: dict[str, Any]) -> None:
    """Everything needed to continue exactly where training stands, written atomically."""
    from vpeft.io import atomic_path

    np_state = np.random.get_state()
    state = {
        "trainable": {k: p.detach().cpu().clone() for k, p in model.named_parameters()
                      if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "position": position,
        "result": {"loss_curve": list(result.loss_curve), "steps": result.steps},
        "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(),
                "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
                "python_gauss": random.getstate()[2],
                "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, result: TrainResult) -> dict[str, Any]:
    """Restore a checkpoint written by ``_save_checkpoint`` (no pickle: ``weights_only``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"]))
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    result.loss_curve = list(state["result"]["loss_curve"])
    result.steps = int(state["result"]["steps"])
    return state["position"]


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

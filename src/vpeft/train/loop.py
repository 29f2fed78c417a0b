"""The one training loop every method (and the demo's pretraining) goes through.

AdamW on the trainable parameters (weight decay on all of them, as in the study), timm's per-epoch
cosine schedule with linear warm-up, cross-entropy, seeded shuffling. Images arrive as a uint8
NHWC tensor already resized by data preparation, so an epoch does no decoding: each batch is only
converted to float and normalised. A non-finite loss stops the run with status ``diverged``; it
is a result to record, not an error.

A :class:`Run` holds one run's whole state (model, optimiser, schedule, data order, position and
its own RNG states) and advances one batch at a time; :func:`train_runs` interleaves several runs
step by step in one process (several grid points of one method, ``vpeft.protocol.run_points``)
and :func:`train` is the same driver with one run. Each run's global RNG state (torch CPU and
CUDA, Python, NumPy) is swapped in around its own forward pass, so dropout, drop-path and
augmentation draw exactly what they would draw alone: a run trained beside others is
bit-identical (on CPU) to the same run trained alone. On CUDA each run also gets its own stream:
every run's forward and backward are launched before the round's one synchronisation (the
finiteness checks), so small runs overlap on the GPU.

On CUDA, ``precision: bf16`` runs forward passes under bf16 autocast (losses and optimiser stay
fp32); elsewhere runs are fp32. ``compile: true`` runs the training forward through
``torch.compile`` (the parameters stay the model's own, so checkpoints are unchanged).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vpeft.errors import Preempted, UserError

log = logging.getLogger("vpeft.train")

PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class TrainSettings:
    """Loop settings (``params/train/*.yaml``) plus the grid point's optimiser values.

    No defaults here: the values are written once, in ``params/train/vtab.yaml``; the protocol
    makes them (``vpeft.train.protocol.Protocol.settings``, from a composed config or that file).
    """

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    warmup_epochs: int
    warmup_lr: float
    lr_min: float
    label_smoothing: float
    grad_clip: float | None
    eval_batch_size: int
    log_every_s: float
    checkpoint_every: int  # epochs between resumable checkpoints (when a path is given)
    precision: str         # bf16: autocast on CUDA (ignored elsewhere); fp32
    compile: bool          # torch.compile the training forward
    # Protocol switches (train.protocol.*, vpeft.train.published).
    drop_last: bool             # drop each epoch's last short batch (as published)
    lr_step_at_epoch_end: bool  # scheduler.step(epoch) after the epoch (as published)
    # train.rehearsal.max_steps: stop after this many steps (a rehearsal, never a real run)
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"train.precision: {self.precision!r}; expected one of {PRECISIONS}")


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


def device_description(device: torch.device) -> str:
    """``cpu``, or the CUDA device with its model (``cuda:0 NVIDIA H200``): cost is per model."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh CUDA peak (the process's RSS peak on CPU cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA ``max_memory_allocated`` on a GPU, else the peak
    resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def effective_precision(device: torch.device, precision: str) -> str:
    """What a run actually computes in: bf16 autocast exists here only on CUDA."""
    return "bf16" if precision == "bf16" and device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked for; a no-op context otherwise (CPU runs stay fp32)."""
    if effective_precision(device, precision) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_fused_attention(model: nn.Module) -> bool | None:
    """Whether every timm attention module of ``model`` uses fused scaled-dot-product attention
    (timm's ``fused_attn``; on by default, off with ``TIMM_FUSED_ATTN=0``); None if it has none."""
    flags = [bool(m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    return all(flags) if flags else None


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


def _capture_rng() -> dict[str, Any]:
    """The process-global RNG states a training step may draw from."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


_stop_requested = False


def _request_stop(signum, frame) -> None:  # noqa: ARG001  (signal handler signature)
    global _stop_requested
    _stop_requested = True


class Run:
    """One training run, advanced a batch at a time (by :func:`train_runs`).

    ``model`` trains in place on ``images`` (uint8 [N,H,W,3], or any tensor ``normaliser`` maps
    to model inputs, e.g. cached features with ``nn.Identity``) with integer ``labels`` [N], on
    the device of the model's parameters. With a ``checkpoint`` path the full training state
    (trainable tensors, optimizer, epoch and batch position, RNG states) is saved atomically every
    ``settings.checkpoint_every`` epochs and on SIGTERM; a run created with an existing checkpoint
    resumes from it and on CPU ends bit-identical to an uninterrupted run. ``augment`` maps each
    uint8 batch to a uint8 batch before normalisation (``vpeft.train.augment``; it draws from
    torch's global generator, which is this run's own here).
    """

    def __init__(self, model: nn.Module, normaliser: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor, settings: TrainSettings, *, seed: int,
                 desc: str = "train", checkpoint: Path | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        seed_everything(seed)
        self.model, self.settings, self.desc, self.augment = model, settings, desc, augment
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.device = next(model.parameters()).device
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.normaliser = normaliser.to(self.device)
        self.optimizer = _optimizer(model, settings)
        self.scheduler = _scheduler(self.optimizer, settings)
        self.generator = torch.Generator().manual_seed(seed)
        self.n = len(images)
        self.steps_per_epoch = (self.n // settings.batch_size if settings.drop_last
                                else math.ceil(self.n / settings.batch_size))
        if self.steps_per_epoch == 0:
            raise UserError(f"{desc}: {self.n} training images make no full batch of "
                            f"{settings.batch_size} with train.protocol.drop_last")
        self.total_steps = self.steps_per_epoch * settings.epochs
        if settings.max_steps:
            self.total_steps = min(self.total_steps, settings.max_steps)
        self.result = TrainResult(status="ok")
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.epoch, self.batch, self.order, self.epoch_loss, self.seen = 0, 0, None, 0.0, 0
        if self.checkpoint is not None and self.checkpoint.is_file():
            self._load()
            log.info("%s: resuming from %s at epoch %d, batch %d", desc, self.checkpoint,
                     self.epoch + 1, self.batch)
        self.rng = _capture_rng()  # this run's own global-RNG stream, swapped in around its steps
        self.forward = torch.compile(model) if settings.compile else model
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.finished = self.epoch >= settings.epochs
        self._epoch_entered = False
        self._batch_size = 0
        self.started = self.last_log = time.perf_counter()
        self.images_trained = 0

    def stream_context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def launch(self) -> torch.Tensor:
        """Forward and backward of the next batch under this run's RNG states; returns the loss.
        Nothing is synchronised here, so on CUDA several runs' launches overlap."""
        if not self._epoch_entered:
            if not self.settings.lr_step_at_epoch_end:  # vpeft: epoch e runs at lr(e)
                self.scheduler.step(self.epoch)
            if self.order is None:
                self.order = torch.randperm(self.n, generator=self.generator)
            self._epoch_entered = True
        _restore_rng(self.rng)
        start = self.batch * self.settings.batch_size
        idx = self.order[start:start + self.settings.batch_size].to(self.device)
        # The batch path: uint8 NHWC tensor -> (augment) -> Normaliser -> model.
        batch = self.images[idx] if self.augment is None else self.augment(self.images[idx])
        x, y = self.normaliser(batch), self.labels[idx]
        with autocast(self.device, self.settings.precision):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.settings.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.rng = _capture_rng()
        self._batch_size = len(idx)
        return loss

    def commit(self, loss: torch.Tensor) -> None:
        """Record a non-finite loss as divergence (no update), else step the optimiser."""
        result = self.result
        if not torch.isfinite(loss):
            result.status = "diverged"
            result.diverged_at = {"epoch": self.epoch, "step": result.steps}
            result.loss_curve.append(None)
            self.finished = True
            log.warning("%s: loss became %s at epoch %d step %d; recorded as diverged",
                        self.desc, loss.item(), self.epoch, result.steps)
            self._finish()
            return
        if self.settings.grad_clip:
            nn.utils.clip_grad_norm_(self.trainable, self.settings.grad_clip)
        self.optimizer.step()
        result.steps += 1
        self.epoch_loss += loss.item() * self._batch_size
        self.seen += self._batch_size
        self.images_trained += self._batch_size
        self.batch += 1
        now = time.perf_counter()
        if now - self.last_log >= self.settings.log_every_s:
            self.last_log = now
            self._log_progress(self.epoch_loss / self.seen, now)
        if self.batch == self.steps_per_epoch:
            self._end_epoch()
        if not self.finished and result.steps >= self.total_steps:
            # train.rehearsal.max_steps reached, maybe mid-epoch: that epoch's loss so far
            if self.seen:
                result.loss_curve.append(self.epoch_loss / self.seen)
            self.finished = True
            if self.last_log != now:  # not just logged above
                self._log_progress(result.loss_curve[-1], now)
            self._finish()

    def _end_epoch(self) -> None:
        self.result.loss_curve.append(self.epoch_loss / self.seen)
        if self.settings.lr_step_at_epoch_end:
            # the public trainer: step(epoch) after epoch `epoch`, so epoch 0 ran at the
            # scheduler's initial lr (warmup_lr) and epoch e + 1 runs at lr(e)
            self.scheduler.step(self.epoch)
        self.epoch, self.batch, self.order, self.epoch_loss, self.seen = \
            self.epoch + 1, 0, None, 0.0, 0
        self._epoch_entered = False
        if self.epoch >= self.settings.epochs:
            self.finished = True
            self._log_progress(self.result.loss_curve[-1], time.perf_counter())
            self._finish()
        elif self.checkpoint is not None and self.epoch % self.settings.checkpoint_every == 0:
            self.save()

    def save(self) -> None:
        """Everything needed to continue exactly where this run stands, written atomically."""
        from vpeft.io import atomic_path

        rng = self.rng
        np_state = rng["numpy"]
        python = rng["python"]
        state = {
            "trainable": {k: p.detach().cpu().clone() for k, p in self.model.named_parameters()
                          if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "position": {"epoch": self.epoch, "batch": self.batch, "order": self.order,
                         "epoch_loss": self.epoch_loss, "seen": self.seen},
            "result": {"loss_curve": list(self.result.loss_curve), "steps": self.result.steps},
            "rng": {"torch": rng["torch"], "generator": self.generator.get_state(),
                    "python": list(python[1]), "python_version": python[0],
                    "python_gauss": python[2],
                    "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
                    "numpy_pos": int(np_state[2]), "cuda": rng["cuda"]},
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def _load(self) -> None:
        """Restore a checkpoint written by :meth:`save` (no pickle: ``weights_only``)."""
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"]))
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.result.loss_curve = list(state["result"]["loss_curve"])
        self.result.steps = int(state["result"]["steps"])
        position = state["position"]
        self.epoch, self.batch, self.order = position["epoch"], position["batch"], position["order"]
        self.epoch_loss, self.seen = position["epoch_loss"], position["seen"]

    def _finish(self) -> None:
        """Training throughput: images actually trained on (drop_last counts) per second of this
        run's wall time since it was created or resumed."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.result.images_per_s = self.images_trained / elapsed

    def _log_progress(self, loss: float | None, now: float) -> None:
        step, total = self.result.steps, self.total_steps
        elapsed = now - self.started
        eta = elapsed / max(step, 1) * (total - step)
        log.info("%s: epoch %d/%d step %d/%d (%3.0f%%) loss %.4f lr %.2e elapsed %.0fs eta %.0fs",
                 self.desc, min(self.epoch + 1, self.settings.epochs), self.settings.epochs, step,
                 total, 100.0 * step / max(total, 1), float("nan") if loss is None else loss,
                 self.optimizer.param_groups[0]["lr"], elapsed, eta)


def train_runs(runs: Sequence[Run]) -> list[TrainResult]:
    """Train ``runs`` together, interleaved one batch each per round, until all are finished
    (a diverged run stops; the others go on). On SIGTERM every unfinished run with a checkpoint
    path saves its state, then ``Preempted`` is raised; rerunning resumes every one of them."""
    global _stop_requested
    checkpointing = any(run.checkpoint is not None for run in runs)
    previous_handler = _install_sigterm_handler() if checkpointing else None
    default_stream = torch.cuda.current_stream() if any(r.stream for r in runs) else None
    for run in runs:
        run.model.train()
        if run.stream is not None:
            run.stream.wait_stream(default_stream)  # inputs and weights were moved on it
    try:
        while active := [run for run in runs if not run.finished]:
            launched = []
            for run in active:
                with run.stream_context():
                    launched.append(run.launch())
            for run, loss in zip(active, launched):
                with run.stream_context():
                    run.commit(loss)
            if _stop_requested and checkpointing:
                waiting = [run for run in runs if not run.finished and run.checkpoint is not None]
                for run in waiting:
                    run.save()
                raise Preempted("; ".join(
                    f"{run.desc}: SIGTERM at epoch {run.epoch + 1} step {run.result.steps}"
                    for run in waiting) + f"; state saved to {', '.join(str(r.checkpoint) for r in waiting)}, rerun to resume")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        _stop_requested = False
        for run in runs:
            if run.stream is not None:
                default_stream.wait_stream(run.stream)
    return [run.result for run in runs]


def train(model: nn.Module, normaliser: nn.Module, images: torch.Tensor, labels: torch.Tensor,
          settings: TrainSettings, *, seed: int, desc: str = "train",
          checkpoint: Path | None = None,
          augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> TrainResult:
    """Train ``model`` in place on uint8 ``images`` [N,H,W,3] with integer ``labels`` [N]: one
    :class:`Run` (see there for checkpoints and ``augment``) through :func:`train_runs`."""
    run = Run(model, normaliser, images, labels, settings, seed=seed, desc=desc,
              checkpoint=checkpoint, augment=augment)
    result = train_runs([run])[0]
    _restore_rng(run.rng)  # the caller's RNG continues from where training left it, as before
    return result


def _install_sigterm_handler():
    """Route SIGTERM to a flag checked after every step (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _request_stop)


@torch.no_grad()
def predict(model: nn.Module, normaliser: Normaliser, images: torch.Tensor,
            batch_size: int = 256,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
            precision: str = "fp32") -> torch.Tensor:
    """Logits [N, C] in eval mode (float32, CPU); ``transform`` (e.g. a centre crop) maps each
    uint8 batch before normalisation; ``precision='bf16'`` autocasts on CUDA."""
    model.eval()
    out = eval_batches(model, normaliser, images, lambda x: model(x).cpu(), batch_size, transform,
                       precision)
    return torch.cat(out) if out else torch.empty(0)


def eval_batches(model: nn.Module, normaliser: Normaliser, images: torch.Tensor,
                 forward: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 precision: str = "fp32") -> list[torch.Tensor]:
    """``forward`` of each normalised batch of uint8 ``images`` (``transform`` applied first, on
    the model's device), as float32: the one evaluation loop of ``predict`` and
    ``features.extract_features``. The caller sets the model's mode and grad state."""
    device = next(model.parameters()).device
    normaliser = normaliser.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(device)
        if transform is not None:
            batch = transform(batch)
        with autocast(device, precision):
            out.append(forward(normaliser(batch)).float())
    return out


def top1(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy in percent (exact: an integer count over the split size)."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if len(labels) == 0:
        raise ValueError("top1 of an empty split")
    correct = int((logits.argmax(dim=1) == labels).sum().item())
    return 100.0 * correct / len(labels)

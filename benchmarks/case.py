"""One measured case, run in a fresh process: ``python -m benchmarks.case '<CaseSpec as JSON>'``.

A case is one model (a vpeft method attached to a timm ViT, or a reference built with plain timm
or timm + Hugging Face peft), one phase (``train``: forward + backward + AdamW step; ``eval``:
no-grad forward at a large batch) and one precision. Every case of a run sees the same seeded
input tensors, the same thread count and the same step code, so the only difference between two
cases is the model. The last line printed on stdout is the result as JSON.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the phase (absolute: model,
optimizer state, activations). On CPU the process's resident set (RSS) is what matters, and
``tracemalloc`` does not see torch's allocations: the figure is the peak RSS during the phase
minus the RSS just before it (sampled every millisecond from ``/proc/self/statm`` during warm-up,
and checked against ``ru_maxrss``, which catches spikes between samples), i.e. the memory the
phase needs beyond the built model and its inputs. One process per case keeps one case's
allocator caches out of another's figure.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

KINDS = ("vpeft", "vpeft_linear_cached", "timm_peft", "timm_full", "timm_linear")
PHASES = ("train", "eval")


@dataclass(frozen=True)
class ModelSpec:
    """A timm ViT architecture (random weights: speed does not depend on their values)."""

    name: str
    kwargs: dict[str, Any]
    img_size: int
    num_classes: int = 100


@dataclass(frozen=True)
class CaseSpec:
    label: str                 # what the table shows, e.g. "lora" or "timm + peft LoRA"
    kind: str                  # one of KINDS
    phase: str                 # one of PHASES
    model: ModelSpec
    method: str | None = None  # vpeft method (kind "vpeft")
    hparams: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    eval_batch_size: int = 256
    warmup: int = 2            # untimed steps (first-step allocations, optimizer state, caches)
    reps: int = 3              # timed repetitions; the median is reported
    steps_per_rep: int = 2
    threads: int = 2
    device: str = "cpu"
    precision: str = "fp32"    # fp32 | bf16 (autocast, CUDA only)
    seed: int = 0
    drop_path: float = 0.1     # the VTAB protocol's default
    lr: float = 1e-3
    weight_decay: float = 1e-4
    cached_images: int = 800   # cached linear probing: a train800 split ...
    cached_epochs: int = 100   # ... trained for the protocol's 100 epochs

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}; expected one of {KINDS}")
        if self.phase not in PHASES:
            raise ValueError(f"phase {self.phase!r}; expected one of {PHASES}")

    @classmethod
    def from_json(cls, text: str) -> "CaseSpec":
        raw = json.loads(text)
        return cls(**{**raw, "model": ModelSpec(**raw["model"])})

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# ---------------------------------------------------------------------------------------- memory

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or sampled RSS above the pre-phase RSS."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        self.sampling = False
        self.samples_peak = 0

    def __enter__(self) -> "PeakMemory":
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return self
        self.before = _rss_bytes()
        self.ru_before = _ru_maxrss_bytes()
        self.samples_peak = self.before
        self.sampling = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.sampling:
            self.samples_peak = max(self.samples_peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak_bytes = self.torch.cuda.max_memory_allocated()
            self.kind = "cuda_max_memory_allocated"
            return
        self.sampling = False
        self.thread.join()
        ru_after = _ru_maxrss_bytes()
        # ru_maxrss only says something about this phase when the process peak was set in it.
        peak = max(self.samples_peak, ru_after if ru_after > self.ru_before else 0)
        self.peak_bytes = max(peak - self.before, 0)
        self.kind = "rss_peak_minus_rss_before"


# ---------------------------------------------------------------------------------------- models

def _timm():
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # before timm and peft, which import torchvision
    import timm

    return timm


def build_model(spec: CaseSpec):
    """The case's model with its trainable parameters set (``requires_grad``)."""
    import torch

    torch.manual_seed(spec.seed)
    m = spec.model
    if spec.kind in ("vpeft", "vpeft_linear_cached"):
        from vpeft import methods
        from vpeft.models.backbone import create_backbone

        model = create_backbone(m.name, None, m.num_classes, kwargs=m.kwargs, drop_path=spec.drop_path)
        methods.apply(model, spec.method or "linear", **spec.hparams)
        return model
    model = _timm().create_model(m.name, pretrained=False, num_classes=m.num_classes,
                                 drop_path_rate=spec.drop_path, **m.kwargs)
    if spec.kind == "timm_full":
        return model
    if spec.kind == "timm_linear":
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
        return model
    # timm + peft, as the peft documentation does it for an image classifier: LoRA on the fused
    # qkv projection, the new head trained in full through modules_to_save.
    import peft

    config = peft.LoraConfig(r=int(spec.hparams.get("rank", 8)),
                             lora_alpha=int(spec.hparams.get("rank", 8)),
                             lora_dropout=float(spec.hparams.get("dropout", 0.1)),
                             target_modules=["qkv"], modules_to_save=["head"])
    return peft.get_peft_model(model, config)


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------- timing

def _timed(fn: Callable[[], None], sync: Callable[[], None], device: str, *, warmup: int,
           reps: int, calls_per_rep: int) -> tuple[list[float], list[float], PeakMemory]:
    """``warmup`` calls under the memory probe, then ``reps`` timed repetitions of
    ``calls_per_rep`` calls each: wall seconds and CPU seconds (this process, all threads) per
    repetition. On a shared machine the CPU time of a 1-thread case barely depends on the
    other users' load; the wall time does."""
    import torch

    with PeakMemory(torch.device(device)) as memory:
        for _ in range(warmup):
            fn()
        sync()
    seconds, cpu_seconds = [], []
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(calls_per_rep):
            fn()
        sync()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return seconds, cpu_seconds, memory


def _inputs(spec: CaseSpec, batch: int):
    """Seeded inputs, identical for every case of a run (normalised images and labels)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    size = spec.model.img_size
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, spec.model.num_classes, (batch,), generator=g)
    return x.to(spec.device), y.to(spec.device)


def _autocast(spec: CaseSpec):
    import contextlib

    import torch

    if spec.precision == "bf16" and spec.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure(spec: CaseSpec) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model(spec).to(device)
    result: dict[str, Any] = {"trainable_params": trainable_params(model),
                              "total_params": sum(p.numel() for p in model.parameters())}
    if spec.kind == "vpeft_linear_cached":
        return {**result, **_measure_cached_linear(spec, model, sync)}

    if spec.phase == "train":
        x, y = _inputs(spec, spec.batch_size)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=spec.lr, weight_decay=spec.weight_decay)

        def step() -> None:
            with _autocast(spec):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        batch = spec.batch_size
    else:
        x, _ = _inputs(spec, spec.eval_batch_size)
        model.eval()

        @torch.no_grad()
        def step() -> None:
            with _autocast(spec):
                model(x)

        batch = spec.eval_batch_size
    warmup = spec.warmup if spec.phase == "train" else min(spec.warmup, 1)  # no optimizer state
    seconds, cpu_seconds, memory = _timed(step, sync, spec.device, warmup=warmup, reps=spec.reps,
                                          calls_per_rep=spec.steps_per_rep)
    median = statistics.median(seconds)
    return {**result, "images_per_s": batch * spec.steps_per_rep / median,
            "images_per_cpu_s": batch * spec.steps_per_rep / statistics.median(cpu_seconds),
            "seconds_per_step": median / spec.steps_per_rep, "rep_seconds": seconds,
            "rep_cpu_seconds": cpu_seconds,
            "peak_memory_mb": memory.peak_bytes / 2**20, "memory_kind": memory.kind,
            "process_peak_rss_mb": _ru_maxrss_bytes() / 2**20}


def _measure_cached_linear(spec: CaseSpec, model, sync) -> dict[str, Any]:
    """Linear probing through cached frozen features (``vpeft.train.features``): extract the
    features of a ``cached_images`` split once, then train the head on them with vpeft's own loop
    for ``cached_epochs`` epochs. Images/s is over the whole run (extraction included), the
    figure to compare with back-propagating through the frozen model every epoch."""
    import torch

    from vpeft.train.features import HeadProbe, extract_features
    from vpeft.train.loop import Normaliser, train
    from vpeft.train.protocol import Protocol

    if spec.phase != "train":
        raise ValueError("cached linear probing is measured in the train phase only (its "
                         "evaluation is the ordinary eval forward)")
    g = torch.Generator().manual_seed(1234)
    size, n = spec.model.img_size, spec.cached_images
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, spec.model.num_classes, (n,), generator=g)
    normaliser = Normaliser(torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5), size)
    settings = Protocol.vtab().settings(
        epochs=spec.cached_epochs, lr=spec.lr, weight_decay=spec.weight_decay,
        batch_size=spec.batch_size, warmup_epochs=min(10, spec.cached_epochs),
        eval_batch_size=spec.eval_batch_size, log_every_s=1e9)
    timings: dict[str, list[float]] = {"extract": [], "train": []}

    def whole_run() -> None:
        start = time.perf_counter()
        features = extract_features(model, normaliser, images, spec.eval_batch_size)
        sync()
        middle = time.perf_counter()
        train(HeadProbe(model), torch.nn.Identity(), features, labels.to(features.device),
              settings, seed=spec.seed)
        sync()
        timings["extract"].append(middle - start)
        timings["train"].append(time.perf_counter() - middle)

    # A repetition is a whole run (seconds each), so fewer of them than of single steps.
    seconds, cpu_seconds, memory = _timed(whole_run, sync, spec.device, warmup=1,
                                          reps=min(spec.reps, 3), calls_per_rep=1)
    extract = statistics.median(timings["extract"][1:])
    head = statistics.median(timings["train"][1:])
    median = statistics.median(seconds)
    return {"images_per_s": n * spec.cached_epochs / median,
            "images_per_cpu_s": n * spec.cached_epochs / statistics.median(cpu_seconds),
            "seconds_per_step": median / (spec.cached_epochs * -(-n // spec.batch_size)),
            "rep_seconds": seconds, "rep_cpu_seconds": cpu_seconds,
            "peak_memory_mb": memory.peak_bytes / 2**20,
            "memory_kind": memory.kind, "process_peak_rss_mb": _ru_maxrss_bytes() / 2**20,
            "cached": {"images": n, "epochs": spec.cached_epochs,
                       "extract_seconds": extract, "extract_images_per_s": n / extract,
                       "head_seconds": head,
                       "head_images_per_s": n * spec.cached_epochs / head}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.case '<CaseSpec JSON>'", file=sys.stderr)
        return 2
    spec = CaseSpec.from_json(argv[0])
    print(json.dumps(measure(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

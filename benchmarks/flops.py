"""What the paper's studies cost at the very least: an analytic lower bound from FLOPs.

    python -m benchmarks.flops [--studies vtab1k,manyshot,robustness] [--utilisation 0.4]

Before any benchmark: each study's image counts (its plan from ``params/``, the public split sizes
of ``benchmarks.project``) x FLOPs per image, divided by a named GPU's dense bf16 peak. Per image:

- forward of ViT-B/16 at 224 x 224: ``FORWARD_GFLOP`` = 17.6 GFLOP (2 x multiply-adds; the
  commonly quoted 17.6 "GFLOPs" count multiply-adds, so this bound is lenient by up to 2x,
  never strict);
- a PEFT training image: forward + back-propagation through the activations ~ 2 x forward;
  full fine-tuning also computes every weight gradient: ~ 3 x forward;
- evaluation (validation, test, WiSE-FT): 1 x forward; cached linear probing: one forward per
  image of its training and evaluation splits, the head's own cost is negligible.

Not counted, so the bound stays a lower bound: the methods' extra tokens and modules (VPT's 200
prompts double the sequence), data loading, start-up. ``benchmarks.project`` states the measured
projection's ratio to this bound (its model FLOP utilisation).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

FORWARD_GFLOP = 17.6          # ViT-B/16, 224 x 224, one image
PEFT_TRAIN, FULL_TRAIN = 2.0, 3.0   # training image / forward
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {"H100 SXM": 989.0, "H200": 989.0, "A100": 312.0}
DEFAULT_UTILISATION = 0.4


def peak_of(device: str) -> tuple[str, float] | None:
    """(name, bf16 peak) of a CUDA device name like ``cuda:0 NVIDIA H100 80GB HBM3``."""
    for name, peak in PEAK_TFLOPS.items():
        if name.split()[0] in device:
            return name, peak
    return None


def _forward_gflop(cfg: Any) -> float:
    name, size = str(cfg.model.name), int(cfg.model.img_size)
    if "patch16" not in name or size != 224 or ("base" not in name and "b16" not in name):
        raise ValueError(f"model {name} at {size} px: the bound knows ViT-B/16 at 224 px only")
    return FORWARD_GFLOP


def method_gflop(plan: Any, method: str, images: Mapping[str, Any], forward: float) -> float:
    """GFLOP of one method over every task of the study: grid, final runs (x seeds), WiSE-FT."""
    from benchmarks.project import _distinct_hparams, _jobs_of

    train = plan.cfg.train
    epochs, seeds = int(train.epochs), len(train.get("seeds") or [0])
    points = plan.points[method]
    # linear probing is the one head-only method of the studies (vpeft.train.features)
    cached = method == "linear" and bool(train.get("cache_linear_features", True)) \
        and not train.get("augment")
    per_train = forward * (FULL_TRAIN if method == "full" else PEFT_TRAIN)
    total = 0.0
    for im in images.values():
        if cached:
            extractions = sum(_distinct_hparams(job) for job in _jobs_of(plan, method))
            total += forward * (extractions * (im.grid_train + im.grid_eval)
                                + seeds * (im.final_train + im.test))
        else:
            total += len(points) * (epochs * im.grid_train * per_train + im.grid_eval * forward)
            total += seeds * (epochs * im.final_train * per_train + im.test * forward)
        total += seeds * im.wise * forward
    return total


def study_bound(name: str, overrides: Sequence[str] = (),
                images: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The study's total PFLOP and, per device, hours at 100 % of its peak."""
    from benchmarks.project import Sizes, task_images
    from vpeft.config import load_study

    plan = load_study(name, ["study.data.root=/unused", "model.weights=/unused", *overrides])
    forward = _forward_gflop(plan.cfg)
    sizes = Sizes(images or {})
    per_task = {t: task_images(plan.cfg, t, sizes) for t in plan.tasks}
    gflop = {m: method_gflop(plan, m, per_task, forward) for m in plan.methods}
    pflop = sum(gflop.values()) / 1e6
    return {"study": name, "pflop": pflop, "methods": {m: g / 1e6 for m, g in gflop.items()},
            "hours_at_peak": {d: pflop * 1e15 / (p * 1e12) / 3600 for d, p in PEAK_TFLOPS.items()}}


def markdown(bounds: Sequence[Mapping[str, Any]], utilisation: float) -> str:
    devices = list(PEAK_TFLOPS)
    head = " | ".join(f"{d} ({PEAK_TFLOPS[d]:g} TFLOP/s): 100 % / {utilisation:.0%}" for d in devices)
    lines = [f"| study | PFLOP | {head} |", "|---|--:|" + "--:|" * len(devices)]
    for b in bounds:
        cells = " | ".join(f"≥ {b['hours_at_peak'][d]:,.1f} / {b['hours_at_peak'][d] / utilisation:,.1f}"
                           for d in devices)
        lines.append(f"| {b['study']} | {b['pflop']:,.0f} | {cells} |")
    return "\n".join(lines) + "\n\nGPU-hours: a lower bound at 100 % of the bf16 peak, and at " \
        f"{utilisation:.0%} utilisation (python -m benchmarks.flops).\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default="vtab1k,manyshot,robustness")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION)
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        parser.error(f"--utilisation {args.utilisation}: expected a fraction in (0, 1]")
    bounds = [study_bound(s.strip(), args.override) for s in args.studies.split(",") if s.strip()]
    print(markdown(bounds, args.utilisation))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What ``train.cpu_kernels: portable`` costs and what it changes, on this machine.

Each mode trains the same seeded ViT (the demo's shape: 32 px, patch 8, width 96, depth 4) for a
few AdamW steps in a fresh process (the kernel switches are read once, at torch's first
operation), alternating the modes round by round so that a shared machine's load falls on all of
them alike (the ratios to native are per round, then the median). Per mode: the kernel level
torch chose, the CPU seconds per training step (process time: one thread, so it barely depends on
the other processes), and a SHA-256 of the final logits.

Modes: ``native`` (torch's own choice), ``portable`` (vpeft.machine.PORTABLE_ENV), and ``scalar``
(``ATEN_CPU_CAPABILITY=default``, ATen's non-vectorised kernels): on a CPU whose native level is
AVX2, portable equals native bit for bit, and ``scalar`` differing from both is the evidence that
the kernel level alone changes the numbers, i.e. that a CPU choosing AVX-512 differs too.

    python -m benchmarks.cpu_kernels                 # 5 rounds x 20 steps, ~1 min on 2 cores
    python -m benchmarks.cpu_kernels --rounds 1 --steps 2 --out DIR

Writes ``<out>/cpu_kernels.json`` (default benchmarks/results/) and prints a summary.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("native", "portable", "scalar")
OUT = Path(__file__).resolve().parent / "results"


def _mode_env(mode: str) -> dict[str, str]:
    from vpeft.machine import PORTABLE_ENV

    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    if mode == "portable":
        env |= PORTABLE_ENV
    elif mode == "scalar":
        env["ATEN_CPU_CAPABILITY"] = "default"
    return env


def worker(steps: int, batch: int) -> dict:
    """One mode's figures, in this process (its environment already set)."""
    import torch

    import vpeft._compat as compat

    compat.ensure_torchvision_importable()
    import timm

    from vpeft import machine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=96,
                              depth=4, num_heads=3, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up, also part of the compared result
    started = time.process_time()
    for _ in range(steps):
        step()
    cpu_s = (time.process_time() - started) / steps
    with torch.no_grad():
        logits = model(x)
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "step_cpu_s": cpu_s,
            "logits_sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest(),
            "machine": machine.describe()}


def _run_mode(mode: str, steps: int, batch: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cpu_kernels", "--worker",
                           "--steps", str(steps), "--batch", str(batch)],
                          env=_mode_env(mode), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks.cpu_kernels: the {mode} worker failed:\n"
                         f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(rounds: int, steps: int, batch: int) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            runs[mode].append(_run_mode(mode, steps, batch))
    per_mode = {}
    for mode, results in runs.items():
        hashes = {r["logits_sha256"] for r in results}
        per_mode[mode] = {"cpu_capability": results[0]["cpu_capability"],
                          "step_cpu_s": [r["step_cpu_s"] for r in results],
                          "median_step_cpu_s": statistics.median(r["step_cpu_s"] for r in results),
                          "logits_sha256": sorted(hashes), "repeatable": len(hashes) == 1}
    def ratio(mode: str) -> float:  # per round, then the median: each round's load is shared
        return statistics.median(a["step_cpu_s"] / b["step_cpu_s"]
                                 for a, b in zip(runs[mode], runs["native"]))

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "settings": {"rounds": rounds, "steps": steps,
                                                              "batch": batch, "threads": 1},
        "machine": runs["native"][0]["machine"], "load_average": os.getloadavg(),
        "modes": per_mode,
        "portable_over_native": ratio("portable"), "scalar_over_native": ratio("scalar"),
        "portable_equals_native": per_mode["portable"]["logits_sha256"]
        == per_mode["native"]["logits_sha256"],
        "scalar_equals_native": per_mode["scalar"]["logits_sha256"]
        == per_mode["native"]["logits_sha256"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.steps, args.batch)))
        return 0
    doc = measure(args.rounds, args.steps, args.batch)
    args.out.mkdir(parents=True, exist_ok=True)
    from vpeft.io import write_json

    write_json(args.out / "cpu_kernels.json", doc)
    cpu = doc["machine"]["cpu"]
    print(f"{cpu['model']} ({cpu['vendor']}), load {doc['load_average'][0]:.2f}")
    for mode, r in doc["modes"].items():
        print(f"  {mode:9s} {r['cpu_capability']:8s} {1000 * r['median_step_cpu_s']:.1f} ms/step "
              f"(CPU)  logits {', '.join(h[:12] for h in r['logits_sha256'])}")
    print(f"portable/native step time {doc['portable_over_native']:.3f}, "
          f"scalar/native {doc['scalar_over_native']:.3f}; portable == native: "
          f"{doc['portable_equals_native']}; scalar == native: {doc['scalar_equals_native']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

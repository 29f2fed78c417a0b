"""Training-step and evaluation speed of every vpeft method beside plain timm and timm + peft.

    python -m benchmarks.run                     # CPU: the small ViT, ~8 minutes on 2 cores
    python -m benchmarks.run --model vit_b16     # on a GPU: ViT-B/16, fp32 and bf16

Every registered method (``vpeft.methods.names()``, default hyper-parameters) is attached to the
same timm ViT and measured in a fresh process per case, phase and precision
(``benchmarks.case``), beside the references on the same model, batch, inputs, thread count and
machine: timm + Hugging Face peft (LoRA r=8 on the fused qkv) for ``lora``, plain timm full
fine-tuning for ``full``, plain timm linear probing (frozen backbone, head trained by
back-propagation) for ``linear`` and for linear probing through cached features. Cases run
round-robin ``--rounds`` times so that load from other users of the machine spreads over all of
them; each figure is the median over rounds. Writes ``<out>/<model>-<device>.json`` and ``.md``
and prints the table with the ratios vpeft / reference. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.case import CaseSpec, ModelSpec
from benchmarks.report import markdown_report

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    # Default: small enough for the whole harness on a 2-core CPU (64 px, 8x8 patches: 65 tokens).
    "vit_small64": ModelSpec("vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8,
                                                      "embed_dim": 192, "depth": 6,
                                                      "num_heads": 3}, img_size=64),
    # The study's backbone (ViT-B/16 at 224 px): for a GPU.
    "vit_b16": ModelSpec("vit_base_patch16_224", {}, img_size=224),
    # The tests' tiny ViT: checks that the harness runs, says nothing about speed.
    "tiny": ModelSpec("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "embed_dim": 32,
                                               "depth": 2, "num_heads": 2}, img_size=16,
                      num_classes=5),
}


@dataclasses.dataclass(frozen=True)
class Subject:
    """A row of the table: one vpeft method or one reference."""

    label: str
    kind: str
    method: str | None = None
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    references: tuple[str, ...] = ()  # labels of the rows it is compared with (first: the table's)
    phases: tuple[str, ...] = ("train", "eval")


PEFT_LORA = "timm + peft LoRA"
TIMM_FULL = "timm full fine-tuning"
TIMM_LINEAR = "timm linear probing"
CACHED_LINEAR = "linear (cached features)"
# vpeft's `peft` method (peft's LoRA injected through vpeft's registry) is compared with the same
# reference as vpeft's own LoRA.
REFERENCE_OF = {"lora": PEFT_LORA, "peft": PEFT_LORA, "full": TIMM_FULL, "linear": TIMM_LINEAR}


def subjects(method_names: list[str], references: bool) -> list[Subject]:
    from vpeft import methods

    rows = []
    for name in method_names:
        hparams = dataclasses.asdict(methods.make_config(name))
        hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()}
        rows.append(Subject(name, "vpeft", name, hparams,
                            (REFERENCE_OF[name],) if references and name in REFERENCE_OF else ()))
    if "linear" in method_names and cached_features_available():
        # Compared with back-propagating through the frozen model: plain timm and vpeft's own.
        rows.append(Subject(CACHED_LINEAR, "vpeft_linear_cached", "linear",
                            references=(TIMM_LINEAR, "linear") if references else ("linear",),
                            phases=("train",)))
    needed = {REFERENCE_OF[m] for m in method_names if m in REFERENCE_OF} if references else set()
    if PEFT_LORA in needed:
        lora = dataclasses.asdict(methods.make_config("lora"))
        rows.append(Subject(PEFT_LORA, "timm_peft", None,
                            {"rank": lora["rank"], "dropout": lora["dropout"]}))
    if TIMM_FULL in needed:
        rows.append(Subject(TIMM_FULL, "timm_full"))
    if TIMM_LINEAR in needed:
        rows.append(Subject(TIMM_LINEAR, "timm_linear"))
    return rows


def cached_features_available() -> bool:
    """Whether vpeft's training engine has linear probing through cached features."""
    return importlib.util.find_spec("vpeft.train.features") is not None


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("timm", "peft", "vpeft"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    return info


def run_case(spec: CaseSpec, timeout: float) -> dict[str, Any]:
    """``spec`` in a fresh Python process; its result, or ``{"error": ...}``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(spec.threads),
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO / "src"), str(REPO),
                                                     os.environ.get("PYTHONPATH", "")] if p)}
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.case", spec.to_json()],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                else f"exit code {proc.returncode}", "stderr": proc.stderr[-3000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average_1min"] = load
    return result


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each number; every round's figures kept beside."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return {"error": rounds[-1]["error"], "stderr": rounds[-1].get("stderr", "")}
    out = dict(ok[-1])
    for key in ("images_per_s", "images_per_cpu_s", "seconds_per_step", "peak_memory_mb",
                "process_peak_rss_mb"):
        out[key] = statistics.median(r[key] for r in ok)
    out["rounds"] = [{k: r.get(k) for k in ("images_per_s", "images_per_cpu_s", "peak_memory_mb",
                                            "load_average_1min", "error")} for r in rounds]
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vpeft / reference for every row that has a reference (> 1: vpeft faster / bigger)."""
    by_label = {row["label"]: row for row in rows}
    out = []
    for row in rows:
        for ref in [by_label[label] for label in row["references"] if label in by_label]:
            for phase, precision in [(ph, pr) for ph in row["phases"] for pr in row[ph]]:
                mine, theirs = row[phase][precision], ref.get(phase, {}).get(precision)
                if "error" in mine or theirs is None or "error" in theirs:
                    continue
                out.append({"case": row["label"], "reference": ref["label"], "phase": phase,
                            "precision": precision,
                            "images_per_s_ratio": mine["images_per_s"] / theirs["images_per_s"],
                            "images_per_cpu_s_ratio": (mine["images_per_cpu_s"]
                                                       / theirs["images_per_cpu_s"]),
                            "peak_memory_ratio": (mine["peak_memory_mb"] / theirs["peak_memory_mb"]
                                                  if theirs["peak_memory_mb"] > 0 else None)})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="vit_small64")
    p.add_argument("--methods", default="all",
                   help="comma-separated vpeft methods (default: every registered one)")
    p.add_argument("--no-references", action="store_true", help="vpeft methods only")
    p.add_argument("--batch", type=int, default=None,
                   help="training batch (default 32 on CPU, 64 on CUDA)")
    p.add_argument("--eval-batch", type=int, default=None,
                   help="evaluation batch (default 128 on CPU, 256 on CUDA)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--steps-per-rep", type=int, default=None,
                   help="steps per timed repetition (default 1 on CPU, 10 on CUDA)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every case this many times, round-robin (median over rounds)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in every case (default 1, as the pipeline's CPU jobs)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: fp32 on CPU; fp32 and bf16 autocast on CUDA")
    p.add_argument("--cached-epochs", type=int, default=100,
                   help="epochs of the cached-features linear probe run (the protocol's 100)")
    p.add_argument("--plan-scale", action="store_true",
                   help="also time `snakemake -n` of the full VTAB-1K grid (benchmarks.plan_scale)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per case process")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from vpeft import methods
    from vpeft.io import atomic_path, write_json

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    cuda = device.startswith("cuda")
    precisions = (["fp32", "bf16"] if cuda else ["fp32"]) if args.precision == "auto" \
        else [args.precision]
    known = methods.names()
    wanted = known if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        print(f"--methods: unknown {unknown}; registered: {known}", file=sys.stderr)
        return 2
    settings = {"model": args.model, "model_spec": dataclasses.asdict(MODELS[args.model]),
                "device": device, "precisions": precisions,
                "batch_size": args.batch or (64 if cuda else 32),
                "eval_batch_size": args.eval_batch or (256 if cuda else 128),
                "warmup": args.warmup, "reps": args.reps,
                "steps_per_rep": args.steps_per_rep or (10 if cuda else 1),
                "rounds": args.rounds, "threads": args.threads,
                "cached_epochs": args.cached_epochs,
                "optimizer": "AdamW(lr=1e-3, weight_decay=1e-4) on the trainable parameters",
                "drop_path": 0.1}
    rows = [dataclasses.asdict(s) for s in subjects(wanted, not args.no_references)]
    specs = []
    for row in rows:
        for phase in row["phases"]:
            row.setdefault(phase, {})
            for precision in precisions:
                specs.append((row, phase, precision, CaseSpec(
                    label=row["label"], kind=row["kind"], phase=phase, model=MODELS[args.model],
                    method=row["method"], hparams=row["hparams"],
                    batch_size=settings["batch_size"], eval_batch_size=settings["eval_batch_size"],
                    warmup=args.warmup, reps=args.reps, steps_per_rep=settings["steps_per_rep"],
                    threads=args.threads, device=device, precision=precision,
                    cached_epochs=args.cached_epochs)))
    started = time.perf_counter()
    load_before = os.getloadavg()
    collected: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(specs))}
    out, stem = args.out, f"{args.model}-{'cuda' if cuda else 'cpu'}"
    host = machine()

    def document(complete: bool) -> dict[str, Any]:
        """The results so far: only subjects with every phase and precision measured (ratios
        and tables need them whole); ``not_measured`` names the rest until ``complete``."""
        for i, (row, phase, precision, _) in enumerate(specs):
            if collected[i]:
                row[phase][precision] = combine(collected[i])
        done = [r for r in rows if all(len(r[p]) == len(precisions) for p in r["phases"])]
        return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["python -m benchmarks.run",
                                     *(argv if argv is not None else sys.argv[1:])]),
                "machine": host, "settings": settings,
                "load_average_before": load_before, "load_average_after": os.getloadavg(),
                "wall_seconds": time.perf_counter() - started, "complete": complete,
                "not_measured": [] if complete else [r["label"] for r in rows if r not in done],
                "cases": done, "ratios": ratios(done)}

    def save(doc: dict[str, Any]) -> str:
        write_json(out / f"{stem}.json", doc)
        text = markdown_report(doc)
        with atomic_path(out / f"{stem}.md") as tmp:
            tmp.write_text(text)
        return text

    for round_ in range(args.rounds):
        for i, (row, phase, precision, spec) in enumerate(specs):
            result = run_case(spec, args.timeout)
            collected[i].append(result)
            # written after every case: a run cut short (a GPU lease's time limit) keeps what
            # it measured
            save(document(complete=False))
            figure = (f"error: {result['error']}" if "error" in result else
                      f"{result['images_per_s']:9.1f} img/s  {result['peak_memory_mb']:8.1f} MiB")
            print(f"[{round_ + 1}/{args.rounds}] {row['label']:<26} {phase:<5} {precision:<4} "
                  f"{figure}", flush=True)
    doc = document(complete=True)
    if args.plan_scale:
        from benchmarks.plan_scale import measure_plan_scale

        doc["plan_scale"] = measure_plan_scale()
    text = save(doc)
    print()
    print(text)
    print(f"wrote {out / stem}.json and .md")
    failed = [r["label"] for r in rows for p in r["phases"] for v in r[p].values() if "error" in v]
    if failed:
        print(f"failed cases: {sorted(set(failed))} (errors in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

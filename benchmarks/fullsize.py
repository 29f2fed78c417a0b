"""The bookkeeping of a finished study at the paper's scale: how long select / evaluate / analyze /
report take, how much memory they need, how big the report is and how long Chromium takes to
render it.

    python -m benchmarks.fullsize --out benchmarks/results/fullsize [--seeds 3] [--scale 1.0]
                                  [--kind vtab|robustness|both] [--work DIR]

It fabricates, under ``--work`` (default: a temporary directory, removed afterwards), complete
finished studies in vpeft's own on-disk formats, as if every training job had run:

* **vtab1k**: the 19 VTAB-1K tasks (class counts and groups from ``vpeft.data.vtab.VTAB_TASKS``,
  test-set sizes of the public distributions from ``benchmarks.project.PUBLIC_IMAGES``) x the 16
  methods with the paper's grids (``vpeft.config.load_study("vtab1k")``, 522 points per task):
  every grid point's metrics.json, predictions.parquet (val200) and adapter files, every final
  run's (x ``--seeds``: ``final/``, ``final-seed<s>/``) metrics.json, test_logits.parquet and
  adapter files, and each prepared task's manifest.json and test_labels.parquet;
* **robustness**: one 1000-class task with the 50,000-image ImageNet val as its ID test set,
  the same 16 methods and grids, and each method's WiSE-FT table (ID + four shifts x 11 alphas).

Then it times, each in a fresh process as a Snakemake job runs it
(``python -m vpeft <verb> --study S -o paths.runs=... ...``): ``select`` and ``evaluate`` on a
seeded sample of jobs (extrapolated to the study's job count; the results say so), ``analyze``
on every task and ``report`` once, recording wall time and the job's peak RSS (ru_maxrss of
RUSAGE_CHILDREN in a small launcher whose only child is the job), then the report's size and its render time in headless Chromium.
Results: ``fullsize.json`` and ``fullsize.md`` in ``--out``.

What is *not* at full size, because no bookkeeping step reads it: the prepared tasks' image
shards (the manifests list none), the adapters' tensors (only the head, at its real shape, is
written; the method's own tensors are absent), and the robustness study's grid predictions
(10,000 x 1,000 logits per grid point, 19 GB; ``--robustness-grid-predictions`` writes them).
Test logits, which evaluate, analyze and report do read, are at full size.

The generator depends only on the on-disk formats (plus the package's writers and
``protocol.select`` / ``protocol.evaluate``, which fill in the jobs that are not timed), not on the
internals of analysis or report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from benchmarks.project import PUBLIC_IMAGES

REPO = Path(__file__).resolve().parents[1]
FIRST_SEED = 42
HEAD_WIDTH = 768           # ViT-B/16: the head's input width (its weight is classes x 768)
DIVERGED_SHARE = 0.02      # grid points recorded as diverged (the report counts them)
WISE_ALPHAS = [round(0.1 * i, 1) for i in range(11)]
SHIFTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")

# Plausible top-1 per task (fraction): roughly the paper's level, so the tables look like a study's.
TASK_ACCURACY = {
    "caltech101": 0.90, "cifar": 0.70, "dtd": 0.72, "oxford_flowers102": 0.99,
    "oxford_iiit_pet": 0.91, "svhn": 0.87, "sun397": 0.55, "patch_camelyon": 0.85,
    "eurosat": 0.95, "resisc45": 0.85, "diabetic_retinopathy": 0.75, "clevr_count": 0.80,
    "clevr_dist": 0.64, "dmlab": 0.50, "kitti": 0.80, "dsprites_loc": 0.85, "dsprites_ori": 0.53,
    "smallnorb_azi": 0.33, "smallnorb_ele": 0.40, "imagenet": 0.72,
}
# Per-method offset: linear probing clearly behind, full fine-tuning a little behind the PEFTs.
METHOD_OFFSET = {"linear": -0.12, "full": -0.03, "bitfit": -0.01, "ln": -0.02,
                 "vpt_shallow": -0.04, "vpt_deep": -0.01}


class BenchmarkError(RuntimeError):
    """A timed vpeft step failed; the message names the command and ends with its stderr."""


# ------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class StudySpec:
    """One fabricated study: its name under params/study, tasks, test sizes and overrides."""

    study: str
    tasks: dict[str, int]                 # task -> test images
    overrides: list[str]
    seeds: list[int]


def scaled(n: int, scale: float) -> int:
    """``n`` images at ``scale``, never fewer than 20 (a test set must stay a test set)."""
    return max(20, int(round(n * scale)))


def common_overrides(work: Path, seeds: Sequence[int]) -> list[str]:
    """Where the fabricated study lives; data root and weights only need a value (never read)."""
    return [f"paths.data={work}/data", f"paths.runs={work}/runs", f"paths.reports={work}/reports",
            f"model.weights={work}/weights-not-read.safetensors",
            f"train.seeds=[{','.join(str(s) for s in seeds)}]"]


def vtab_spec(work: Path, scale: float, seeds: list[int], tasks: Sequence[str] | None,
              methods: Sequence[str] | None) -> StudySpec:
    from vpeft.data.vtab import VTAB_TASKS

    names = list(tasks or VTAB_TASKS)
    sizes = {t: scaled(PUBLIC_IMAGES[f"vtab.{t}.test"], scale) for t in names}
    overrides = [*common_overrides(work, seeds), f"study.data.root={work}/vtab-root-not-read"]
    overrides += [f"study.tasks=[{','.join(names)}]"] if tasks else []
    overrides += [f"study.methods=[{','.join(methods)}]"] if methods else []
    return StudySpec("vtab1k", sizes, overrides, seeds)


def robustness_spec(work: Path, scale: float, seeds: list[int],
                    methods: Sequence[str] | None) -> StudySpec:
    overrides = [*common_overrides(work, seeds),
                 f"study.robustness.clip.weights={work}/clip-not-read.bin"]
    overrides += [f"study.methods=[{','.join(methods)}]"] if methods else []
    return StudySpec("robustness", {"imagenet": scaled(PUBLIC_IMAGES["imagenet.imagenet_val"],
                                                       scale)}, overrides, seeds)


# ------------------------------------------------------------------------------- fabrication

def method_accuracy(task: str, method: str, seed: int, num_classes: int) -> float:
    """Top-1 (fraction) of one final run: task level + method offset + a little seed noise."""
    rng = random.Random(f"{task}/{method}/{seed}")
    offset = METHOD_OFFSET.get(method, random.Random(method).uniform(-0.015, 0.015))
    value = TASK_ACCURACY.get(task, 0.7) + offset + rng.gauss(0.0, 0.004)
    return min(0.995, max(1.0 / num_classes + 0.02, value))


def fabricate_logits(labels: np.ndarray, num_classes: int, accuracy: float,
                     difficulty: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float32 logits whose argmax is right on a share ``accuracy`` of the images.

    Which images are right depends 60 % on a per-image difficulty shared by every method and
    seed, 40 % on chance, so mistakes partly overlap (what analyze measures) but not entirely.
    """
    n = len(labels)
    logits = rng.standard_normal((n, num_classes), dtype=np.float32)
    score = 0.6 * difficulty + 0.4 * rng.random(n)
    correct = score < np.quantile(score, accuracy) if n else np.zeros(0, bool)
    wrong = (labels + rng.integers(1, max(num_classes, 2), n)) % num_classes
    target = np.where(correct, labels, wrong)
    rows = np.arange(n)
    logits[rows, target] = logits.max(1) + rng.exponential(1.5, n).astype(np.float32) + 0.01
    return logits


def logits_table(logits: np.ndarray, labels: np.ndarray | None) -> pa.Table:
    """The table ``vpeft train`` writes (``protocol.predictions_table``: index, [label], pred, logits)."""
    import torch

    from vpeft.protocol import predictions_table

    return predictions_table(np.arange(len(logits), dtype=np.int64), torch.from_numpy(logits), labels)


def write_prepared(root: Path, task: str, group: str, num_classes: int, split_sizes: dict,
                   test_labels: np.ndarray, image_size: int) -> dict[str, Any]:
    """A prepared task as ``vpeft prepare`` leaves it: manifest.json (written last) and
    test_labels.parquet; the image shards are left out (no bookkeeping step reads them)."""
    from vpeft.data.shards import FORMAT
    from vpeft.io import write_json, write_parquet

    write_parquet(root / "test_labels.parquet", pa.table({
        "index": pa.array(np.arange(len(test_labels)), pa.int64()),
        "label": pa.array(test_labels, pa.int64())}))
    splits: dict[str, Any] = {}
    for split, count in split_sizes.items():
        info: dict[str, Any] = {"count": int(count), "shards": []}
        if split != "test":
            per = np.bincount(np.arange(count) % num_classes, minlength=num_classes)
            info["class_counts"] = {str(c): int(per[c]) for c in range(num_classes)}
        splits[split] = info
    manifest = {"task": task, "group": group, "num_classes": num_classes,
                "image_size": image_size, "format": FORMAT, "splits": splits, "conversions": {},
                "content": {"train800val200_layout": "own copies",
                            "train800val200_union": "exact", "missing_from_train800val200": 0,
                            "extra_in_train800val200": 0, "relabelled": 0, "examples": [],
                            "allowed_overlaps": []},
                "source": {"root": "fabricated by benchmarks.fullsize", "checksums": {}},
                "vpeft_version": __import__("vpeft").__version__}
    write_json(root / "manifest.json", manifest)
    return manifest


@dataclass
class RunRecord:
    """The fields ``protocol._record`` adds around a run's own results, computed once per study
    (the resolved config, versions and git commit cost ~50 ms a call, x 10,000 runs)."""

    config: dict[str, Any]
    versions: dict[str, str]
    git_commit: str | None

    def metrics(self, study: str, task: str, method: str, group: str, phase: str,
                point: str | None, fields: dict[str, Any]) -> dict[str, Any]:
        from vpeft.protocol import PHASES

        return {"study": study, "task": task, "method": method, "point": point, "group": group,
                "phase": phase, "train_split": PHASES[phase][0], **fields,
                "config": self.config, "versions": self.versions, "git_commit": self.git_commit}


def run_fields(point: Any, *, seed: int, status: str, val_top1: float | None, eval_split,
               num_classes: int, epochs: int, rng: random.Random) -> dict[str, Any]:
    """A run's results as ``protocol.run_points`` records them (costs: plausible GPU figures)."""
    head = num_classes * (HEAD_WIDTH + 1)
    trainable = rng.randint(1_000, 2_000_000)
    loss = [round(2.5 * math.exp(-3 * e / max(epochs, 1)) + 0.05 * rng.random(), 4)
            for e in range(epochs)]
    return {"seed": seed, "eval_split": eval_split, "status": status, "val_top1": val_top1,
            "hparams": dict(point.hparams) if point else {},
            "optim": dict(point.optim) if point else {},
            "trainable_params": trainable, "trainable_params_with_head": trainable + head,
            "total_params": 85_798_656 + head, "wall_time_s": rng.uniform(60, 900),
            "epochs": epochs, "steps": epochs * 16, "train_images_per_s": rng.uniform(150, 900),
            "peak_memory_bytes": rng.randint(3, 20) * 2 ** 30, "device": "cuda (NVIDIA A100)",
            "protocol": "vpeft", "loss_curve": loss,
            "diverged_at": None if status == "ok" else epochs // 2,
            "feature_cache": {"used": False}, "precision": "bf16", "fused_attention": True,
            "compiled": False, "fused_points": 1}


def write_adapter(folder: Path, meta: dict[str, Any], num_classes: int) -> None:
    """adapter.safetensors + adapter_config.json as ``methods.save_adapter`` writes them; only
    the head's tensors (real shape, zeros) stand in for the trained ones."""
    import torch
    from safetensors.torch import save_file

    from vpeft import layout
    from vpeft.io import atomic_path, write_json
    from vpeft.methods.checkpoint import METADATA_KEY

    state = {"head.weight": torch.zeros(num_classes, HEAD_WIDTH),
             "head.bias": torch.zeros(num_classes)}
    with atomic_path(folder / layout.ADAPTER) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    write_json(folder / layout.ADAPTER_CONFIG, {**meta, "tensors": sorted(state)})


@dataclass
class Fabricated:
    """What was written, for the results."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    grid_runs: int = 0
    final_runs: int = 0
    test_images: dict[str, int] = field(default_factory=dict)


def fabricate_task(plan, spec: StudySpec, task: str, record: RunRecord,
                   grid_predictions: bool) -> None:
    """Every run of one task, as if training had finished (selection and evaluation included:
    ``protocol.select`` and ``protocol.evaluate`` write them, as the pipeline would)."""
    from vpeft import layout
    from vpeft.io import write_json, write_parquet
    from vpeft.kinds import study_kind
    from vpeft.protocol import evaluate, select

    cfg = plan.cfg
    entry = study_kind(cfg).task_entry(task)
    classes, group = entry.num_classes, entry.group
    n_test = spec.tasks[task]
    rng = np.random.default_rng(sum(map(ord, task)))  # str hash() varies between processes
    sizes = {k: (n_test if v is None else int(v)) for k, v in cfg.study.data.split_sizes.items()}
    test_labels = rng.integers(0, classes, n_test)
    write_prepared(layout.prepared_task(cfg, task), task, group, classes, sizes, test_labels,
                   int(cfg.model.img_size))
    n_val = sizes["val200"]
    val_labels = rng.integers(0, classes, n_val)
    test_difficulty, val_difficulty = rng.random(n_test), rng.random(n_val)
    epochs = int(cfg.train.epochs)
    for method in plan.methods:
        prng = random.Random(f"{task}/{method}")
        for point in plan.points[method]:
            folder = layout.grid_dir(cfg, task, method, point.id)
            diverged = prng.random() < DIVERGED_SHARE
            acc = method_accuracy(task, method, FIRST_SEED, classes) - prng.uniform(0, 0.08)
            logits = fabricate_logits(val_labels, classes, max(acc, 1 / classes), val_difficulty,
                                      rng)
            val_top1 = None if diverged else \
                float(100.0 * np.mean(logits.argmax(1) == val_labels))
            if grid_predictions:
                write_parquet(folder / layout.PREDICTIONS, logits_table(logits, val_labels))
            meta = {"study": plan.name, "task": task, "point": point.id,
                    "model": cfg.model.name, "num_classes": classes}
            write_adapter(folder, {"method": method, "hparams": dict(point.hparams), **meta},
                          classes)
            fields = run_fields(point, seed=FIRST_SEED if not spec.seeds else spec.seeds[0],
                                status="diverged" if diverged else "ok", val_top1=val_top1,
                                eval_split="val200", num_classes=classes, epochs=epochs, rng=prng)
            write_json(folder / layout.METRICS,
                       record.metrics(plan.name, task, method, group, "grid", point.id, fields))
        selection = select(plan, task, method)
        best = plan.point(method, selection["best_point"])
        for seed, folder in layout.seed_final_dirs(cfg, task, method):
            acc = method_accuracy(task, method, seed, classes)
            logits = fabricate_logits(test_labels, classes, acc, test_difficulty, rng)
            write_parquet(folder / layout.TEST_LOGITS, logits_table(logits, None))
            del logits
            meta = {"study": plan.name, "task": task, "point": best.id,
                    "model": cfg.model.name, "num_classes": classes}
            write_adapter(folder, {"method": method, "hparams": dict(best.hparams), **meta},
                          classes)
            fields = run_fields(best, seed=seed, status="ok", val_top1=None, eval_split=None,
                                num_classes=classes, epochs=epochs, rng=prng)
            write_json(folder / layout.METRICS,
                       record.metrics(plan.name, task, method, group, "final", best.id, fields))
            evaluate(plan, task, method, seed=seed)


def write_wise(plan, task: str, method: str, seed: int) -> None:
    """wise/wise.parquet + wise.json as ``robustness.pipeline.run_wise`` writes them: a concave
    ID-vs-OOD curve from the zero-shot model (alpha 0) to the fine-tuned one (alpha 1)."""
    from vpeft.io import write_json, write_parquet
    from vpeft.layout import WISE_ID_SET as ID_SET, WISE_SUMMARY, WISE_TABLE, wise_dir

    rng = random.Random(f"wise/{method}")
    ft = 100 * method_accuracy(task, method, seed, 1000)
    sizes = {ID_SET: PUBLIC_IMAGES["imagenet.imagenet_val"],
             **{s: PUBLIC_IMAGES[f"imagenet.{s}"] for s in SHIFTS}}
    zero_shot = {ID_SET: 68.3, "imagenet_v2": 61.9, "imagenet_sketch": 48.3, "imagenet_a": 50.0,
                 "imagenet_r": 77.7}
    rows = []
    for name, n in sizes.items():
        end = ft if name == ID_SET else zero_shot[name] - rng.uniform(2, 12)
        for alpha in WISE_ALPHAS:
            bump = 4.0 * alpha * (1 - alpha) * (3.0 if name == ID_SET else 5.0)
            rows.append({"alpha": alpha, "eval_set": name,
                         "top1": (1 - alpha) * zero_shot[name] + alpha * end + bump,
                         "num_images": n, "num_classes_scored":
                         200 if name in ("imagenet_a", "imagenet_r") else 1000})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("alpha", pa.float64()), ("eval_set", pa.string()), ("top1", pa.float64()),
        ("num_images", pa.int64()), ("num_classes_scored", pa.int64())]))
    out = wise_dir(plan.cfg, task, method, seed)
    write_parquet(out / WISE_TABLE, table)
    write_json(out / WISE_SUMMARY, {"task": task, "method": method, "seed": seed, "status": "ok",
                                    "alphas": WISE_ALPHAS, "eval_sets": list(sizes),
                                    "id_set": ID_SET, "wall_time_s": rng.uniform(600, 1800)})


def fabricate(spec: StudySpec, grid_predictions: bool) -> tuple[Any, Fabricated]:
    """Write the whole finished study ``spec``; returns its plan and what was written."""
    from vpeft.config import load_study, to_plain
    from vpeft.protocol import git_commit, versions

    started = time.perf_counter()
    plan = load_study(spec.study, spec.overrides)
    record = RunRecord(to_plain(plan.cfg), versions(), git_commit())
    for task in plan.tasks:
        tic = time.perf_counter()
        fabricate_task(plan, spec, task, record, grid_predictions)
        if spec.study == "robustness":
            for method in plan.methods:
                write_wise(plan, task, method, spec.seeds[0])
        print(f"fabricated {spec.study}/{task}: {spec.tasks[task]} test images, "
              f"{time.perf_counter() - tic:.1f} s", file=sys.stderr, flush=True)
    root = Path(plan.cfg.paths.runs) / plan.name
    files, size = tree_size(root)
    pfiles, psize = tree_size(Path(plan.cfg.paths.data) / "prepared" / plan.name)
    n_grid = len(plan.tasks) * sum(len(p) for p in plan.points.values())
    return plan, Fabricated(files + pfiles, size + psize, time.perf_counter() - started, n_grid,
                            len(plan.tasks) * len(plan.methods) * len(spec.seeds),
                            dict(spec.tasks))


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


# ------------------------------------------------------------------------------------- timing

def vpeft_env() -> dict[str, str]:
    src = str(REPO / "src")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VPEFT_PARAMS": str(REPO / "params"),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH", "")] if p)}


def vpeft_step(verb: str, spec: StudySpec, *extra: str) -> dict[str, Any]:
    """``python -m vpeft <verb> --study S -o ... <extra>``, timed."""
    args = [sys.executable, "-m", "vpeft", verb, "--study", spec.study]
    for override in spec.overrides:
        args += ["-o", override]
    result = timed([*args, *extra])
    return {"verb": verb, "args": list(extra), **result}


# Runs in a small fresh interpreter that starts the vpeft job and reports the job's own rusage.
# Linux carries a process's peak RSS across fork and exec, so a job started straight from this
# (large) process would report at least this process's size as its peak.
LAUNCHER = """
import json, resource, subprocess, sys, time
tic = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - tic
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def timed(args: Sequence[str], timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``args`` as a job: its wall seconds, CPU seconds and peak RSS (ru_maxrss of
    RUSAGE_CHILDREN in a launcher whose only child is the job)."""
    try:
        proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args], cwd=REPO, env=vpeft_env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{' '.join(args)}: no answer in {timeout:.0f} s") from None
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"code": proc.returncode}
    if proc.returncode != 0 or result.get("code") != 0:
        raise BenchmarkError(f"{' '.join(args)} exited {result.get('code')}:\n"
                             f"{proc.stderr[-4000:]}")
    return {k: v for k, v in result.items() if k != "code"}


def summarise(samples: list[dict[str, Any]], jobs: int) -> dict[str, Any]:
    """Per-job figures of a sample and the study's total, extrapolated from the sample mean."""
    walls = [s["wall_s"] for s in samples]
    rss = [s.get("peak_rss_mb", 0.0) for s in samples]
    return {"sampled_jobs": len(samples), "study_jobs": jobs,
            "wall_s_median": statistics.median(walls), "wall_s_mean": statistics.fmean(walls),
            "wall_s_max": max(walls), "peak_rss_mb_max": max(rss),
            "total_wall_s_extrapolated": statistics.fmean(walls) * jobs,
            "extrapolated": len(samples) < jobs, "samples": samples}


def time_study(plan, spec: StudySpec, select_sample: int, evaluate_per_task: int,
               rng: random.Random, render: dict[str, Any] | None) -> dict[str, Any]:
    """select (a sample), evaluate (per task a sample, weighted by the task's job count),
    analyze (every task), report (once)."""
    cells = [(t, m) for t in plan.tasks for m in plan.methods]
    picks = rng.sample(cells, min(select_sample, len(cells)))
    select = [vpeft_step("select", spec, "--task", t, "--method", m) for t, m in picks]
    evaluate, eval_total = [], 0.0
    for task in plan.tasks:
        jobs = [(m, s) for m in plan.methods for s in spec.seeds]
        runs = [vpeft_step("evaluate", spec, "--task", task, "--method", m, "--seed", str(s))
                for m, s in rng.sample(jobs, min(evaluate_per_task, len(jobs)))]
        for r in runs:
            r["task"] = task
        evaluate += runs
        eval_total += statistics.fmean(r["wall_s"] for r in runs) * len(jobs)
    eval_summary = summarise(evaluate, len(cells) * len(spec.seeds))
    eval_summary["total_wall_s_extrapolated"] = eval_total  # per-task means x the task's jobs
    analyze = [vpeft_step("analyze", spec, "--task", t) | {"task": t} for t in plan.tasks]
    report = vpeft_step("report", spec)
    out = Path(plan.cfg.paths.reports) / plan.name
    return {"select": summarise(select, len(cells)), "evaluate": eval_summary,
            "analyze": {**summarise(analyze, len(plan.tasks)), "extrapolated": False},
            "report": report, "report_files": report_files(out),
            "analysis_tables": analysis_tables(plan),
            "render": render_times(out / "index.html", **render) if render is not None
            else {"available": False},
            # the largest task page (every grid point and its landscape), without DevTools
            "render_task": render_times(largest_task_page(out), render["repeats"], False)
            if render is not None and largest_task_page(out) is not None
            else {"available": False}}


def largest_task_page(out: Path) -> Path | None:
    """The report's largest ``tasks/*.html`` (None for a report without task pages)."""
    pages = sorted(out.glob("tasks/*.html"), key=lambda p: (p.stat().st_size, p.name))
    return pages[-1] if pages else None


def report_files(out: Path) -> dict[str, Any]:
    """Size of index.html and of every file of the report directory."""
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*"))
             if p.is_file()}
    return {"index_html_bytes": files.get("index.html", 0), "total_bytes": sum(files.values()),
            "files": files}


def analysis_tables(plan) -> dict[str, list[str]]:
    """Which analysis tables each task's analyze wrote (names of its Parquet files)."""
    from vpeft import layout

    return {t: sorted(p.stem for p in layout.analysis_dir(plan.cfg, t).glob("*.parquet"))
            for t in plan.tasks}


def render_times(html: Path, repeats: int = 3, devtools: bool = True) -> dict[str, Any]:
    """Headless Chromium: the median ``--dump-dom`` time of the report minus that of a blank page
    (the browser's own start-up), and the DevTools visit of tests/browser.py (load + screenshot)
    when importable."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None or not html.is_file():
        return {"available": False}
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--virtual-time-budget=60000"]

    def dump(url: str) -> tuple[float, int]:
        with tempfile.TemporaryDirectory(prefix="vpeft-chromium-") as profile:
            tic = time.perf_counter()
            proc = subprocess.run([exe, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
                                  capture_output=True, timeout=600)
            return time.perf_counter() - tic, len(proc.stdout)

    blank_s = statistics.median(dump("about:blank")[0] for _ in range(repeats))
    pages = [dump(html.resolve().as_uri()) for _ in range(repeats)]
    page_s, dom_bytes = statistics.median(p[0] for p in pages), pages[-1][1]
    result: dict[str, Any] = {"available": True, "dump_dom_s": page_s, "blank_page_s": blank_s,
                              "render_s": max(0.0, page_s - blank_s), "dom_bytes": dom_bytes,
                              "repeats": repeats}
    if not devtools:
        return result
    try:
        sys.path.insert(0, str(REPO))
        from tests.browser import visit

        tic = time.perf_counter()
        shot = visit(html, timeout=600)
        result["devtools_visit_s"] = time.perf_counter() - tic
        result["devtools_requests"] = len(shot.requests)
    except Exception as err:  # the DevTools helper needs websocket-client; dump-dom suffices
        result["devtools_visit_error"] = f"{type(err).__name__}: {err}"
    return result


# ------------------------------------------------------------------------------------ results

def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal"))) // 1024
    except (OSError, StopIteration):
        mem = None
    import platform

    return {"cpu": cpu, "cpu_count": os.cpu_count(), "memory_mb": mem,
            "platform": platform.platform(), "python": platform.python_version()}


def markdown(result: dict[str, Any]) -> str:
    """The results as the tables docs/benchmarks.md shows."""
    lines = [f"# Bookkeeping at full size ({result['date']})", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} cores, "
             f"{result['machine']['memory_mb']} MB); load average {result['load_before']} before, "
             f"{result['load_after']} after; commit `{result['git_commit']}`; scale "
             f"{result['scale']}, seeds {result['seeds']}.", ""]
    for name, study in result["studies"].items():
        fab = study["fabricated"]
        lines += [f"## {name}", "",
                  f"{len(fab['test_images'])} task(s), {fab['grid_runs']} grid runs, "
                  f"{fab['final_runs']} final runs, {sum(fab['test_images'].values())} test "
                  f"images per method and seed; fabricated {fab['files']} files, "
                  f"{fab['bytes'] / 1e9:.2f} GB in {fab['seconds']:.0f} s.", "",
                  "| step | jobs in the study | timed | wall per job (median / max) | "
                  "peak RSS (max) | study total |", "|---|---|---|---|---|---|"]
        t = study["timing"]
        for verb in ("select", "evaluate", "analyze"):
            s = t[verb]
            total = s["total_wall_s_extrapolated"]
            lines.append(f"| {verb} | {s['study_jobs']} | {s['sampled_jobs']} | "
                         f"{s['wall_s_median']:.2f} s / {s['wall_s_max']:.2f} s | "
                         f"{s['peak_rss_mb_max']:.0f} MB | "
                         f"{'~' if s['extrapolated'] else ''}{total / 60:.1f} min"
                         f"{' (extrapolated)' if s['extrapolated'] else ''} |")
        r = t["report"]
        lines.append(f"| report | 1 | 1 | {r['wall_s']:.1f} s | {r.get('peak_rss_mb', 0):.0f} MB "
                     f"| {r['wall_s'] / 60:.1f} min |")
        files, render = t["report_files"], t["render"]
        lines += ["", f"Report: index.html {files['index_html_bytes'] / 1e6:.2f} MB, "
                  f"{len(files['files'])} files, {files['total_bytes'] / 1e6:.1f} MB in all."]
        if render.get("available"):
            lines.append(f"Chromium: --dump-dom {render['dump_dom_s']:.1f} s (blank page "
                         f"{render['blank_page_s']:.1f} s: render ~{render['render_s']:.1f} s)"
                         + (f"; DevTools load + screenshot {render['devtools_visit_s']:.1f} s"
                            if "devtools_visit_s" in render else "") + ".")
        task_render = t.get("render_task", {})
        if task_render.get("available"):
            lines.append(f"Largest task page: --dump-dom {task_render['dump_dom_s']:.1f} s "
                         f"(render ~{task_render['render_s']:.1f} s).")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--seeds", type=int, default=1, help="final runs per task x method")
    parser.add_argument("--scale", type=float, default=1.0, help="share of the test images")
    parser.add_argument("--kind", choices=["vtab", "robustness", "both"], default="both")
    parser.add_argument("--work", type=Path, help="where to fabricate (kept); default: a "
                        "temporary directory, removed afterwards")
    parser.add_argument("--tasks", help="VTAB tasks, comma-separated (default: all 19)")
    parser.add_argument("--methods", help="methods, comma-separated (default: the study's 16)")
    parser.add_argument("--robustness-seeds", type=int, default=1,
                        help="seeds of the robustness study (its test logits are 200 MB a run)")
    parser.add_argument("--robustness-grid-predictions", action="store_true",
                        help="also write its grid runs' val predictions (19 GB at full size)")
    parser.add_argument("--select-sample", type=int, default=30, help="select jobs timed")
    parser.add_argument("--evaluate-per-task", type=int, default=2,
                        help="evaluate jobs timed per task")
    parser.add_argument("--no-render", action="store_true", help="skip the Chromium timing")
    parser.add_argument("--render-repeats", type=int, default=3)
    parser.add_argument("--no-devtools", action="store_true",
                        help="skip the DevTools visit (tests/browser.py) of the report")
    parser.add_argument("--commit", help="the commit measured, when running from an exported "
                        "tree that is no git checkout (default: git rev-parse HEAD)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VPEFT_PARAMS", str(REPO / "params"))

    from vpeft.io import write_json
    from vpeft.protocol import git_commit

    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)
    tmp = None if args.work else tempfile.mkdtemp(prefix="vpeft-fullsize-")
    work = (args.work or Path(tmp)).resolve()
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    rseeds = [FIRST_SEED + i for i in range(args.robustness_seeds)]
    specs = []
    if args.kind in ("vtab", "both"):
        specs.append((vtab_spec(work / "vtab", args.scale, seeds, split(args.tasks),
                                split(args.methods)), True))
    if args.kind in ("robustness", "both"):
        specs.append((robustness_spec(work / "robustness", args.scale, rseeds,
                                      split(args.methods)), args.robustness_grid_predictions))
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                              "git_commit": args.commit or git_commit(), "scale": args.scale,
                              "seeds": args.seeds, "robustness_seeds": args.robustness_seeds,
                              "load_before": [round(x, 2) for x in os.getloadavg()],
                              "studies": {}}
    rng = random.Random(0)
    try:
        for spec, grid_predictions in specs:
            plan, fab = fabricate(spec, grid_predictions)
            timing = time_study(plan, spec, args.select_sample, args.evaluate_per_task, rng,
                                render=None if args.no_render else
                                {"repeats": args.render_repeats, "devtools": not args.no_devtools})
            result["studies"][spec.study] = {"fabricated": fab.__dict__, "timing": timing,
                                             "tasks": plan.tasks, "methods": plan.methods}
            print(f"timed {spec.study}", file=sys.stderr, flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fullsize.json", result)
    from vpeft.io import atomic_path

    with atomic_path(args.out / "fullsize.md") as tmp_md:
        tmp_md.write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

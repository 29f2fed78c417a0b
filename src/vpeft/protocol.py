"""The study's protocol, one step per function (each is one CLI verb and one Snakemake rule).

grid point:  train on train800, score last-epoch top-1 on val200 (seed: train.seeds[0])
select:      best val200 top-1 over the grid (diverged points skipped); never looks at test
final:       retrain the chosen point on train800val200, predict test images (no labels read);
             once per seed of train.seeds (final/ for the first, final-seed<s>/ for the others)
evaluate:    the one place test labels are read: score one seed's final predictions once

Every run's metrics.json records its cost (wall time, training images/s, peak memory, device)
and which protocol produced it (``vpeft.train.published``: "vpeft", "as_published", "custom").
"""
from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import vpeft
from vpeft import layout, machine
from vpeft.config import GridPoint, StudyPlan, to_plain
from vpeft.data.shards import read_split, read_test_labels, read_manifest
from vpeft.errors import UserError
from vpeft.io import atomic_path, write_json, write_parquet
from vpeft.runs import Candidate, MethodRuns, RunDir, RunMetrics, Selection, TestEval
from vpeft.train.protocol import Protocol

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch import nn

    from vpeft.data.shards import SplitData
    from vpeft.train.loop import Run, TrainResult, TrainSettings

# torch, timm and the training modules are imported inside the functions that train: selection,
# evaluation and reporting are bookkeeping and start in a fraction of the time.

log = logging.getLogger("vpeft.protocol")

PHASES = {"grid": ("train800", "val200"), "final": ("train800val200", "test")}
SELECTION_CRITERION = "last-epoch val200 top-1"
RESUME_CHECKPOINT = "resume.pt"  # training state of an unfinished run, beside its outputs


def versions() -> dict[str, str]:
    """Versions of what produced a result (from package metadata: importing timm is slow)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"vpeft": vpeft.__version__, "python": platform.python_version(),
             "platform": platform.platform()}
    for package in ("torch", "timm", "numpy", "pyarrow", "safetensors", "hydra-core"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit() -> str | None:
    """HEAD of the working directory's repository, suffixed ``-dirty`` if it has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def predictions_table(index: np.ndarray, logits: torch.Tensor, labels: np.ndarray | None) -> pa.Table:
    n, c = logits.shape if logits.ndim == 2 else (0, 0)
    columns: dict[str, Any] = {"index": pa.array(index, pa.int64())}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
    columns["pred"] = pa.array(logits.argmax(1).numpy() if n else np.zeros(0), pa.int64())
    flat = pa.array(logits.numpy().reshape(-1) if n else np.zeros(0), pa.float32())
    columns["logits"] = pa.FixedSizeListArray.from_arrays(flat, max(c, 1)) if n else \
        pa.array([], pa.list_(pa.float32(), 1))
    return pa.table(columns)


def run_point(plan: StudyPlan, task: str, method: str, point: GridPoint, phase: str,
              seed: int | None = None) -> dict[str, Any]:
    """Train one grid point (``phase='grid'``) or the final run (``phase='final'``) and write its
    outputs; returns the metrics."""
    return run_points(plan, task, method, [point], phase, seed=seed)[0]


@dataclass
class _JobInputs:
    """What every point of a job shares: the protocol, the device and the prepared splits."""

    protocol: Protocol
    phase: str
    seed: int
    manifest: Mapping[str, Any]
    device: torch.device
    augment: Callable[[torch.Tensor], torch.Tensor] | None  # None unless train.augment is set
    eval_transform: Callable[[torch.Tensor], torch.Tensor] | None
    images: torch.Tensor  # the training split, on the device once for every point
    labels: torch.Tensor
    eval_data: SplitData  # the evaluation split (test: images only, its labels are never read)
    eval_images: torch.Tensor
    cache_features: bool  # head-only points train on cached frozen features
    # method hyper-parameters (JSON) -> the frozen backbone's train and eval features, seconds
    features: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)


@dataclass
class _PointRun:
    """One grid point of a fused job: where it writes, its model and its training run."""

    point: GridPoint
    out_dir: Path
    desc: str
    model: nn.Module
    counts: dict[str, int]
    settings: TrainSettings
    run: Run
    normaliser: nn.Module
    eval_features: torch.Tensor | None = None  # cached eval-split features (head-only runs)
    feature_cache: dict[str, Any] = field(default_factory=lambda: {"used": False})


def run_points(plan: StudyPlan, task: str, method: str, points: Sequence[GridPoint], phase: str,
               seed: int | None = None) -> list[dict[str, Any]]:
    """Train several grid points of one method together in one process and write each one's
    outputs exactly as a solo run would (one point: a solo run); returns their metrics.

    Start-up, data loading and the prepared splits are paid once; the points train interleaved
    step by step (``vpeft.train.loop.train_runs``), each with its own RNG streams and resume
    checkpoint, so each point's results are bit-identical (on CPU) to its solo run. A run whose
    only trainable part is the head trains on cached frozen features when
    ``train.cache_linear_features`` is on (``vpeft.train.features``). The study's
    :class:`~vpeft.train.protocol.Protocol` is built once and handed to every point.
    """
    from vpeft.train.loop import train_runs

    if not points:
        raise ValueError(f"{task}/{method}: no grid points to train")
    if phase == "final" and len(points) != 1:
        raise ValueError(f"{task}/{method}: the final phase trains exactly one point")
    protocol = Protocol.from_config(plan.cfg)  # switches and seeds checked before anything trains
    seed = protocol.run_seed(f"{task}/{method}", phase, seed)
    machine.check_cpu_kernels(plan.cfg.train.get("cpu_kernels", "native"))
    started = time.perf_counter()
    inputs = _job_inputs(plan.cfg, task, phase, seed, protocol)
    jobs = [_start_point(plan.cfg, task, method, point, inputs) for point in points]
    setup_s = time.perf_counter() - started

    results = train_runs([job.run for job in jobs])
    train_s = time.perf_counter() - started - setup_s
    # A fused job's time is shared out: setup and training evenly, evaluation as measured.
    shared_s = (setup_s + train_s) / len(jobs)
    timing = {"setup_s": setup_s, "train_s": train_s}  # the job's, shared by its points
    return [_finish_point(plan, task, method, job, result, inputs, shared_s, len(jobs), timing)
            for job, result in zip(jobs, results)]


def _job_inputs(cfg: DictConfig, task: str, phase: str, seed: int, protocol: Protocol) -> _JobInputs:
    """Read the job's prepared splits once (test labels never: the final run reads only the
    test images) and put the training split on the device."""
    import torch

    from vpeft.train.augment import transforms_for
    from vpeft.train.loop import reset_peak_memory

    train_split, eval_split = PHASES[phase]
    prepared = layout.prepared_task(cfg, task)
    manifest = read_manifest(prepared)
    device = protocol.device()
    reset_peak_memory(device)
    augment, eval_transform = transforms_for(cfg, task)  # (None, None) unless train.augment is set
    # Frozen features are only a fixed function of an image when no augmentation changes it.
    cache_features = protocol.switches["cache_linear_features"] and augment is None
    train_data = read_split(prepared, train_split)
    eval_data = read_split(prepared, eval_split)
    rehearsal = protocol.rehearsal()
    if rehearsal:  # a rehearsal: only what its steps and batches use (cached features too)
        train = cfg.train
        train_data = _first(train_data, rehearsal.get("max_steps"), int(train.batch_size))
        eval_data = _first(eval_data, rehearsal.get("max_eval_batches"),
                           int(train.eval_batch_size))
        log.warning("%s/%s: REHEARSAL (train.rehearsal %s): training on %d, scoring %d images; "
                    "not a result", task, phase, rehearsal, len(train_data), len(eval_data))
    return _JobInputs(protocol, phase, seed, manifest, device, augment, eval_transform,
                      images=torch.from_numpy(train_data.images).to(device),
                      labels=torch.from_numpy(train_data.labels).to(device),
                      eval_data=eval_data, eval_images=torch.from_numpy(eval_data.images),
                      cache_features=cache_features)


def _first(data: SplitData, batches: int | None, batch_size: int) -> SplitData:
    """The first ``batches`` x ``batch_size`` images of a split (all of it for None)."""
    from vpeft.data.shards import SplitData

    if batches is None:
        return data
    n = batches * batch_size
    return SplitData(images=data.images[:n], index=data.index[:n], paths=data.paths[:n],
                     labels=None if data.labels is None else data.labels[:n])


def _start_point(cfg: DictConfig, task: str, method: str, point: GridPoint,
                 inputs: _JobInputs) -> _PointRun:
    """Build one point's model as the protocol attaches its method, and its training run (on
    cached features when only the head trains and the protocol caches them)."""
    from torch import nn

    from vpeft.methods import count_trainable
    from vpeft.models.backbone import study_backbone
    from vpeft.train.features import HeadProbe, head_only
    from vpeft.train.loop import Run

    protocol, phase, seed = inputs.protocol, inputs.phase, inputs.seed
    store = MethodRuns.of(cfg, task, method)
    out_dir = (store.grid(point.id) if phase == "grid" else store.final(seed)).path
    model = study_backbone(cfg.model, int(inputs.manifest["num_classes"]), seed=seed,
                           # a grid may sweep drop_path under optim (the many-shot study does)
                           drop_path=float(point.optim.get("drop_path", cfg.train.drop_path)))
    protocol.attach(model, method, point.hparams)
    model.to(inputs.device)
    counts = count_trainable(model)
    normaliser = protocol.normaliser(model)
    settings = protocol.settings(point.optim["lr"], point.optim["weight_decay"])
    desc = f"{task}/{method}/" + (point.id if phase == "grid" else out_dir.name)
    log.info("%s: %d trainable parameters (%d with head) of %d; training on %s (%d images)",
             desc, counts["trainable_params"], counts["trainable_params_with_head"],
             counts["total_params"], PHASES[phase][0], len(inputs.images))
    # A preempted or killed run resumes from here when it is run again (SLURM requeue, retry).
    resume = out_dir / RESUME_CHECKPOINT
    if not (inputs.cache_features and head_only(model)):
        run = Run(model, normaliser, inputs.images, inputs.labels, settings, seed=seed,
                  desc=desc, checkpoint=resume, augment=inputs.augment)
        return _PointRun(point, out_dir, desc, model, counts, settings, run, normaliser)
    train_features, eval_features, extract_s = _cached_features(point, model, normaliser,
                                                                settings, inputs)
    run = Run(HeadProbe(model), nn.Identity(), train_features, inputs.labels, settings,
              seed=seed, desc=desc, checkpoint=resume)
    return _PointRun(point, out_dir, desc, model, counts, settings, run, normaliser,
                     eval_features, {"used": True, "feature_dim": int(train_features.shape[1]),
                                     "extract_s": extract_s, "mode": "eval",
                                     "images": len(train_features) + len(eval_features)})


def _cached_features(point: GridPoint, model: nn.Module, normaliser: nn.Module,
                     settings: TrainSettings,
                     inputs: _JobInputs) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The frozen backbone's train and eval features, computed once for every head-only point
    with the same method hyper-parameters (the backbone is then the same function)."""
    from vpeft.train.features import extract_features

    key = json.dumps(dict(point.hparams), sort_keys=True, default=str)
    if key not in inputs.features:
        tic = time.perf_counter()
        inputs.features[key] = (
            extract_features(model, normaliser, inputs.images, settings.eval_batch_size,
                             precision=settings.precision),
            extract_features(model, normaliser, inputs.eval_images, settings.eval_batch_size,
                             transform=inputs.eval_transform, precision=settings.precision),
            time.perf_counter() - tic)
    return inputs.features[key]


def _finish_point(plan: StudyPlan, task: str, method: str, job: _PointRun, result: TrainResult,
                  inputs: _JobInputs, shared_s: float, fused_points: int,
                  timing: Mapping[str, float]) -> dict[str, Any]:
    """Predict the evaluation split and write the point's outputs, metrics.json last."""
    import torch

    from vpeft.methods import save_adapter
    from vpeft.train.loop import (device_description, effective_precision, peak_memory_bytes,
                                  top1, uses_fused_attention)

    cfg, phase, eval_data = plan.cfg, inputs.phase, inputs.eval_data
    eval_split = PHASES[phase][1]
    tic = time.perf_counter()
    logits = _predict_eval(job, inputs.eval_images, inputs.eval_transform)
    eval_s = time.perf_counter() - tic
    if result.status != "ok" or not torch.isfinite(logits).all():
        result.status = "diverged"
    val_top1 = top1(logits, eval_data.labels) if phase == "grid" and result.status == "ok" \
        else None
    meta = {"study": plan.name, "task": task, "point": job.point.id, "model": cfg.model.name,
            "num_classes": int(inputs.manifest["num_classes"])}
    if phase == "grid":
        write_parquet(job.out_dir / layout.PREDICTIONS,
                      predictions_table(eval_data.index, logits, eval_data.labels))
    else:
        write_parquet(job.out_dir / layout.TEST_LOGITS,
                      predictions_table(eval_data.index, logits, None))
    save_adapter(job.model, job.out_dir / layout.ADAPTER, extra=meta)
    wall_time_s = shared_s + time.perf_counter() - tic
    metrics = _record(
        plan, task, method, inputs.manifest, phase=phase, point=job.point.id, seed=inputs.seed,
        eval_split=eval_split if phase == "grid" else None, status=result.status,
        val_top1=val_top1, hparams=dict(job.point.hparams), optim=dict(job.point.optim),
        **job.counts, wall_time_s=wall_time_s, epochs=job.settings.epochs,
        steps=result.steps, train_images_per_s=result.images_per_s,
        # measured requests (vpeft.requests) are made from these
        eval_images_per_s=len(logits) / eval_s if eval_s > 0 and len(logits) else None,
        setup_s=timing["setup_s"], train_s=timing["train_s"],
        # the process's peak: a fused job's points share it (fused_points says how many)
        peak_memory_bytes=peak_memory_bytes(inputs.device),
        peak_host_rss_bytes=peak_memory_bytes(torch.device("cpu")),
        device=device_description(inputs.device), protocol=inputs.protocol.name,
        loss_curve=result.loss_curve, diverged_at=result.diverged_at,
        feature_cache=job.feature_cache,
        precision=effective_precision(inputs.device, job.settings.precision),
        fused_attention=uses_fused_attention(job.model), compiled=job.settings.compile,
        fused_points=fused_points,
        # only a rehearsal's metrics.json has the key: a real run's is unchanged
        **({"rehearsal": inputs.protocol.rehearsal()} if inputs.protocol.rehearsal() else {}))
    # last: its presence means it is complete
    RunDir(job.out_dir).write_metrics(RunMetrics.of(**metrics))
    (job.out_dir / RESUME_CHECKPOINT).unlink(missing_ok=True)
    log.info("%s: %s%s in %.1fs", job.desc, result.status,
             f", {eval_split} top-1 {val_top1:.2f}" if val_top1 is not None else "",
             metrics["wall_time_s"])
    return metrics


def _predict_eval(job: _PointRun, eval_images: "torch.Tensor", eval_transform) -> "torch.Tensor":
    """The evaluation split's logits, once, at the end of training, in batches of
    ``eval_batch_size`` (from the cached features when the head trained on them)."""
    from vpeft.train.features import predict_features
    from vpeft.train.loop import predict

    if job.eval_features is not None:
        return predict_features(job.run.model, job.eval_features, job.settings.eval_batch_size)
    return predict(job.model, job.normaliser, eval_images, job.settings.eval_batch_size,
                   transform=eval_transform, precision=job.settings.precision)


def _record(plan: StudyPlan, task: str, method: str, manifest: Mapping[str, Any], *, phase: str,
            **fields: Any) -> dict[str, Any]:
    """A run's metrics.json: what identifies it, its results (``fields``) and its provenance."""
    return {"study": plan.name, "task": task, "method": method, "point": fields.pop("point"),
            "group": manifest.get("group"), "phase": phase, "train_split": PHASES[phase][0],
            **fields, "config": to_plain(plan.cfg), "versions": versions(),
            "machine": machine.describe(plan.cfg.train.get("cpu_kernels", "native")),
            "git_commit": git_commit()}


def best_candidate(candidates: Sequence[dict[str, Any]], ties: str = "first") -> dict | None:
    """The candidate with the highest ``val_top1``; on ties the first in grid order (vpeft) or
    the last (``train.protocol.selection_ties: last``, as the public code picked)."""
    best = None
    for c in candidates:
        if best is None or c["val_top1"] > best["val_top1"] or \
                (ties == "last" and c["val_top1"] == best["val_top1"]):
            best = c
    return best


def select(plan: StudyPlan, task: str, method: str) -> dict[str, Any]:
    """Pick the grid point with the best last-epoch val200 top-1 (ties: first in grid order, or
    last with ``train.protocol.selection_ties: last``).

    Reads only the grid runs' metrics: test data plays no part in selection. The grid was
    trained with the first seed of train.seeds (``grid_seed``); every seed's final run uses the
    point chosen here.
    """
    cfg = plan.cfg
    ties = Protocol.from_config(cfg).switches["selection_ties"]
    store = MethodRuns.of(cfg, task, method)
    candidates = []
    for point, run in store.grid_runs(p.id for p in plan.points[method]):
        m = run.read_metrics()
        candidates.append({"point": point, "status": m.status, "val_top1": m.val_top1,
                           "hparams": m.hparams, "optim": m.optim})
    ok = [c for c in candidates if c["status"] == "ok" and c["val_top1"] is not None]
    best = best_candidate(ok, ties)
    selection = Selection.of(
        task=task, method=method, criterion=SELECTION_CRITERION, grid_seed=layout.seeds(cfg)[0],
        selection_ties=ties, best_point=best["point"] if best else None,
        best_val_top1=best["val_top1"] if best else None,
        candidates=[Candidate.of(**c) for c in candidates])
    if best is None:
        log.warning("%s/%s: every grid point diverged; the final run is recorded as diverged",
                    task, method)
    store.write_selection(selection)
    return selection.to_dict()


def check_seed(cfg, seed: int | None) -> int:
    """``seed`` (None: the first of train.seeds), which must be one of train.seeds."""
    seeds = layout.seeds(cfg)
    if seed is None:
        return seeds[0]
    if int(seed) not in seeds:
        raise UserError(f"--seed {seed}: not in train.seeds {seeds}")
    return int(seed)


def run_final(plan: StudyPlan, task: str, method: str, seed: int | None = None) -> dict[str, Any]:
    """Retrain the selected point on train800val200 with ``seed`` (default: the first of
    train.seeds) and predict the test images, into ``layout.final_dir(..., seed)``."""
    seed = check_seed(plan.cfg, seed)
    selection = MethodRuns.of(plan.cfg, task, method).read_selection()
    if selection.best_point is None:
        return _write_diverged_final(plan, task, method, seed)
    return run_point(plan, task, method, plan.point(method, selection.best_point), "final",
                     seed=seed)


def _write_diverged_final(plan: StudyPlan, task: str, method: str, seed: int) -> dict[str, Any]:
    """Every grid point diverged: record the final run as diverged, with empty outputs."""
    import torch
    from safetensors.torch import save_file

    from vpeft.methods.checkpoint import METADATA_KEY

    cfg = plan.cfg
    final = MethodRuns.of(cfg, task, method).final(seed)
    out_dir = final.path
    manifest = read_manifest(layout.prepared_task(cfg, task))
    write_parquet(out_dir / layout.TEST_LOGITS, predictions_table(np.zeros(0, np.int64),
                                                              torch.zeros(0, 0), None))
    meta = {"study": plan.name, "task": task, "method": method, "point": None, "hparams": {},
            "model": cfg.model.name, "num_classes": manifest["num_classes"]}
    with atomic_path(out_dir / layout.ADAPTER) as tmp:  # no tensors: nothing was trained
        save_file({}, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    write_json(out_dir / layout.ADAPTER_CONFIG, {**meta, "tensors": []})
    metrics = _record(
        plan, task, method, manifest, phase="final", point=None, seed=seed,
        eval_split=None, status="diverged", val_top1=None, hparams={}, optim={},
        trainable_params=None, trainable_params_with_head=None, total_params=None,
        wall_time_s=0.0, epochs=0, loss_curve=[], diverged_at=None, train_images_per_s=None,
        peak_memory_bytes=None, device=None, protocol=Protocol.from_config(cfg).name)
    final.write_metrics(RunMetrics.of(**metrics))
    return metrics


def evaluate_memory_mb(num_test: int, num_classes: int) -> int:
    """Memory (MB) for one ``vpeft evaluate`` (one method after another when several share the
    job): the interpreter and pyarrow (~600 MB, measured peaks of small tasks are below it) plus
    the test logits held about three times (the read table, the table with labels, the write
    buffer), with a 30 % margin: 1.5 GB for ImageNet val (50,000 x 1,000)."""
    if min(num_test, num_classes) < 0:
        raise ValueError(f"sizes must be >= 0, got {(num_test, num_classes)}")
    return math.ceil(1.3 * (600 + 3 * num_test * num_classes * 4 / 2**20))


def evaluate(plan: StudyPlan, task: str, method: str, seed: int | None = None) -> dict[str, Any]:
    """Score one seed's final test predictions (default: the first seed's): the only reader of
    test labels."""
    cfg = plan.cfg
    seed = check_seed(cfg, seed)
    run = MethodRuns.of(cfg, task, method).final(seed)
    final = run.path
    metrics = run.read_metrics()
    table = pq.ParquetFile(final / layout.TEST_LOGITS).read()  # read_table: +0.6 s of imports
    index, labels = read_test_labels(layout.prepared_task(cfg, task))
    by_index = dict(zip(index.tolist(), labels.tolist()))
    pred_index = table.column("index").to_numpy()
    # a rehearsal (metrics.json: rehearsal) predicted only its first batches of the test split
    wanted = set(pred_index.tolist()) <= set(by_index) if metrics.rehearsal else \
        set(by_index) == set(pred_index.tolist())
    if len(pred_index) and not wanted:
        raise ValueError(f"{final / layout.TEST_LOGITS}: predicted test indices do not match "
                         f"the test labels of task '{task}'")
    labels_aligned = np.array([by_index[i] for i in pred_index.tolist()], dtype=np.int64)
    table = table.add_column(1, "label", pa.array(labels_aligned, pa.int64()))
    test_top1 = (float(100.0 * np.mean(table.column("pred").to_numpy() == labels_aligned))
                 if metrics.status == "ok" else None)
    write_parquet(run.test_predictions_file, table)
    result = TestEval.of(task=task, method=method, point=metrics.point, seed=seed,
                         test_top1=test_top1, status=metrics.status,
                         # a rehearsal scored only its first batches, and says so
                         num_test=len(pred_index) if metrics.rehearsal else len(by_index),
                         **({"rehearsal": metrics.rehearsal} if metrics.rehearsal else {}))
    run.write_test_eval(result)
    log.info("%s/%s (%s): test top-1 %s", task, method, final.name,
             "diverged" if test_top1 is None else f"{test_top1:.2f}")
    return result.to_dict()


def study_metadata(plan: StudyPlan) -> dict[str, Any]:
    """Study description for the report: tasks with their group and class count."""
    from vpeft.kinds import study_kind

    kind = study_kind(plan.cfg)
    tasks = []
    for task in plan.tasks:
        manifest = read_manifest(layout.prepared_task(plan.cfg, task))
        tasks.append({"name": task, "group": manifest["group"],
                      "num_classes": manifest["num_classes"],
                      "description": kind.task_entry(task).description,
                      "content": manifest.get("content")})  # train800val200 vs train800 + val200
    study = plan.cfg.study
    # kind shapes the report (VTAB groups / many-shot datasets x sizes / robustness evaluation
    # sets); seeds says which final runs the report must find.
    meta = {"name": plan.name, "title": study.get("title", plan.name),
            "description": study.get("description", ""), "tasks": tasks,
            "methods": list(plan.methods),
            "kind": kind.name, "seeds": layout.seeds(plan.cfg)}
    meta.update(kind.report_metadata(plan.tasks))  # many-shot: dataset and size of every task
    return meta



def job_methods(plan: StudyPlan, methods: Sequence[str]) -> list[str]:
    """A job's methods (``--method``, repeatable: one process for several methods,
    train.methods_per_job), each a method of the study, none twice."""
    for method in methods:
        if method not in plan.points:
            raise UserError(f"--method {method!r}: not in study.methods {plan.methods}")
    if len(set(methods)) != len(methods):
        raise UserError(f"--method: a method is named twice in {list(methods)}")
    return list(methods)


def train_job(plan: StudyPlan, task: str, methods: Sequence[str], phase: str, *,
              seed: int | None = None, point_ids: Sequence[str] = (),
              all_points: bool = False) -> None:
    """``vpeft train``: the final runs (``phase='final'``, of ``seed``) of ``methods`` one after
    another, each as its own job would run it; or their grid points (``phase='grid'``):
    ``point_ids`` of one method, or ``all_points`` of each, a method's points trained together
    in one process (:func:`run_points`), each written as its solo run would be."""
    if phase == "final":
        for method in methods:
            run_final(plan, task, method, seed=seed)
        return
    if seed is not None:
        raise UserError("vpeft train --phase grid: no --seed; the grid is searched once, "
                        "with the first of train.seeds")
    if bool(point_ids) == bool(all_points):
        raise UserError("vpeft train --phase grid needs --point ID (repeatable) or --points all")
    if point_ids and len(methods) > 1:
        raise UserError("vpeft train --phase grid: --point names points of one --method; "
                        "with several methods use --points all")
    for method in methods:
        points = plan.points[method] if all_points else \
            [plan.point(method, point) for point in point_ids]
        if len({p.id for p in points}) != len(points):
            raise UserError(f"--point: a grid point is named twice in {list(point_ids)}")
        run_points(plan, task, method, points, "grid")

"""The study's protocol, one step per function (each is one CLI verb and one Snakemake rule).

grid point:  train on train800, score last-epoch top-1 on val200
select:      best val200 top-1 over the grid (diverged points skipped); never looks at test
final:       retrain the chosen point on train800val200, predict test images (no labels read)
evaluate:    the one place test labels are read: score the final predictions once
"""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import vpeft
from vpeft import layout
from vpeft.config import GridPoint, StudyPlan, to_plain
from vpeft.data.vtab import read_split, read_test_labels, read_manifest
from vpeft.io import atomic_path, read_json, write_json, write_parquet

if TYPE_CHECKING:
    import torch

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


def _logits_table(index: np.ndarray, logits: torch.Tensor, labels: np.ndarray | None) -> pa.Table:
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
    import torch

    from vpeft.methods import apply, count_trainable, save_adapter
    from vpeft.models.backbone import create_backbone, normalisation
    from vpeft.train.loop import Normaliser, TrainSettings, predict, resolve_device, top1, train

    cfg = plan.cfg
    train_split, eval_split = PHASES[phase]
    out_dir = layout.grid_dir(cfg, task, method, point.id) if phase == "grid" else \
        layout.final_dir(cfg, task, method)
    seed = int(cfg.train.seeds[0] if seed is None else seed)
    started = time.perf_counter()
    prepared = layout.prepared_task(cfg, task)
    manifest = read_manifest(prepared)
    num_classes = int(manifest["num_classes"])

    model = create_backbone(cfg.model.name, cfg.model.weights, num_classes,
                            kwargs=cfg.model.kwargs, drop_path=float(cfg.train.drop_path), seed=seed)
    apply(model, method, **point.hparams)
    device = resolve_device(cfg.train.get("device", "auto"))
    model.to(device)
    counts = count_trainable(model)
    mean, std = normalisation(model, cfg.model.mean, cfg.model.std)
    normaliser = Normaliser(mean, std, int(cfg.model.img_size))
    settings = TrainSettings.from_config(cfg.train, point.optim)

    train_data = read_split(prepared, train_split)
    desc = f"{task}/{method}/{point.id if phase == 'grid' else 'final'}"
    log.info("%s: %d trainable parameters (%d with head) of %d; training on %s (%d images)",
             desc, counts["trainable_params"], counts["trainable_params_with_head"],
             counts["total_params"], train_split, len(train_data.images))
    # A preempted or killed run resumes from here when it is run again (SLURM requeue, retry).
    resume = out_dir / RESUME_CHECKPOINT
    result = train(model, normaliser, torch.from_numpy(train_data.images),
                   torch.from_numpy(train_data.labels), settings, seed=seed, desc=desc,
                   checkpoint=resume)

    # Test labels are never loaded here: for the final run only the images are read.
    eval_data = read_split(prepared, eval_split)
    logits = predict(model, normaliser, torch.from_numpy(eval_data.images), settings.eval_batch_size)
    if result.status != "ok" or not torch.isfinite(logits).all():
        result.status = "diverged"
    val_top1 = top1(logits, eval_data.labels) if phase == "grid" and result.status == "ok" else None

    meta = {"study": plan.name, "task": task, "point": point.id, "model": cfg.model.name,
            "num_classes": num_classes}
    if phase == "grid":
        write_parquet(out_dir / layout.PREDICTIONS, _logits_table(eval_data.index, logits,
                                                                  eval_data.labels))
    else:
        write_parquet(out_dir / layout.TEST_LOGITS, _logits_table(eval_data.index, logits, None))
    save_adapter(model, out_dir / layout.ADAPTER, extra=meta)
    metrics = _record(
        plan, task, method, manifest, phase=phase, point=point.id, seed=seed,
        eval_split=eval_split if phase == "grid" else None, status=result.status,
        val_top1=val_top1, hparams=dict(point.hparams), optim=dict(point.optim), **counts,
        wall_time_s=time.perf_counter() - started, epochs=settings.epochs, steps=result.steps,
        device=str(device), train_images_per_s=result.images_per_s,
        loss_curve=result.loss_curve, diverged_at=result.diverged_at)
    write_json(out_dir / layout.METRICS, metrics)  # last: its presence means the run is complete
    resume.unlink(missing_ok=True)
    log.info("%s: %s%s in %.1fs", desc, result.status,
             f", val200 top-1 {val_top1:.2f}" if val_top1 is not None else "",
             metrics["wall_time_s"])
    return metrics


def _record(plan: StudyPlan, task: str, method: str, manifest: Mapping[str, Any], *, phase: str,
            **fields: Any) -> dict[str, Any]:
    """A run's metrics.json: what identifies it, its results (``fields``) and its provenance."""
    return {"study": plan.name, "task": task, "method": method, "point": fields.pop("point"),
            "group": manifest.get("group"), "phase": phase, "train_split": PHASES[phase][0],
            **fields, "config": to_plain(plan.cfg), "versions": versions(),
            "git_commit": git_commit()}


def select(plan: StudyPlan, task: str, method: str) -> dict[str, Any]:
    """Pick the grid point with the best last-epoch val200 top-1 (first in grid order on ties).

    Reads only the grid runs' metrics: test data plays no part in selection.
    """
    cfg = plan.cfg
    candidates = []
    for point in plan.points[method]:
        m = read_json(layout.grid_dir(cfg, task, method, point.id) / layout.METRICS)
        candidates.append({"point": point.id, "status": m["status"], "val_top1": m["val_top1"],
                           "hparams": m["hparams"], "optim": m["optim"]})
    ok = [c for c in candidates if c["status"] == "ok" and c["val_top1"] is not None]
    best = max(ok, key=lambda c: c["val_top1"]) if ok else None  # max keeps the first on ties
    selection = {"task": task, "method": method, "criterion": SELECTION_CRITERION,
                 "best_point": best["point"] if best else None,
                 "best_val_top1": best["val_top1"] if best else None, "candidates": candidates}
    if best is None:
        log.warning("%s/%s: every grid point diverged; the final run is recorded as diverged",
                    task, method)
    write_json(layout.selection_file(cfg, task, method), selection)
    return selection


def run_final(plan: StudyPlan, task: str, method: str) -> dict[str, Any]:
    """Retrain the selected point on train800val200 and predict the test images."""
    selection = read_json(layout.selection_file(plan.cfg, task, method))
    if selection["best_point"] is None:
        return _write_diverged_final(plan, task, method)
    return run_point(plan, task, method, plan.point(method, selection["best_point"]), "final")


def _write_diverged_final(plan: StudyPlan, task: str, method: str) -> dict[str, Any]:
    """Every grid point diverged: record the final run as diverged, with empty outputs."""
    import torch
    from safetensors.torch import save_file

    from vpeft.methods.checkpoint import METADATA_KEY

    cfg = plan.cfg
    out_dir = layout.final_dir(cfg, task, method)
    manifest = read_manifest(layout.prepared_task(cfg, task))
    write_parquet(out_dir / layout.TEST_LOGITS, _logits_table(np.zeros(0, np.int64),
                                                              torch.zeros(0, 0), None))
    meta = {"study": plan.name, "task": task, "method": method, "point": None, "hparams": {},
            "model": cfg.model.name, "num_classes": manifest["num_classes"]}
    with atomic_path(out_dir / layout.ADAPTER) as tmp:  # no tensors: nothing was trained
        save_file({}, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    write_json(out_dir / layout.ADAPTER_CONFIG, {**meta, "tensors": []})
    metrics = _record(
        plan, task, method, manifest, phase="final", point=None, seed=int(cfg.train.seeds[0]),
        eval_split=None, status="diverged", val_top1=None, hparams={}, optim={},
        trainable_params=None, trainable_params_with_head=None, total_params=None,
        wall_time_s=0.0, epochs=0, loss_curve=[], diverged_at=None)
    write_json(out_dir / layout.METRICS, metrics)
    return metrics


def evaluate(plan: StudyPlan, task: str, method: str) -> dict[str, Any]:
    """Score the final run's test predictions: the only reader of test labels."""
    cfg = plan.cfg
    final = layout.final_dir(cfg, task, method)
    metrics = read_json(final / layout.METRICS)
    table = pq.read_table(final / layout.TEST_LOGITS)
    index, labels = read_test_labels(layout.prepared_task(cfg, task))
    by_index = dict(zip(index.tolist(), labels.tolist()))
    pred_index = table.column("index").to_numpy()
    if len(pred_index) and set(by_index) != set(pred_index.tolist()):
        raise ValueError(f"{final / layout.TEST_LOGITS}: predicted test indices do not match "
                         f"the test labels of task '{task}'")
    labels_aligned = np.array([by_index[i] for i in pred_index.tolist()], dtype=np.int64)
    table = table.add_column(1, "label", pa.array(labels_aligned, pa.int64()))
    test_top1 = (float(100.0 * np.mean(table.column("pred").to_numpy() == labels_aligned))
                 if metrics["status"] == "ok" else None)
    write_parquet(final / layout.TEST_PREDICTIONS, table)
    result = {"task": task, "method": method, "point": metrics["point"], "test_top1": test_top1,
              "num_test": len(by_index), "status": metrics["status"]}
    write_json(final / layout.TEST_EVAL, result)
    log.info("%s/%s: test top-1 %s", task, method,
             "diverged" if test_top1 is None else f"{test_top1:.2f}")
    return result


def study_metadata(plan: StudyPlan) -> dict[str, Any]:
    """Study description for the report: tasks with their group and class count."""
    from vpeft.data.catalog import task_entry

    tasks = []
    for task in plan.tasks:
        manifest = read_manifest(layout.prepared_task(plan.cfg, task))
        tasks.append({"name": task, "group": manifest["group"],
                      "num_classes": manifest["num_classes"],
                      "description": task_entry(plan.cfg, task).description})
    study = plan.cfg.study
    return {"name": plan.name, "title": study.get("title", plan.name),
            "description": study.get("description", ""), "tasks": tasks,
            "methods": list(plan.methods)}


"""``vpeft check``: a whole study's inputs validated before anything is queued.

Run on the login node, it reads every task's lists and images (decoding them, writing nothing),
checks the weights file against the model, and counts the jobs the study will run and the disk
it will fill, so that what would fail after hours in the queue fails here in minutes::

    python -m vpeft check --study vtab1k -o study.data.root=/data/vtab-1k -o model.weights=/w/ViT-B_16.npz

Exit status 1 when any problem is found (each names its file, line or config key).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vpeft import jobs as jobs_of
from vpeft import layout
from vpeft.config import ConfigError, StudyPlan
from vpeft.errors import UserError
from vpeft.kinds import TaskCheck, study_kind
from vpeft.kinds.base import problems_of

log = logging.getLogger("vpeft.check")

SPLIT_COLUMNS = ("train800", "val200", "train800val200", "test")
# What only decoding finds, which `vpeft prepare` will still refuse: said, not left implicit.
SKIPPED_WITHOUT_DECODING = ("pixel duplicates not checked: --no-decode (nor whether every image "
                            "decodes; `vpeft prepare` checks both: run check without --no-decode "
                            "to see them first)")
FLOAT_BYTES = 4


@dataclass
class StudyCheck:
    study: str
    tasks: list[TaskCheck]
    weights: TaskCheck
    jobs: dict[str, int]
    disk_bytes: dict[str, int]
    other_weights: list[TaskCheck] = field(default_factory=list)  # CLIP weights, zero-shot head
    requests: list[str] = field(default_factory=list)  # what the training jobs will ask for
    skipped: list[str] = field(default_factory=list)  # checks not run, and why

    @property
    def problems(self) -> list[str]:
        return [p for t in (*self.tasks, self.weights, *self.other_weights) for p in t.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------------
# Data: the study kind's checks
# ---------------------------------------------------------------------------------------------

def check_tasks(plan: StudyPlan, decode: bool,
                progress: Callable[[int], Any] | None = None) -> list[TaskCheck]:
    """Every task's data checked by the study's kind. With ``decode``, in two passes: the
    structure of every task first (lists, counts: no pixels), which gives the number of images
    to write and decode, then every image handled under one progress bar for the whole study:
    ``progress(total)`` makes it (a context manager with ``update(n)``; default a tqdm bar
    with an ETA on a terminal, nothing elsewhere)."""
    from vpeft.data.decode import progress_bar, reporting_to

    tasks = list(plan.tasks)
    if plan.cfg.study.get("pretrain"):
        tasks.append(layout.SOURCE_TASK)
    kind = study_kind(plan.cfg)
    structure = kind.check_data(tasks, False)
    if not decode:
        return structure
    make = progress or (lambda total: progress_bar(total, f"{plan.name}: images"))
    with make(images_to_handle(structure)) as bar, reporting_to(bar.update):
        return kind.check_data(tasks, True)


def images_to_handle(structure: list[TaskCheck]) -> int:
    """The images decoding will read, every list entry of every task (and shift set) whose
    structure passed (a task refused before decoding reads none), and those written first
    into a scratch view (CIFAR-100's, from its pixel arrays)."""
    return sum(t.staged_images + sum(t.counts.values()) for t in structure if not t.problems)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def _check_weights(plan: StudyPlan) -> TaskCheck:
    from vpeft.models.backbone import check_weights

    cfg = plan.cfg
    result = TaskCheck("model.weights", None)
    weights = Path(str(cfg.model.weights))
    if cfg.study.get("pretrain") and not weights.exists():
        result.notes.append(f"{weights}: pretrained by the pipeline (rule pretrain)")
        return result
    try:
        info = check_weights(cfg.model.name, weights, cfg.model.get("kwargs") or {})
    except UserError as err:
        result.problems += problems_of(err)
        return result
    result.notes.append(f"{weights}: {info.get('format', '?')}, {info.get('tensors', '?')} tensors"
                        + (f", head of {info['file_classes']} classes (replaced per task)"
                           if info.get("file_classes") else ""))
    result.notes += list(info.get("notes") or [])
    return result


def _weight_file_problem(path: Path) -> str | None:
    """What makes ``path`` unusable as a weights file, read no further than its header."""
    from vpeft.data.listfile import file_problem

    problem = file_problem(path, "a weights file")
    if problem is not None:
        return problem
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                fh.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError
            return f"not a readable safetensors file ({str(exc).splitlines()[0]})"
    return None


def check_weight_files(plan: StudyPlan) -> list[TaskCheck]:
    """Every weights file the study names besides model.weights (its kind's ``weight_files``):
    present and readable, or written by a rule of the pipeline."""
    checks = []
    for key, path, rule in study_kind(plan.cfg).weight_files():
        result = TaskCheck(key, None)
        problem = _weight_file_problem(path)
        if problem == "file not found" and rule is not None:
            result.notes.append(f"{path}: written by the pipeline (rule {rule})")
        elif problem is not None:
            result.problems.append(f"{key}: {path}: {problem}")
        else:
            result.notes.append(f"{path}: present ({_human(path.stat().st_size)})")
        checks.append(result)
    return checks


# ---------------------------------------------------------------------------------------------
# Jobs and disk
# ---------------------------------------------------------------------------------------------

def count_jobs(plan: StudyPlan) -> dict[str, int]:
    """The Snakemake jobs of ``snakemake all`` for this study, by kind (the rules in rules/*.smk)."""
    cfg = plan.cfg
    tasks = len(plan.tasks)
    per_method = len(jobs_of.method_groups(plan))  # methods, or groups of train.methods_per_job
    seeds = len(cfg.train.seeds)
    jobs = {
        "grid training": tasks * jobs_of.grid_job_count(plan),
        "final training": tasks * per_method * seeds,
        "select": tasks * per_method,
        "evaluate": tasks * per_method * seeds,
        "analyze": tasks,
        "prepare": tasks,
        "report": 1,
    }
    if cfg.study.get("pretrain"):
        jobs["pretrain (synth + prepare + train)"] = 3
    jobs.update(study_kind(cfg).extra_jobs(tasks))  # synth, subsets
    return jobs


def _trainable_with_head(cfg: DictConfig, method: str, hparams: Mapping[str, Any],
                         classes: int, cache: dict) -> int:
    """Trainable parameters (head included) of ``method`` on the study's model with a
    ``classes``-way head. The model is built on the meta device (no memory, no weights) once per
    method and distinct *shape* hyper-parameters (:mod:`vpeft.hparams`: a rank, a bottleneck,
    not a scale or a dropout), not once per grid point or task: the head is a linear layer, so its
    size is ``classes`` times its size per class, and the rest does not depend on the classes.
    (Built per task and point, the paper's study took minutes: 1,785 ViT-B/16 builds; per point,
    129; per shape, 42.)"""
    key = (method, _shape_key(method, hparams))
    if key not in cache:
        cache[key] = _trainable_split(cfg, method, hparams, classes)
    without_head, head_per_class = cache[key]
    if head_per_class is None:  # a head not linear in its classes: count this one as built
        return _trainable_split(cfg, method, hparams, classes, whole=True)[0]
    return without_head + head_per_class * classes


def _shape_key(method: str, hparams: Mapping[str, Any]) -> tuple:
    """The hyper-parameters of ``hparams`` that can change the trainable count: the method's
    declared shape ones, or all of them for a method :mod:`vpeft.hparams` does not declare."""
    from vpeft.hparams import declared

    spec = declared(method)
    names = sorted(hparams) if spec is None else [k for k in sorted(hparams) if k in spec.shape]
    return tuple((k, str(hparams[k])) for k in names)


def _trainable_split(cfg: DictConfig, method: str, hparams: Mapping[str, Any], classes: int, *,
                     whole: bool = False) -> tuple[int, int | None]:
    """(trainable parameters without the head, the head's trainable parameters per class, None
    when they are not a multiple of ``classes``); ``whole``: (with the head, None)."""
    import torch

    from vpeft import methods
    from vpeft.models.backbone import WeightsError, create_backbone

    kwargs = dict(cfg.model.get("kwargs") or {})
    with torch.device("meta"):
        try:  # timm's weight init is most of a meta build (0.4 s of 0.5 s for ViT-B): counts need none
            model = create_backbone(cfg.model.name, None, classes,
                                    kwargs={**kwargs, "weight_init": "skip"})
        except WeightsError:  # a model without timm's weight_init argument: as configured
            model = create_backbone(cfg.model.name, None, classes, kwargs=kwargs)
        methods.apply(model, method, **dict(hparams))
    counts = methods.count_trainable(model)
    if whole:
        return counts["trainable_params_with_head"], None
    head = counts["trainable_params_with_head"] - counts["trainable_params"]
    return counts["trainable_params"], (head // classes if head % classes == 0 else None)


def estimate_disk(plan: StudyPlan, tasks: list[TaskCheck]) -> dict[str, int]:
    """Bytes the study writes: prepared images (uncompressed, an upper bound), every run's
    trainable tensors (float32; a final run counted at the grid's largest point) and its logits
    (val200 per grid point, test twice per final run and seed: logits and scored predictions)."""
    cfg = plan.cfg
    side = study_kind(cfg).image_side
    prepared = sum(n for t in tasks for n in t.counts.values()) * side * side * 3
    cache: dict = {}
    seeds = len(cfg.train.seeds)  # one final run per seed
    adapters = logits = 0
    for t in tasks:
        if t.task not in plan.tasks or t.classes is None:
            continue
        val, test = t.counts.get("val200", 0), t.counts.get("test", 0)
        for m in plan.methods:
            sizes = [_trainable_with_head(cfg, m, p.hparams, t.classes, cache) for p in plan.points[m]]
            adapters += FLOAT_BYTES * (sum(sizes) + seeds * max(sizes))  # grid + final runs
            logits += FLOAT_BYTES * t.classes * (val * len(sizes) + 2 * test * seeds)
    return {"prepared data": prepared, "run weights": adapters, "predictions": logits}


def check_method_hparams(plan: StudyPlan) -> None:
    """Every grid point's ``hparams`` against its method's typed config (:mod:`vpeft.methods`):
    an unknown hyper-parameter or a value out of range is a ConfigError naming the method file (or
    the study's grid block) and the allowed keys. Imports torch, so it runs where torch is loaded
    anyway (``vpeft check`` and the training jobs), not at every composition."""
    from vpeft.methods import MethodError, make_config

    for method in plan.methods:
        where = f"params/method/{method}.yaml"
        if OmegaConf.select(plan.cfg, f"study.grid.{method}.hparams", default=None) is not None:
            where += f" with study.grid.{method} of params/study/{plan.name}.yaml"
        typed = [o for o in plan.overrides if f".{method}.hparams" in o.split("=", 1)[0]]
        if typed:  # a value given on the command line: name it first
            where = f"the override {', '.join(map(repr, typed))} over {where}"
        for point in plan.points[method]:
            try:
                make_config(method, **dict(point.hparams))
            except MethodError as err:
                raise ConfigError(f"{where}: {err}") from None


def check_study(plan: StudyPlan, *, decode: bool = True,
                progress: Callable[[int], Any] | None = None) -> StudyCheck:
    check_method_hparams(plan)
    tasks = check_tasks(plan, decode, progress)
    weights = _check_weights(plan)
    return StudyCheck(plan.name, tasks, weights, count_jobs(plan), estimate_disk(plan, tasks),
                      check_weight_files(plan), planned_requests(plan),
                      [] if decode else [SKIPPED_WITHOUT_DECODING])


def planned_requests(plan: StudyPlan) -> list[str]:
    """The scheduler requests of the first task's training jobs, one line per method and phase
    (vpeft.requests: the calibration file, else the fallback constants, and which)."""
    from omegaconf import OmegaConf

    from vpeft.config import params_dir
    from vpeft.requests import Requests, table

    fallback = OmegaConf.load(params_dir() / "workflow.yaml").train_runtime_min
    requests = Requests.of(plan.cfg, fallback)
    if not plan.tasks:
        return []
    task = plan.tasks[0]
    source = (f"from {requests.path}" if requests.data is not None else
              f"no {requests.path}: fallback constants (train_runtime_min {fallback} of "
              "params/workflow.yaml per run)")
    out = [f"requests of {task}'s training jobs ({source}):"]
    for row in table(requests, plan, task):
        gpu = f", gpu_mem_mb {row['gpu_mem_mb']}" if "gpu_mem_mb" in row else ""
        out.append(f"  {row['method']:<12} {row['phase']:<5} {row['points']:>2} point(s): "
                   f"mem_mb {row['mem_mb']}, runtime {row['runtime']} min{gpu}")
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def format_check(check: StudyCheck) -> str:
    """The check as a table (one row per task) followed by its problems, jobs and disk."""
    splits = [s for s in SPLIT_COLUMNS if any(s in t.counts for t in check.tasks)]
    extra = sorted({s for t in check.tasks for s in t.counts} - set(splits))
    columns = ["task", "classes", *splits, *extra, "problems"]
    rows = [[t.task, "–" if t.classes is None else str(t.classes),
             *(str(t.counts[s]) if s in t.counts else "–" for s in (*splits, *extra)),
             str(len(t.problems)) if t.problems else "ok"] for t in check.tasks]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [f"study {check.study}", line(columns), line(["-" * w for w in widths]), *map(line, rows), ""]
    for t in (*check.tasks, check.weights, *check.other_weights):
        for note in t.notes:
            out.append(f"note    {t.task}: {note}")
        for problem in t.problems:
            out.append(f"PROBLEM {t.task}: {problem}")
    total = sum(check.jobs.values())
    out.append(f"jobs: {total} (" + ", ".join(f"{k} {v}" for k, v in check.jobs.items()) + ")")
    out.append(f"disk: {_human(sum(check.disk_bytes.values()))} ("
               + ", ".join(f"{k} {_human(v)}" for k, v in check.disk_bytes.items()) + ")")
    out.extend(check.requests)
    out.extend(f"SKIPPED {line}" for line in check.skipped)
    out.append("OK: nothing wrong found" if check.ok else
               f"{len(check.problems)} problem(s): fix them before queuing the study")
    return "\n".join(out)

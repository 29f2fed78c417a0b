"""Which tasks a study can use: the 19 VTAB-1K tasks, or the demo's synthetic ones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from vpeft.errors import UserError
from vpeft.layout import SOURCE_TASK


@dataclass(frozen=True)
class TaskEntry:
    name: str
    num_classes: int
    group: str
    description: str = ""


def task_entry(cfg: DictConfig, task: str) -> TaskEntry:
    """Class count and group of ``task`` under the study's data kind.

    ``study.task_info.<task>: {num_classes, group}`` declares a task vpeft does not know
    (a user's own dataset in the VTAB-1K layout).
    """
    declared = (cfg.study.get("task_info") or {}).get(task)
    if declared is not None:
        return TaskEntry(task, int(declared.num_classes), str(declared.group),
                         str(declared.get("description", "")))
    kind = cfg.study.data.kind
    if kind == "synthetic" or (kind == "manyshot" and task == SOURCE_TASK):  # a miniature's pretraining set
        from vpeft.data.synthetic import DEMO_TASKS, SOURCE_TASK as SOURCE

        known = {**DEMO_TASKS, SOURCE_TASK: SOURCE}
        if task not in known:
            raise UserError(f"study.tasks: '{task}' is not a synthetic demo task; known: "
                           f"{sorted(known)}")
        t = known[task]
        return TaskEntry(task, t.num_classes, t.group, f"{t.description} ({t.source})")
    if kind == "vtab":
        from vpeft.data.vtab import VTAB_TASKS

        if task not in VTAB_TASKS:
            raise UserError(f"study.tasks: '{task}' is not a VTAB-1K task; known: "
                           f"{sorted(VTAB_TASKS)}; declare others under study.task_info")
        t = VTAB_TASKS[task]
        return TaskEntry(task, t.num_classes, t.group)
    if kind == "manyshot" and task != SOURCE_TASK:
        from vpeft.data.manyshot import resolve_task

        ds = resolve_task(cfg, task).dataset
        return TaskEntry(task, ds.num_classes, ds.group, ds.description)
    raise UserError(f"study.data.kind: '{kind}' is not one of 'synthetic', 'vtab', 'manyshot'")


def split_sizes(cfg: DictConfig, task: str) -> dict[str, int | None]:
    """The split sizes ``task``'s lists must have: the study's ``study.data.split_sizes`` (800 /
    200 / 1000 for VTAB-1K), or any size (None) for the pretraining source set and many-shot
    tasks, whose sizes the data decides."""
    if task == SOURCE_TASK or cfg.study.data.kind == "manyshot":
        return dict.fromkeys(("train800", "val200", "train800val200", "test"))
    return dict(cfg.study.data.split_sizes)


def prepare_study_task(cfg: DictConfig, task: str) -> dict[str, Any]:
    """``vpeft prepare``: validate the study's raw ``task`` and write its Parquet shards, with the
    class count and group of :func:`task_entry`, the split sizes of :func:`split_sizes` and the
    study's image size; returns the manifest."""
    from vpeft import layout
    from vpeft.data.vtab import prepare_task

    entry = task_entry(cfg, task)
    manyshot = cfg.study.data.kind == "manyshot" and task != SOURCE_TASK
    sizes = split_sizes(cfg, task)
    # Many-shot images are stored larger than the model input (crops happen per batch).
    size = int(cfg.study.data.stored_size) if manyshot else int(cfg.model.img_size)
    return prepare_task(layout.raw_task(cfg, task), layout.prepared_task(cfg, task), task=task,
                        image_size=size, num_classes=entry.num_classes, group=entry.group,
                        split_sizes=sizes,
                        allow_duplicates=bool(cfg.study.data.get("allow_duplicates", False)))

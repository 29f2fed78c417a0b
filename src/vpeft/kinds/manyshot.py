"""Many-shot (``study.data.kind: manyshot``): each task is one dataset of
``study.data.datasets`` at one training-set size. `vpeft subsets` draws the task's subset once and
writes a VTAB-layout view of it (:mod:`vpeft.data.manyshot`), which is prepared like any task,
its images stored larger than the model input (crops happen per batch). The report plots
accuracy against training-set size, dataset by dataset."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import OmegaConf

from vpeft import layout
from vpeft.kinds.base import (MainColumns, ReportShape, StudyKind, TaskCheck, TaskEntry,
                              any_split_sizes, register)
from vpeft.kinds.synthetic import synthetic_entry


@register
class ManyShotKind(StudyKind):
    name: ClassVar[str] = "manyshot"
    data_kinds: ClassVar[tuple[str, ...]] = ("manyshot",)
    metadata_key: ClassVar[str | None] = "manyshot"
    report: ClassVar[ReportShape] = ReportShape(MainColumns.DATASET_SIZES, group_scopes=False,
                                                advice_scope="task")
    draws_subsets: ClassVar[bool] = True

    def known_tasks(self) -> list[str]:
        from vpeft.data.manyshot import dataset_specs, task_names

        return [*task_names(dataset_specs(self.cfg)), layout.SOURCE_TASK]

    def catalogue_entry(self, task: str) -> TaskEntry:
        if task == layout.SOURCE_TASK:  # the miniature's pretraining set
            return synthetic_entry(task)
        from vpeft.data.manyshot import resolve_task

        ds = resolve_task(self.cfg, task).dataset
        return TaskEntry(task, ds.num_classes, ds.group, ds.description)

    def raw_task(self, task: str) -> Path:
        if task == layout.SOURCE_TASK:
            return super().raw_task(task)
        return layout.view_dir(self.cfg, task)

    def split_sizes(self, task: str) -> dict[str, int | None]:
        return any_split_sizes()  # the dataset and the subset decide

    @property
    def image_side(self) -> int:
        return int(self.cfg.study.data.stored_size)

    # The miniature generates its datasets and its backbone's pretraining set (a real study has
    # neither, so the users' data can never be mistaken for something to generate).
    @property
    def generates_data(self) -> bool:
        from vpeft.data.manyshot import dataset_specs

        return self.cfg.study.get("pretrain") is not None or any(
            self._generated(name) for name in dataset_specs(self.cfg))

    def _generated(self, dataset: str) -> bool:
        return OmegaConf.select(self.cfg, f"study.data.datasets.{dataset}.synthetic") is not None

    def _generated_root(self, task: str) -> Path | None:
        """Where rule synth writes ``task``'s raw data (its dataset's, or the pretraining set);
        None for the users' data."""
        from vpeft.data.manyshot import resolve_task

        if task == layout.SOURCE_TASK:
            return self.raw_task(task) if self.generates_data else None
        dataset = resolve_task(self.cfg, task).dataset.name
        return layout.data_root_dir(self.cfg, dataset) if self._generated(dataset) else None

    def synthesize_task(self, task: str, *, seed: int) -> None:
        from vpeft.demo.manyshot import generate_demo_dataset

        generate_demo_dataset(self.cfg, task, seed=seed)  # class folders or list files

    def extra_jobs(self, tasks: int) -> dict[str, int]:
        return {"subsets": tasks}

    def view_sources(self, task: str) -> list[str]:
        """The generated miniature dataset, or the users' files."""
        from vpeft.data.manyshot import resolve_task

        ds = resolve_task(self.cfg, task).dataset
        if self._generated(ds.name):
            return [str(layout.data_root_dir(self.cfg, ds.name))]
        parts = [ds.train] + ([ds.test] if ds.test is not None else [])
        return [str(path) for p in parts for path in p.inputs]

    def drawn_splits(self, task: str) -> bool:
        return task != layout.SOURCE_TASK  # vpeft draws every subset from the official parts

    def check_task(self, task: str, classes: int, decode: bool) -> TaskCheck:
        """The view `vpeft subsets` would write (the saved index file read, or drawn in memory
        as it would be), checked as `vpeft prepare` reads it. The miniature's generated
        datasets and pretraining set are noted until rule synth has written them."""
        from vpeft.data.manyshot import write_view

        generated = self._generated_root(task)
        pending = generated is not None and self.not_yet_generated(task, classes, generated)
        if pending:
            return pending
        if task == layout.SOURCE_TASK:
            return super().check_task(task, classes, decode)
        return self.check_staged(task, classes, decode, lambda out, unwritten: write_view(
            self.cfg, task, out, save_index=False, unwritten=unwritten))

    def augment_flips(self, task: str, default: Sequence[str]) -> tuple[str, ...]:
        from vpeft.data.manyshot import resolve_task

        return tuple(resolve_task(self.cfg, task).dataset.flips)

    def report_metadata(self, tasks: Sequence[str]) -> dict[str, Any]:
        from vpeft.data.manyshot import report_metadata

        return {"manyshot": report_metadata(self.cfg, tasks)}  # dataset and size of every task

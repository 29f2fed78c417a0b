"""Robustness (a ``study.robustness`` section; ``study.data.kind: imagenet``): a CLIP image tower
fine-tuned from its zero-shot head on few-shot ImageNet, scored on ImageNet and its distribution
shifts, with WiSE-FT (:mod:`vpeft.robustness`, rules/robustness.smk). Its task is declared under
``study.task_info``; the offline miniature's data is the synthetic demo's
(``study.data.kind: synthetic``: the pretraining source set is generated), so the kind of the
data answers for the catalogue and the generated data. The report has one in-distribution block.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from omegaconf import OmegaConf

from vpeft import layout
from vpeft.errors import UserError
from vpeft.kinds.base import (MainColumns, ReportShape, StudyKind, TaskCheck, TaskEntry,
                              data_kind_of, problems_of, register)


@register
class RobustnessKind(StudyKind):
    name: ClassVar[str] = "robustness"
    data_kinds: ClassVar[tuple[str, ...]] = ("imagenet",)
    section: ClassVar[str | None] = "robustness"
    metadata_key: ClassVar[str | None] = "robustness"
    report: ClassVar[ReportShape] = ReportShape(MainColumns.IN_DISTRIBUTION, group_scopes=False,
                                                advice_scope="task")

    @cached_property
    def data(self) -> StudyKind | None:
        """The kind of the study's data when it is another kind's (the miniature: synthetic);
        None for ImageNet, which has no catalogue of its own."""
        kind = data_kind_of(self.cfg)
        return None if kind is type(self) else kind(self.cfg)

    @property
    def evaluates_shifts(self) -> bool:
        return self.cfg.study.get(self.section) is not None

    def known_tasks(self) -> list[str]:
        return self.data.known_tasks() if self.data is not None else []

    def catalogue_entry(self, task: str) -> TaskEntry:
        if self.data is not None:
            return self.data.catalogue_entry(task)
        raise UserError(f"study.tasks: '{task}' is not declared under study.task_info "
                        f"(study.data.kind '{self.cfg.study.data.kind}' has no task catalogue)")

    @property
    def generates_data(self) -> bool:
        return self.data is not None and self.data.generates_data

    def synthesize_task(self, task: str, *, seed: int) -> None:
        if self.data is None:
            super().synthesize_task(task, seed=seed)
        else:
            self.data.synthesize_task(task, seed=seed)

    def extra_jobs(self, tasks: int) -> dict[str, int]:
        return self.data.extra_jobs(tasks) if self.data is not None else {}

    def drawn_splits(self, task: str) -> bool:
        return task != layout.SOURCE_TASK  # imagenet-split draws the few-shot split

    def weight_files(self) -> list[tuple[str, Path, str | None]]:
        section = self.cfg.study.get(self.section)
        if section is None:
            return []
        miniature = section.get("miniature") is not None
        clip = OmegaConf.select(self.cfg, f"study.{self.section}.clip.weights", default=None)
        files = [("model.init_head", Path(str(self.cfg.model.init_head)), "zeroshot-head")]
        if clip is not None:
            files.insert(0, (f"study.{self.section}.clip.weights", Path(str(clip)),
                             "fit-clip" if miniature else None))
        return files

    def check_task(self, task: str, classes: int, decode: bool) -> TaskCheck:
        if self.cfg.study.get(self.section) is None:
            return super().check_task(task, classes, decode)
        from vpeft.robustness.inputs import write_split_view

        return self.check_staged(task, classes, decode, lambda out, _: write_split_view(self.cfg, out))

    def check_data(self, tasks: Sequence[str], decode: bool) -> list[TaskCheck]:
        """The few-shot task view `imagenet-split` would write (its test part: the
        in-distribution set), checked as `prepare` reads it, and every shift set as
        `prepare-shift` reads it (the miniature's are generated)."""
        section = self.cfg.study.get(self.section)
        if section is None:
            return super().check_data(tasks, decode)
        if section.get("miniature") is not None:
            return [TaskCheck("robustness miniature", None,
                              notes=["its image trees are written by the pipeline (robust-synth)"])]
        from vpeft.robustness.inputs import shift_checks

        checks = super().check_data(tasks, decode)  # each task through check_task, above
        for name, check in shift_checks(self.cfg):
            result = TaskCheck(name, None)
            try:
                result.counts, result.classes = check(decode)
            except UserError as err:
                result.problems += problems_of(err)
            checks.append(result)
        return checks

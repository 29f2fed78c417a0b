"""VTAB-1K (``study.data.kind: vtab``): the 19 tasks of the users' VTAB-1K root, each in the
VTAB-1K list-file layout, reported by VTAB group."""
from __future__ import annotations

from typing import ClassVar

from vpeft.errors import UserError
from vpeft.kinds.base import MainColumns, ReportShape, StudyKind, TaskEntry, register

# Columns, statistics and advice per VTAB group and over all tasks (VTAB-1K and its miniature).
VTAB_GROUPS_REPORT = ReportShape(MainColumns.VTAB_GROUPS, group_scopes=True,
                                 advice_scope="VTAB group and for the mean over all tasks")


@register
class VtabKind(StudyKind):
    name: ClassVar[str] = "vtab"
    data_kinds: ClassVar[tuple[str, ...]] = ("vtab",)
    report: ClassVar[ReportShape] = VTAB_GROUPS_REPORT

    def known_tasks(self) -> list[str]:
        from vpeft.data.vtab import VTAB_TASKS

        return list(VTAB_TASKS)

    def catalogue_entry(self, task: str) -> TaskEntry:
        from vpeft.data.vtab import VTAB_TASKS

        if task not in VTAB_TASKS:
            raise UserError(f"study.tasks: '{task}' is not a VTAB-1K task; known: "
                            f"{sorted(VTAB_TASKS)}; declare others under study.task_info")
        t = VTAB_TASKS[task]
        return TaskEntry(task, t.num_classes, t.group)

"""How the report is laid out across pages and how wide tables are cut to fit a window.

The report is ``index.html`` (the landing page: the study's answers in a few screens) plus one
self-contained page per task, ``tasks/<task>.html``, holding that task's detail (mistake heatmaps,
confidence, tuning landscapes, per-run settings). The Snakemake report rule declares the same
paths through :func:`task_page`, so the two can never disagree.
"""
from __future__ import annotations

import re
from dataclasses import replace

from vpeft.report.view import VtabTable

__all__ = ["TASK_DIR", "task_anchor", "task_page", "split_columns"]

TASK_DIR = "tasks"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _slug(task: str) -> str:
    """``task`` as a file name and URL fragment: safe characters kept, any other one (and a
    leading dot) written as ``~<hex code>``, so distinct names stay distinct."""
    slug = _UNSAFE.sub(lambda m: f"~{ord(m.group()):x}", task)
    return "~2e" + slug[1:] if slug.startswith(".") else slug


def task_page(task: str) -> str:
    """The task page's path relative to the report directory (and its href from index.html)."""
    return f"{TASK_DIR}/{_slug(task)}.html"


def task_anchor(task: str) -> str:
    """The id of the task's row on the landing page (``index.html#task-<task>``)."""
    return f"task-{_slug(task)}"


def split_columns(table: VtabTable, max_columns: int) -> list[VtabTable]:
    """``table`` cut into parts of at most ``max_columns`` value columns, each repeating the row
    labels, so a wide table (19 tasks + means + parameters) fits a window without scrolling.

    Whole column groups are kept together when they fit; a group wider than a part is cut, its
    later pieces titled "(cont.)". The group means, the mean and the extra columns stay together
    in the last part. Every part's cells are the original Cell objects, in the original order.
    """
    tail = len(table.mean_groups) + int(table.show_mean) + len(table.extra_headers)
    pieces: list[tuple[str, list[str]]] = []
    for title, tasks in table.groups:
        for i in range(0, max(len(tasks), 1), max_columns):
            pieces.append((title if i == 0 else f"{title} (cont.)", tasks[i:i + max_columns]))
    parts: list[list[tuple[str, list[str]]]] = [[]]
    for piece in pieces:
        if parts[-1] and sum(len(t) for _, t in parts[-1]) + len(piece[1]) > max_columns:
            parts.append([])
        parts[-1].append(piece)
    if sum(len(t) for _, t in parts[-1]) + tail > max_columns and parts[-1]:
        parts.append([])
    out, start = [], 0
    for k, groups in enumerate(parts):
        last = k == len(parts) - 1
        width = sum(len(t) for _, t in groups) + (tail if last else 0)

        def cut(rows, a=start, b=start + width):
            return [replace(r, cells=r.cells[a:b]) for r in rows]

        out.append(replace(
            table, groups=groups, rows=cut(table.rows), footer=cut(table.footer),
            mean_groups=table.mean_groups if last else [],
            show_mean=table.show_mean and last,
            extra_headers=table.extra_headers if last else []))
        start += width
    return out

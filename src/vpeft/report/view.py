"""The report's view model: cells, rows and tables the template only loops over, and the
number formats they use (shared by the section modules)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import markupsafe
from markupsafe import Markup

from vpeft.report.collect import GROUPS
from vpeft.report.numbers import fmt_acc, round1

GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}


@dataclass
class Cell:
    """One <td>: display text plus the raw value and the attributes that identify it."""

    text: str
    value: str | None = None          # repr() of the raw number, or the raw string
    column: str = ""
    task: str | None = None
    method: str | None = None
    classes: list[str] = field(default_factory=list)
    title: str | None = None
    note: str | None = None           # a second, smaller line (published deltas)
    delta: str | None = None          # raw delta for data-delta

    @property
    def css(self) -> str:
        return " ".join(self.classes)


def td(c: Cell) -> Markup:
    """The ``<td>`` of a cell, every value escaped as Jinja's autoescape would.

    Built in Python rather than as a template macro: a VTAB-1K report has some 60,000 cells
    and a macro call per cell was most of the page rendering time.
    """
    esc = markupsafe.escape
    parts = [f'<td class="{esc(c.css)}"' if c.css else "<td", f' data-column="{esc(c.column)}"']
    for name, value in (("data-value", c.value), ("data-task", c.task),
                        ("data-method", c.method), ("data-delta", c.delta)):
        if value is not None:
            parts.append(f' {name}="{esc(value)}"')
    if c.title:
        parts.append(f' title="{esc(c.title)}"')
    text = esc(c.text)
    parts.append(f"><b>{text}</b>" if "best" in c.classes else f">{text}")
    if c.note:
        parts.append(f'<span class="note">{esc(c.note)}</span>')
    parts.append("</td>")
    return Markup("".join(parts))


@dataclass
class Row:
    label: str
    cells: list[Cell]
    method: str | None = None
    task: str | None = None


@dataclass
class VtabTable:
    """Rows = methods; columns = tasks grouped by VTAB group, group means, mean, extras."""

    groups: list[tuple[str, list[str]]]     # (group title, [task, ...]) for groups present
    mean_groups: list[str]                  # group titles in the group-mean block
    extra_headers: list[str]
    rows: list[Row]
    task_labels: dict[str, str] = field(default_factory=dict)  # column header per task
    show_mean: bool = True                  # the "Mean" (over all tasks) column
    footer: list[Row] = field(default_factory=list)            # e.g. the chance-level row


def exact_text(value: Any) -> str | None:
    """Exact text form of a table value: repr() round-trips floats bit for bit."""
    if value is None:
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def fmt_delta(value: float | None) -> str:
    return "–" if value is None else f"{round1(value):+.1f}".replace("-", "−")


def fmt_params(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e5:  # the study's convention: millions
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} K" if value >= 1e3 else f"{value:.0f}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} %"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.2f} h"


def fmt_hparam(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (str, int, bool)) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True)


def mark_best(rows: list[Row], higher_is_better: bool = True) -> None:
    """Mark the best raw value of each column (all of them on a tie) with class ``best``."""
    if not rows:
        return
    for col in range(len(rows[0].cells)):
        cells = [r.cells[col] for r in rows]
        values = [(c, float(c.value)) for c in cells
                  if c.value is not None and "rankable" in c.classes]
        if not values:
            continue
        best = (max if higher_is_better else min)(v for _, v in values)
        for c, v in values:
            if v == best:
                c.classes.append("best")


def acc_cell(row: Mapping[str, Any] | None, task: str, method: str) -> Cell:
    if row is None or row["status"] == "missing":
        return Cell("–", column="test_top1", task=task, method=method,
                    classes=["num", "missing"], title="run missing")
    if row["status"] == "diverged":
        return Cell("diverged", column="test_top1", task=task, method=method,
                    classes=["num", "diverged"])
    value = row["test_top1"]
    return Cell(fmt_acc(value), exact_text(value), "test_top1", task, method, ["num", "rankable"])


def mean_cell(value: float | None, column: str, method: str,
               why_missing: str = "not every task of this column has a test accuracy") -> Cell:
    classes = ["num", "mean-col"] + (["rankable"] if value is not None else [])
    title = None if value is not None else why_missing
    return Cell(fmt_acc(value), exact_text(value), column, None, method, classes, title)


def present_groups(tasks: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    return [(g, [t for t, tg in tasks if tg == g]) for g in GROUPS
            if any(tg == g for _, tg in tasks)]


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """Methods not dominated in ``{method: (params, accuracy)}``.

    ``b`` dominates ``a`` when it has at least ``a``'s accuracy with at most its parameters and is
    strictly better in one of the two.
    """
    front = set()
    for a, (pa_, aa) in points.items():
        dominated = any(pb <= pa_ and ab >= aa and (pb < pa_ or ab > aa)
                        for b, (pb, ab) in points.items() if b != a)
        if not dominated:
            front.add(a)
    return front

"""The published-reference section: the published test top-1 of the study's tasks (from a
``method,task,test_top1`` CSV) beside ours, with the delta (ours - published) per task and its
mean over the tasks both have."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping

from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.numbers import fmt_acc
from vpeft.report.view import GROUP_TITLES, Cell, Row, VtabTable, exact_text, fmt_delta, \
    mark_best, mean_cell, present_groups

__all__ = ["PUBLISHED_TITLE", "published_csv", "published_table", "read_published"]

PUBLISHED_TITLE = "Published (ViT-B/16 IN-21K)"
REFERENCE_DIR = Path(__file__).parent / "reference"  # published tables shipped with vpeft


def published_csv(name: str | None, key: str = "study.published") -> Path | None:
    """``study.published`` (or the config ``key`` given, e.g. ``study.published_grid``): a CSV
    path, or the name of one shipped in vpeft/report/reference."""
    from vpeft.errors import UserError

    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        path = REFERENCE_DIR / name
    if not path.is_file():
        raise UserError(f"{key}: {name!r} is neither a file nor a CSV shipped with vpeft")
    return path


_NOT_COVERED = "the published reference does not cover every task of this column"


def read_published(path: Path) -> dict[tuple[str, str], float | None]:
    """``{(task, method): test_top1}`` from a ``method,task,test_top1`` CSV."""
    out: dict[tuple[str, str], float | None] = {}
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"method", "task", "test_top1"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: header must contain {sorted(need)}, "
                             f"got {reader.fieldnames}")
        for line, rec in enumerate(reader, start=2):
            text = (rec["test_top1"] or "").strip()
            try:
                value = float(text) if text else None
            except ValueError as err:
                raise ValueError(f"{path}:{line}: test_top1 {text!r} is not a number") from err
            out[(rec["task"].strip(), rec["method"].strip())] = value
    return out


def published_table(results: StudyResults, study: Mapping, published: Mapping[
        tuple[str, str], float | None]) -> VtabTable | None:
    """The published numbers for the study's tasks, with deltas (ours - published)."""
    tasks, methods = study_tasks(study), study_methods(study)
    # Rows for tasks outside the study (the CSV covers all 19 VTAB tasks) are ignored.
    published_tasks = {t for t, _ in published}
    shown = [(t, g) for t, g in tasks if t in published_tasks]
    rows_methods = [m for m in methods if any((t, m) in published for t, _ in shown)]
    if not shown or not rows_methods:
        return None
    ours = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    groups = present_groups(shown)
    rows: list[Row] = []
    for method in rows_methods:
        cells: list[Cell] = []
        deltas: list[float] = []
        for _, ts in groups:
            for t in ts:
                value = published.get((t, method))
                cell = Cell(fmt_acc(value), exact_text(value), "published_top1", t, method,
                            ["num"] + (["rankable"] if value is not None else ["missing"]))
                mine = ours.get((t, method))
                if value is not None and mine is not None and mine["test_top1"] is not None:
                    d = mine["test_top1"] - value
                    deltas.append(d)
                    cell.note, cell.delta = f"Δ {fmt_delta(d)}", repr(d)
                cells.append(cell)
        for g, _ in groups:
            all_group = [t for t, tg in tasks if tg == g]
            vals = [published.get((t, method)) for t in all_group]
            mean = (math.fsum(vals) / len(vals)
                    if all(v is not None for v in vals) else None)  # type: ignore[arg-type]
            cells.append(mean_cell(mean, g, method, _NOT_COVERED))
        vals = [published.get((t, method)) for t, _ in tasks]
        mean = math.fsum(vals) / len(vals) if all(v is not None for v in vals) else None  # type: ignore[arg-type]
        cells.append(mean_cell(mean, "mean", method, _NOT_COVERED))
        d_mean = math.fsum(deltas) / len(deltas) if deltas else None
        cells.append(Cell(fmt_delta(d_mean), exact_text(d_mean),
                          "delta_mean", None, method, ["num"],
                          title=f"mean of (ours − published) over {len(deltas)} task(s)"))
        rows.append(Row(method, cells, method=method))
    mark_best(rows)
    return VtabTable(
        groups=[(GROUP_TITLES[g], ts) for g, ts in groups],
        mean_groups=[GROUP_TITLES[g] for g, _ in groups],
        extra_headers=["Δ ours − published (mean over common tasks)"],
        rows=rows,
    )

"""A task's page (``tasks/<task>.html``): its column of the main table, its "Different mistakes"
and "High-confidence predictions" sections, seed noise, the selected hyper-parameters of every
run, the whole grid with the tuning landscapes, and each run's resolved config as a difference
from the one shown.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

from vpeft.layout import REPORT_INDEX
from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.landscape import landscape_inputs
from vpeft.report.maintable import main_table
from vpeft.report.mistakes import analysis_sections
from vpeft.report.numbers import fmt_acc
from vpeft.report.pages import task_anchor, task_page
from vpeft.report.provenance import config_differences, representative_config, \
    runs_in_study_order
from vpeft.report.reproduction import PAIR_HEADERS, Reproduction, reproduction_tasks
from vpeft.report.seednoise import seed_noise_view
from vpeft.report.view import GROUP_TITLES, Cell, Row, VtabTable, exact_text, fmt_hparam, \
    fmt_seconds

__all__ = ["task_contexts"]


def _hparam_rows(results: StudyResults, study: Mapping) -> list[Row]:
    """One row per task x method with the selected grid point and its settings."""
    rows: list[Row] = []
    for task, method, r in runs_in_study_order(results, study):
        hp = json.loads(r["hparams_json"]) if r["hparams_json"] else {}
        hp_text = ", ".join(f"{k}={fmt_hparam(v)}" for k, v in sorted(hp.items())) or "–"

        def cell(text: str, value: Any, column: str, *classes: str) -> Cell:
            return Cell(text, exact_text(value), column, task, method, list(classes))

        rows.append(Row(task, [
            cell(method, method, "method"),
            cell(r["status"], r["status"], "status", f"status-{r['status']}"),
            cell(r["point"] or "–", r["point"], "point", "mono"),
            cell("–" if r["lr"] is None else f"{r['lr']:g}", r["lr"], "lr", "num"),
            cell("–" if r["weight_decay"] is None else f"{r['weight_decay']:g}",
                 r["weight_decay"], "weight_decay", "num"),
            cell(hp_text, r["hparams_json"], "hparams_json", "mono"),
            cell(fmt_acc(r["val_top1"]), r["val_top1"], "val_top1", "num"),
            cell("–" if r["num_grid_points"] is None else str(r["num_grid_points"]),
                 r["num_grid_points"], "num_grid_points", "num"),
            cell("–" if r["num_diverged"] is None else str(r["num_diverged"]),
                 r["num_diverged"], "num_diverged", "num"),
            cell(fmt_seconds(r["wall_time_s"]), r["wall_time_s"], "wall_time_s", "num"),
            cell(fmt_seconds(r["grid_wall_time_s"]), r["grid_wall_time_s"], "grid_wall_time_s",
                 "num"),
        ], method=method, task=task))
    return rows


def _grid_rows(results: StudyResults) -> list[Row]:
    rows: list[Row] = []
    for g in results.grid.to_pylist():
        task, method = g["task"], g["method"]
        rows.append(Row(task, [
            Cell(method, method, "method", task, method),
            Cell(g["point"], g["point"], "point", task, method,
                 ["mono"] + (["selected"] if g["selected"] else [])),
            Cell(g["status"], g["status"], "status", task, method, [f"status-{g['status']}"]),
            Cell(fmt_acc(g["val_top1"]), exact_text(g["val_top1"]), "val_top1", task, method, ["num"]),
            Cell(fmt_seconds(g["wall_time_s"]), exact_text(g["wall_time_s"]), "wall_time_s", task,
                 method, ["num"]),
        ], method=method, task=task))
    return rows


def _task_results_rows(main: VtabTable, task: str) -> list[Row]:
    """The main table's cells of one task (one row per method), for its page."""
    flat = [t for _, ts in main.groups for t in ts]
    if task not in flat:
        return []
    col = flat.index(task)
    return [Row(r.label, [r.cells[col]], method=r.method, task=task)
            for r in main.rows + main.footer]


def task_contexts(results: StudyResults, study: Mapping, common: Mapping,
                  reproduction: Reproduction | None = None) -> Iterator[tuple[str, dict]]:
    """(path relative to the report dir, template context) of every task page: ``common``
    (what every page shares) and the page's own; ``reproduction``: the runs against the
    study's published grid, if it declares one (vpeft.report.reproduction)."""
    main = main_table(results, study)
    per_task = reproduction_tasks(reproduction, results, study)
    analysis = {a.task: a for a in analysis_sections(results, study)}
    landscapes = landscape_inputs(results, study)
    hparams, grid = _hparam_rows(results, study), _grid_rows(results)
    config = representative_config(results, study)
    diffs = config_differences(results, study, config)
    names = [t for t, _ in study_tasks(study)]
    for i, (task, group) in enumerate(study_tasks(study)):
        yield task_page(task), dict(common) | dict(
            task=task, group=GROUP_TITLES.get(group, ""),
            info=next((t for t in common["task_info"] if t["name"] == task), None),
            back=f"../{REPORT_INDEX}#{task_anchor(task)}",
            prev=(names[i - 1], "../" + task_page(names[i - 1])) if i > 0 else None,
            next=(names[i + 1], "../" + task_page(names[i + 1])) if i + 1 < len(names) else None,
            results_rows=_task_results_rows(main, task),
            analysis=analysis.get(task),
            seed_noise=seed_noise_view(results.seed_noise, task, study_methods(study)),
            hparams=[r for r in hparams if r.task == task],
            grid=[r for r in grid if r.task == task],
            landscapes=landscapes.get(task, []),   # inputs; drawn when the page is rendered (render.py)
            config=config,
            config_diffs=[r for r in diffs if r.task == task],
            reproduction=per_task.get(task),
            reproduction_headers=PAIR_HEADERS,
        )

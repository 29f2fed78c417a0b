"""Per-example test outcomes of a study's final runs and the statistics made from them: chance
levels, bootstrap intervals, significance tests and seed noise (chance, stats and seed_noise)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vpeft.report.tables import (CHANCE_SCHEMA, GROUPS, STATS_SCHEMA, RunDataError, report_shape,
                                 study_methods, study_tasks)


def _predictions_top1(table: pa.Table) -> tuple[float, int]:
    """Top-1 (%) and row count recomputed from the saved test predictions (``label``, ``pred``)."""
    n = table.num_rows
    if n == 0:
        return 0.0, 0
    # Compared in Arrow, not row by row in Python (6.2 M rows for VTAB-1K); a null on both
    # sides counts as a match, as the former Python comparison ``None == None`` did.
    labels, preds = table.column("label"), table.column("pred")
    same = pc.fill_null(pc.equal(labels, preds),
                        pc.and_(pc.is_null(labels), pc.is_null(preds)))
    correct = int(pc.sum(same).as_py() or 0)
    return 100.0 * correct / n, n


def _check_predictions(table: pa.Table, preds: Path, test_path: Path, test_top1: float,
                       num_test: int | None) -> None:
    """The reported test accuracy must be the one the saved predictions (``table``, read from
    ``preds``) give."""
    top1, n = _predictions_top1(table)
    if num_test is not None and n != num_test:
        raise RunDataError(f"{preds}: {n} rows but {test_path} says num_test={num_test}")
    # 1e-4 points absorbs float32 accumulation in the evaluator yet is far below one test
    # example (100 / 73728 for the largest VTAB test split), so a real mismatch still fails.
    if abs(top1 - test_top1) > 1e-4:
        raise RunDataError(f"{test_path}: test_top1={test_top1!r} but {preds} gives {top1!r}")


def _read_outcome(path: Path, check: tuple[Path, float, int | None] | None = None
                  ) -> tuple[Any, Any, Any]:
    """(index, label, pred) of one test_predictions.parquet, sorted by index (logits not read);
    with ``check`` (test_eval.json, test_top1, num_test) the file must reproduce that accuracy."""
    import numpy as np

    # ParquetFile, not pq.read_table: the same columns without the dataset layer, which costs
    # ~25 ms a file (and imports pandas once per process)
    table = pq.ParquetFile(path).read(columns=["index", "label", "pred"])
    if check is not None:
        _check_predictions(table, path, *check)
    index = table.column("index").to_numpy().astype(np.int64)
    order = np.argsort(index, kind="stable")
    return (index[order], table.column("label").to_numpy().astype(np.int64)[order],
            table.column("pred").to_numpy().astype(np.int64)[order])


def task_outcomes(task: str, num_classes: int | None,
                  files: Mapping[str, Sequence[tuple[int | None, Path]]],
                  checks: Mapping[Path, tuple[Path, float, int | None]] | None = None) -> Any:
    """Every method's and seed's per-example outcomes of one task, aligned on the test index
    (the same index and labels in every file, else :class:`RunDataError` naming both files).
    A file in ``checks`` must also reproduce its recorded test accuracy (:func:`_read_outcome`)."""
    import numpy as np

    from vpeft.report.uncertainty import TaskOutcomes

    ref: tuple[Path, Any, Any] | None = None
    out = None
    for method, runs in files.items():
        preds, seeds = [], []
        for seed, path in runs:
            index, labels, pred = _read_outcome(path, (checks or {}).get(path))
            if ref is None:
                ref = (path, index, labels)
                out = TaskOutcomes(task, labels, num_classes)
            elif not np.array_equal(index, ref[1]):
                raise RunDataError(f"test indices differ between {ref[0]} ({len(ref[1])} rows) "
                                   f"and {path} ({len(index)} rows)")
            elif not np.array_equal(labels, ref[2]):
                raise RunDataError(f"test labels differ between {ref[0]} and {path} "
                                   f"({int(np.sum(labels != ref[2]))} examples)")
            preds.append(pred)
            seeds.append(-1 if seed is None else int(seed))
        assert out is not None
        out.preds[method] = np.stack(preds)
        out.correct[method] = out.preds[method] == out.labels[None, :]
        out.seeds[method] = seeds
    return out


def study_scopes(study: Mapping) -> list[tuple[str, str, list[str]]]:
    """``(kind, scope, tasks)`` the statistics cover: every task; for VTAB studies also every
    group present and the mean over all tasks."""
    tasks = study_tasks(study)
    scopes = [("task", t, [t]) for t, _ in tasks]
    if report_shape(study).group_scopes:
        scopes += [("group", g, [t for t, tg in tasks if tg == g]) for g in GROUPS
                   if any(tg == g for _, tg in tasks)]
        scopes.append(("overall", "mean", [t for t, _ in tasks]))
    return scopes


def statistics_from_outcomes(outcomes_per_task: Iterable[Any], study: Mapping, summary: pa.Table,
                             *, alpha: float | None = None, num_resamples: int | None = None
                             ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(chance, stats, seed_noise) from :class:`~vpeft.report.uncertainty.TaskOutcomes`, one
    task at a time (an iterator keeps only one task's per-example arrays alive)."""
    from vpeft.report.uncertainty import NUM_RESAMPLES

    num_resamples = NUM_RESAMPLES if num_resamples is None else num_resamples
    return assemble_statistics((task_statistics(o, num_resamples) for o in outcomes_per_task),
                               study, summary, alpha=alpha)


@dataclass
class TaskStatistics:
    """What the study's statistics need of one task once its per-example arrays are dropped."""

    scores: Any                        # vpeft.report.uncertainty.TaskScores
    noise_rows: list[dict[str, Any]]   # seed_noise.parquet rows
    chance_row: dict[str, Any]         # chance.parquet row


def task_statistics(outcomes: Any, num_resamples: int) -> TaskStatistics:
    """Bootstrap distributions, seed-noise rows and chance levels of one task's outcomes."""
    from vpeft.report.seednoise import seed_noise_rows
    from vpeft.report.uncertainty import score_task

    scores = score_task(outcomes, num_resamples)
    return TaskStatistics(scores, seed_noise_rows(outcomes),
                          {"task": outcomes.task, "num_classes": outcomes.num_classes,
                           "num_test": outcomes.num_test, "chance": scores.chance,
                           "uniform_chance": scores.uniform_chance})


def assemble_statistics(per_task: Iterable[TaskStatistics], study: Mapping, summary: pa.Table,
                        *, alpha: float | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(chance, stats, seed_noise) tables from every task's :class:`TaskStatistics`, in the
    order given (study order), plus the group and overall scopes over them."""
    from vpeft.report.seednoise import SEED_NOISE_SCHEMA
    from vpeft.report.significance import ALPHA, scope_rows
    from vpeft.report.uncertainty import scope_stats

    alpha = ALPHA if alpha is None else alpha
    methods = study_methods(study)
    scores, chance_rows, noise_rows = {}, [], []
    for part in per_task:
        scores[part.scores.task] = part.scores
        noise_rows.extend(part.noise_rows)
        chance_rows.append(part.chance_row)
    params = {r["method"]: r["trainable_params"] for r in summary.to_pylist()}
    stats_rows = []
    for kind, scope, tasks in study_scopes(study):
        stats = scope_stats(scope, tasks, methods, scores)
        if stats is not None:
            stats_rows.extend(scope_rows(stats, kind, params, alpha))
    return (pa.Table.from_pylist(chance_rows, schema=CHANCE_SCHEMA),
            pa.Table.from_pylist(stats_rows, schema=STATS_SCHEMA),
            pa.Table.from_pylist(noise_rows, schema=SEED_NOISE_SCHEMA))

"""One task of a study's report: its task x method cells read from the run directories and its
statistics (:func:`collect_task`, one worker's job in vpeft.report.collect), and that result
saved by the task's analyze job for the report to reuse (:func:`save_task_part`)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from vpeft import layout
from vpeft.report.cell import collect_cell
from vpeft.report.outcomes import TaskStatistics, task_outcomes, task_statistics
from vpeft.report.tables import study_methods, study_tasks
from vpeft.runs import StudyRuns, find_study_dir


@dataclass(frozen=True)
class TaskJob:
    """Everything a worker needs to read one task's directories (picklable)."""

    study_dir: Path
    name: str
    task: str
    group: str
    methods: tuple[str, ...]
    check_predictions: bool
    seeds: tuple[int, ...] | None
    num_classes: int | None
    num_resamples: int


@dataclass
class TaskPart:
    """One task's rows and, when it has test predictions, its statistics."""

    rows: list[dict[str, Any]]
    grid_rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]]
    missing: list[Path]
    statistics: Any   # TaskStatistics | None


def collect_task(job: TaskJob) -> TaskPart:
    """Read every method of one task, then its test predictions (each file once: the accuracy
    check and the statistics share the read) and reduce them to bootstrap distributions.
    Runs in a worker process; depends on nothing but ``job``, so the result is the same
    whichever process runs it."""
    runs = StudyRuns(job.study_dir, job.seeds)
    cells = [collect_cell(runs.method(job.task, method), job.name, job.group,
                          job.check_predictions) for method in job.methods]
    files = {m: c.predictions for m, c in zip(job.methods, cells) if c.predictions}
    checks = {path: check for c in cells for path, check in c.checks.items()}
    statistics = None
    if files:
        statistics = task_statistics(task_outcomes(job.task, job.num_classes, files, checks),
                                     job.num_resamples)
    return TaskPart(rows=[c.row for c in cells],
                    grid_rows=[g for c in cells for g in c.grid_rows],
                    seed_rows=[r for c in cells for r in c.seed_rows],
                    missing=[p for c in cells for p in c.missing], statistics=statistics)


def task_jobs(runs_dir: Path, study: Mapping, *, check_predictions: bool = True,
              num_resamples: int | None = None) -> list[TaskJob]:
    """One :class:`TaskJob` per task of ``study``, in study order."""
    from vpeft.report.uncertainty import NUM_RESAMPLES

    name = str(study["name"])
    tasks, methods = study_tasks(study), study_methods(study)
    study_dir = find_study_dir(runs_dir, name, [task for task, _ in tasks])
    seeds = study.get("seeds")
    classes = {str(t["name"]): t.get("num_classes") for t in study.get("tasks") or []}
    return [TaskJob(study_dir, name, task, group, tuple(methods), check_predictions,
                    None if seeds is None else tuple(int(s) for s in seeds),
                    None if classes.get(task) is None else int(classes[task]),
                    NUM_RESAMPLES if num_resamples is None else num_resamples)
            for task, group in tasks]


# --- a task's part, saved by its analyze job ---------------------------------------------------
# Reading a task's run files (~500 per task in the paper's grids) and bootstrapping its test
# predictions is most of what `vpeft report` does at the paper's scale (docs/benchmarks.md). The
# task's analyze job, which runs once every run of the task is done (on its own node, beside the
# other tasks'), collects the task and saves the result; the report reuses it while the task's
# run files are still those it was made from (path, size and mtime of each) and the settings are
# the same, and reads the task again otherwise. JSON: floats round-trip exactly, nothing is
# unpickled.
_PART_VERSION = 1


def _files_fingerprint(job: TaskJob) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of every file under the task's method directories."""
    out: list[list[Any]] = []
    for method in job.methods:
        for dirpath, dirnames, filenames in os.walk(layout.method_dir_in(job.study_dir, job.task,
                                                                         method)):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                stat = path.stat()
                out.append([path.relative_to(job.study_dir).as_posix(), stat.st_size,
                            stat.st_mtime_ns])
    return out


def _part_key(job: TaskJob) -> dict[str, Any]:
    from vpeft.report.uncertainty import BOOTSTRAP_SEED

    return {"version": _PART_VERSION, "name": job.name, "task": job.task, "group": job.group,
            "methods": list(job.methods), "check_predictions": job.check_predictions,
            "seeds": None if job.seeds is None else list(job.seeds),
            "num_classes": job.num_classes, "num_resamples": job.num_resamples,
            "bootstrap_seed": BOOTSTRAP_SEED, "files": _files_fingerprint(job)}


def _array(a: Any) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(a)
    return {"dtype": a.dtype.str, "values": a.tolist()}


def _unarray(d: Mapping[str, Any]) -> Any:
    import numpy as np

    return np.array(d["values"], dtype=np.dtype(d["dtype"]))


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot save {type(value).__name__} in a task part")


def _part_to_dict(part: TaskPart) -> dict[str, Any]:
    stats = part.statistics
    saved = None
    if stats is not None:
        sc = stats.scores
        saved = {"scores": {"task": sc.task, "seeds": sc.seeds,
                            "top1": {m: _array(a) for m, a in sc.top1.items()},
                            "boot": {m: _array(a) for m, a in sc.boot.items()},
                            "chance": sc.chance, "uniform_chance": sc.uniform_chance,
                            "num_test": sc.num_test},
                 "noise_rows": stats.noise_rows, "chance_row": stats.chance_row}
    return {"rows": part.rows, "grid_rows": part.grid_rows, "seed_rows": part.seed_rows,
            "missing": [str(p) for p in part.missing], "statistics": saved}


def _part_from_dict(d: Mapping[str, Any]) -> TaskPart:
    from vpeft.report.uncertainty import TaskScores

    stats = None
    if d["statistics"] is not None:
        sc = d["statistics"]["scores"]
        stats = TaskStatistics(
            TaskScores(sc["task"], sc["seeds"], {m: _unarray(a) for m, a in sc["top1"].items()},
                       {m: _unarray(a) for m, a in sc["boot"].items()}, sc["chance"],
                       sc["uniform_chance"], sc["num_test"]),
            d["statistics"]["noise_rows"], d["statistics"]["chance_row"])
    return TaskPart(rows=d["rows"], grid_rows=d["grid_rows"], seed_rows=d["seed_rows"],
                    missing=[Path(p) for p in d["missing"]], statistics=stats)


def _part_path(study_dir: Path, task: str) -> Path:
    return layout.analysis_dir_in(study_dir, task) / layout.REPORT_PART


def collect_task_saved(job: TaskJob) -> TaskPart:
    """The task's saved part when it is still valid (:func:`save_task_part`), else
    :func:`collect_task`."""
    try:
        saved = json.loads(_part_path(job.study_dir, job.task).read_bytes())
    except (OSError, ValueError):
        return collect_task(job)
    if saved.get("key") != _part_key(job):
        return collect_task(job)
    return _part_from_dict(saved["part"])


def save_task_part(runs_dir: Path, study: Mapping, task: str) -> tuple[Path, str | None]:
    """Collect ``task`` as :func:`collect_study` would (run files, prediction checks, bootstrap)
    and save it where the report looks for it: (the file, None). When collecting fails, the file
    records the error instead (the report then reads the task itself and raises it there, in
    context): (the file, the error). ``runs_dir`` as for :func:`collect_study`."""
    study_dir = Path(runs_dir)
    try:
        job = next(j for j in task_jobs(runs_dir, study) if j.task == task)
        study_dir = job.study_dir
        key = _part_key(job)   # before reading: a file changed meanwhile invalidates the part
        saved = {"key": key, "part": _part_to_dict(collect_task(job))}
    except Exception as err:  # noqa: BLE001  (recorded; the report raises it)
        error = f"{type(err).__name__}: {err}"
        return record_part_error(study_dir, task, error), error
    return _write_part(_part_path(study_dir, task), saved), None


def record_part_error(study_dir: Path, task: str, error: str) -> Path:
    """Save, in place of the task's part, why it could not be collected (the report then reads
    the task itself). ``study_dir``: the study's run directory ``runs/<study>``."""
    return _write_part(_part_path(study_dir, task), {"key": None, "error": error})


def _write_part(path: Path, saved: Mapping[str, Any]) -> Path:
    from vpeft.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(saved, default=_plain, separators=(",", ":")), encoding="utf-8")
    return path

"""How a study's runs are packed into Snakemake jobs: one answer for rules/train.smk, for
``vpeft check`` (which counts the jobs) and for the cost projection (``benchmarks.project``).

Two keys of ``train``:

``points_per_job`` (cluster studies)
    Grid points of one method trained together in one process: 0 = all, 1 = one job per point.
``methods_per_job`` (small studies: the demo and the miniatures)
    1 (the default): every method of a task has its own grid, select, final and evaluate jobs.
    N > 1: those four steps each run as ONE job for N methods of a task (0: all its methods),
    every grid point of those methods in the grid job (``points_per_job`` does not apply). Where a
    run is seconds of work, Python/torch start-up (~5 s a process) costs more than the training;
    grouping pays it once per group. The runs and their files are the same either way
    (tests/test_fused.py): only the number of processes changes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpeft.errors import ConfigError

if TYPE_CHECKING:
    from vpeft.config import StudyPlan


def _count(train_cfg: Any, key: str, default: int) -> int:
    value = train_cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"train.{key}: expected a whole number >= 0, got {value!r}")
    return value


def points_per_job(train_cfg: Any) -> int:
    return _count(train_cfg, "points_per_job", 0)


def methods_per_job(train_cfg: Any) -> int:
    return _count(train_cfg, "methods_per_job", 1)


def groups_methods(train_cfg: Any) -> bool:
    """True when methods share jobs (``methods_per_job`` is not 1)."""
    return methods_per_job(train_cfg) != 1


def method_groups(plan: StudyPlan) -> list[list[str]]:
    """The study's methods in jobs of at most ``methods_per_job`` (0: one group of all; 1, the
    default: one group per method). With G groups, group g takes methods g, g + G, g + 2G, ... of
    the study's list: dealt round-robin, cheap and costly methods mix (the study lists them
    roughly by family), so groups that run side by side on a machine's cores end together."""
    size = methods_per_job(plan.cfg.train) or len(plan.methods)
    count = -(-len(plan.methods) // size)
    return [list(plan.methods[g::count]) for g in range(count)]


def grid_chunks(plan: StudyPlan, method: str) -> list[list[str]]:
    """The point ids of ``method`` in each of its grid jobs: chunks of ``points_per_job`` (0: all
    in one job), or all of them when methods share jobs (in the group's one grid job)."""
    ids = [p.id for p in plan.points[method]]
    size = len(ids) if groups_methods(plan.cfg.train) else points_per_job(plan.cfg.train) or len(ids)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def grid_job_count(plan: StudyPlan) -> int:
    """Grid jobs per task."""
    if groups_methods(plan.cfg.train):
        return len(method_groups(plan))
    return sum(len(grid_chunks(plan, m)) for m in plan.methods)


def plan_summary(plan: StudyPlan) -> dict[str, Any]:
    """``vpeft plan``: the study's tasks, methods and grid points, and how many grid and final
    runs they make (one grid search per task and method; one final run per seed)."""
    from vpeft.layout import seeds

    points = {m: [p.id for p in plan.points[m]] for m in plan.methods}
    return {"study": plan.name, "tasks": plan.tasks, "methods": plan.methods,
            "grid_points": points,
            "grid_runs": len(plan.tasks) * sum(len(v) for v in points.values()),
            "seeds": seeds(plan.cfg),
            "final_runs": len(plan.tasks) * len(plan.methods) * len(seeds(plan.cfg))}

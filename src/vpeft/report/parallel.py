"""Per-task report work (reading a task's runs and bootstrapping it, rendering its page) in a
process pool.

Every job depends only on its own arguments (the bootstrap seeds are per task), and results are
returned in input order, so the report is byte-identical whatever the number of workers. Worker
processes start with ``forkserver`` (``spawn`` where unavailable), never a plain ``fork`` of a
large parent that may hold threads.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence, TypeVar

from vpeft.errors import UserError

__all__ = ["MAX_WORKERS", "MIN_CELLS", "WORKERS_ENV", "ordered_map", "worker_count"]

T = TypeVar("T")
R = TypeVar("R")

# A pool costs about a second to start (a fresh interpreter importing numpy, pyarrow, jinja2);
# a study with fewer task x method cells than this is reported faster in one process.
MIN_CELLS = 48
MAX_WORKERS = 8                      # 19 VTAB tasks: more workers mostly add start-up cost
WORKERS_ENV = "VPEFT_REPORT_WORKERS"  # overrides the CPU count (e.g. 1 to profile serially)
# Each worker is one CPU: BLAS and OpenMP threads on top of it only contend (a bootstrap's
# matrix product ran 2.4x slower with OpenBLAS's threads on a busy 2-core machine).
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Imported once by the fork server, so each worker starts without re-importing them.
_PRELOAD = ["numpy", "pyarrow.parquet", "vpeft.report.collect", "vpeft.report.uncertainty",
            "vpeft.report.seednoise", "vpeft.report.render"]


class WorkersError(UserError):
    """$VPEFT_REPORT_WORKERS is not a positive integer."""


def worker_count(limit: int = MAX_WORKERS) -> int:
    """$VPEFT_REPORT_WORKERS if set, else the CPUs this process may run on (a SLURM job's
    allocation, not the whole node), at most ``limit``."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise WorkersError(f"${WORKERS_ENV}={text!r}: expected a positive integer")
        return int(text)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, limit))


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                cells: int | None = None, costs: Sequence[float] | None = None) -> list[R]:
    """``[fn(x) for x in items]``, in ``workers`` processes. By default (``workers`` None)
    :func:`worker_count`, or one process when the study has fewer than :data:`MIN_CELLS`
    task x method ``cells``.

    ``costs`` (one estimate per item, any unit) start the costliest items first: the VTAB-1K
    order puts the largest test sets (dSprites, 73,728 images each) last, where they would run
    alone while the other workers idle. Results come back in input order either way.

    ``fn`` must be a module-level function. The first exception in input order is raised, as
    the serial loop would; jobs not yet started are cancelled.
    """
    items = list(items)
    if workers is None:
        workers = 1 if cells is not None and cells < MIN_CELLS else worker_count()
    workers = min(max(1, workers), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)   # inherited by the fork server started by the first job
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(),
                               initializer=_init_worker)
    order = range(len(items))
    if costs is not None:
        order = sorted(order, key=lambda i: -costs[i])  # stable: equal costs keep input order
    try:
        futures = {i: pool.submit(fn, items[i]) for i in order}
        return [futures[i].result() for i in range(len(items))]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _init_worker() -> None:
    """One thread per worker: Arrow's pool (BLAS gets its limit from the environment)."""
    import pyarrow

    pyarrow.set_cpu_count(1)

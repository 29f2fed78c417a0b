"""The analysis of one task: the per-example outcomes of every method and ensemble, in one pass
over the logits a block of examples at a time, made into the six tables (vpeft.analysis)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from vpeft import layout
from vpeft.analysis.ensembles import COMBINERS, Ensemble, ensemble_rules, member_rows, softmax
from vpeft.analysis.memory import WORK_BYTES
from vpeft.analysis.predictions import (Block, TaskPredictions, file_blocks, memory_blocks,
                                        scan_task)
from vpeft.analysis.tables import Outcomes, build_tables, write_task_analysis


def analysis_dir(runs_dir: Path, task: str) -> Path:
    """``runs/<study>/<task>/analysis/`` for the study run directory ``runs_dir``."""
    return layout.analysis_dir_in(runs_dir, task)


def _block_rows(num_classes: int, num_methods: int, num_sets: int, work_bytes: int) -> int:
    """Examples per block so that one block's work arrays take about ``work_bytes``.

    Per example and class: each method's pending float32 rows (pass 2 reads every file in
    lockstep), a softmax's float64 copy and float64 temporaries, and each ensemble's two float64
    sums, int32 votes and its vote-tie mask.
    """
    per_row = num_classes * (4 * (num_methods + 1) + 24 + num_sets * 21)
    return max(1, int(work_bytes) // per_row)


def _score(blocks: Iterable[Block], preds: np.ndarray, num_classes: int,
           sets: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, dict[tuple[int, ...], dict]]:
    """Max softmax probability of every method and every ensemble's predictions, per example.

    ``preds`` [M, N] are the methods' saved predictions (sorted test order); ``sets`` the
    ensembles' members (method rows, ascending). Each method's softmax is computed once per block
    and shared by the ensembles that hold it.
    """
    m, n = preds.shape
    conf = np.zeros((m, n), np.float64)
    combined = {s: {c: np.zeros(n, np.int64) for c in COMBINERS} for s in sets}
    for where, logits_of in blocks:
        rows = len(range(n)[where]) if isinstance(where, slice) else len(where)
        ensembles = {s: Ensemble(rows, num_classes) for s in sets}
        for i in range(m):
            member = logits_of(i)
            probs = softmax(member)
            conf[i, where] = probs.max(axis=1)
            for s, ensemble in ensembles.items():
                if i in s:
                    ensemble.add(member, probs, preds[i, where])
            del member, probs
        for s, ensemble in ensembles.items():
            for combiner, pred in ensemble.predict().items():
                combined[s][combiner][where] = pred
        del ensembles
    return conf, combined


def _check_settings(top_ks: Iterable[int], threshold: float) -> list[int]:
    top_ks = [int(k) for k in top_ks]
    if any(k < 1 for k in top_ks):
        raise ValueError(f"top_ks must be >= 1, got {top_ks}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {threshold}")
    return top_ks


def analyze_task(preds: TaskPredictions, *, top_ks: Iterable[int],
                 confidence_threshold: float,
                 work_bytes: int | None = None) -> dict[str, pa.Table]:
    """All six analysis tables of one task (see :mod:`vpeft.analysis`), keyed by
    :data:`~vpeft.analysis.TABLES`.

    ``work_bytes`` bounds the per-block work arrays (default :data:`WORK_BYTES`); the tables do
    not depend on it.
    """
    top_ks = _check_settings(top_ks, confidence_threshold)
    assert preds.preds is not None
    rules = ensemble_rules(preds.methods, preds.val_top1, top_ks)
    sets = list(dict.fromkeys(member_rows(preds.methods, members) for _, members in rules))
    rows = _block_rows(preds.num_classes, len(preds.methods), len(sets),
                       WORK_BYTES if work_bytes is None else work_bytes)
    conf, combined = _score(memory_blocks(preds.logits, rows), preds.preds, preds.num_classes,
                            sets)
    out = Outcomes(task=preds.task, methods=preds.methods, excluded=preds.excluded,
                   n_test=len(preds.index), num_classes=preds.num_classes, labels=preds.labels,
                   preds=preds.preds, val_top1=preds.val_top1, conf=conf, rules=rules,
                   combined=combined)
    return build_tables(out, top_ks, confidence_threshold)


def analyze_files(runs_dir: Path, task: str, methods: Sequence[str], *,
                  top_ks: Iterable[int], confidence_threshold: float,
                  work_bytes: int | None = None) -> dict[str, pa.Table]:
    """The tables of :func:`analyze_task` for the final runs under ``runs/<study>`` (``runs_dir``),
    streamed from the files: peak memory stays near :func:`memory_mb` whatever the test set.

    Pass 1 reads each file on its own (checks, saved predictions); pass 2 reads every usable
    method's logits in lockstep, ``work_bytes`` worth of examples at a time. A file listing its
    rows in another order than the first is copied in that order to an anonymous temporary file
    in ``runs/<study>/<task>/`` (removed by the system even if the process dies). Same errors as
    :func:`load_task_predictions`.
    """
    top_ks = _check_settings(top_ks, confidence_threshold)
    work = WORK_BYTES if work_bytes is None else int(work_bytes)
    runs_dir = Path(runs_dir)
    spill_dir = analysis_dir(runs_dir, task).parent
    scanned = scan_task(runs_dir, task, methods, work, spill_dir, lockstep=True)
    try:
        names = [s.method for s in scanned.scans]
        n = len(scanned.index)
        preds = np.stack([s.preds for s in scanned.scans]) if names else np.zeros((0, n), np.int64)
        rules = ensemble_rules(names, scanned.val_top1, top_ks)
        sets = list(dict.fromkeys(member_rows(names, members) for _, members in rules))
        rows = _block_rows(scanned.num_classes, len(names), len(sets), work)
        conf, combined = _score(file_blocks(scanned, rows), preds, scanned.num_classes, sets)
    finally:
        scanned.close()
    out = Outcomes(task=task, methods=names, excluded=scanned.excluded, n_test=n,
                   num_classes=scanned.num_classes, labels=scanned.labels, preds=preds,
                   val_top1=scanned.val_top1, conf=conf, rules=rules, combined=combined)
    return build_tables(out, top_ks, confidence_threshold)


def run_task_analysis(runs_dir: Path, task: str, methods: Sequence[str], *,
                      top_ks: Iterable[int], confidence_threshold: float) -> dict[str, pa.Table]:
    """Analyse one task from its files (streamed: :func:`analyze_files`) and write the tables to
    ``runs/<study>/<task>/analysis/``; returns the tables."""
    tables = analyze_files(runs_dir, task, methods, top_ks=top_ks,
                           confidence_threshold=confidence_threshold)
    write_task_analysis(tables, analysis_dir(runs_dir, task))
    return tables

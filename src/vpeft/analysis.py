"""Do PEFT methods with similar accuracy make the same mistakes? Per-task prediction analysis.

For one task this module reads every method's final test predictions and writes six tables to
``runs/<study>/<task>/analysis/``:

``agreement``          per ordered method pair: prediction agreement, Jaccard overlap of the error
                       sets, and the both-wrong / only-one-right fractions (fractions in [0, 1]).
``accuracy``           per method: test top-1, the val200 top-1 of the selected grid point, mean
                       confidence and 15-bin ECE (all in %, confidence as a fraction).
``oracle``             one row: % of test examples that at least one method gets right.
``ensembles``          one row per (members rule, combiner): the ensemble's test top-1 and its gain
                       over the best member and over the member with the best val200 top-1.
``confidence``         per method: confident (max prob >= threshold) right/wrong counts and a
                       10-bin histogram of the max probability, over all test examples
                       (``hist_i``) and split into right (``hist_right_i``) and wrong
                       (``hist_wrong_i``) predictions; all three are fractions of the whole test
                       set, so ``hist_right_i + hist_wrong_i == hist_i``.
``confident_overlap``  per ordered method pair: Jaccard overlap of the confidently-right and of
                       the confidently-wrong example sets, their intersections' sizes, and the
                       number of examples ``method_a`` is confidently right on while ``method_b``
                       is confidently wrong (where combining the two can help most).

Conventions:

* Members of ``top{k}_by_val`` ensembles are chosen by ``best_val_top1`` from ``selection.json``
  only (ties: the methods' given order); test labels never choose anything. Test accuracy appears
  only as a reported outcome (e.g. ``oracle.best_single``).
* A Jaccard overlap of two empty sets is 1.0 (the two methods agree perfectly on the empty set),
  so the columns never hold NaN.
* A method whose final run diverged (no test rows, non-finite logits) is excluded from every table;
  it is listed, with the reason, in each table's schema metadata under :data:`METADATA_KEY`.
* Softmax is computed in float64 after subtracting the row maximum; argmax ties go to the lowest
  class id. Everything is deterministic.

Memory: :func:`run_task_analysis` streams (:func:`analyze_files`). Pass 1 reads each method's
file on its own, a block of rows at a time (checks, saved predictions); pass 2 reads every usable
method's logits in lockstep, :data:`WORK_BYTES` worth of examples at a time, computing each
softmax once per block and adding it to every ensemble that holds the method. Only per-example
outcomes (predictions, max probability) of every method are kept, never a methods x examples x
classes array, so the peak is about 0.35 GB for sun397 and 16 methods (it was 2.1 GB);
:func:`memory_mb` is what a job asks the scheduler for. Every per-element sum takes the members
in the same order as before, whatever the block size, so the tables are bit-identical to the
all-in-memory computation (``tests/test_analysis_memory.py``).
"""
from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vpeft import layout
from vpeft.errors import UserError
from vpeft.io import read_json, write_parquet

__all__ = [
    "COMBINERS",
    "ECE_BINS",
    "HIST_BINS",
    "HIST_PREFIXES",
    "METADATA_KEY",
    "PLANNING_NUM_TEST",
    "SCHEMAS",
    "TABLES",
    "AnalysisInputError",
    "WORK_BYTES",
    "TaskPredictions",
    "analysis_dir",
    "analyze_files",
    "analyze_task",
    "ensemble_predict",
    "expected_calibration_error",
    "load_task_predictions",
    "memory_mb",
    "planned_num_test",
    "run_task_analysis",
    "softmax",
    "table_metadata",
    "top_k_by_val",
    "write_task_analysis",
]

METADATA_KEY = b"vpeft.analysis"  # schema-metadata key of every table: JSON (methods, excluded...)
ECE_BINS = 15
HIST_BINS = 10
# Histogram column prefixes of the confidence table: all predictions, right ones, wrong ones.
HIST_PREFIXES: tuple[str, ...] = ("hist_", "hist_right_", "hist_wrong_")
COMBINERS: tuple[str, ...] = ("prob_avg", "logit_avg", "majority_vote")
# Work arrays of one block of examples (softmax, ensemble sums): the streamed analysis holds
# these, the methods' per-example outcomes and nothing of size methods x examples x classes.
WORK_BYTES = 64 << 20

# Explicit schemas: an empty table (e.g. every method excluded) keeps its column types, so tables of
# different tasks always concatenate.
_PAIR = [("task", pa.string()), ("method_a", pa.string()), ("method_b", pa.string())]
SCHEMAS: dict[str, pa.Schema] = {
    "agreement": pa.schema(_PAIR + [
        ("agreement", pa.float64()), ("error_overlap", pa.float64()),
        ("both_right", pa.float64()), ("both_wrong", pa.float64()),
        ("only_a_right", pa.float64()), ("only_b_right", pa.float64()),
        ("n_errors_a", pa.int64()), ("n_errors_b", pa.int64()), ("n_errors_both", pa.int64()),
    ]),
    "accuracy": pa.schema([
        ("task", pa.string()), ("method", pa.string()), ("n_test", pa.int64()),
        ("test_top1", pa.float64()), ("val_top1", pa.float64()),
        ("mean_confidence", pa.float64()), ("ece", pa.float64()),
    ]),
    "oracle": pa.schema([
        ("task", pa.string()), ("n_methods", pa.int64()), ("methods", pa.string()),
        ("n_test", pa.int64()), ("oracle_top1", pa.float64()), ("all_wrong", pa.float64()),
        ("best_single", pa.string()), ("best_single_top1", pa.float64()),
    ]),
    "ensembles": pa.schema([
        ("task", pa.string()), ("rule", pa.string()), ("combiner", pa.string()),
        ("k", pa.int64()), ("members", pa.string()), ("test_top1", pa.float64()),
        ("best_member", pa.string()), ("best_member_test_top1", pa.float64()),
        ("gain_over_best_member", pa.float64()), ("best_single_by_val", pa.string()),
        ("best_single_by_val_test_top1", pa.float64()),
        ("gain_over_best_single_by_val", pa.float64()),
    ]),
    "confidence": pa.schema([
        ("task", pa.string()), ("method", pa.string()), ("threshold", pa.float64()),
        ("n_test", pa.int64()), ("n_confident", pa.int64()), ("confident_right", pa.int64()),
        ("confident_wrong", pa.int64()), ("confident_precision", pa.float64()),
    ] + [(f"{prefix}{i}", pa.float64()) for prefix in HIST_PREFIXES for i in range(HIST_BINS)]),
    "confident_overlap": pa.schema(_PAIR + [
        ("confident_right_overlap", pa.float64()), ("confident_wrong_overlap", pa.float64()),
        ("n_confident_right_both", pa.int64()), ("n_confident_wrong_both", pa.int64()),
        ("n_confident_right_a_wrong_b", pa.int64()),
    ]),
}
TABLES: tuple[str, ...] = tuple(SCHEMAS)
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class AnalysisInputError(UserError):
    """The run files of a task cannot be analysed together (the message names the files)."""


@dataclass
class TaskPredictions:
    """The usable methods' test predictions of one task, aligned on the sorted test index.

    ``logits[m, n]`` is method ``methods[m]``'s logits for test example ``index[n]``; ``preds`` is
    the saved prediction (defaults to the argmax of ``logits``). ``val_top1`` holds the val200
    top-1 of each usable method's selected grid point; ``excluded`` lists ``(method, reason)``.
    """

    task: str
    methods: list[str]
    excluded: list[tuple[str, str]]
    index: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    val_top1: dict[str, float | None]
    preds: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.methods = list(self.methods)
        self.excluded = [(str(m), str(r)) for m, r in self.excluded]
        self.index = np.asarray(self.index, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.logits = np.asarray(self.logits, dtype=np.float32)
        m, n = len(self.methods), len(self.index)
        if len(set(self.methods)) != m:
            raise ValueError(f"task {self.task}: duplicate methods in {self.methods}")
        if self.logits.ndim != 3 or self.logits.shape[:2] != (m, n) or self.logits.shape[2] < 1:
            raise ValueError(f"task {self.task}: logits shape {self.logits.shape} is not "
                             f"(methods={m}, examples={n}, classes>=1)")
        if self.labels.shape != (n,):
            raise ValueError(f"task {self.task}: {self.labels.shape[0]} labels for {n} examples")
        if m and n == 0:
            raise ValueError(f"task {self.task}: no test examples")
        if n and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"task {self.task}: labels outside [0, {self.num_classes})")
        if self.preds is None:
            self.preds = self.logits.argmax(axis=2).astype(np.int64) if n else \
                np.zeros((m, 0), np.int64)
        self.preds = np.asarray(self.preds, dtype=np.int64)
        if self.preds.shape != (m, n):
            raise ValueError(f"task {self.task}: preds shape {self.preds.shape} != {(m, n)}")
        missing = [x for x in self.methods if x not in self.val_top1]
        if missing:
            raise ValueError(f"task {self.task}: no val_top1 entry for {missing}")

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[2])


# --------------------------------------------------------------------------------------------
# loading


def analysis_dir(runs_dir: Path, task: str) -> Path:
    """``runs/<study>/<task>/analysis/`` for the study run directory ``runs_dir``."""
    return layout.analysis_dir_in(runs_dir, task)


def _read_val_top1(path: Path, task: str, method: str) -> float | None:
    """``best_val_top1`` of a selection.json (float or None), cross-checked against task/method."""
    sel = read_json(path)
    if not isinstance(sel, Mapping):
        raise AnalysisInputError(f"{path}: expected a JSON object")
    for key, expected in (("task", task), ("method", method)):
        if key in sel and sel[key] != expected:
            raise AnalysisInputError(f"{path}: {key} is {sel[key]!r}, expected {expected!r}")
    if "best_val_top1" not in sel:
        raise AnalysisInputError(f"{path}: no best_val_top1")
    value = sel["best_val_top1"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise AnalysisInputError(f"{path}: best_val_top1 {value!r} is not a finite number or null")
    return float(value)



_COLUMNS = ("index", "label", "pred", "logits")
# Buffered, not pre-buffered, column reads: otherwise pyarrow holds a whole column chunk (all of
# a file's logits, as evaluate writes one row group) for every open file.
_READ_BUFFER = 1 << 20


@dataclass
class _FileScan:
    """Pass 1 over one test_predictions.parquet: everything but the logits, which stay on disk.

    ``order`` sorts the file's rows by test index; ``reason`` is why the method is excluded
    (None: usable). ``spill`` holds the logits in the reference file's row order when this file
    lists its rows in another order (see :func:`_scan_file`).
    """

    method: str
    path: Path
    num_classes: int
    order: np.ndarray
    index: np.ndarray  # sorted
    labels: np.ndarray  # in sorted-index order
    preds: np.ndarray  # in sorted-index order
    reason: str | None = None
    spill: Any = None  # an open temporary file, or None

    @property
    def num_rows(self) -> int:
        return len(self.index)


def _open_predictions(path: Path) -> tuple[pq.ParquetFile, int]:
    """The file and its class count, after checking its columns (nothing is read yet)."""
    pf = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
    names = set(pf.schema_arrow.names)
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise AnalysisInputError(f"{path}: missing columns {missing}")
    logits_type = pf.schema_arrow.field("logits").type
    if not pa.types.is_fixed_size_list(logits_type):
        raise AnalysisInputError(f"{path}: logits must be fixed_size_list<float>, got "
                                 f"{logits_type}")
    return pf, int(logits_type.list_size)


def _batch_logits(batch: pa.RecordBatch, path: Path, num_classes: int) -> np.ndarray:
    """float32 [rows, C] of a record batch holding the logits column."""
    col = batch.column(0)
    if col.null_count:
        raise AnalysisInputError(f"{path}: column 'logits' has nulls")
    flat = col.flatten().to_numpy(zero_copy_only=False)  # flatten() honours a slice's offset
    return np.asarray(flat, dtype=np.float32).reshape(len(col), num_classes)


def _logit_batches(pf: pq.ParquetFile, path: Path, num_classes: int,
                   rows: int) -> Iterator[np.ndarray]:
    """The file's logits in file row order, about ``rows`` rows at a time (never all at once)."""
    for batch in pf.iter_batches(batch_size=max(1, rows), columns=["logits"], use_threads=False):
        yield _batch_logits(batch, path, num_classes)


class _Rows:
    """Successive row blocks of one method's logits in the reference row order (pass 2)."""

    def __init__(self, scan: _FileScan, rows: int) -> None:
        self._c = scan.num_classes
        self._spill = scan.spill
        self._offset = 0
        self._left: list[np.ndarray] = []
        if self._spill is None:
            pf, _ = _open_predictions(scan.path)
            self._batches = _logit_batches(pf, scan.path, self._c, rows)

    def take(self, k: int) -> np.ndarray:
        """The next ``k`` rows, float32 [k, C]."""
        if self._spill is not None:  # fixed-size rows: read them straight into the array
            out = np.empty((k, self._c), np.float32)
            self._spill.seek(self._offset)
            self._spill.readinto(memoryview(out).cast("B"))
            self._offset += out.nbytes
            return out
        have = sum(len(b) for b in self._left)
        while have < k:
            block = next(self._batches)
            self._left.append(block)
            have += len(block)
        block = self._left[0] if len(self._left) == 1 else np.concatenate(self._left)
        self._left = [block[k:]] if have > k else []
        return block[:k]


def _check_aligned(ref: _FileScan, scan: _FileScan, num_classes: int) -> None:
    """Every file with rows covers the same test examples with the same labels and classes."""
    if not np.array_equal(scan.index, ref.index):
        only_a = np.setdiff1d(scan.index, ref.index).size
        only_b = np.setdiff1d(ref.index, scan.index).size
        raise AnalysisInputError(
            f"test index sets differ between {ref.path} ({len(ref.index)} rows) and {scan.path} "
            f"({len(scan.index)} rows; {only_a} indices only in the latter, {only_b} only in "
            "the former)")
    if not np.array_equal(scan.labels, ref.labels):
        bad = int(np.sum(scan.labels != ref.labels))
        raise AnalysisInputError(f"test labels differ between {ref.path} and {scan.path} "
                                 f"({bad} examples)")
    if num_classes != ref.num_classes:
        raise AnalysisInputError(f"class counts differ: {ref.path} has {ref.num_classes} "
                                 f"logits per row, {scan.path} has {num_classes}")


def _content_error(path: Path, preds: np.ndarray, labels: np.ndarray, c: int) -> str | None:
    """The first problem with a finite file's saved preds and labels, if any."""
    if preds.min() < 0 or preds.max() >= c:
        return f"{path}: pred outside [0, {c})"
    if labels.min() < 0 or labels.max() >= c:
        return f"{path}: label outside [0, {c})"
    return None


def _scan_file(path: Path, method: str, ref: _FileScan | None, ref_row: np.ndarray | None,
               work_bytes: int, spill_dir: Path | None) -> _FileScan:
    """Pass 1 over one file: columns, alignment with ``ref``, finite logits, pred == argmax.

    The logits are read in blocks of about ``work_bytes``. ``ref_row[k]`` is the reference file's row holding
    the k-th smallest test index; a file listing its rows in another order has its logits copied
    to a temporary file in ``spill_dir`` in the reference order, so that pass 2 reads every
    method's rows in lockstep.
    """
    pf, c = _open_predictions(path)
    rows = max(1, work_bytes // (32 * c))  # a float32 block, its Arrow batch, mask, temporaries
    table = pf.read(columns=["index", "label", "pred"])  # small: three integers per example
    for col in ("index", "label", "pred"):
        if table.column(col).null_count:
            raise AnalysisInputError(f"{path}: column {col!r} has nulls")
    index = table.column("index").to_numpy().astype(np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if len(index) > 1 and np.any(index[1:] == index[:-1]):
        raise AnalysisInputError(f"{path}: duplicate test indices")
    scan = _FileScan(method=method, path=path, num_classes=c, order=order, index=index,
                     labels=table.column("label").to_numpy().astype(np.int64)[order],
                     preds=table.column("pred").to_numpy().astype(np.int64)[order])
    del table
    if len(index) == 0:
        scan.reason = "diverged: no test predictions"
        return scan
    if ref is not None:
        _check_aligned(ref, scan, c)
    # Checked only once the logits are known to be finite (a diverged file is excluded, not an
    # error), but computed first: an out-of-range pred cannot index the logits.
    file_preds = scan.preds[np.argsort(order)]  # back in file row order
    problem = _content_error(path, scan.preds, scan.labels, c)
    # File row j holds sorted position pos[j]; in the reference order it is row dest[j].
    dest = None
    if ref_row is not None and not np.array_equal(order, ref_row):
        pos = np.empty_like(order)
        pos[order] = np.arange(len(order))
        dest = ref_row[pos]
        scan.spill = tempfile.TemporaryFile(dir=spill_dir)
    start = 0
    for block in _logit_batches(pf, path, c, rows):
        stop = start + len(block)
        if not np.isfinite(block).all():
            scan.reason = "diverged: non-finite test logits"
            break
        if problem is None:
            # The saved pred must be an argmax of the saved logits (any of them on exact ties),
            # or the file's columns do not belong together.
            chosen = block[np.arange(len(block)), file_preds[start:stop]]
            if np.any(chosen < block.max(axis=1)):
                problem = f"{path}: pred is not the argmax of logits"
        if dest is not None:
            for j, row in zip(dest[start:stop].tolist(), block):
                scan.spill.seek(j * row.nbytes)
                scan.spill.write(row.tobytes())
        start = stop
    if scan.reason is not None:
        _close_spill(scan)
    elif problem is not None:
        _close_spill(scan)
        raise AnalysisInputError(problem)
    return scan


def _close_spill(scan: _FileScan) -> None:
    if scan.spill is not None:
        scan.spill.close()
        scan.spill = None


@dataclass
class _ScannedTask:
    """Pass 1 of a task: every method's file scanned; logits left on disk."""

    task: str
    scans: list[_FileScan]  # the usable methods', in the given order
    excluded: list[tuple[str, str]]
    val_top1: dict[str, float | None]
    index: np.ndarray
    labels: np.ndarray
    num_classes: int
    ref_row: np.ndarray  # pass 2 reads rows in the reference file's order: row ref_row[k] is
    #                      the k-th smallest test index

    def close(self) -> None:
        for scan in self.scans:
            _close_spill(scan)


def _scan_task(runs_dir: Path, task: str, methods: Sequence[str], work_bytes: int,
               spill_dir: Path | None, lockstep: bool) -> _ScannedTask:
    """Pass 1 over every method's final test predictions (see :func:`load_task_predictions`).

    ``lockstep``: pass 2 will read every file's rows in the reference order, so a file in
    another order is spilled (see :func:`_scan_file`).
    """
    methods = list(methods)
    if not methods:
        raise ValueError(f"task {task}: no methods to analyse")
    if len(set(methods)) != len(methods):
        raise ValueError(f"task {task}: duplicate methods in {methods}")
    if layout.ANALYSIS_DIR in methods:
        raise ValueError(f"method name {layout.ANALYSIS_DIR!r} collides with the analysis directory")
    val: dict[str, float | None] = {}
    ref: _FileScan | None = None  # the first file with rows: every other must match it
    scans: list[_FileScan] = []
    try:
        for method in methods:
            val[method] = _read_val_top1(layout.selection_file_in(runs_dir, task, method), task,
                                         method)
            path = layout.final_dir_in(runs_dir, task, method) / layout.TEST_PREDICTIONS
            ref_row = ref.order if ref is not None and lockstep else None
            scan = _scan_file(path, method, ref, ref_row, work_bytes, spill_dir)
            scans.append(scan)
            if ref is None and scan.num_rows:
                ref = scan
    except BaseException:
        for scan in scans:
            _close_spill(scan)
        raise
    usable = [s for s in scans if s.reason is None]
    if ref is not None:
        index, labels, num_classes, ref_row = ref.index, ref.labels, ref.num_classes, ref.order
    else:  # every file empty
        index = labels = ref_row = np.zeros(0, np.int64)
        num_classes = 1
    return _ScannedTask(task=task, scans=usable,
                        excluded=[(s.method, s.reason) for s in scans if s.reason is not None],
                        val_top1={s.method: val[s.method] for s in usable}, index=index,
                        labels=labels, num_classes=num_classes, ref_row=ref_row)


def load_task_predictions(runs_dir: Path, task: str, methods: Sequence[str]) -> TaskPredictions:
    """Load and align the final test predictions of ``methods`` on ``task``, logits included.

    ``runs_dir`` is the study's run directory ``runs/<study>``. Every method with test rows must
    cover the same test indices with the same labels and class count (else
    :class:`AnalysisInputError` naming the files). Methods with no rows or non-finite logits (a
    diverged final run) are moved to ``excluded``. A missing file raises ``FileNotFoundError``:
    analysing a half-finished task would silently drop a method.

    This holds every method's logits at once (methods x examples x classes float32); the
    pipeline's :func:`run_task_analysis` streams them instead.
    """
    runs_dir = Path(runs_dir)
    scanned = _scan_task(runs_dir, task, methods, WORK_BYTES, None, lockstep=False)
    n, c = len(scanned.index), scanned.num_classes
    logits = np.zeros((len(scanned.scans), n, c), np.float32)
    for m, scan in enumerate(scanned.scans):
        pf, _ = _open_predictions(scan.path)
        file_rows = np.concatenate([b for b in _logit_batches(pf, scan.path, c, 1 << 16)])
        logits[m] = file_rows[scan.order]
    names = [s.method for s in scanned.scans]
    preds = np.stack([s.preds for s in scanned.scans]) if scanned.scans else \
        np.zeros((0, n), np.int64)
    return TaskPredictions(task=task, methods=names, excluded=scanned.excluded,
                           index=scanned.index, labels=scanned.labels, logits=logits,
                           val_top1=scanned.val_top1, preds=preds)


# --------------------------------------------------------------------------------------------
# building blocks


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    x = np.array(logits, dtype=np.float64)  # a copy: the steps below work in place
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| for boolean masks; 1.0 when both are empty."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _pct(mask: np.ndarray) -> float:
    return float(100.0 * np.count_nonzero(mask) / mask.size)


def _frac(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask) / mask.size)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE in %: sum over equal-width bins (lo, hi] of |B|/N * |accuracy(B) - confidence(B)|."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    # (lo, hi] bins as in Guo et al. (2017); a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    if conf.size == 0:
        return 0.0
    # Per bin, |sum(correct) - sum(confidence)| / N == |B|/N * |acc(B) - conf(B)|.
    gap = np.abs(np.bincount(which, weights=right, minlength=bins)
                 - np.bincount(which, weights=conf, minlength=bins))
    return float(100.0 * gap.sum() / conf.size)


def _histogram(confidence: np.ndarray, bins: int = HIST_BINS,
               where: np.ndarray | None = None) -> np.ndarray:
    """Fractions of all ``confidence`` values that are in [i/bins, (i+1)/bins) (the last bin
    closed at 1) and, if given, selected by the boolean mask ``where``."""
    which = np.clip(np.floor(confidence * bins).astype(np.int64), 0, bins - 1)
    weights = None if where is None else np.asarray(where, dtype=np.float64)
    return np.bincount(which, weights=weights, minlength=bins) / max(confidence.size, 1)


class _Ensemble:
    """Running sums of the members' probabilities, logits and votes over one block of examples.

    Members are added one at a time, so no [members, examples, classes] array is ever built; each
    sum is taken in the members' order, whatever the block size, so the result never depends on
    how the examples are split into blocks.
    """

    def __init__(self, rows: int, classes: int) -> None:
        self.prob_sum = np.zeros((rows, classes), np.float64)
        self.logit_sum = np.zeros((rows, classes), np.float64)
        self.votes = np.zeros((rows, classes), np.int32)

    def add(self, logits: np.ndarray, probs: np.ndarray, preds: np.ndarray) -> None:
        """One member: its logits and softmax [rows, C] and its predictions [rows]."""
        self.prob_sum += probs
        self.logit_sum += logits
        self.votes[np.arange(len(preds)), preds] += 1

    def predict(self) -> dict[str, np.ndarray]:
        """Every combiner's prediction (int64 [rows]); see :func:`ensemble_predict`."""
        tied = self.votes == self.votes.max(axis=1, keepdims=True)
        # argmax of a sum == argmax of the mean (same divisor); the sum avoids a rounding step.
        return {"prob_avg": self.prob_sum.argmax(axis=1).astype(np.int64),
                "logit_avg": self.logit_sum.argmax(axis=1).astype(np.int64),
                "majority_vote": np.where(tied, self.prob_sum, -np.inf).argmax(axis=1)
                .astype(np.int64)}


def ensemble_predict(logits: np.ndarray, combiner: str) -> np.ndarray:
    """Ensemble prediction from members' ``logits`` [K, N, C] (int64 [N]).

    ``prob_avg``: argmax of the mean softmax probability; ``logit_avg``: argmax of the mean logit;
    ``majority_vote``: the most predicted class, ties broken by the tied classes' summed
    probability over the members, then by the lowest class id. Argmax ties go to the lowest id.
    """
    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner {combiner!r}; expected one of {COMBINERS}")
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise ValueError(f"ensemble logits must be [members>=1, N, C], got {logits.shape}")
    ensemble = _Ensemble(logits.shape[1], logits.shape[2])
    for member in logits:
        ensemble.add(member, softmax(member), member.argmax(axis=1))
    return ensemble.predict()[combiner]


def top_k_by_val(methods: Sequence[str], val_top1: Mapping[str, float | None],
                 k: int) -> list[str] | None:
    """The ``k`` methods with the highest val200 top-1, in the methods' given order.

    Ties are broken by the given order; methods without a val top-1 are never chosen. Returns
    ``None`` when fewer than ``k`` methods have one. Only validation accuracy is consulted.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = sorted((i for i, m in enumerate(methods) if val_top1.get(m) is not None),
                    key=lambda i: (-float(val_top1[methods[i]]), i))  # type: ignore[arg-type]
    if len(ranked) < k:
        return None
    return [methods[i] for i in sorted(ranked[:k])]


def _best(methods: Sequence[str], score: Mapping[str, float | None]) -> str | None:
    """The method with the highest non-None score; the first in ``methods`` on ties."""
    best: str | None = None
    for m in methods:
        s = score.get(m)
        if s is not None and (best is None or s > score[best]):  # type: ignore[operator]
            best = m
    return best


# --------------------------------------------------------------------------------------------
# one pass over the logits, a block of examples at a time

# A block of examples: where its rows go in the sorted test order (a slice or positions), and
# the logits of method i on it (float32 [rows, C]), to be called once per method, in order.
_Block = tuple[slice | np.ndarray, Callable[[int], np.ndarray]]


def _block_rows(num_classes: int, num_methods: int, num_sets: int, work_bytes: int) -> int:
    """Examples per block so that one block's work arrays take about ``work_bytes``.

    Per example and class: each method's pending float32 rows (pass 2 reads every file in
    lockstep), a softmax's float64 copy and float64 temporaries, and each ensemble's two float64
    sums, int32 votes and its vote-tie mask.
    """
    per_row = num_classes * (4 * (num_methods + 1) + 24 + num_sets * 21)
    return max(1, int(work_bytes) // per_row)


def _score(blocks: Iterable[_Block], preds: np.ndarray, num_classes: int,
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
        ensembles = {s: _Ensemble(rows, num_classes) for s in sets}
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


def _memory_blocks(logits: np.ndarray, rows: int) -> Iterator[_Block]:
    """Blocks of an in-memory [M, N, C] logits array in sorted test order."""
    n = logits.shape[1]
    for start in range(0, n, rows):
        block = slice(start, min(n, start + rows))
        yield block, lambda i, block=block: logits[i, block]


def _file_blocks(scanned: _ScannedTask, rows: int) -> Iterator[_Block]:
    """Blocks of every usable method's logits, read from the files in lockstep.

    Rows come in the reference file's order (a file in another order was spilled in that order
    by pass 1); ``where`` maps them to the sorted test order.
    """
    readers = [_Rows(scan, rows) for scan in scanned.scans]
    n = len(scanned.index)
    pos = np.empty(n, np.int64)
    pos[scanned.ref_row] = np.arange(n)  # sorted position of each reference row
    in_order = bool(np.array_equal(pos, np.arange(n)))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        where = slice(start, stop) if in_order else pos[start:stop]
        yield where, lambda i, k=stop - start: readers[i].take(k)


# --------------------------------------------------------------------------------------------
# the analysis


def _check_settings(top_ks: Iterable[int], threshold: float) -> list[int]:
    top_ks = [int(k) for k in top_ks]
    if any(k < 1 for k in top_ks):
        raise ValueError(f"top_ks must be >= 1, got {top_ks}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {threshold}")
    return top_ks


def _rules(methods: Sequence[str], val_top1: Mapping[str, float | None],
           top_ks: Sequence[int]) -> list[tuple[str, list[str]]]:
    """The ensembles' (rule, members): all methods, then the top k by val200 top-1 per k."""
    rules: list[tuple[str, list[str]]] = [("all", list(methods))] if methods else []
    for k in top_ks:
        members = top_k_by_val(methods, val_top1, k)
        if members is not None:  # skip a k larger than the methods with a val top-1
            rules.append((f"top{k}_by_val", members))
    return rules


def _member_rows(methods: Sequence[str], members: Sequence[str]) -> tuple[int, ...]:
    return tuple(methods.index(m) for m in members)


@dataclass
class _Outcomes:
    """Everything the tables need, per example in sorted test order (no logits)."""

    task: str
    methods: list[str]
    excluded: list[tuple[str, str]]
    n_test: int
    num_classes: int
    labels: np.ndarray
    preds: np.ndarray  # [M, N] saved predictions
    val_top1: Mapping[str, float | None]
    conf: np.ndarray  # [M, N] max softmax probability
    rules: list[tuple[str, list[str]]]
    combined: dict[tuple[int, ...], dict[str, np.ndarray]]  # member rows -> combiner -> preds


def _metadata(out: _Outcomes, top_ks: Sequence[int], threshold: float) -> dict[str, Any]:
    return {"task": out.task, "methods": list(out.methods),
            "excluded": [{"method": m, "reason": r} for m, r in out.excluded],
            "n_test": out.n_test, "num_classes": out.num_classes,
            "top_ks": [int(k) for k in top_ks], "confidence_threshold": float(threshold),
            "ece_bins": ECE_BINS, "hist_bins": HIST_BINS, "combiners": list(COMBINERS)}


def _table(name: str, rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> pa.Table:
    schema = SCHEMAS[name].with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return pa.Table.from_pylist(rows, schema=schema)


def table_metadata(table: pa.Table) -> dict[str, Any]:
    """The analysis metadata (methods, excluded, settings) stored in a table's schema."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"table has no {METADATA_KEY.decode()} schema metadata")
    return json.loads(raw)


def analyze_task(preds: TaskPredictions, *, top_ks: Iterable[int],
                 confidence_threshold: float,
                 work_bytes: int | None = None) -> dict[str, pa.Table]:
    """All six analysis tables of one task (see the module docstring), keyed by :data:`TABLES`.

    ``work_bytes`` bounds the per-block work arrays (default :data:`WORK_BYTES`); the tables do
    not depend on it.
    """
    top_ks = _check_settings(top_ks, confidence_threshold)
    assert preds.preds is not None
    rules = _rules(preds.methods, preds.val_top1, top_ks)
    sets = list(dict.fromkeys(_member_rows(preds.methods, members) for _, members in rules))
    rows = _block_rows(preds.num_classes, len(preds.methods), len(sets),
                       WORK_BYTES if work_bytes is None else work_bytes)
    conf, combined = _score(_memory_blocks(preds.logits, rows), preds.preds, preds.num_classes,
                            sets)
    out = _Outcomes(task=preds.task, methods=preds.methods, excluded=preds.excluded,
                    n_test=len(preds.index), num_classes=preds.num_classes, labels=preds.labels,
                    preds=preds.preds, val_top1=preds.val_top1, conf=conf, rules=rules,
                    combined=combined)
    return _tables(out, top_ks, confidence_threshold)


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
    scanned = _scan_task(runs_dir, task, methods, work, spill_dir, lockstep=True)
    try:
        names = [s.method for s in scanned.scans]
        n = len(scanned.index)
        preds = np.stack([s.preds for s in scanned.scans]) if names else np.zeros((0, n), np.int64)
        rules = _rules(names, scanned.val_top1, top_ks)
        sets = list(dict.fromkeys(_member_rows(names, members) for _, members in rules))
        rows = _block_rows(scanned.num_classes, len(names), len(sets), work)
        conf, combined = _score(_file_blocks(scanned, rows), preds, scanned.num_classes, sets)
    finally:
        scanned.close()
    out = _Outcomes(task=task, methods=names, excluded=scanned.excluded, n_test=n,
                    num_classes=scanned.num_classes, labels=scanned.labels, preds=preds,
                    val_top1=scanned.val_top1, conf=conf, rules=rules, combined=combined)
    return _tables(out, top_ks, confidence_threshold)


def _tables(out: _Outcomes, top_ks: Sequence[int], threshold: float) -> dict[str, pa.Table]:
    """The six tables from the per-example outcomes."""
    meta = _metadata(out, top_ks, threshold)
    task, methods, labels, pred, conf = out.task, out.methods, out.labels, out.preds, out.conf
    correct = pred == labels[None, :]
    confident = conf >= threshold
    conf_right, conf_wrong = confident & correct, confident & ~correct

    agreement, overlap = [], []
    for a, ma in enumerate(methods):
        for b, mb in enumerate(methods):
            ea, eb = ~correct[a], ~correct[b]
            agreement.append({
                "task": task, "method_a": ma, "method_b": mb,
                "agreement": _frac(pred[a] == pred[b]), "error_overlap": _jaccard(ea, eb),
                "both_right": _frac(~ea & ~eb), "both_wrong": _frac(ea & eb),
                "only_a_right": _frac(~ea & eb), "only_b_right": _frac(ea & ~eb),
                "n_errors_a": int(ea.sum()), "n_errors_b": int(eb.sum()),
                "n_errors_both": int((ea & eb).sum())})
            overlap.append({
                "task": task, "method_a": ma, "method_b": mb,
                "confident_right_overlap": _jaccard(conf_right[a], conf_right[b]),
                "confident_wrong_overlap": _jaccard(conf_wrong[a], conf_wrong[b]),
                "n_confident_right_both": int((conf_right[a] & conf_right[b]).sum()),
                "n_confident_wrong_both": int((conf_wrong[a] & conf_wrong[b]).sum()),
                "n_confident_right_a_wrong_b": int((conf_right[a] & conf_wrong[b]).sum())})

    test_top1 = {m: _pct(correct[i]) for i, m in enumerate(methods)}
    accuracy = [{"task": task, "method": m, "n_test": len(labels),
                 "test_top1": test_top1[m], "val_top1": out.val_top1[m],
                 "mean_confidence": float(conf[i].mean()),
                 "ece": expected_calibration_error(conf[i], correct[i])}
                for i, m in enumerate(methods)]

    confidence = []
    for i, m in enumerate(methods):
        n_conf = int(confident[i].sum())
        row: dict[str, Any] = {
            "task": task, "method": m, "threshold": float(threshold),
            "n_test": len(labels), "n_confident": n_conf,
            "confident_right": int(conf_right[i].sum()),
            "confident_wrong": int(conf_wrong[i].sum()),
            # Undefined (null) rather than 0 when nothing is confident.
            "confident_precision": 100.0 * int(conf_right[i].sum()) / n_conf if n_conf else None}
        for prefix, where in zip(HIST_PREFIXES, (None, correct[i], ~correct[i])):
            row |= {f"{prefix}{j}": float(h) for j, h in enumerate(_histogram(conf[i], where=where))}
        confidence.append(row)

    oracle = []
    if methods:
        best = _best(methods, test_top1)  # reported only; never used to choose anything
        oracle.append({"task": task, "n_methods": len(methods), "methods": ",".join(methods),
                       "n_test": len(labels), "oracle_top1": _pct(correct.any(axis=0)),
                       "all_wrong": _pct(~correct.any(axis=0)), "best_single": best,
                       "best_single_top1": test_top1[best] if best else None})

    ensembles = []
    for rule, members in out.rules:
        combined = out.combined[_member_rows(methods, members)]
        best_member = _best(members, test_top1)
        by_val = _best(members, out.val_top1)
        for combiner in COMBINERS:
            top1 = _pct(combined[combiner] == labels)
            ensembles.append({
                "task": task, "rule": rule, "combiner": combiner, "k": len(members),
                "members": ",".join(members), "test_top1": top1, "best_member": best_member,
                "best_member_test_top1": test_top1[best_member],  # type: ignore[index]
                "gain_over_best_member": top1 - test_top1[best_member],  # type: ignore[index]
                "best_single_by_val": by_val,
                "best_single_by_val_test_top1": test_top1[by_val] if by_val else None,
                "gain_over_best_single_by_val": top1 - test_top1[by_val] if by_val else None})

    tables = {"agreement": agreement, "accuracy": accuracy, "oracle": oracle,
              "ensembles": ensembles, "confidence": confidence, "confident_overlap": overlap}
    return {name: _table(name, tables[name], meta) for name in TABLES}


def write_task_analysis(tables: Mapping[str, pa.Table], out_dir: Path) -> None:
    """Write each table to ``out_dir/<name>.parquet`` atomically, replacing earlier versions."""
    out_dir = Path(out_dir)
    for name in tables:
        if not _TABLE_NAME.match(name):
            raise ValueError(f"table name {name!r} is not a plain file name")
    for name, table in tables.items():
        write_parquet(out_dir / f"{name}.parquet", table)


def run_task_analysis(runs_dir: Path, task: str, methods: Sequence[str], *,
                      top_ks: Iterable[int], confidence_threshold: float) -> dict[str, pa.Table]:
    """Analyse one task from its files (streamed: :func:`analyze_files`) and write the tables to
    ``runs/<study>/<task>/analysis/``; returns the tables."""
    tables = analyze_files(runs_dir, task, methods, top_ks=top_ks,
                           confidence_threshold=confidence_threshold)
    write_task_analysis(tables, analysis_dir(runs_dir, task))
    return tables


# Peak RSS of `vpeft analyze` measured by benchmarks/analysis_memory.py (docs/benchmarks.md,
# "Analysis memory"): 358 MiB for 21,750 x 397 x 16 methods, 373 MiB for 50,000 x 1,000 x 16.
# A fixed part (interpreter, numpy, Arrow and its readers, the CLI's config; ~286 MiB) plus the
# block work arrays, plus ~35 bytes per example and method (saved predictions, max probability
# and their masks) and a little per example; the constants below round those up, and
# _MARGIN covers allocator variance and other machines.
_FIXED_MB = 286.0
_PER_EXAMPLE_METHOD_BYTES = 48.0
_PER_EXAMPLE_BYTES = 256.0
_MARGIN = 1.3


# Test-set size assumed for a job sized before its task is prepared and whose study does not fix
# it: above every VTAB-1K test set (dsprites: 73,728) and ImageNet val (50,000).
PLANNING_NUM_TEST = 100_000


def planned_num_test(cfg: Any, task: str) -> int:
    """The test-set size to size ``task``'s jobs by, before they run: the study's
    ``study.data.split_sizes.test``, else the prepared task's manifest (once prepared), else
    :data:`PLANNING_NUM_TEST`."""
    from vpeft.data.shards import read_manifest
    from vpeft.kinds import study_kind

    declared = study_kind(cfg).split_sizes(task)["test"]
    if declared is not None:
        return int(declared)
    prepared = layout.prepared_task(cfg, task)
    if (prepared / "manifest.json").is_file():
        return int(read_manifest(prepared)["splits"]["test"]["count"])
    return PLANNING_NUM_TEST


def memory_mb(num_test: int, num_classes: int, num_methods: int) -> int:
    """Memory (MB) for one ``vpeft analyze`` job: its measured peak for ``num_test`` examples x
    ``num_classes`` x ``num_methods``, with a 30 % margin.

    The streamed analysis never holds a methods x examples x classes array: its blocks hold
    :data:`WORK_BYTES` whatever the class count, so only the per-example outcomes grow with the
    test set (483 MB for sun397-sized, 519 MB for ImageNet-val-sized, 16 methods).
    """
    if min(num_test, num_classes, num_methods) < 0:
        raise ValueError(f"sizes must be >= 0, got {(num_test, num_classes, num_methods)}")
    per_example = _PER_EXAMPLE_METHOD_BYTES * num_methods + _PER_EXAMPLE_BYTES
    peak = _FIXED_MB + WORK_BYTES / 2**20 + num_test * per_example / 2**20
    return int(math.ceil(_MARGIN * peak))

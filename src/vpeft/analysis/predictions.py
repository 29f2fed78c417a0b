"""Reading a task's final test predictions: pass 1 scans each method's file (checks, saved
predictions; logits stay on disk), pass 2 reads the logits a block of examples at a time, from
the files in lockstep or from memory."""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vpeft import layout
from vpeft.analysis.memory import WORK_BYTES
from vpeft.errors import UserError
from vpeft.runs import MethodRuns, RunFileError, StudyRuns


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
# pass 1: checks and saved predictions, file by file


def _read_val_top1(runs: MethodRuns) -> float | None:
    """``best_val_top1`` of a selection.json (float or None), cross-checked against task/method."""
    path = runs.selection_file
    try:
        sel = runs.read_selection()
    except RunFileError as err:  # malformed JSON or not an object; the message names the file
        raise AnalysisInputError(str(err)) from err
    for key, expected in (("task", runs.task), ("method", runs.method)):
        if key in sel.key_order and getattr(sel, key) != expected:
            raise AnalysisInputError(f"{path}: {key} is {getattr(sel, key)!r}, "
                                     f"expected {expected!r}")
    if "best_val_top1" not in sel.key_order:
        raise AnalysisInputError(f"{path}: no best_val_top1")
    value = sel.best_val_top1
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
class ScannedTask:
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


def scan_task(runs_dir: Path, task: str, methods: Sequence[str], work_bytes: int,
              spill_dir: Path | None, lockstep: bool) -> ScannedTask:
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
    study = StudyRuns(Path(runs_dir))
    try:
        for method in methods:
            runs = study.method(task, method)
            val[method] = _read_val_top1(runs)
            path = runs.final().test_predictions_file
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
    return ScannedTask(task=task, scans=usable,
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
    scanned = scan_task(runs_dir, task, methods, WORK_BYTES, None, lockstep=False)
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
# pass 2: the logits, a block of examples at a time

# A block of examples: where its rows go in the sorted test order (a slice or positions), and
# the logits of method i on it (float32 [rows, C]), to be called once per method, in order.
Block = tuple[slice | np.ndarray, Callable[[int], np.ndarray]]


def memory_blocks(logits: np.ndarray, rows: int) -> Iterator[Block]:
    """Blocks of an in-memory [M, N, C] logits array in sorted test order."""
    n = logits.shape[1]
    for start in range(0, n, rows):
        block = slice(start, min(n, start + rows))
        yield block, lambda i, block=block: logits[i, block]


def file_blocks(scanned: ScannedTask, rows: int) -> Iterator[Block]:
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

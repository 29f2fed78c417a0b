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
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
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
    "SCHEMAS",
    "TABLES",
    "AnalysisInputError",
    "TaskPredictions",
    "analysis_dir",
    "analyze_task",
    "ensemble_predict",
    "expected_calibration_error",
    "load_task_predictions",
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


def _layout_cfg(runs_dir: Path) -> Any:
    """A minimal config for :mod:`vpeft.layout`, so run paths here are the pipeline's own paths.

    ``runs_dir`` is the study's run directory ``runs/<study>``.
    """
    from omegaconf import OmegaConf

    return OmegaConf.create({"paths": {"runs": str(runs_dir.parent)},
                             "study": {"name": runs_dir.name}})


def analysis_dir(runs_dir: Path, task: str) -> Path:
    """``runs/<study>/<task>/analysis/`` for the study run directory ``runs_dir``."""
    return layout.analysis_dir(_layout_cfg(Path(runs_dir)), task)


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


@dataclass
class _MethodFile:
    method: str
    path: Path
    index: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    logits: np.ndarray  # float32 [N, C]


def _read_predictions(path: Path, method: str) -> _MethodFile:
    """Read one test_predictions.parquet, rows sorted by test index."""
    table = pq.ParquetFile(path).read()  # read_table would import pyarrow.dataset and pandas
    names = set(table.column_names)
    missing = [c for c in ("index", "label", "pred", "logits") if c not in names]
    if missing:
        raise AnalysisInputError(f"{path}: missing columns {missing}")
    n = table.num_rows
    for col in ("index", "label", "pred", "logits"):
        if table.column(col).null_count:
            raise AnalysisInputError(f"{path}: column {col!r} has nulls")
    logits_col = table.column("logits")
    if not pa.types.is_fixed_size_list(logits_col.type):
        raise AnalysisInputError(f"{path}: logits must be fixed_size_list<float>, got "
                                 f"{logits_col.type}")
    c = logits_col.type.list_size
    flat = logits_col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    logits = np.asarray(flat, dtype=np.float32).reshape(n, c)
    index = table.column("index").to_numpy().astype(np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if n > 1 and np.any(index[1:] == index[:-1]):
        raise AnalysisInputError(f"{path}: duplicate test indices")
    return _MethodFile(method=method, path=path, index=index,
                       labels=table.column("label").to_numpy().astype(np.int64)[order],
                       preds=table.column("pred").to_numpy().astype(np.int64)[order],
                       logits=logits[order])


def load_task_predictions(runs_dir: Path, task: str, methods: Sequence[str]) -> TaskPredictions:
    """Load and align the final test predictions of ``methods`` on ``task``.

    ``runs_dir`` is the study's run directory ``runs/<study>``. Every method with test rows must
    cover the same test indices with the same labels and class count (else
    :class:`AnalysisInputError` naming the files). Methods with no rows or non-finite logits (a
    diverged final run) are moved to ``excluded``. A missing file raises ``FileNotFoundError``:
    analysing a half-finished task would silently drop a method.
    """
    runs_dir = Path(runs_dir)
    methods = list(methods)
    if not methods:
        raise ValueError(f"task {task}: no methods to analyse")
    if len(set(methods)) != len(methods):
        raise ValueError(f"task {task}: duplicate methods in {methods}")
    if layout.ANALYSIS_DIR in methods:
        raise ValueError(f"method name {layout.ANALYSIS_DIR!r} collides with the analysis directory")
    cfg = _layout_cfg(runs_dir)

    reasons: dict[str, str] = {}
    files: list[_MethodFile] = []
    val: dict[str, float | None] = {}
    for method in methods:
        val[method] = _read_val_top1(layout.selection_file(cfg, task, method), task, method)
        path = layout.final_dir(cfg, task, method) / layout.TEST_PREDICTIONS
        mf = _read_predictions(path, method)
        if len(mf.index) == 0:
            reasons[method] = "diverged: no test predictions"
        else:
            files.append(mf)

    # Alignment is checked on every file with rows, diverged or not, so a wrong file is never
    # hidden behind an exclusion.
    ref = files[0] if files else None
    for mf in files[1:]:
        assert ref is not None
        if not np.array_equal(mf.index, ref.index):
            only_a = np.setdiff1d(mf.index, ref.index).size
            only_b = np.setdiff1d(ref.index, mf.index).size
            raise AnalysisInputError(
                f"test index sets differ between {ref.path} ({len(ref.index)} rows) and {mf.path} "
                f"({len(mf.index)} rows; {only_a} indices only in the latter, {only_b} only in "
                "the former)")
        if not np.array_equal(mf.labels, ref.labels):
            bad = int(np.sum(mf.labels != ref.labels))
            raise AnalysisInputError(f"test labels differ between {ref.path} and {mf.path} "
                                     f"({bad} examples)")
        if mf.logits.shape[1] != ref.logits.shape[1]:
            raise AnalysisInputError(f"class counts differ: {ref.path} has {ref.logits.shape[1]} "
                                     f"logits per row, {mf.path} has {mf.logits.shape[1]}")

    usable: list[_MethodFile] = []
    for mf in files:
        if not np.isfinite(mf.logits).all():
            reasons[mf.method] = "diverged: non-finite test logits"
            continue
        c = mf.logits.shape[1]
        if mf.preds.min() < 0 or mf.preds.max() >= c:
            raise AnalysisInputError(f"{mf.path}: pred outside [0, {c})")
        if mf.labels.min() < 0 or mf.labels.max() >= c:
            raise AnalysisInputError(f"{mf.path}: label outside [0, {c})")
        # The saved pred must be an argmax of the saved logits (any of them on exact ties), or
        # the file's columns do not belong together.
        rows = np.arange(len(mf.index))
        if np.any(mf.logits[rows, mf.preds] < mf.logits.max(axis=1)):
            raise AnalysisInputError(f"{mf.path}: pred is not the argmax of logits")
        usable.append(mf)

    if usable:
        index, labels = usable[0].index, usable[0].labels
        logits = np.stack([mf.logits for mf in usable])
        preds = np.stack([mf.preds for mf in usable])
    else:  # every method excluded: empty tables, but keep the test set's shape if known
        num_classes = ref.logits.shape[1] if ref is not None else 1
        index = ref.index if ref is not None else np.zeros(0, np.int64)
        labels = ref.labels if ref is not None else np.zeros(0, np.int64)
        logits = np.zeros((0, len(index), num_classes), np.float32)
        preds = np.zeros((0, len(index)), np.int64)
    names = [mf.method for mf in usable]
    return TaskPredictions(
        task=task, methods=names, excluded=[(m, reasons[m]) for m in methods if m in reasons],
        index=index, labels=labels, logits=logits,
        val_top1={m: val[m] for m in names}, preds=preds)


# --------------------------------------------------------------------------------------------
# building blocks


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    x = np.array(logits, dtype=np.float64)  # a copy: the steps below work in place
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class _Probs:
    """Per-method softmax probabilities, cached while they fit in ``budget`` bytes.

    Softmax dominates the run time (ensembles reuse each method several times), but all of them
    at once may not fit in memory for a big test set, so past the budget they are recomputed.
    """

    def __init__(self, logits: np.ndarray, budget: int = 1 << 30) -> None:
        self._logits = logits
        self._cache: dict[int, np.ndarray] = {}
        self._room = budget

    def __call__(self, i: int) -> np.ndarray:
        if i in self._cache:
            return self._cache[i]
        probs = softmax(self._logits[i])
        if probs.nbytes <= self._room:
            self._cache[i] = probs
            self._room -= probs.nbytes
        return probs


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
    return _ensemble_all(logits, range(len(logits)), _Probs(logits, budget=0))[combiner]


def _ensemble_all(logits: np.ndarray, members: Iterable[int], probs: _Probs,
                  preds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every combiner's prediction for the ``members`` (rows of ``logits`` [M, N, C]).

    ``preds`` [M, N] are the members' own predictions for the vote (default: argmax of logits).
    """
    _, n, c = logits.shape
    # Sums over members, one at a time: no [K, N, C] float64 array is ever built.
    prob_sum = np.zeros((n, c), np.float64)
    logit_sum = np.zeros((n, c), np.float64)
    votes = np.zeros((n, c), np.int64)
    rows = np.arange(n)
    for i in members:
        member = logits[i]
        prob_sum += probs(i)
        logit_sum += member
        votes[rows, member.argmax(axis=1) if preds is None else preds[i]] += 1
    tied = votes == votes.max(axis=1, keepdims=True)
    # argmax of a sum == argmax of the mean (same divisor); the sum avoids a rounding step.
    return {"prob_avg": prob_sum.argmax(axis=1).astype(np.int64),
            "logit_avg": logit_sum.argmax(axis=1).astype(np.int64),
            "majority_vote": np.where(tied, prob_sum, -np.inf).argmax(axis=1).astype(np.int64)}


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
# the analysis


def _metadata(preds: TaskPredictions, top_ks: Sequence[int], threshold: float) -> dict[str, Any]:
    return {"task": preds.task, "methods": list(preds.methods),
            "excluded": [{"method": m, "reason": r} for m, r in preds.excluded],
            "n_test": len(preds.index), "num_classes": preds.num_classes,
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


def analyze_task(preds: TaskPredictions, *, top_ks: Iterable[int] = (2, 3, 5),
                 confidence_threshold: float = 0.9) -> dict[str, pa.Table]:
    """All six analysis tables of one task (see the module docstring), keyed by :data:`TABLES`."""
    top_ks = [int(k) for k in top_ks]
    if any(k < 1 for k in top_ks):
        raise ValueError(f"top_ks must be >= 1, got {top_ks}")
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
    meta = _metadata(preds, top_ks, confidence_threshold)
    task, methods, labels = preds.task, preds.methods, preds.labels
    assert preds.preds is not None
    pred = preds.preds
    correct = pred == labels[None, :]
    # Max softmax probability per method and example.
    probs = _Probs(preds.logits)
    conf = np.stack([probs(i).max(axis=1) for i in range(len(methods))]) if methods else \
        np.zeros((0, len(labels)))
    confident = conf >= confidence_threshold
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
                 "test_top1": test_top1[m], "val_top1": preds.val_top1[m],
                 "mean_confidence": float(conf[i].mean()),
                 "ece": expected_calibration_error(conf[i], correct[i])}
                for i, m in enumerate(methods)]

    confidence = []
    for i, m in enumerate(methods):
        n_conf = int(confident[i].sum())
        row: dict[str, Any] = {
            "task": task, "method": m, "threshold": float(confidence_threshold),
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
    rules: list[tuple[str, list[str]]] = [("all", list(methods))] if methods else []
    for k in top_ks:
        members = top_k_by_val(methods, preds.val_top1, k)
        if members is not None:  # skip a k larger than the methods with a val top-1
            rules.append((f"top{k}_by_val", members))
    cache: dict[tuple[str, ...], dict[str, np.ndarray]] = {}  # rules often share members
    for rule, members in rules:
        if tuple(members) not in cache:
            idx = [methods.index(m) for m in members]
            cache[tuple(members)] = _ensemble_all(preds.logits, idx, probs, pred)
        combined = cache[tuple(members)]
        best_member = _best(members, test_top1)
        by_val = _best(members, preds.val_top1)
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
                      top_ks: Iterable[int] = (2, 3, 5),
                      confidence_threshold: float = 0.9) -> dict[str, pa.Table]:
    """Load, analyse and write one task to ``runs/<study>/<task>/analysis/``; returns the tables."""
    preds = load_task_predictions(runs_dir, task, methods)
    tables = analyze_task(preds, top_ks=top_ks, confidence_threshold=confidence_threshold)
    write_task_analysis(tables, analysis_dir(runs_dir, task))
    return tables

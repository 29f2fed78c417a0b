"""The six analysis tables of a task (see vpeft.analysis): their schemas and settings, the
per-example measures behind them, and the tables built from a task's outcomes."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vpeft.analysis.ensembles import COMBINERS, member_rows
from vpeft.io import write_parquet

METADATA_KEY = b"vpeft.analysis"  # schema-metadata key of every table: JSON (methods, excluded...)
ECE_BINS = 15
HIST_BINS = 10
# Histogram column prefixes of the confidence table: all predictions, right ones, wrong ones.
HIST_PREFIXES: tuple[str, ...] = ("hist_", "hist_right_", "hist_wrong_")

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


def _best(methods: Sequence[str], score: Mapping[str, float | None]) -> str | None:
    """The method with the highest non-None score; the first in ``methods`` on ties."""
    best: str | None = None
    for m in methods:
        s = score.get(m)
        if s is not None and (best is None or s > score[best]):  # type: ignore[operator]
            best = m
    return best


@dataclass
class Outcomes:
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


def _metadata(out: Outcomes, top_ks: Sequence[int], threshold: float) -> dict[str, Any]:
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


def build_tables(out: Outcomes, top_ks: Sequence[int], threshold: float) -> dict[str, pa.Table]:
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
        combined = out.combined[member_rows(methods, members)]
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

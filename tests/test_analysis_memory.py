"""The streamed analysis gives the tables of the all-in-memory algorithm, within bounded memory.

``_reference_tables`` is the analysis as it was before streaming (every method's logits stacked,
each softmax over the whole test set, ensemble sums over the whole test set), kept here
deliberately plain so the streamed code is compared with an independent implementation.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpeft import analysis
from vpeft.analysis import (
    COMBINERS,
    METADATA_KEY,
    SCHEMAS,
    TABLES,
    analyze_files,
    analyze_task,
    load_task_predictions,
    memory_mb,
)
from vpeft.io import write_json

TASK = "sun397"


# --------------------------------------------------------------------------------------------
# the reference: the pre-streaming algorithm, whole arrays at once


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _jac(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _top_k(methods: list[str], val: dict, k: int) -> list[str] | None:
    ranked = sorted((i for i, m in enumerate(methods) if val[m] is not None),
                    key=lambda i: (-val[methods[i]], i))
    return None if len(ranked) < k else [methods[i] for i in sorted(ranked[:k])]


def _best(methods: list[str], score: dict) -> str | None:
    best = None
    for m in methods:
        if score.get(m) is not None and (best is None or score[m] > score[best]):
            best = m
    return best


def _ece(conf: np.ndarray, right: np.ndarray, bins: int = 15) -> float:
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.abs(np.bincount(which, weights=right.astype(np.float64), minlength=bins)
                 - np.bincount(which, weights=conf, minlength=bins))
    return float(100.0 * gap.sum() / conf.size)


def _hist(conf: np.ndarray, where: np.ndarray | None) -> np.ndarray:
    which = np.clip(np.floor(conf * 10).astype(np.int64), 0, 9)
    w = None if where is None else where.astype(np.float64)
    return np.bincount(which, weights=w, minlength=10) / max(conf.size, 1)


def _reference_tables(task: str, methods: list[str], excluded: list[tuple[str, str]],
                      labels: np.ndarray, logits: np.ndarray, pred: np.ndarray, val: dict,
                      top_ks: list[int], thr: float, num_classes: int) -> dict[str, pa.Table]:
    """The six tables from sorted, stacked arrays: logits [M, N, C], pred [M, N]."""
    n = len(labels)
    probs = [_softmax(logits[i]) for i in range(len(methods))]  # all held at once
    conf = np.stack([p.max(axis=1) for p in probs]) if methods else np.zeros((0, n))
    correct = pred == labels[None, :]
    cr, cw = (conf >= thr) & correct, (conf >= thr) & ~correct
    frac = lambda m: float(np.count_nonzero(m) / m.size)  # noqa: E731
    pct = lambda m: float(100.0 * np.count_nonzero(m) / m.size)  # noqa: E731
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
    for a, ma in enumerate(methods):
        for b, mb in enumerate(methods):
            ea, eb = ~correct[a], ~correct[b]
            rows["agreement"].append({
                "task": task, "method_a": ma, "method_b": mb, "agreement": frac(pred[a] == pred[b]),
                "error_overlap": _jac(ea, eb), "both_right": frac(~ea & ~eb),
                "both_wrong": frac(ea & eb), "only_a_right": frac(~ea & eb),
                "only_b_right": frac(ea & ~eb), "n_errors_a": int(ea.sum()),
                "n_errors_b": int(eb.sum()), "n_errors_both": int((ea & eb).sum())})
            rows["confident_overlap"].append({
                "task": task, "method_a": ma, "method_b": mb,
                "confident_right_overlap": _jac(cr[a], cr[b]),
                "confident_wrong_overlap": _jac(cw[a], cw[b]),
                "n_confident_right_both": int((cr[a] & cr[b]).sum()),
                "n_confident_wrong_both": int((cw[a] & cw[b]).sum()),
                "n_confident_right_a_wrong_b": int((cr[a] & cw[b]).sum())})
    top1 = {m: pct(correct[i]) for i, m in enumerate(methods)}
    for i, m in enumerate(methods):
        rows["accuracy"].append({"task": task, "method": m, "n_test": n, "test_top1": top1[m],
                                 "val_top1": val[m], "mean_confidence": float(conf[i].mean()),
                                 "ece": _ece(conf[i], correct[i])})
        k = int((conf[i] >= thr).sum())
        row = {"task": task, "method": m, "threshold": thr, "n_test": n, "n_confident": k,
               "confident_right": int(cr[i].sum()), "confident_wrong": int(cw[i].sum()),
               "confident_precision": 100.0 * int(cr[i].sum()) / k if k else None}
        for prefix, where in zip(("hist_", "hist_right_", "hist_wrong_"),
                                 (None, correct[i], ~correct[i])):
            row |= {f"{prefix}{j}": float(h) for j, h in enumerate(_hist(conf[i], where))}
        rows["confidence"].append(row)
    if methods:
        best = _best(methods, top1)
        rows["oracle"].append({"task": task, "n_methods": len(methods),
                               "methods": ",".join(methods), "n_test": n,
                               "oracle_top1": pct(correct.any(axis=0)),
                               "all_wrong": pct(~correct.any(axis=0)), "best_single": best,
                               "best_single_top1": top1[best]})
    rules = [("all", list(methods))] if methods else []
    rules += [(f"top{k}_by_val", _top_k(methods, val, k)) for k in top_ks]
    for rule, members in [(r, m) for r, m in rules if m is not None]:
        idx = [methods.index(m) for m in members]
        prob_sum = np.zeros((n, num_classes))
        logit_sum = np.zeros((n, num_classes))
        votes = np.zeros((n, num_classes), np.int64)
        for i in idx:
            prob_sum += probs[i]
            logit_sum += logits[i]
            votes[np.arange(n), pred[i]] += 1
        tied = votes == votes.max(axis=1, keepdims=True)
        out = {"prob_avg": prob_sum.argmax(1), "logit_avg": logit_sum.argmax(1),
               "majority_vote": np.where(tied, prob_sum, -np.inf).argmax(1)}
        bm, bv = _best(members, top1), _best(members, val)
        for combiner in COMBINERS:
            t = pct(out[combiner] == labels)
            rows["ensembles"].append({
                "task": task, "rule": rule, "combiner": combiner, "k": len(members),
                "members": ",".join(members), "test_top1": t, "best_member": bm,
                "best_member_test_top1": top1[bm], "gain_over_best_member": t - top1[bm],
                "best_single_by_val": bv,
                "best_single_by_val_test_top1": top1[bv] if bv else None,
                "gain_over_best_single_by_val": t - top1[bv] if bv else None})
    meta = {"task": task, "methods": methods,
            "excluded": [{"method": m, "reason": r} for m, r in excluded], "n_test": n,
            "num_classes": num_classes, "top_ks": top_ks, "confidence_threshold": thr,
            "ece_bins": 15, "hist_bins": 10, "combiners": list(COMBINERS)}
    schema = {name: SCHEMAS[name].with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
              for name in TABLES}
    return {name: pa.Table.from_pylist(rows[name], schema=schema[name]) for name in TABLES}


# --------------------------------------------------------------------------------------------
# a random task in the pipeline's layout

N, C = 203, 6


def _write(study: Path, method: str, index: np.ndarray, labels: np.ndarray, pred: np.ndarray,
           logits: np.ndarray, val: float | None) -> None:
    """selection.json and final/test_predictions.parquet as select and evaluate write them;
    small row groups, so blocks cross row-group boundaries."""
    n, c = logits.shape if len(logits) else (0, 1)
    flat = pa.array(logits.reshape(-1), pa.float32())
    table = pa.table({
        "index": pa.array(index, pa.int64()), "label": pa.array(labels, pa.int64()),
        "pred": pa.array(pred, pa.int64()),
        "logits": pa.FixedSizeListArray.from_arrays(flat, c) if n else
        pa.array([], pa.list_(pa.float32(), 1))})
    path = study / TASK / method / "final" / "test_predictions.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=37)
    write_json(study / TASK / method / "selection.json",
               {"task": TASK, "method": method, "best_val_top1": val})


@pytest.fixture
def random_task(tmp_path: Path) -> dict[str, Any]:
    """Eight methods: six usable (one listing its rows in another order, one with exact logit
    ties whose saved pred is not the lowest tied class), one diverged (NaN), one without rows;
    val top-1 with ties and a None. The sorted arrays are returned for the reference."""
    rng = np.random.default_rng(7)
    study = tmp_path / "runs" / "demo"
    index = np.sort(rng.choice(10 * N, N, replace=False))  # gaps: not 0..N-1
    labels = rng.integers(0, C, N)
    vals = {"a": 70.0, "b": 80.0, "c": None, "d": 80.0, "e": 65.5, "f": 71.0, "nan": 99.0,
            "empty": None}
    usable, logits, preds = [], [], []
    for m in vals:
        lg = rng.normal(0.0, 2.0, (N, C)).astype(np.float32)
        lg[np.arange(N), labels] += rng.uniform(0, 3, N).astype(np.float32)
        pred = lg.argmax(1)
        if m == "d":  # coarse logits: exact ties; save the highest tied class
            lg = np.round(lg).astype(np.float32)
            pred = C - 1 - lg[:, ::-1].argmax(1)
        if m == "e":
            lg *= 8  # sharp: many confident predictions
        if m == "nan":
            lg[17, 2] = np.nan
        if m == "empty":
            _write(study, m, index[:0], labels[:0], pred[:0], lg[:0], vals[m])
            continue
        order = rng.permutation(N) if m == "c" else np.arange(N)
        _write(study, m, index[order], labels[order], pred[order], lg[order], vals[m])
        if m != "nan":
            usable.append(m)
            logits.append(lg)
            preds.append(pred)
    return {"study": study, "methods": list(vals), "usable": usable, "labels": labels,
            "logits": np.stack(logits), "preds": np.stack(preds).astype(np.int64),
            "val": {m: vals[m] for m in usable},
            "excluded": [("nan", "diverged: non-finite test logits"),
                         ("empty", "diverged: no test predictions")]}


TOP_KS = [1, 2, 3, 5, 9]  # 9: more than the methods with a val top-1, skipped
THRESHOLD = 0.5


@pytest.fixture
def reference(random_task: dict) -> dict[str, pa.Table]:
    t = random_task
    return _reference_tables(TASK, t["usable"], t["excluded"], t["labels"], t["logits"],
                             t["preds"], t["val"], TOP_KS, THRESHOLD, C)


def _assert_identical(tables: dict[str, pa.Table], reference: dict[str, pa.Table]) -> None:
    assert list(tables) == list(reference)
    for name in TABLES:
        assert reference[name].num_rows > 0, name
        assert tables[name].schema.metadata == reference[name].schema.metadata, name
        # Exact equality, floats included: the streamed sums take the same order per element.
        assert tables[name].equals(reference[name], check_metadata=True), \
            (name, tables[name].to_pylist(), reference[name].to_pylist())


@pytest.mark.parametrize("work_bytes", [1, 20_000, None])  # one example per block ... all
def test_streamed_tables_identical_to_reference(random_task: dict, reference: dict,
                                                work_bytes: int | None) -> None:
    t = random_task
    before = sorted(p.name for p in (t["study"] / TASK).iterdir())
    tables = analyze_files(t["study"], TASK, t["methods"], top_ks=TOP_KS,
                           confidence_threshold=THRESHOLD, work_bytes=work_bytes)
    _assert_identical(tables, reference)
    rules = {r["rule"] for r in tables["ensembles"].to_pylist()}
    assert rules == {"all", "top1_by_val", "top2_by_val", "top3_by_val", "top5_by_val"}
    # method c was spilled to an anonymous temporary file: nothing is left behind
    assert sorted(p.name for p in (t["study"] / TASK).iterdir()) == before


@pytest.mark.parametrize("work_bytes", [1, None])
def test_in_memory_tables_identical_to_reference(random_task: dict, reference: dict,
                                                 work_bytes: int | None) -> None:
    t = random_task
    preds = load_task_predictions(t["study"], TASK, t["methods"])
    assert np.array_equal(preds.logits, t["logits"]) and np.array_equal(preds.preds, t["preds"])
    tables = analyze_task(preds, top_ks=TOP_KS, confidence_threshold=THRESHOLD,
                          work_bytes=work_bytes)
    _assert_identical(tables, reference)


def test_streamed_errors_name_the_file(random_task: dict) -> None:
    t = random_task
    bad = t["study"] / TASK / "b" / "final" / "test_predictions.parquet"
    table = pq.ParquetFile(bad).read()
    pred = table.column("pred").to_numpy().copy()
    pred[50] = (pred[50] + 1) % C  # no longer the argmax of its logits
    pq.write_table(table.set_column(2, "pred", pa.array(pred, pa.int64())), bad,
                   row_group_size=37)
    with pytest.raises(analysis.AnalysisInputError, match="argmax") as err:
        analyze_files(t["study"], TASK, t["methods"], top_ks=TOP_KS,
                      confidence_threshold=THRESHOLD, work_bytes=1)
    assert str(bad) in str(err.value)


def test_memory_mb_grows_with_the_sizes() -> None:
    small, sun, inet = memory_mb(1000, 10, 2), memory_mb(21_750, 397, 16), \
        memory_mb(50_000, 1000, 16)
    assert small < sun < inet
    # the targets, with the margin included
    assert sun <= 600 and inet <= 1500
    with pytest.raises(ValueError):
        memory_mb(-1, 10, 2)


# --------------------------------------------------------------------------------------------
# real peak memory: `vpeft analyze` in a child process (benchmarks/analysis_memory.py)


def test_analyze_peak_memory_is_bounded_and_sublinear(tmp_path: Path) -> None:
    """Peak RSS of the workflow's command at two test-set sizes (x8): it stays under
    memory_mb and grows by far less than the logits (which the old algorithm held twice)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.analysis_memory import Size, analyze_cmd, fabricate, measure, study_methods

    peaks, logits_mib = {}, {}
    for n in (1500, 12_000):
        size = Size("vtab1k", TASK, n, 397)
        runs = tmp_path / str(n) / "runs"
        methods = study_methods(size, runs)
        fabricate(runs / "vtab1k", TASK, methods, n, 397)
        result = measure(analyze_cmd(size, runs), tmp_path / f"{n}.log")
        assert result["returncode"] == 0, Path(result["log"]).read_text()[-2000:]
        assert (runs / "vtab1k" / TASK / "analysis" / "ensembles.parquet").is_file()
        peaks[n] = result["peak_rss_mib"]
        logits_mib[n] = len(methods) * n * 397 * 4 / 2**20
        assert peaks[n] <= memory_mb(n, 397, len(methods)), (n, peaks[n])
    grown = peaks[12_000] - peaks[1500]
    assert grown < 0.2 * (logits_mib[12_000] - logits_mib[1500]), (peaks, logits_mib)

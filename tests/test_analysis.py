"""Tests for vpeft.analysis on tiny crafted prediction files in the pipeline's run layout."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpeft import analysis
from vpeft.analysis import (
    TABLES,
    AnalysisInputError,
    TaskPredictions,
    analyze_task,
    ensemble_predict,
    load_task_predictions,
    run_task_analysis,
    table_metadata,
    top_k_by_val,
    write_task_analysis,
)
from vpeft.io import write_json

TASK = "cifar"
# The pipeline's analysis settings (params/config.yaml: analysis), which these tests were built on.
SETTINGS = {"top_ks": (2, 3, 5), "confidence_threshold": 0.9}
C = 4
N = 20
LABELS = np.arange(N) % C


def _write(study: Path, method: str, logits: np.ndarray, *, labels: Sequence[int] = LABELS,
           index: Sequence[int] | None = None, val: float | None = 50.0,
           pred: np.ndarray | None = None) -> Path:
    """Write one method's selection.json and final/test_predictions.parquet (pipeline format)."""
    logits = np.asarray(logits, np.float32)
    n, c = logits.shape
    index = np.arange(n) if index is None else np.asarray(index)
    if pred is None:
        pred = logits.argmax(1) if n else np.zeros(0)
    flat = pa.array(logits.reshape(-1), pa.float32())
    table = pa.table({
        "index": pa.array(index, pa.int64()),
        "label": pa.array(np.asarray(labels)[:n], pa.int64()),
        "pred": pa.array(pred, pa.int64()),
        "logits": pa.FixedSizeListArray.from_arrays(flat, c) if n else
        pa.array([], pa.list_(pa.float32(), 1)),
    })
    mdir = study / TASK / method
    path = mdir / "final" / "test_predictions.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    write_json(mdir / "selection.json", {"task": TASK, "method": method, "best_val_top1": val})
    return path


def _onehot(pred: np.ndarray, scale: float = 10.0) -> np.ndarray:
    """Logits whose argmax is ``pred`` with max softmax prob e^s / (e^s + 3)."""
    out = np.zeros((len(pred), C), np.float32)
    out[np.arange(len(pred)), pred] = scale
    return out


def _preds(correct: set[int], wrong_shift: int) -> np.ndarray:
    """Predictions right on ``correct`` and ``label + wrong_shift`` elsewhere."""
    return np.array([y if i in correct else (y + wrong_shift) % C for i, y in enumerate(LABELS)])


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    """A: right on 0..15, B: right on 4..19, Cm: right on 0..9 (unsure on 10..14), D: all right."""
    study = tmp_path / "runs" / "demo"
    _write(study, "A", _onehot(_preds(set(range(16)), 1)), val=70.0)
    _write(study, "B", _onehot(_preds(set(range(4, 20)), 1)), val=80.0)
    logits_c = _onehot(_preds(set(range(10)), 2))
    logits_c[10:15] *= 0.05  # max prob e^.5 / (e^.5 + 3) ~ 0.35: not confident
    _write(study, "Cm", logits_c, val=60.0)
    _write(study, "D", _onehot(LABELS), val=None)
    return study


def _rows(table: pa.Table, **match) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in match.items())]


def _one(table: pa.Table, **match) -> dict:
    rows = _rows(table, **match)
    assert len(rows) == 1, (match, rows)
    return rows[0]


def test_agreement_and_error_overlap(crafted: Path) -> None:
    preds = load_task_predictions(crafted, TASK, ["A", "B", "Cm", "D"])
    assert preds.methods == ["A", "B", "Cm", "D"] and preds.excluded == []
    assert preds.val_top1 == {"A": 70.0, "B": 80.0, "Cm": 60.0, "D": None}
    agr = analyze_task(preds, **SETTINGS)["agreement"]
    assert agr.num_rows == 16 and set(agr.column("task").to_pylist()) == {TASK}
    for m in preds.methods:
        row = _one(agr, method_a=m, method_b=m)
        assert row["agreement"] == 1.0 and row["error_overlap"] == 1.0  # D: both empty -> 1.0
        assert row["only_a_right"] == row["only_b_right"] == 0.0
    ab = _one(agr, method_a="A", method_b="B")
    # Both right on 4..15 (12 of 20); errors {16..19} vs {0..3} are disjoint.
    assert ab["agreement"] == pytest.approx(0.6) and ab["error_overlap"] == 0.0
    assert ab["both_wrong"] == 0.0
    assert ab["only_a_right"] == ab["only_b_right"] == pytest.approx(0.2)
    ac = _one(agr, method_a="A", method_b="Cm")
    # Same on 0..9; errors {16..19} vs {10..19}: 4 / 10; on 16..19 both wrong but differently.
    assert ac["agreement"] == pytest.approx(0.5) and ac["error_overlap"] == pytest.approx(0.4)
    assert ac["both_wrong"] == pytest.approx(0.2)
    assert ac["only_a_right"] == pytest.approx(0.3) and ac["only_b_right"] == 0.0
    ca = _one(agr, method_a="Cm", method_b="A")
    assert ca["only_a_right"] == 0.0 and ca["only_b_right"] == pytest.approx(0.3)
    assert _one(agr, method_a="B", method_b="Cm")["error_overlap"] == 0.0
    ad = _one(agr, method_a="A", method_b="D")
    assert ad["error_overlap"] == 0.0 and ad["agreement"] == pytest.approx(0.8)
    for r in agr.to_pylist():
        assert r["both_right"] + r["both_wrong"] + r["only_a_right"] + r["only_b_right"] == \
            pytest.approx(1.0)


def test_oracle_is_any_right(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    _write(study, "A", _onehot(_preds(set(range(10)), 1)))
    _write(study, "B", _onehot(_preds(set(range(5, 15)), 2)))
    _write(study, "Cm", _onehot(_preds({0, 1, 2}, 3)))
    oracle = analyze_task(load_task_predictions(study, TASK, ["A", "B", "Cm"]), **SETTINGS)["oracle"]
    row = _one(oracle)
    assert row["oracle_top1"] == pytest.approx(75.0) and row["all_wrong"] == pytest.approx(25.0)
    # A and B tie at 50 %: the first in the given order is reported.
    assert row["best_single"] == "A" and row["best_single_top1"] == pytest.approx(50.0)
    assert row["n_methods"] == 3 and row["methods"] == "A,B,Cm"


def _ensemble_logits() -> dict[str, np.ndarray]:
    """Three members; example 0 (label 0) and 1 (label 2) discriminate the combiners, the other
    18 are predicted right by every member."""
    base = _onehot(LABELS, 4.0)
    m1, m2, m3 = base.copy(), base.copy(), base.copy()
    labels = LABELS.copy()
    assert labels[0] == 0 and labels[2] == 2
    # Example 0 (label 0): gaps 3 vs -1, -1. logit_avg [1, 2/3] -> 0. prob_avg: (s(3) + 2 s(-1))/3
    # = 0.4968 < (s(-3) + 2 s(1))/3 = 0.5032 -> 1. Votes: 1, 1 vs 0 -> 1.
    m1[0], m2[0], m3[0] = [3, 0, -30, -30], [0, 1, -30, -30], [0, 1, -30, -30]
    # Example 2 (label 2): every member votes differently (a 3-way tie). Summed probabilities:
    # class 0 ~ 0.787 + 0.212 + 0.007 = 1.006, class 1 ~ 0.107 + 0.576 + 0.007 = 0.689,
    # class 2 ~ 0.107 + 0.212 + 0.987 = 1.305 -> 2 (not the lowest tied id 0).
    m1[2], m2[2], m3[2] = [2, 0, 0, -30], [0, 1, 0, -30], [0, 0, 5, -30]
    return {"m1": m1, "m2": m2, "m3": m3}


def test_ensemble_combiners_by_hand(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    vals = {"m1": 80.0, "m2": 90.0, "m3": 70.0}
    for m, lg in _ensemble_logits().items():
        _write(study, m, lg, val=vals[m])
    preds = load_task_predictions(study, TASK, ["m1", "m2", "m3"])
    tables = analyze_task(preds, **SETTINGS)
    acc = {r["method"]: r["test_top1"] for r in tables["accuracy"].to_pylist()}
    assert acc == pytest.approx({"m1": 95.0, "m2": 90.0, "m3": 95.0})
    ens = tables["ensembles"]
    # top5 is skipped: only 3 methods have a val top-1.
    assert sorted(set(ens.column("rule").to_pylist())) == ["all", "top2_by_val", "top3_by_val"]
    expected_all = {"prob_avg": 95.0, "logit_avg": 100.0, "majority_vote": 95.0}
    for combiner, top1 in expected_all.items():
        row = _one(ens, rule="all", combiner=combiner)
        assert row["members"] == "m1,m2,m3" and row["k"] == 3
        assert row["test_top1"] == pytest.approx(top1)
        assert row["best_member"] == "m1" and row["best_member_test_top1"] == pytest.approx(95.0)
        assert row["gain_over_best_member"] == pytest.approx(top1 - 95.0)
        assert row["best_single_by_val"] == "m2"
        assert row["best_single_by_val_test_top1"] == pytest.approx(90.0)
        assert row["gain_over_best_single_by_val"] == pytest.approx(top1 - 90.0)
    # top2 by val = m2 (90), m1 (80): example 0 -> 0 by every combiner (majority: 1-1 tie, summed
    # prob s(3) + s(-1) > s(-3) + s(1)); example 2 -> 0 (wrong) by every combiner.
    for combiner in analysis.COMBINERS:
        row = _one(ens, rule="top2_by_val", combiner=combiner)
        assert row["members"] == "m1,m2" and row["test_top1"] == pytest.approx(95.0)
        assert row["gain_over_best_single_by_val"] == pytest.approx(5.0)
    assert _one(ens, rule="top3_by_val", combiner="logit_avg")["test_top1"] == pytest.approx(100.0)


def test_majority_vote_exact_tie_goes_to_lowest_class() -> None:
    # Mirror-image members: votes tie 1-1 and the summed probabilities are exactly equal.
    logits = np.array([[[0.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]], np.float32)
    assert ensemble_predict(logits, "majority_vote").tolist() == [0]
    assert ensemble_predict(logits[::-1], "majority_vote").tolist() == [0]
    # A tie broken by summed probability, not by the lower id.
    logits = np.array([[[2.0, 0.0, 0.0, -30]], [[0.0, 1.0, 0.0, -30]], [[0.0, 0.0, 5.0, -30]]])
    assert ensemble_predict(logits, "majority_vote").tolist() == [2]
    with pytest.raises(ValueError, match="unknown combiner"):
        ensemble_predict(logits, "median")


def _val_vs_test_study(study: Path, labels: np.ndarray) -> None:
    """Test top-1: a 60, b 90, c 70, d 80; val top-1: a 95, b 50, c 90, d None."""
    vals = {"a": 95.0, "b": 50.0, "c": 90.0, "d": None}
    n_right = {"a": 12, "b": 18, "c": 14, "d": 16}
    for m, k in n_right.items():
        pred = np.array([y if i < k else (y + 1) % C for i, y in enumerate(LABELS)])
        _write(study, m, _onehot(pred), labels=labels, val=vals[m])


def test_top_k_follows_validation_not_test(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    _val_vs_test_study(study, LABELS)
    preds = load_task_predictions(study, TASK, ["a", "b", "c", "d"])
    tables = analyze_task(preds, top_ks=(1, 2, 3, 4), confidence_threshold=0.9)
    ens = tables["ensembles"]
    members = {r["rule"]: r["members"] for r in ens.to_pylist()}
    # Best by test is b, but top1/top2 by val are a / a,c; d (no val) is never chosen and top4
    # is skipped (only 3 methods have a val top-1).
    assert members == {"all": "a,b,c,d", "top1_by_val": "a", "top2_by_val": "a,c",
                       "top3_by_val": "a,b,c"}
    assert _one(tables["oracle"])["best_single"] == "b"
    assert _one(ens, rule="top2_by_val", combiner="prob_avg")["best_single_by_val"] == "a"
    assert _one(ens, rule="all", combiner="prob_avg")["best_single_by_val"] == "a"

    # Other test labels (same for every method) change accuracies but never the members.
    other = tmp_path / "other"
    _val_vs_test_study(other, (LABELS + 1) % C)
    ens2 = analyze_task(load_task_predictions(other, TASK, ["a", "b", "c", "d"]),
                        top_ks=(1, 2, 3, 4), confidence_threshold=0.9)["ensembles"]
    key = ["rule", "combiner", "k", "members", "best_single_by_val"]
    assert ens2.select(key).to_pylist() == ens.select(key).to_pylist()
    assert ens2.column("test_top1").to_pylist() != ens.column("test_top1").to_pylist()


def test_top_k_by_val_ties_use_given_order() -> None:
    val = {"x": 80.0, "y": 90.0, "z": 90.0, "w": None}
    assert top_k_by_val(["x", "y", "z", "w"], val, 1) == ["y"]
    assert top_k_by_val(["x", "z", "y", "w"], val, 1) == ["z"]
    assert top_k_by_val(["x", "y", "z", "w"], val, 2) == ["y", "z"]
    assert top_k_by_val(["x", "y", "z", "w"], val, 4) is None


def test_diverged_method_excluded_and_reported(crafted: Path) -> None:
    nan = _onehot(LABELS)
    nan[3] = np.nan
    _write(crafted, "E", nan, val=99.0, pred=LABELS)  # best val, yet diverged on the final run
    _write(crafted, "F", np.zeros((0, 1)), val=None)  # every grid point diverged: no rows
    preds = load_task_predictions(crafted, TASK, ["A", "E", "B", "F", "Cm"])
    assert preds.methods == ["A", "B", "Cm"]
    assert [m for m, _ in preds.excluded] == ["E", "F"]
    assert "non-finite" in preds.excluded[0][1] and "no test predictions" in preds.excluded[1][1]
    assert preds.logits.shape == (3, N, C)
    tables = analyze_task(preds, **SETTINGS)
    for name, table in tables.items():
        for col in ("method", "method_a", "method_b", "best_single", "members"):
            if col in table.column_names:
                text = ",".join(str(v) for v in table.column(col).to_pylist())
                assert "E" not in text.split(",") and "F" not in text.split(","), (name, col)
        meta = table_metadata(table)
        assert meta["methods"] == ["A", "B", "Cm"]
        assert [e["method"] for e in meta["excluded"]] == ["E", "F"]


def test_mismatched_index_or_labels_raise_naming_files(crafted: Path) -> None:
    bad = _write(crafted, "G", _onehot(LABELS), index=np.arange(N) + 1)
    with pytest.raises(AnalysisInputError, match="index sets differ") as err:
        load_task_predictions(crafted, TASK, ["A", "G"])
    assert str(bad) in str(err.value) and str(crafted / TASK / "A") in str(err.value)
    labels = LABELS.copy()
    labels[5] = (labels[5] + 1) % C
    bad = _write(crafted, "H", _onehot(LABELS), labels=labels)
    with pytest.raises(ValueError, match="labels differ") as err:
        load_task_predictions(crafted, TASK, ["A", "H"])
    assert str(bad) in str(err.value)
    # Same index set in another row order is fine.
    order = np.arange(N)[::-1]
    _write(crafted, "R", _onehot(LABELS)[order], labels=LABELS[order], index=order)
    preds = load_task_predictions(crafted, TASK, ["A", "R"])
    assert preds.index.tolist() == list(range(N))
    assert (preds.preds[1] == LABELS).all()


def test_ece_and_histogram(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    # 8 examples at confidence 0.75 (6 right) and 12 uniform (0.25, predicts class 0; 3 right):
    # perfectly calibrated.
    logits = np.zeros((N, C), np.float32)
    labels = np.ones(N, np.int64)
    logits[:8] = np.log([0.75, 0.25 / 3, 0.25 / 3, 0.25 / 3])
    labels[:6] = 0
    labels[8:11] = 0
    _write(study, "cal", logits, labels=labels)
    _write(study, "bad", _onehot(np.zeros(N, np.int64), 10.0), labels=labels)
    tables = analyze_task(load_task_predictions(study, TASK, ["cal", "bad"]), **SETTINGS)
    cal = _one(tables["accuracy"], method="cal")
    assert cal["test_top1"] == pytest.approx(45.0)
    assert cal["mean_confidence"] == pytest.approx(0.45, abs=1e-6)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-4)
    bad = _one(tables["accuracy"], method="bad")  # ~100 % sure, 45 % right
    assert bad["ece"] == pytest.approx(55.0, abs=0.1)
    for row in tables["confidence"].to_pylist():
        hist = [row[f"hist_{i}"] for i in range(10)]
        assert sum(hist) == pytest.approx(1.0)
    hist = _one(tables["confidence"], method="cal")
    assert hist["hist_2"] == pytest.approx(0.6) and hist["hist_7"] == pytest.approx(0.4)
    # split by correctness, still as fractions of the whole test set: 0.75 -> 6 right, 2 wrong;
    # 0.25 -> 3 right, 9 wrong.
    assert hist["hist_right_7"] == pytest.approx(6 / N) and hist["hist_wrong_7"] == pytest.approx(2 / N)
    assert hist["hist_right_2"] == pytest.approx(3 / N) and hist["hist_wrong_2"] == pytest.approx(9 / N)
    for row in tables["confidence"].to_pylist():
        for i in range(10):
            assert row[f"hist_right_{i}"] + row[f"hist_wrong_{i}"] == pytest.approx(row[f"hist_{i}"])
    bad_row = _one(tables["confidence"], method="bad")   # all at ~1.0: the last bin, closed at 1
    assert bad_row["hist_right_9"] == pytest.approx(0.45) and bad_row["hist_wrong_9"] == pytest.approx(0.55)
    assert hist["n_confident"] == 0 and hist["confident_precision"] is None


def test_confidence_and_confident_overlap(crafted: Path) -> None:
    tables = analyze_task(load_task_predictions(crafted, TASK, ["A", "B", "Cm", "D"]),
                          top_ks=(2, 3, 5), confidence_threshold=0.9)
    c = _one(tables["confidence"], method="Cm")
    assert (c["n_confident"], c["confident_right"], c["confident_wrong"]) == (15, 10, 5)
    assert c["confident_precision"] == pytest.approx(200 / 3)
    a = _one(tables["confidence"], method="A")
    assert (a["n_confident"], a["confident_right"], a["confident_wrong"]) == (20, 16, 4)
    ov = tables["confident_overlap"]
    ac = _one(ov, method_a="A", method_b="Cm")
    # right {0..15} vs {0..9}: 10/16; wrong {16..19} vs {15..19}: 4/5.
    assert ac["confident_right_overlap"] == pytest.approx(0.625)
    assert ac["confident_wrong_overlap"] == pytest.approx(0.8)
    assert ac["n_confident_wrong_both"] == 4
    # A confidently right on {0..15}, Cm confidently wrong on {15..19} (10..14 unsure): {15}.
    assert ac["n_confident_right_a_wrong_b"] == 1
    # Cm confidently right on {0..9}; A confidently wrong on {16..19}: none.
    assert _one(ov, method_a="Cm", method_b="A")["n_confident_right_a_wrong_b"] == 0
    # A right on 0..15, B (right on 4..19) confidently wrong on 0..3.
    assert _one(ov, method_a="A", method_b="B")["n_confident_right_a_wrong_b"] == 4
    assert _one(ov, method_a="A", method_b="A")["n_confident_right_a_wrong_b"] == 0
    dd = _one(ov, method_a="D", method_b="D")
    assert dd["confident_wrong_overlap"] == 1.0 and dd["confident_right_overlap"] == 1.0
    assert ov.num_rows == 16


def test_write_task_analysis_atomic_and_overwrites(crafted: Path) -> None:
    tables = run_task_analysis(crafted, TASK, ["A", "B", "Cm", "D"], **SETTINGS)
    out = crafted / TASK / "analysis"
    assert analysis.analysis_dir(crafted, TASK) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.parquet" for n in TABLES)
    for name in TABLES:
        back = pq.read_table(out / f"{name}.parquet")
        assert back.equals(tables[name])
        assert table_metadata(back)["methods"] == ["A", "B", "Cm", "D"]
    # Re-running with other tables replaces the files and leaves no temp files behind.
    tables2 = analyze_task(load_task_predictions(crafted, TASK, ["A", "B"]), **SETTINGS)
    write_task_analysis(tables2, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.parquet" for n in TABLES)
    assert pq.read_table(out / "agreement.parquet").num_rows == 4
    with pytest.raises(ValueError):
        write_task_analysis({"../evil": tables2["oracle"]}, out)


def test_all_methods_excluded_gives_typed_empty_tables(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    nan = np.full((N, C), np.nan, np.float32)
    _write(study, "A", nan, pred=np.zeros(N, np.int64))
    preds = load_task_predictions(study, TASK, ["A"])
    tables = analyze_task(preds, **SETTINGS)
    assert all(t.num_rows == 0 for t in tables.values())
    assert tables["ensembles"].schema.field("test_top1").type == pa.float64()
    assert table_metadata(tables["oracle"])["excluded"][0]["method"] == "A"


def test_pred_must_be_an_argmax_of_logits(tmp_path: Path) -> None:
    study = tmp_path / "demo"
    _write(study, "A", _onehot(LABELS), pred=(LABELS + 1) % C)
    with pytest.raises(AnalysisInputError, match="argmax"):
        load_task_predictions(study, TASK, ["A"])


def test_task_predictions_in_memory_default_preds() -> None:
    logits = np.stack([_onehot(LABELS), _onehot((LABELS + 1) % C)])
    preds = TaskPredictions(task=TASK, methods=["x", "y"], excluded=[], index=np.arange(N),
                            labels=LABELS, logits=logits, val_top1={"x": 1.0, "y": 2.0})
    assert preds.preds.tolist() == [LABELS.tolist(), ((LABELS + 1) % C).tolist()]
    row = _one(analyze_task(preds, top_ks=(1,), confidence_threshold=0.9)["ensembles"], rule="top1_by_val",
               combiner="prob_avg")
    assert row["members"] == "y" and row["test_top1"] == 0.0
    with pytest.raises(ValueError, match="logits shape"):
        TaskPredictions(task=TASK, methods=["x"], excluded=[], index=np.arange(N), labels=LABELS,
                        logits=logits, val_top1={"x": 1.0})


def test_the_workflow_declares_exactly_the_tables_analysis_writes():
    from vpeft import analysis, layout

    assert tuple(layout.ANALYSIS_TABLES) == tuple(analysis.TABLES)

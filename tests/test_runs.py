"""The run store (vpeft.runs): its records give the JSON bytes the pipeline has always written,
round-trip what they read, find a study's grid runs, final runs and seeds in a layout tree, and
name the file when one is missing or malformed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from vpeft import layout
from vpeft.runs import (Candidate, MethodRuns, RunFileError, RunMetrics, Selection, StudyRuns,
                        TestEval, find_study_dir, read, write)

CONFIG = {"study": "s", "model": "vit_smoke", "optim": {"lr": 0.01}}
VERSIONS = {"vpeft": "0.1.0", "python": "3.11.7", "torch": "2.4.0"}

# The records as vpeft.protocol writes them, keys in the writers' order.
GRID_METRICS: dict[str, Any] = {
    "study": "s", "task": "t", "method": "lora", "point": "lr0.01-wd0.0001", "group": "natural",
    "phase": "grid", "train_split": "train800", "seed": 42, "eval_split": "val200",
    "status": "ok", "val_top1": 61.5, "hparams": {"rank": 8}, "optim": {"lr": 0.01},
    "trainable_params": 1000, "trainable_params_with_head": 1100, "total_params": 90000,
    "wall_time_s": 12.25, "epochs": 2, "steps": 50, "train_images_per_s": 800.5,
    "peak_memory_bytes": 123456, "device": "cpu", "protocol": "vpeft",
    "loss_curve": [2.5, 1.25], "diverged_at": None, "feature_cache": {"used": False},
    "precision": "fp32", "fused_attention": True, "compiled": False, "fused_points": 1,
    "config": CONFIG, "versions": VERSIONS, "git_commit": "0123abcd"}
# A final run with no selectable point (protocol._write_diverged_final): fewer keys, another order.
UNTRAINED_FINAL: dict[str, Any] = {
    "study": "s", "task": "t", "method": "lora", "point": None, "group": "natural",
    "phase": "final", "train_split": "train800val200", "seed": 42, "eval_split": None,
    "status": "diverged", "val_top1": None, "hparams": {}, "optim": {}, "trainable_params": None,
    "trainable_params_with_head": None, "total_params": None, "wall_time_s": 0.0, "epochs": 0,
    "loss_curve": [], "diverged_at": None, "train_images_per_s": None, "peak_memory_bytes": None,
    "device": None, "protocol": "vpeft", "config": CONFIG, "versions": VERSIONS,
    "git_commit": None}
SELECTION: dict[str, Any] = {
    "task": "t", "method": "lora", "criterion": "last-epoch val200 top-1", "grid_seed": 42,
    "selection_ties": "first", "best_point": "lr0.01-wd0.0001", "best_val_top1": 61.5,
    "candidates": [
        {"point": "lr0.001-wd0.0001", "status": "diverged", "val_top1": None,
         "hparams": {"rank": 8}, "optim": {"lr": 0.001}},
        {"point": "lr0.01-wd0.0001", "status": "ok", "val_top1": 61.5, "hparams": {"rank": 8},
         "optim": {"lr": 0.01}}]}
TEST_EVAL: dict[str, Any] = {"task": "t", "method": "lora", "point": "lr0.01-wd0.0001",
                             "seed": 42, "test_top1": 70.125, "num_test": 800, "status": "ok",
                             "rehearsal": None}


def _json_bytes(obj: Any) -> bytes:
    """The bytes vpeft.io.write_json has always written for a plain dict."""
    return (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


@pytest.mark.parametrize("kind, data", [
    (RunMetrics, GRID_METRICS), (RunMetrics, UNTRAINED_FINAL), (Selection, SELECTION),
    (TestEval, TEST_EVAL)], ids=["grid-metrics", "untrained-final", "selection", "test-eval"])
def test_records_write_the_bytes_of_the_former_dicts(tmp_path: Path, kind, data) -> None:
    made, copied = tmp_path / "made.json", tmp_path / "copied.json"
    write(made, kind.of(**data))                 # as the protocol writes it
    assert made.read_bytes() == _json_bytes(data)
    record = read(kind, made)
    write(copied, record)                        # read and written back
    assert copied.read_bytes() == _json_bytes(data)
    assert record.to_dict() == data and record.extra == {}


def test_fields_are_typed_attributes(tmp_path: Path) -> None:
    path = tmp_path / layout.SELECTION
    path.write_bytes(_json_bytes(SELECTION))
    selection = read(Selection, path)
    assert selection.best_point == "lr0.01-wd0.0001" and selection.best_val_top1 == 61.5
    assert [type(c) for c in selection.candidates] == [Candidate, Candidate]
    assert [c.status for c in selection.candidates] == ["diverged", "ok"]
    metrics = RunMetrics.of(**GRID_METRICS)
    assert (metrics.status, metrics.val_top1, metrics.optim) == ("ok", 61.5, {"lr": 0.01})
    # Made field by field, a record writes every field in the class's order.
    direct = TestEval(**TEST_EVAL)
    assert list(direct.to_dict()) == list(TEST_EVAL) and direct == TestEval.of(**TEST_EVAL)


def test_unknown_and_absent_keys_round_trip(tmp_path: Path) -> None:
    """A key the record does not name stays in its place; a key the file lacks (a run made
    before it existed) reads as None and is not written back."""
    older = {k: v for k, v in GRID_METRICS.items()
             if k not in ("steps", "feature_cache", "fused_points")}
    items = list(older.items())
    data = dict(items[:5] + [("note", {"by": "hand"})] + items[5:])
    path = tmp_path / layout.METRICS
    path.write_bytes(_json_bytes(data))
    record = read(RunMetrics, path)
    assert record.steps is None and record.fused_points is None
    assert record.extra == {"note": {"by": "hand"}}
    write(path, record)
    assert path.read_bytes() == _json_bytes(data)


def _touch(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tree(tmp_path: Path) -> Path:
    """runs/s/t/m with two grid points, final/ and two further seeds, plus look-alikes."""
    study = tmp_path / "runs" / "s"
    method = study / "t" / "m"
    for name in ("grid/p2", "grid/p1", "final", "final-seed9", "final-seed7", "final-seedx"):
        _touch(method / name)
    (method / "final-seed3").write_text("a file, not a run directory")
    (method / "grid" / "notes.txt").write_text("not a grid point")
    return study


def test_iterators_find_grid_final_and_seed_runs(tmp_path: Path) -> None:
    study = _tree(tmp_path)
    method = study / "t" / "m"
    found = MethodRuns(study, "t", "m")
    assert [(p, r.path) for p, r in found.grid_runs()] == [
        ("p1", method / "grid" / "p1"), ("p2", method / "grid" / "p2")]
    assert [p for p, _ in found.grid_runs(["p2", "p0"])] == ["p2", "p0"]  # given: as given
    # Without the study's seeds: the final-seed<s>/ directories present, in seed order.
    assert [(r.seed, r.path) for r in found.further_seeds()] == [
        (7, method / "final-seed7"), (9, method / "final-seed9")]
    assert [r.path.name for r in found.final_runs()] == ["final", "final-seed7", "final-seed9"]
    # With them: every seed's expected directory, present or not; the first seed is final/.
    known = StudyRuns(study, (5, 9, 8)).method("t", "m")
    assert [(r.seed, r.path.name) for r in known.final_runs()] == [
        (5, "final"), (9, "final-seed9"), (8, "final-seed8")]
    assert known.final(5).path == known.final().path == method / "final"
    assert known.selection_file == method / layout.SELECTION
    assert [(r.task, r.method) for r in StudyRuns(study).cells(["t", "u"], ["m", "n"])] == [
        ("t", "m"), ("t", "n"), ("u", "m"), ("u", "n")]
    assert list(MethodRuns(study, "t", "absent").grid_runs()) == []


def test_paths_are_layouts(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"paths": {"runs": str(tmp_path / "runs")}, "study": {"name": "s"},
                            "train": {"seeds": [5, 7]}})
    runs = MethodRuns.of(cfg, "t", "m")
    assert runs.grid("p").path == layout.grid_dir(cfg, "t", "m", "p")
    assert runs.selection_file == layout.selection_file(cfg, "t", "m")
    assert [(r.seed, r.path) for r in runs.final_runs()] == [
        (s, d) for s, d in layout.seed_final_dirs(cfg, "t", "m")]
    assert runs.final(7).metrics_file == layout.final_dir(cfg, "t", "m", 7) / layout.METRICS
    assert runs.final(7).test_eval_file == layout.final_dir(cfg, "t", "m", 7) / layout.TEST_EVAL


def test_study_dir_is_the_study_or_below_the_root(tmp_path: Path) -> None:
    study = _tree(tmp_path)
    assert find_study_dir(study, "s", ["t"]) == study
    assert find_study_dir(study.parent, "s", ["t"]) == study
    assert find_study_dir(tmp_path / "empty", "s", ["t"]) == tmp_path / "empty"


@pytest.mark.parametrize("text, message", [
    ('{"task": "t",\n "method": }', r"metrics.json:2: invalid JSON at column 12"),
    ("[1, 2]", r"metrics.json: expected a JSON object, got list"),
], ids=["invalid-json", "not-an-object"])
def test_malformed_file_names_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "final" / layout.METRICS
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(RunFileError, match=message) as err:
        read(RunMetrics, path)
    assert str(err.value).startswith(str(path))


def test_malformed_candidate_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / layout.SELECTION
    path.write_bytes(_json_bytes(SELECTION | {"candidates": [{"status": "ok"}]}))
    with pytest.raises(RunFileError, match=r"candidates\[0\] is not an object with 'point'") \
            as err:
        read(Selection, path)
    assert str(path) in str(err.value)


def test_missing_file_names_it(tmp_path: Path) -> None:
    run = MethodRuns(tmp_path, "t", "m").final()
    with pytest.raises(FileNotFoundError) as err:
        run.read_test_eval()
    assert str(run.test_eval_file) in str(err.value)

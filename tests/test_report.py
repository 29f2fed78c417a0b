"""Tests for vpeft.report: collecting a fake runs tree and rendering the HTML report."""
from __future__ import annotations

import json
import os
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpeft.report import (
    MissingRunFileError,
    RunDataError,
    StudyResults,
    collect_study,
    read_study_tables,
    render_report,
    write_study_tables,
)
from vpeft.report import landing

STUDY = {
    "name": "demo",
    "title": "Demo study",
    "description": "Three small tasks.",
    "tasks": [
        {"name": "cifar", "group": "natural", "num_classes": 10, "description": "CIFAR"},
        {"name": "dtd", "group": "natural", "num_classes": 47, "description": "Textures"},
        {"name": "eurosat", "group": "specialized", "num_classes": 10, "description": "EuroSAT"},
    ],
    "methods": ["linear", "bitfit", "lora"],
}
GROUP = {t["name"]: t["group"] for t in STUDY["tasks"]}

# test top-1 of the final runs; None = the final run diverged.
TEST_TOP1: dict[tuple[str, str], float | None] = {
    ("cifar", "linear"): 60.1, ("cifar", "bitfit"): 70.25, ("cifar", "lora"): 68.0,
    ("dtd", "linear"): 50.3, ("dtd", "bitfit"): 55.55, ("dtd", "lora"): None,
    ("eurosat", "linear"): 80.0, ("eurosat", "bitfit"): 90.5, ("eurosat", "lora"): 91.75,
}
NUM_TEST = 2000   # every TEST_TOP1 value is a whole number of examples
PARAMS = {"linear": 0, "bitfit": 102_000, "lora": 295_000}
BACKBONE = 85_800_000


def _head(task: str) -> int:
    n = next(t["num_classes"] for t in STUDY["tasks"] if t["name"] == task)
    return 768 * n + n


def _points(task: str, method: str) -> list[dict[str, Any]]:
    """Two grid points per cell; bitfit on cifar has a diverged one."""
    hp = {"rank": 8} if method == "lora" else {}
    out = []
    for i, lr in enumerate((0.001, 0.01)):
        diverged = (task, method) == ("cifar", "bitfit") and lr == 0.01
        out.append({
            "point": f"lr{lr}-wd0.0001" + ("-rank8" if method == "lora" else ""),
            "status": "diverged" if diverged else "ok",
            "val_top1": None if diverged else 40.0 + 10 * i + len(task) + len(method) / 8,
            "hparams": hp,
            "optim": {"lr": lr, "weight_decay": 0.0001},
            "wall_time_s": 10.5 + i,
        })
    return out


def _metrics(task: str, method: str, point: dict[str, Any], phase: str) -> dict[str, Any]:
    head = _head(task)
    return {
        "study": "demo", "task": task, "group": GROUP[task], "method": method,
        "point": point["point"], "phase": phase, "train_split": "train800" if phase == "grid"
        else "train800val200", "eval_split": "val200" if phase == "grid" else None,
        "status": point["status"], "val_top1": point["val_top1"] if phase == "grid" else None,
        "hparams": point["hparams"], "optim": point["optim"],
        "trainable_params": PARAMS[method], "trainable_params_with_head": PARAMS[method] + head,
        "total_params": BACKBONE + PARAMS[method] + head, "seed": 0,
        "wall_time_s": point["wall_time_s"] * (3 if phase == "final" else 1), "epochs": 100,
        "loss_curve": [2.0, None, 1.0], "diverged_at": None,
        "config": {"task": task, "method": method, "optim": point["optim"]},
        "versions": {"python": "3.11.7", "torch": "2.4.0", "vpeft": "0.1.0"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_run(runs: Path, task: str, method: str, test_top1: float | None) -> None:
    """Write one task x method directory in the training pipeline's format."""
    run_dir = runs / "demo" / task / method
    points = _points(task, method)
    for p in points:
        _write_json(run_dir / "grid" / p["point"] / "metrics.json", _metrics(task, method, p, "grid"))
    ok = [p for p in points if p["status"] == "ok"]
    best = max(ok, key=lambda p: p["val_top1"])
    _write_json(run_dir / "selection.json", {
        "task": task, "method": method, "criterion": "last-epoch val200 top-1",
        "best_point": best["point"], "best_val_top1": best["val_top1"],
        "candidates": [{k: p[k] for k in ("point", "status", "val_top1", "hparams", "optim")}
                       for p in points],
    })
    status = "ok" if test_top1 is not None else "diverged"
    _write_json(run_dir / "final" / "metrics.json",
                _metrics(task, method, best | {"status": status}, "final"))
    _write_json(run_dir / "final" / "test_eval.json", {
        "task": task, "method": method, "point": best["point"], "test_top1": test_top1,
        "num_test": NUM_TEST, "status": status})
    if test_top1 is not None:
        correct = round(test_top1 * NUM_TEST / 100)
        labels = [i % 7 for i in range(NUM_TEST)]
        preds = [y if i < correct else (y + 1) % 10 for i, y in enumerate(labels)]
        pq.write_table(pa.table({
            "index": list(range(NUM_TEST)), "label": labels, "pred": preds,
            "logits": pa.array([[0.0] * 10] * NUM_TEST, pa.list_(pa.float32()))}),
            run_dir / "final" / "test_predictions.parquet")


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (task, method), top1 in TEST_TOP1.items():
        write_run(root, task, method, top1)
    return root


@pytest.fixture()
def collected(runs: Path) -> StudyResults:
    return collect_study(runs, STUDY)


# ------------------------------------------------------------------------------------------
# HTML parsing helpers
# ------------------------------------------------------------------------------------------

class CellParser(HTMLParser):
    """Collect every <td> with its attributes, text and enclosing table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[str | None] = []
        self.cells: list[dict[str, Any]] = []
        self._cell: dict[str, Any] | None = None
        self._in_note = False   # inside <span class="note"> (the interval under a number)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append(a.get("id"))
        elif tag == "td":
            self._cell = {"table": self.tables[-1], "attrs": a, "text": "", "note": "",
                          "classes": (a.get("class") or "").split()}
        elif tag == "span" and self._cell is not None and a.get("class") == "note":
            self._in_note = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.tables.pop()
        elif tag == "span":
            self._in_note = False
        elif tag == "td" and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            self._cell["note"] = self._cell["note"].strip()
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["note" if self._in_note else "text"] += data


def parse_cells(page: str, table: str) -> list[dict[str, Any]]:
    parser = CellParser()
    parser.feed(page)
    return [c for c in parser.cells if c["table"] == table]


def render(tmp_path: Path, results: StudyResults, study: dict = STUDY, **kw: Any) -> str:
    out = tmp_path / "report" / "index.html"
    render_report(results, study, out, **kw)
    return out.read_text(encoding="utf-8")


def whole_report(tmp_path: Path) -> str:
    """The landing page followed by every task page (as written by :func:`render`), for checks
    that a value is somewhere in the report whichever page holds it."""
    out = tmp_path / "report"
    pages = [out / "index.html"] + sorted((out / "tasks").glob("*.html"))
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


def _rows(results: StudyResults) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["task"], r["method"]): r for r in results.results.to_pylist()}


# ------------------------------------------------------------------------------------------
# collect
# ------------------------------------------------------------------------------------------

def test_results_match_files(collected: StudyResults) -> None:
    rows = _rows(collected)
    assert len(rows) == 9 == collected.results.num_rows
    for (task, method), top1 in TEST_TOP1.items():
        r = rows[(task, method)]
        points = _points(task, method)
        best = max((p for p in points if p["status"] == "ok"), key=lambda p: p["val_top1"])
        assert r["study"] == "demo" and r["group"] == GROUP[task]
        assert r["test_top1"] == top1
        assert r["status"] == ("ok" if top1 is not None else "diverged")
        assert r["point"] == best["point"]
        assert r["val_top1"] == best["val_top1"]
        assert json.loads(r["hparams_json"]) == best["hparams"]
        assert json.loads(r["optim_json"]) == best["optim"]
        assert r["lr"] == best["optim"]["lr"]
        assert r["trainable_params"] == PARAMS[method]
        assert r["trainable_params_with_head"] == PARAMS[method] + _head(task)
        assert r["total_params"] == BACKBONE + PARAMS[method] + _head(task)
        assert r["trainable_pct"] == pytest.approx(100 * PARAMS[method] / (BACKBONE + PARAMS[method]))
        assert r["wall_time_s"] == best["wall_time_s"] * 3
        assert r["grid_wall_time_s"] == pytest.approx(sum(p["wall_time_s"] for p in points))
        assert r["num_grid_points"] == 2
        assert r["num_diverged"] == (1 if (task, method) == ("cifar", "bitfit") else 0)
        assert r["num_test"] == NUM_TEST and r["seed"] == 0
        assert r["git_commit"].startswith("0123")
        assert json.loads(r["versions_json"])["torch"] == "2.4.0"
    assert rows[("cifar", "bitfit")]["lr"] == 0.001   # the diverged lr0.01 point was not chosen


def test_study_dir_or_runs_root(runs: Path, collected: StudyResults) -> None:
    # the CLI passes runs/<study>; the root runs/ works as well
    assert collect_study(runs / "demo", STUDY).results.equals(collected.results)


def test_grid_table(collected: StudyResults) -> None:
    grid = collected.grid.to_pylist()
    assert len(grid) == 18
    diverged = [g for g in grid if g["status"] == "diverged"]
    assert [(g["task"], g["method"], g["point"]) for g in diverged] == [
        ("cifar", "bitfit", "lr0.01-wd0.0001")]
    assert diverged[0]["val_top1"] is None
    for g in grid:
        p = next(p for p in _points(g["task"], g["method"]) if p["point"] == g["point"])
        assert g["val_top1"] == p["val_top1"] and g["wall_time_s"] == p["wall_time_s"]
        assert json.loads(g["optim_json"]) == p["optim"]
    assert sum(g["selected"] for g in grid) == 9


def test_summary_means(collected: StudyResults) -> None:
    s = {r["method"]: r for r in collected.summary.to_pylist()}
    assert list(s) == STUDY["methods"]
    linear = s["linear"]
    assert linear["natural"] == pytest.approx((60.1 + 50.3) / 2)
    assert linear["specialized"] == pytest.approx(80.0)
    assert linear["structured"] is None          # no structured task in the study
    # mean over tasks, not over groups: (60.1+50.3+80)/3 != ((60.1+50.3)/2 + 80)/2
    assert linear["mean"] == pytest.approx((60.1 + 50.3 + 80.0) / 3)
    assert linear["mean"] != pytest.approx(((60.1 + 50.3) / 2 + 80.0) / 2)
    lora = s["lora"]                              # dtd diverged
    assert lora["natural"] is None and lora["mean"] is None
    assert lora["specialized"] == pytest.approx(91.75)
    assert (lora["num_ok"], lora["num_diverged"], lora["num_missing"]) == (2, 1, 0)
    assert s["bitfit"]["trainable_params"] == pytest.approx(PARAMS["bitfit"])
    assert s["linear"]["trainable_params"] == 0


def test_missing_file_names_it(runs: Path) -> None:
    missing = runs / "demo" / "eurosat" / "bitfit" / "final" / "test_eval.json"
    missing.unlink()
    with pytest.raises(MissingRunFileError) as err:
        collect_study(runs, STUDY)
    assert str(missing) in str(err.value)

    results = collect_study(runs, STUDY, allow_missing=True)
    r = _rows(results)[("eurosat", "bitfit")]
    assert r["status"] == "missing" and r["test_top1"] is None
    s = {x["method"]: x for x in results.summary.to_pylist()}
    assert s["bitfit"]["specialized"] is None and s["bitfit"]["mean"] is None
    assert s["bitfit"]["natural"] == pytest.approx((70.25 + 55.55) / 2)
    assert s["bitfit"]["num_missing"] == 1


def test_missing_grid_point_named(runs: Path) -> None:
    missing = runs / "demo" / "dtd" / "linear" / "grid" / "lr0.001-wd0.0001" / "metrics.json"
    missing.unlink()
    with pytest.raises(MissingRunFileError, match="lr0.001-wd0.0001"):
        collect_study(runs, STUDY)


def test_predictions_must_match_test_eval(runs: Path) -> None:
    path = runs / "demo" / "cifar" / "linear" / "final" / "test_eval.json"
    data = json.loads(path.read_text())
    data["test_top1"] = 61.0
    path.write_text(json.dumps(data))
    with pytest.raises(RunDataError, match="test_predictions.parquet"):
        collect_study(runs, STUDY)
    assert _rows(collect_study(runs, STUDY, check_predictions=False))[
        ("cifar", "linear")]["test_top1"] == 61.0


def test_misplaced_file_is_an_error(runs: Path) -> None:
    path = runs / "demo" / "dtd" / "bitfit" / "final" / "metrics.json"
    data = json.loads(path.read_text())
    data["task"] = "cifar"
    path.write_text(json.dumps(data))
    with pytest.raises(RunDataError, match="task"):
        collect_study(runs, STUDY)


def test_all_grid_points_diverged(runs: Path) -> None:
    run_dir = runs / "demo" / "cifar" / "lora"
    sel = json.loads((run_dir / "selection.json").read_text())
    sel["best_point"], sel["best_val_top1"] = None, None
    for c in sel["candidates"]:
        c["status"], c["val_top1"] = "diverged", None
        metrics = run_dir / "grid" / c["point"] / "metrics.json"
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {
            "status": "diverged", "val_top1": None}))
    (run_dir / "selection.json").write_text(json.dumps(sel))
    # what the pipeline writes when nothing can be selected: a diverged final with point null
    final = json.loads((run_dir / "final" / "metrics.json").read_text()) | {
        "point": None, "status": "diverged", "hparams": {}, "optim": {}, "trainable_params": None,
        "trainable_params_with_head": None, "total_params": None, "wall_time_s": 0.0}
    (run_dir / "final" / "metrics.json").write_text(json.dumps(final))
    (run_dir / "final" / "test_eval.json").write_text(json.dumps({
        "task": "cifar", "method": "lora", "point": None, "test_top1": None,
        "num_test": NUM_TEST, "status": "diverged"}))
    (run_dir / "final" / "test_predictions.parquet").unlink()
    results = collect_study(runs, STUDY)
    r = _rows(results)[("cifar", "lora")]
    assert r["status"] == "diverged" and r["test_top1"] is None and r["num_diverged"] == 2
    assert r["point"] is None and r["val_top1"] is None and r["trainable_params"] is None
    # without any final files (pipeline not run that far) the cell is still "diverged"
    for f in (run_dir / "final").iterdir():
        f.unlink()
    assert _rows(collect_study(runs, STUDY))[("cifar", "lora")]["status"] == "diverged"


def test_write_and_read_tables(collected: StudyResults, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    paths = write_study_tables(collected, out)
    assert sorted(p.name for p in paths.values()) == [
        "chance.parquet", "grid.parquet", "results.parquet", "seed_noise.parquet",
        "seeds.parquet", "stats.parquet", "summary.parquet"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    back = read_study_tables(out)
    for name in ("results", "grid", "summary", "seeds", "chance", "stats", "seed_noise"):
        assert getattr(back, name).equals(getattr(collected, name))
    # a report directory written before seeds and statistics existed still reads back
    for name in ("seeds", "chance", "stats", "seed_noise"):
        (out / f"{name}.parquet").unlink()
    old = read_study_tables(out)
    assert old.stats is None and old.seeds is None and old.results.equals(collected.results)


# ------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------

def test_html_numbers_come_from_tables(collected: StudyResults, tmp_path: Path) -> None:
    write_study_tables(collected, tmp_path / "tables")
    results = pq.read_table(tmp_path / "tables" / "results.parquet").to_pylist()
    summary = pq.read_table(tmp_path / "tables" / "summary.parquet").to_pylist()
    page = render(tmp_path, collected)
    cells = parse_cells(page, "main-table")
    acc = {(c["attrs"]["data-task"], c["attrs"]["data-method"]): c for c in cells
           if c["attrs"]["data-column"] == "test_top1"}
    assert len(acc) == 9
    for r in results:
        c = acc[(r["task"], r["method"])]
        if r["test_top1"] is None:
            assert c["text"] == "diverged" and "data-value" not in c["attrs"]
        else:
            assert float(c["attrs"]["data-value"]) == r["test_top1"]   # exact
            assert abs(float(c["text"]) - r["test_top1"]) <= 0.05 + 1e-9   # 1 decimal
    assert acc[("cifar", "bitfit")]["text"] == "70.3"     # 70.25: half up, not half-even
    for s in summary:
        for column in ("natural", "specialized", "mean"):
            c = next(c for c in cells if c["attrs"]["data-column"] == column
                     and c["attrs"]["data-method"] == s["method"])
            if s[column] is None:
                assert c["text"] == "–" and "data-value" not in c["attrs"]
            else:
                assert float(c["attrs"]["data-value"]) == s[column]
    # no structured task: no structured column at all
    assert not [c for c in cells if c["attrs"]["data-column"] == "structured"]
    assert 'id="hparams-table"' not in page   # per task: on the task pages
    hp = parse_cells(whole_report(tmp_path), "hparams-table")
    vals = {(c["attrs"]["data-task"], c["attrs"]["data-method"]): float(c["attrs"]["data-value"])
            for c in hp if c["attrs"]["data-column"] == "val_top1"}
    assert vals == {(r["task"], r["method"]): r["val_top1"] for r in results}
    assert "How to read this report" in page and "Demo study" in page


def test_best_per_column_marked(collected: StudyResults, tmp_path: Path) -> None:
    cells = parse_cells(render(tmp_path, collected), "main-table")
    best = {(c["attrs"]["data-column"], c["attrs"].get("data-task")): c["attrs"]["data-method"]
            for c in cells if "best" in c["classes"]}
    assert best == {
        ("test_top1", "cifar"): "bitfit",
        ("test_top1", "dtd"): "bitfit",
        ("test_top1", "eurosat"): "lora",
        ("natural", None): "bitfit",
        ("specialized", None): "lora",
        ("mean", None): "bitfit",
    }
    for c in cells:
        if "best" in c["classes"]:
            assert not math.isnan(float(c["attrs"]["data-value"]))


def _rename(results: StudyResults, column: str, old: str, new: str, tables: tuple[str, ...]
            ) -> StudyResults:
    out = {}
    for name in ("results", "grid", "summary"):
        t: pa.Table = getattr(results, name)
        if name in tables:
            i = t.schema.get_field_index(column)
            values = [new if v == old else v for v in t.column(column).to_pylist()]
            t = t.set_column(i, column, pa.array(values, pa.string()))
        out[name] = t
    return StudyResults(**out)


def test_names_are_escaped(collected: StudyResults, tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    results = _rename(collected, "task", "dtd", f"dtd{evil}", ("results", "grid"))
    results = _rename(results, "method", "bitfit", f"bit{evil}", ("results", "grid", "summary"))
    study = json.loads(json.dumps(STUDY))
    study["tasks"][1]["name"] = f"dtd{evil}"
    study["methods"][1] = f"bit{evil}"
    study["title"] = f"Title {evil}"
    study["description"] = f"Desc {evil}"
    page = render(tmp_path, results, study, provenance={"note": evil})
    assert "&lt;script&gt;" in page
    assert "<script" not in page.lower()
    cells = parse_cells(page, "main-table")
    assert any(c["attrs"].get("data-task") == f"dtd{evil}" for c in cells)
    assert any(c["attrs"].get("data-method") == f"bit{evil}" for c in cells)


def test_no_external_resources(collected: StudyResults, tmp_path: Path) -> None:
    page = render(tmp_path, collected, provenance={"generated_by": "pytest"})
    lowered = page.lower()
    for needle in ("http://", "https://", "src=", "<link", "<img", "<script", "@import",
                   "url("):
        assert needle not in lowered, needle
    assert "<svg" in page and "<style>" in page


def test_published_section(collected: StudyResults, tmp_path: Path) -> None:
    csv = tmp_path / "published.csv"
    csv.write_text("method,task,test_top1\n"
                   "linear,cifar,63.4\nbitfit,cifar,72.8\nlora,cifar,67.1\n"
                   "linear,svhn,36.6\nlora,eurosat,\n")
    page = render(tmp_path, collected, published_csv=csv)
    assert "Published (ViT-B/16 IN-21K)" in page
    cells = parse_cells(page, "published-table")
    cifar = {c["attrs"]["data-method"]: c for c in cells
             if c["attrs"]["data-column"] == "published_top1" and c["attrs"]["data-task"] == "cifar"}
    assert float(cifar["linear"]["attrs"]["data-value"]) == 63.4
    assert float(cifar["linear"]["attrs"]["data-delta"]) == pytest.approx(60.1 - 63.4)
    assert "best" in cifar["bitfit"]["classes"]
    assert not [c for c in cells if c["attrs"].get("data-task") == "svhn"]   # not in the study
    # the demo study's tasks are absent from a paper-only CSV: section omitted
    csv.write_text("method,task,test_top1\nlinear,svhn,36.6\n")
    page = render(tmp_path, collected, published_csv=csv)
    assert "published-table" not in page and "Published (ViT-B/16" not in page


def test_render_failure_leaves_no_file(collected: StudyResults, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report" / "index.html"

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(landing, "mean_bars", boom)
        with pytest.raises(RuntimeError):
            render_report(collected, STUDY, out)
    assert not out.exists()

    render_report(collected, STUDY, out)
    before = out.read_bytes()
    # A failure while writing must leave the previous report intact and no temporary file.
    with monkeypatch.context() as m:
        m.setattr("vpeft.io.os.replace", boom)
        with pytest.raises(RuntimeError):
            render_report(collected, STUDY, out, provenance={"x": 1})
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.html", "tasks"]
    assert sorted(p.name for p in (out.parent / "tasks").iterdir()) == \
        sorted(f"{t['name']}.html" for t in STUDY["tasks"])


def test_input_data_provenance_shows_content_record(collected: StudyResults, tmp_path: Path) -> None:
    study = json.loads(json.dumps(STUDY))
    study["tasks"][0]["content"] = {
        "train800val200_layout": "own copies", "train800val200_union": "exact",
        "missing_from_train800val200": 0, "extra_in_train800val200": 0, "relabelled": 0,
        "examples": [], "allowed_overlaps": []}
    study["tasks"][1]["content"] = {
        "train800val200_layout": "mixed", "train800val200_union": "differs",
        "missing_from_train800val200": 2, "extra_in_train800val200": 1, "relabelled": 1,
        "examples": ["/v/dtd/train800val200.txt:7: x.jpg (label 3) is in neither <b>"],
        "allowed_overlaps": []}
    page = render(tmp_path, collected, study)
    cells = parse_cells(page, "input-data-table")
    by_task = {}
    for c in cells:
        by_task.setdefault(c["attrs"].get("data-task"), []).append(c["text"])
    first, second = (study["tasks"][i]["name"] for i in (0, 1))
    assert by_task[first][:2] == ["own copies", "equals train800 + val200"]
    assert by_task[second][1] == "differs: 2 missing, 1 extra (1 relabelled)"
    assert "train800val200.txt:7:" in by_task[second][2]
    assert "&lt;b&gt;" in page and "neither <b>" not in page


def test_test_images_also_in_training_shown_beside_the_accuracy_and_in_provenance(
        collected: StudyResults, tmp_path: Path) -> None:
    study = json.loads(json.dumps(STUDY))
    task = study["tasks"][1]["name"]
    study["tasks"][1]["content"] = {
        "train800val200_layout": "own copies", "train800val200_union": "exact",
        "missing_from_train800val200": 0, "extra_in_train800val200": 0, "relabelled": 0,
        "examples": [], "duplicates": {
            "policy": "recorded: test images also in training; val200 vs train800 refused",
            "val200_in_train800": 0, "test_in_training": 3,
            "examples": [f"/v/{task}/test.txt:9: test image images/test/000008.jpg has the same "
                         f"pixels as /v/{task}/train800.txt:2 (images/train800/000001.jpg)"]}}
    page = render(tmp_path, collected, study)
    main = [c for c in parse_cells(page, "main-table") if c["attrs"].get("data-column") == "test_in_training"]
    counted = {c["attrs"].get("data-task"): c["text"] for c in main if c["attrs"].get("data-task")}
    assert counted[task] == "3" and set(counted.values()) == {"3", ""}
    assert any("3 test images also appear in training" in c["attrs"].get("title", "") for c in main)
    notes = [c["text"] for c in parse_cells(page, "input-data-table")
             if c["attrs"].get("data-task") == task]
    assert "3 test images also appear in training" in notes[2] and "test.txt:9:" in notes[2]


# ------------------------------------------------------------------------------------------
# each study's report fits its study
# ------------------------------------------------------------------------------------------

MANYSHOT = {"dtd": {"dataset": "digits", "subset": "full", "train_images": 200},
            "cifar": {"dataset": "digits", "subset": "50", "train_images": 50},
            "eurosat": {"dataset": "count", "subset": "full", "train_images": 90}}


def _headers(page: str, table: str) -> list[str]:
    body = page[page.index(f'id="{table}"'):]
    body = body[:body.index("</thead>")]
    return [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>.*?</th>", body,
                                                                   flags=re.S)]


def test_vtab_study_has_group_columns(collected: StudyResults, tmp_path: Path) -> None:
    headers = _headers(render(tmp_path, collected), "main-table")
    assert {"Natural", "Specialized", "Group means", "Mean"} <= set(headers)


def test_manyshot_report_by_dataset_and_size(runs: Path, tmp_path: Path) -> None:
    study = STUDY | {"manyshot": MANYSHOT}
    results = collect_study(runs, study, num_resamples=200)
    assert {r["scope_kind"] for r in results.stats.to_pylist()} == {"task"}
    page = render(tmp_path, results, study)
    headers = _headers(page, "main-table")
    assert "Group means" not in headers and "Mean" not in headers and "Natural" not in headers
    assert headers[1:3] == ["digits · training images", "count · training images"]
    assert headers[-3:] == ["50", "all (200)", "all (90)"]    # sizes in increasing order
    columns = {c["attrs"]["data-column"] for c in parse_cells(page, "main-table")}
    assert not columns & {"natural", "specialized", "structured", "mean"}
    scopes = {a for a in re.findall(r'data-scope="([^"]+)"', page)}
    assert scopes == {"cifar", "dtd", "eurosat"}          # advice per dataset and size
    assert "digits, 50 training images" in page


def test_robustness_report_has_no_vtab_groups(runs: Path, tmp_path: Path) -> None:
    study = STUDY | {"kind": "imagenet"}
    results = collect_study(runs, study, num_resamples=200)
    page = render(tmp_path, results, study)
    headers = _headers(page, "main-table")
    assert "In-distribution test" in headers
    assert "Group means" not in headers and "Natural" not in headers and "Mean" not in headers


def test_report_identical_with_one_and_two_workers(runs: Path, tmp_path: Path) -> None:
    """Tasks are read, bootstrapped and rendered in worker processes: the tables and every
    page must be the same bytes whether one process or two do the work."""
    outputs = []
    for workers in (1, 2):
        results = collect_study(runs, STUDY, workers=workers)
        out = tmp_path / f"w{workers}"
        write_study_tables(results, out)
        render_report(results, STUDY, out / "index.html", workers=workers,
                      provenance={"date": "2026-11-29 12:00 UTC"})
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes()
                        for p in sorted(out.rglob("*")) if p.is_file()})
    one, two = outputs
    assert sorted(one) == sorted(two)
    assert "stats.parquet" in one and len([p for p in one if p.startswith("tasks/")]) == 3
    for name in one:
        if name.endswith(".parquet"):   # Parquet metadata may differ; the tables may not
            assert pq.read_table(pa.BufferReader(one[name])).equals(
                pq.read_table(pa.BufferReader(two[name]))), name
        else:
            assert one[name] == two[name], name


def test_worker_error_raised_in_study_order(runs: Path) -> None:
    """An error in a worker reaches the caller as the same exception, naming the file; with
    two bad tasks the first in study order is reported, as the serial loop would."""
    for task in ("dtd", "eurosat"):
        (runs / "demo" / task / "bitfit" / "selection.json").write_text("{", encoding="utf-8")
    with pytest.raises(RunDataError, match=r"dtd[/\\]bitfit[/\\]selection\.json"):
        collect_study(runs, STUDY, workers=2)


def test_workers_env_must_be_a_positive_integer(monkeypatch: pytest.MonkeyPatch) -> None:
    from vpeft.errors import UserError
    from vpeft.report.parallel import WORKERS_ENV, worker_count

    monkeypatch.setenv(WORKERS_ENV, "3")
    assert worker_count() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(UserError, match=WORKERS_ENV):
            worker_count()


def test_costliest_items_start_first_and_results_keep_input_order() -> None:
    """``costs`` only reorders the submissions: results come back in input order."""
    from vpeft.report.parallel import ordered_map

    items = [-1, -7, -3, -5, -2]
    assert ordered_map(abs, items, workers=2, costs=[1, 7, 3, 5, 2]) == [1, 7, 3, 5, 2]
    assert ordered_map(abs, items, workers=2, costs=[0] * 5) == [1, 7, 3, 5, 2]


def _report_bytes(results: StudyResults, out: Path) -> dict[str, bytes]:
    write_study_tables(results, out)
    render_report(results, STUDY, out / "index.html", provenance={"date": "2026-11-29 12:00 UTC"})
    return {p.relative_to(out).as_posix(): (pq.read_table(p).to_pylist() if p.suffix == ".parquet"
                                            else p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_task_collected_by_its_analyze_job_gives_the_same_report(runs: Path, tmp_path: Path
                                                                   ) -> None:
    """save_task_part (the analyze job) collects a task once; the report built from the saved
    parts is the one built by reading every file, and a part whose files changed since (or
    that recorded an error) is not used."""
    from vpeft.report.collect import save_task_part

    fresh = _report_bytes(collect_study(runs, STUDY), tmp_path / "fresh")
    saved = {}
    for task in ("cifar", "dtd", "eurosat"):
        path, error = save_task_part(runs, STUDY, task)
        assert error is None and path == runs / "demo" / task / "analysis" / "report_part.json"
        saved[task] = path
    assert _report_bytes(collect_study(runs, STUDY), tmp_path / "saved") == fresh

    # the part is what the report uses: a tampered part shows, while its files are unchanged
    part = json.loads(saved["dtd"].read_text())
    row = next(r for r in part["part"]["rows"] if r["method"] == "bitfit")
    row["test_top1"] = 12.5
    saved["dtd"].write_text(json.dumps(part))
    assert _rows(collect_study(runs, STUDY))[("dtd", "bitfit")]["test_top1"] == 12.5
    # ... and is ignored once a file of the task changed (here: a metrics file touched)
    metrics = runs / "demo" / "dtd" / "bitfit" / "final" / "metrics.json"
    os.utime(metrics, ns=(metrics.stat().st_atime_ns, metrics.stat().st_mtime_ns + 1_000_000))
    assert _rows(collect_study(runs, STUDY))[("dtd", "bitfit")]["test_top1"] != 12.5

    # an error while collecting is recorded, and the report reads the task (raising it there)
    (runs / "demo" / "eurosat" / "bitfit" / "selection.json").write_text("{", encoding="utf-8")
    path, error = save_task_part(runs, STUDY, "eurosat")
    assert error and "selection.json" in error and json.loads(path.read_text())["key"] is None
    with pytest.raises(RunDataError, match=r"eurosat[/\\]bitfit[/\\]selection\.json"):
        collect_study(runs, STUDY)

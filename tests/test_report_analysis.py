"""Tests for the report's analysis sections: different mistakes, params vs accuracy, advice."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from test_report import STUDY, TEST_TOP1, parse_cells, render, write_run
from vpeft.analysis import SCHEMAS, TaskPredictions, analyze_task, write_task_analysis
from vpeft.report import StudyResults, collect_study, read_study_tables, write_study_tables
from vpeft.report import render as render_mod
from vpeft.report.collect import GRID_SCHEMA, RESULTS_SCHEMA, SUMMARY_SCHEMA

EVIL = "<script>alert(1)</script>"


class TagParser(HTMLParser):
    """Every start tag with its (unescaped) attributes, plus the <svg> nesting it is in."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str, name: str, **match: str) -> list[dict[str, Any]]:
    p = TagParser()
    p.feed(page)
    return [a for t, a in p.tags if t == name and all(a.get(k) == v for k, v in match.items())]


def cells_prefixed(page: str, prefix: str) -> list[dict[str, Any]]:
    parser_cells = []
    for i in range(1, 50):
        found = parse_cells(page, f"{prefix}{i}")
        if not found:
            break
        parser_cells.extend(found)
    return parser_cells


def synthetic(task: str, methods: list[str], seed: int) -> TaskPredictions:
    rng = np.random.default_rng(seed)
    n, c = 60, 5
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(len(methods), n, c)).astype(np.float32)
    for i in range(len(methods)):   # each method right on a different ~60 % of the examples
        right = rng.random(n) < 0.6
        logits[i, right, labels[right]] += 4.0
    val = {m: 50.0 + 7 * ((i * 3 + seed) % 5) for i, m in enumerate(methods)}
    return TaskPredictions(task=task, methods=methods, excluded=[], index=np.arange(n),
                           labels=labels, logits=logits, val_top1=val)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for (task, method), top1 in TEST_TOP1.items():
        write_run(root, task, method, top1)
    return root


@pytest.fixture()
def analysed(runs: Path) -> dict[str, dict[str, pa.Table]]:
    out = {}
    for seed, task in enumerate(("cifar", "dtd", "eurosat")):
        methods = [m for m in STUDY["methods"] if TEST_TOP1[(task, m)] is not None]
        tables = analyze_task(synthetic(task, methods, seed), top_ks=(2,))
        write_task_analysis(tables, runs / "demo" / task / "analysis")
        out[task] = tables
    return out


# ------------------------------------------------------------------------------------------
# collect
# ------------------------------------------------------------------------------------------

def test_collect_reads_and_writes_analysis(runs: Path, analysed: dict, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    assert sorted(results.analysis) == sorted(SCHEMAS)
    for name in SCHEMAS:
        want = [r for task in ("cifar", "dtd", "eurosat") for r in analysed[task][name].to_pylist()]
        assert results.analysis[name].to_pylist() == want
    paths = write_study_tables(results, tmp_path / "tables")
    assert {f"analysis_{n}.parquet" for n in SCHEMAS} <= {p.name for p in paths.values()}
    back = read_study_tables(tmp_path / "tables")
    for name in SCHEMAS:
        assert back.analysis[name].equals(results.analysis[name])


def test_partial_analysis_is_fine(runs: Path, analysed: dict) -> None:
    for task in ("dtd", "eurosat"):
        for p in (runs / "demo" / task / "analysis").iterdir():
            p.unlink()
    (runs / "demo" / "cifar" / "analysis" / "confidence.parquet").unlink()
    results = collect_study(runs, STUDY)
    assert "confidence" not in results.analysis
    assert set(results.analysis["agreement"].column("task").to_pylist()) == {"cifar"}


def test_report_without_analysis(runs: Path, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    assert results.analysis == {}
    page = render(tmp_path, results)
    assert 'id="different-mistakes"' not in page
    assert 'id="which-method"' in page and 'id="params-vs-accuracy"' in page
    assert not cells_prefixed(page, "ensembles-table-")


# ------------------------------------------------------------------------------------------
# different mistakes: numbers come from the tables
# ------------------------------------------------------------------------------------------

def test_mistakes_numbers_match_tables(runs: Path, analysed: dict, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    page = render(tmp_path, results)
    assert "validation" in page and "chosen by validation" in page

    # heatmap cells = the pairwise tables' values, one heatmap per drawn column
    rects = tags(page, "rect")
    assert {r["data-column"] for r in rects if "data-method-a" in r} == \
        {column for _, column, _ in render_mod.PAIR_HEATMAPS}
    for name, column, _ in render_mod.PAIR_HEATMAPS:
        pairs = results.analysis[name].to_pylist()
        heat = {(r["data-task"], r["data-method-a"], r["data-method-b"]): r
                for r in rects if r.get("data-column") == column}
        assert len(heat) == len(pairs), column
        for r in pairs:
            cell = heat[(r["task"], r["method_a"], r["method_b"])]
            assert float(cell["data-value"]) == r[column]

    # oracle tables
    oracle = {r["task"]: r for r in results.analysis["oracle"].to_pylist()}
    cells = cells_prefixed(page, "oracle-table-")
    assert cells
    for c in cells:
        a = c["attrs"]
        row = oracle[a["data-task"]]
        col = a["data-column"]
        if col == "oracle_gain":
            assert float(a["data-value"]) == row["oracle_top1"] - row["best_single_top1"]
        elif col == "best_single":
            assert a["data-value"] == row["best_single"]
        else:
            assert float(a["data-value"]) == row[col]
    assert {c["attrs"]["data-task"] for c in cells} == {"cifar", "dtd", "eurosat"}

    # ensembles tables: one row per table row, every number equal
    ens = results.analysis["ensembles"].to_pylist()
    cells = cells_prefixed(page, "ensembles-table-")
    numeric = ("test_top1", "best_member_test_top1", "gain_over_best_member",
               "gain_over_best_single_by_val", "k")
    for col in numeric + ("combiner", "members", "best_single_by_val"):
        got = [(c["attrs"]["data-task"], c["attrs"].get("data-value"))
               for c in cells if c["attrs"]["data-column"] == col]
        want = [(r["task"], None if r[col] is None else
                 (repr(float(r[col])) if isinstance(r[col], float) else str(r[col])))
                for r in ens]
        assert got == want, col
    assert any(r["rule"] == "top2_by_val" for r in ens)


# ------------------------------------------------------------------------------------------
# crafted summaries: Pareto front and "which method"
# ------------------------------------------------------------------------------------------

CRAFT_STUDY = {
    "name": "craft",
    "description": "",
    "tasks": [{"name": "t_nat", "group": "natural"}, {"name": "t_spec", "group": "specialized"},
              {"name": "t_str", "group": "structured"}],
    "methods": ["probe", "small", "mid", "heavy", "huge", "twin", "tiny", "nan_m"],
}


def crafted(rows: dict[str, tuple[float | None, float | None, float | None, float | None,
                                  float | None]],
            analysis: dict[str, pa.Table] | None = None) -> StudyResults:
    """``{method: (natural, specialized, structured, mean, trainable_params)}``."""
    summary = [{"method": m, "natural": n, "specialized": s, "structured": st, "mean": mean,
                "num_tasks": 3, "num_ok": 3, "num_diverged": 0, "num_missing": 0,
                "trainable_params": p, "trainable_pct": None}
               for m, (n, s, st, mean, p) in rows.items()]
    return StudyResults(results=RESULTS_SCHEMA.empty_table(), grid=GRID_SCHEMA.empty_table(),
                        summary=pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA),
                        analysis=analysis or {})


CRAFT = {
    #         natural specialized structured mean  params
    "probe": (60.0, 70.0, 40.0, 60.0, 0.0),         # front: fewest params
    "small": (70.0, 75.0, 50.0, 70.0, 100.0),       # front
    "mid": (65.0, 80.0, 45.0, 65.0, 200.0),         # dominated by small
    "heavy": (68.0, 82.0, 55.0, 70.0, 1000.0),      # same mean as small, more params: dominated
    "huge": (90.0, 79.0, 60.0, 80.0, 5000.0),       # front: best mean
    "twin": (70.0, 75.0, 50.0, 70.0, 100.0),        # identical to small: both stay on the front
    "tiny": (85.0, 81.0, 70.0, 79.0, 3000.0),       # exactly 1.0 pp below the best: within margin
    "nan_m": (None, None, None, None, 10.0),        # no mean: not plotted, never picked
}


def test_pareto_front_function() -> None:
    pts = {m: (v[4], v[3]) for m, v in CRAFT.items() if v[3] is not None}
    assert render_mod.pareto_front(pts) == {"probe", "small", "twin", "tiny", "huge"}
    assert render_mod.pareto_front({"a": (1.0, 50.0)}) == {"a"}
    assert render_mod.pareto_front({"a": (1.0, 50.0), "b": (1.0, 51.0)}) == {"b"}


def test_pareto_in_page(tmp_path: Path) -> None:
    page = render(tmp_path, crafted(CRAFT), CRAFT_STUDY)
    circles = {c["data-method"]: c for c in tags(page, "circle")}
    assert set(circles) == set(CRAFT) - {"nan_m"}
    assert {m for m, c in circles.items() if c["data-pareto"] == "true"} == \
        {"probe", "small", "twin", "tiny", "huge"}
    for m, c in circles.items():
        assert float(c["data-value"]) == CRAFT[m][3]
        assert float(c["data-params"]) == CRAFT[m][4]


def _advice(page: str) -> list[dict[str, Any]]:
    return [a for a in tags(page, "li") if "data-kind" in a]


def _spans(page: str) -> list[dict[str, Any]]:
    return [a for a in tags(page, "span") if "data-value" in a]


def test_which_method(tmp_path: Path) -> None:
    page = render(tmp_path, crafted(CRAFT), CRAFT_STUDY)
    advice = _advice(page)
    picks = {(a["data-kind"], a.get("data-group")): a["data-method"] for a in advice}
    assert picks == {
        ("group-best", "natural"): "huge",
        ("group-best", "specialized"): "heavy",
        ("group-best", "structured"): "tiny",
        ("best-overall", None): "huge",
        ("smallest-within-margin", None): "tiny",   # 79.0 >= 80.0 - 1.0; fewer params than huge
    }
    spans = _spans(page)
    got = {(s["data-column"], s.get("data-method")): float(s["data-value"]) for s in spans}
    assert got[("natural", "huge")] == 90.0
    assert got[("specialized", "heavy")] == 82.0
    assert got[("structured", "tiny")] == 70.0
    assert got[("mean", "huge")] == 80.0
    assert got[("mean", "tiny")] == 79.0
    assert got[("trainable_params", "tiny")] == 3000.0
    assert got[("margin", None)] == render_mod.MARGIN_PP == 1.0
    assert got[("gap", "tiny")] == 1.0


def test_margin_rule_excludes_just_outside(tmp_path: Path) -> None:
    rows = dict(CRAFT)
    rows["tiny"] = (85.0, 81.0, 70.0, 78.9, 3000.0)   # 1.1 pp below: outside the margin
    picks = {a.kind: a.method for a in render_mod.recommendations(crafted(rows), CRAFT_STUDY)
             if a.group is None}
    assert picks == {"best-overall": "huge", "smallest-within-margin": "huge"}
    # a wider margin lets the 1-parameter-cheaper methods in
    picks = {a.kind: a.method for a in render_mod.recommendations(crafted(rows), CRAFT_STUDY,
                                                                   margin=10.0)
             if a.group is None}
    assert picks["smallest-within-margin"] == "small"   # ties with twin: first in study order


# ------------------------------------------------------------------------------------------
# escaping
# ------------------------------------------------------------------------------------------

def test_names_escaped_in_svgs(tmp_path: Path) -> None:
    evil = f"lo{EVIL}ra"
    study = {**CRAFT_STUDY, "methods": ["probe", evil, "huge"]}
    rows = {"probe": CRAFT["probe"], evil: (70.0, 90.0, 50.0, 70.0, 100.0), "huge": CRAFT["huge"]}
    tables = analyze_task(synthetic(f"t_nat{EVIL}", ["probe", evil, "huge"], 1), top_ks=(2,))
    study["tasks"] = [{"name": f"t_nat{EVIL}", "group": "natural"}] + CRAFT_STUDY["tasks"][1:]
    page = render(tmp_path, crafted(rows, dict(tables)), study)
    lowered = page.lower()
    assert "<script" not in lowered
    assert not re.search(r"https?://", lowered)
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    heat = [s for s in svgs if "heatmap" in s]
    scatter = [s for s in svgs if "scatter" in s]
    confhist = [s for s in svgs if "confhist" in s]
    assert len(heat) == len(render_mod.PAIR_HEATMAPS) and scatter and confhist
    for chart in heat + scatter + confhist:
        assert "lo&lt;script&gt;alert(1)&lt;/script&gt;ra" in chart
    assert any(b.get("data-method") == evil and b.get("data-task") == f"t_nat{EVIL}"
               for b in tags(page, "rect") if "data-bin" in b)
    assert any(c["attrs"].get("data-method") == evil
               for c in cells_prefixed(page, "confidence-table-"))
    assert any(r.get("data-method-a") == evil for r in tags(page, "rect"))
    assert any(c.get("data-method") == evil for c in tags(page, "circle"))
    assert any(a.get("data-method") == evil for a in _advice(page))
    assert any(c["attrs"].get("data-value") == ",".join(["probe", evil, "huge"])
               for c in cells_prefixed(page, "ensembles-table-"))


def test_heatmaps_mark_empty_sets(runs: Path, analysed: dict, tmp_path: Path) -> None:
    """A Jaccard of two empty sets keeps its table value (1.0) but is drawn as "∅"."""
    results = collect_study(runs, STUDY)
    page = render(tmp_path, results)
    counts = {(r["task"], r["method"]): r for r in results.analysis["confidence"].to_pylist()}
    rects = [r for r in tags(page, "rect") if r.get("data-column") == "confident_wrong_overlap"]
    assert rects
    for r in rects:
        a = counts[(r["data-task"], r["data-method-a"])]["confident_wrong"]
        b = counts[(r["data-task"], r["data-method-b"])]["confident_wrong"]
        assert (r.get("data-empty") == "true") == (a == 0 and b == 0)
    assert any(r.get("data-empty") == "true" for r in rects)   # the synthetic tasks have some
    assert "∅" in page


# ------------------------------------------------------------------------------------------
# high-confidence predictions
# ------------------------------------------------------------------------------------------

def test_confidence_section_matches_tables(runs: Path, analysed: dict, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    page = render(tmp_path, results)
    assert 'id="high-confidence"' in page
    conf = {(r["task"], r["method"]): r for r in results.analysis["confidence"].to_pylist()}
    acc = {(r["task"], r["method"]): r for r in results.analysis["accuracy"].to_pylist()}
    # every histogram bar = hist_right_i / hist_wrong_i of its row, nothing left out
    bars = [r for r in tags(page, "rect") if "data-bin" in r]
    assert len(bars) == 2 * 10 * len(conf)
    for b in bars:
        row = conf[(b["data-task"], b["data-method"])]
        assert float(b["data-value"]) == row[f"hist_{b['data-kind']}_{b['data-bin']}"]
    # the threshold is stated per task and is the one the table was computed with
    spans = [s for s in tags(page, "span") if s.get("data-column") == "threshold"]
    assert {(s["data-task"], float(s["data-value"])) for s in spans} == \
        {(t, r["threshold"]) for (t, _), r in conf.items()}
    assert {float(s["data-threshold"]) for s in tags(page, "svg") if "data-threshold" in s} \
        == {0.9}
    # the per-method table
    cells = cells_prefixed(page, "confidence-table-")
    assert len(cells) == 7 * len(conf)
    for c in cells:
        a = c["attrs"]
        key, col = (a["data-task"], a["data-method"]), a["data-column"]
        want = conf[key][col] if col in conf[key] else acc[key][col]
        assert (a.get("data-value") is None) == (want is None)
        if want is not None:
            assert float(a["data-value"]) == want, col


# ------------------------------------------------------------------------------------------
# tuning landscapes
# ------------------------------------------------------------------------------------------

def _marks(page: str) -> list[dict[str, Any]]:
    p = TagParser()
    p.feed(page)
    return [a for _, a in p.tags if "gridpoint" in (a.get("class") or "").split()]


def _check_marks(page: str, grid: list[dict[str, Any]]) -> None:
    """Every grid row has exactly one mark carrying its own values; diverged ones no value."""
    marks = {(m["data-task"], m["data-method"], m["data-point"]): m for m in _marks(page)}
    assert len(marks) == len(_marks(page)) == len(grid)
    for g in grid:
        m = marks[(g["task"], g["method"], g["point"])]
        assert m["data-status"] == g["status"]
        assert m["data-selected"] == ("true" if g["selected"] else "false")
        if g["status"] == "diverged":
            assert m["data-value"] == "" and "diverged" in m["class"].split()
        else:
            assert float(m["data-value"]) == g["val_top1"]


def test_landscapes_match_grid(runs: Path, tmp_path: Path) -> None:
    collected = collect_study(runs, STUDY)
    page = render(tmp_path, collected)
    assert 'id="tuning-landscapes"' in page
    grid = collected.grid.to_pylist()
    _check_marks(page, grid)
    # one lr axis everywhere in the fixture: line plots over lr; the diverged point is a cross
    svgs = [a for a in tags(page, "svg") if "landscape" in (a.get("class") or "")]
    assert len(svgs) == len({(g["task"], g["method"]) for g in grid})
    assert {a["data-axes"] for a in svgs} == {"lr"}
    crosses = [m for m in _marks(page) if m["data-status"] == "diverged"]
    assert [(m["data-task"], m["data-method"]) for m in crosses] == [("cifar", "bitfit")]
    assert tags(page, "path", **{"data-status": "diverged"})
    # the grid table stays, collapsed
    assert 'id="grid-table"' in page and "<details>" in page


def _grid_row(task: str, method: str, point: str, hparams: dict, lr: float, wd: float,
              val: float | None, selected: bool = False) -> dict[str, Any]:
    return {"study": "craft", "task": task, "group": "natural", "method": method,
            "point": point, "selected": selected, "status": "ok" if val is not None else "diverged",
            "val_top1": val, "hparams_json": json.dumps(hparams, sort_keys=True),
            "optim_json": json.dumps({"lr": lr, "weight_decay": wd}), "lr": lr,
            "weight_decay": wd, "seed": 0, "epochs": 1, "wall_time_s": 1.0}


def test_landscape_matrix_and_escaping(tmp_path: Path) -> None:
    evil_task, evil_method, evil_hp = f"t{EVIL}", f"m{EVIL}", f"rank{EVIL}"
    rows = []
    for i, (r, lr, wd) in enumerate((r, lr, wd) for r in (1, 8, 16) for lr in (1e-3, 1e-2)
                                    for wd in (1e-4, 1e-3)):
        val = None if (r, lr, wd) == (16, 1e-2, 1e-3) else 50.0 + i + 0.25
        rows.append(_grid_row(evil_task, evil_method, f"p{i}{EVIL}",
                              {evil_hp: r, "dropout": 0.1, "init": f"x{EVIL}"}, lr, wd, val,
                              selected=i == 3))
    # a single grid point (no swept axis): a 1 x 1 matrix
    rows.append(_grid_row(evil_task, "probe", "only", {}, 1e-2, 1e-4, 40.5, selected=True))
    study = {**CRAFT_STUDY, "tasks": [{"name": evil_task, "group": "natural"}],
             "methods": ["probe", evil_method]}
    results = StudyResults(results=RESULTS_SCHEMA.empty_table(),
                           grid=pa.Table.from_pylist(rows, schema=GRID_SCHEMA),
                           summary=SUMMARY_SCHEMA.empty_table(), analysis={})
    page = render(tmp_path, results, study)
    assert "<script" not in page.lower()
    _check_marks(page, rows)
    svgs = {a["data-method"]: a for a in tags(page, "svg") if "landscape" in (a.get("class") or "")}
    # swept: the method hyper-parameter first, then lr, weight_decay; dropout and init are fixed
    assert svgs[evil_method]["data-axes"] == f"{evil_hp},lr,weight_decay"
    assert "matrix" in svgs[evil_method]["class"] and svgs["probe"]["data-axes"] == ""
    cells = [m for m in _marks(page) if m["data-method"] == evil_method]
    assert sum(m["data-status"] == "diverged" for m in cells) == 1
    assert all(m["data-value"] != "0" and m["data-value"] != "0.0" for m in cells)
    assert len(tags(page, "rect", **{"class": "selbox"})) == 2   # one selected point per chart
    assert "rank&lt;script&gt;alert(1)&lt;/script&gt;" in page   # the axis name, as text


def test_swept_axes_order() -> None:
    from vpeft.report.landscape import swept_axes

    settings = [{"rank": r, "lr": lr, "weight_decay": 1e-4, "alpha": a, "drop_path": d}
                for r in (1, 8) for lr in (1e-3, 1e-2) for a in ("x", "y") for d in (0.0, 0.1)]
    assert swept_axes(settings) == ["alpha", "drop_path", "rank", "lr"]
    assert swept_axes(settings[:1]) == []


# ------------------------------------------------------------------------------------------
# ties in "which method" are stated, not broken silently
# ------------------------------------------------------------------------------------------

def test_ties_are_explicit(tmp_path: Path) -> None:
    rows = {
        #        natural specialized structured mean  params
        "probe": (60.0, 70.0, 40.0, 60.0, 0.0),
        "small": (70.0, 75.0, 50.0, 70.0, 100.0),
        "twin": (70.0, 75.0, 50.0, 70.0, 100.0),    # exactly like small
        "huge": (80.0, 75.0, 60.0, 80.0, 5000.0),   # specialized ties small and twin
        "tiny": (85.0, 81.0, 60.0, 80.0, 3000.0),   # mean ties huge; structured ties huge
    }
    study = {**CRAFT_STUDY, "methods": list(rows)}
    advice = render_mod.recommendations(crafted(rows), study, margin=10.0)
    got = {(a.kind, a.group): (a.method, a.tied) for a in advice}
    assert got[("group-best", "natural")] == ("tiny", [])
    assert got[("group-best", "specialized")] == ("tiny", [])
    assert got[("group-best", "structured")] == ("huge", ["tiny"])
    assert got[("best-overall", None)] == ("huge", ["tiny"])
    assert got[("smallest-within-margin", None)] == ("small", ["twin"])
    page = render(tmp_path, crafted(rows), study)
    lis = {(a["data-kind"], a.get("data-group")): a for a in _advice(page)}
    assert json.loads(lis[("best-overall", None)]["data-tied"]) == ["tiny"]
    # default 1 pp margin: huge and tiny qualify, tiny is smaller (no tie)
    assert lis[("smallest-within-margin", None)]["data-method"] == "tiny"
    assert json.loads(lis[("smallest-within-margin", None)]["data-tied"]) == []
    assert json.loads(lis[("group-best", "natural")]["data-tied"]) == []
    assert "a tie: 2 methods" in page


def test_ensemble_overview_matches_table(runs: Path, analysed: dict, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    page = render(tmp_path, results)
    ens = results.analysis["ensembles"].to_pylist()
    cells = parse_cells(page, "ensemble-overview")
    per_task = [c for c in cells if c["attrs"]["data-column"] == "gain_over_best_single_by_val"]
    assert len(per_task) == len(ens)
    want = {(r["task"], f"{r['rule']} / {r['combiner']}"): r["gain_over_best_single_by_val"]
            for r in ens}
    for c in per_task:
        assert float(c["attrs"]["data-value"]) == want[(c["attrs"]["data-task"],
                                                        c["attrs"]["title"])]
    means = [float(c["attrs"]["data-value"]) for c in cells
             if c["attrs"]["data-column"] == "mean_gain"]
    assert len(means) == len({(r["rule"], r["combiner"]) for r in ens})
    r0 = (ens[0]["rule"], ens[0]["combiner"])
    vals = [r["gain_over_best_single_by_val"] for r in ens if (r["rule"], r["combiner"]) == r0]
    assert means[0] == pytest.approx(sum(vals) / len(vals))


def test_every_runs_config_in_page(runs: Path, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    page = render(tmp_path, results)
    cells = [c for c in parse_cells(page, "config-table")
             if c["attrs"]["data-column"] == "config_json"]
    want = {(r["task"], r["method"]): r["config_json"] for r in results.results.to_pylist()
            if r["config_json"]}
    assert {(c["attrs"]["data-task"], c["attrs"]["data-method"]): c["attrs"]["data-value"]
            for c in cells} == want
    # the fixture's configs differ only in task, method and optimiser settings
    text = {(c["attrs"]["data-task"], c["attrs"]["data-method"]): c["text"] for c in cells}
    assert text[("cifar", "linear")] == "same as shown"
    assert 'method="bitfit"' in text[("cifar", "bitfit")]


def test_end_of_line_labels_are_spread_apart_in_their_order():
    from vpeft.report.svg import spread_labels

    assert spread_labels([50.0, 10.0, 11.0]) == [50.0, 10.0, 22.0]  # the lower of the close pair moves
    assert spread_labels([10.0, 15.0, 20.0], gap=12) == [10.0, 22.0, 34.0]
    assert spread_labels([30.0, 80.0]) == [30.0, 80.0]  # far enough apart: untouched

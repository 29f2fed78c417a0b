"""Tests for the report's analysis sections: different mistakes, params vs accuracy, advice."""
from __future__ import annotations

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

    # heatmap cells = error_overlap of the agreement table
    agreement = results.analysis["agreement"].to_pylist()
    rects = tags(page, "rect")
    heat = {(r["data-task"], r["data-method-a"], r["data-method-b"]): r["data-value"]
            for r in rects if "data-method-a" in r}
    assert len(heat) == len(agreement)
    for r in agreement:
        assert float(heat[(r["task"], r["method_a"], r["method_b"])]) == r["error_overlap"]

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
    assert heat and scatter
    assert "lo&lt;script&gt;alert(1)&lt;/script&gt;ra" in heat[0]
    assert "lo&lt;script&gt;alert(1)&lt;/script&gt;ra" in scatter[0]
    assert any(r.get("data-method-a") == evil for r in tags(page, "rect"))
    assert any(c.get("data-method") == evil for c in tags(page, "circle"))
    assert any(a.get("data-method") == evil for a in _advice(page))
    assert any(c["attrs"].get("data-value") == ",".join(["probe", evil, "huge"])
               for c in cells_prefixed(page, "ensembles-table-"))

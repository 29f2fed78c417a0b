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

from test_report import STUDY, TEST_TOP1, parse_cells, render, whole_report, write_run
from vpeft.analysis import SCHEMAS, TaskPredictions, analyze_task, write_task_analysis
from vpeft.report import StudyResults, collect_study, read_study_tables, write_study_tables
from vpeft.report.advice import recommendations
from vpeft.report.collect import GRID_SCHEMA, RESULTS_SCHEMA, SUMMARY_SCHEMA
from vpeft.report.mistakes import PAIR_HEATMAPS
from vpeft.report.view import pareto_front

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
        tables = analyze_task(synthetic(task, methods, seed), top_ks=(2,),
                              confidence_threshold=0.9)
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
    assert not parse_cells(whole_report(tmp_path), "ensembles-table")


# ------------------------------------------------------------------------------------------
# different mistakes: numbers come from the tables
# ------------------------------------------------------------------------------------------

def test_mistakes_numbers_match_tables(runs: Path, analysed: dict, tmp_path: Path) -> None:
    results = collect_study(runs, STUDY)
    render(tmp_path, results)
    page = whole_report(tmp_path)
    assert "validation" in page and "chosen by validation" in page

    # heatmap cells = the pairwise tables' values, one heatmap per drawn column
    rects = tags(page, "rect")
    # the landing page's heat map: each pair's error overlap averaged over the tasks with both
    mean = [r for r in rects if r.get("data-column") == "mean_error_overlap"]
    overlaps: dict[tuple[str, str], list[float]] = {}
    for r in results.analysis["agreement"].to_pylist():
        overlaps.setdefault((r["method_a"], r["method_b"]), []).append(r["error_overlap"])
    assert len(mean) == len(STUDY["methods"]) ** 2
    for r in mean:
        want = overlaps[(r["data-method-a"], r["data-method-b"])]
        assert float(r["data-value"]) == pytest.approx(sum(want) / len(want))
    rects = [r for r in rects if r.get("data-column") != "mean_error_overlap"]
    assert {r["data-column"] for r in rects if "data-method-a" in r} == \
        {column for _, column, _ in PAIR_HEATMAPS}
    for name, column, _ in PAIR_HEATMAPS:
        pairs = results.analysis[name].to_pylist()
        heat = {(r["data-task"], r["data-method-a"], r["data-method-b"]): r
                for r in rects if r.get("data-column") == column}
        assert len(heat) == len(pairs), column
        for r in pairs:
            cell = heat[(r["task"], r["method_a"], r["method_b"])]
            assert float(cell["data-value"]) == r[column]

    # oracle tables
    oracle = {r["task"]: r for r in results.analysis["oracle"].to_pylist()}
    cells = parse_cells(page, "oracle-table")
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
    cells = parse_cells(page, "ensembles-table")
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
    "tiny": (85.0, 81.0, 70.0, 79.0, 3000.0),       # 1.0 pp below the best, cheaper: on the front
    "nan_m": (None, None, None, None, 10.0),        # no mean: not plotted, never picked
}


def test_pareto_front_function() -> None:
    pts = {m: (v[4], v[3]) for m, v in CRAFT.items() if v[3] is not None}
    assert pareto_front(pts) == {"probe", "small", "twin", "tiny", "huge"}
    assert pareto_front({"a": (1.0, 50.0)}) == {"a"}
    assert pareto_front({"a": (1.0, 50.0), "b": (1.0, 51.0)}) == {"b"}


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


def test_summary_only_results_get_no_recommendation(tmp_path: Path) -> None:
    """Without per-example predictions nothing can be tested: best means, labelled untested."""
    page = render(tmp_path, crafted(CRAFT), CRAFT_STUDY)
    advice = _advice(page)
    assert {a["data-kind"] for a in advice} == {"untested"}
    best = {(a["data-scope"]): json.loads(a["data-best"]) for a in advice}
    assert best == {"natural": ["huge"], "specialized": ["heavy"], "structured": ["tiny"],
                    "mean": ["huge"]}
    assert all(a["data-method"] == "" for a in advice)
    assert "no significance test was possible" in page


# ------------------------------------------------------------------------------------------
# "which method" from per-example outcomes: significance, chance, ties
# ------------------------------------------------------------------------------------------

N_TEST = 1000
SIG_STUDY = {
    "name": "sig", "description": "",
    "tasks": [{"name": "t_nat", "group": "natural", "num_classes": 10},
              {"name": "t_spec", "group": "specialized", "num_classes": 10},
              {"name": "t_str", "group": "structured", "num_classes": 10}],
    "methods": ["probe", "small", "twin", "tiny", "huge"],
}
SIG_PARAMS = {"probe": 0.0, "small": 100.0, "twin": 100.0, "tiny": 3000.0, "huge": 5000.0}


def outcome_results(accs: dict[str, float], study: dict = SIG_STUDY, seeds: int = 1,
                    same: dict[str, str] | None = None, num_resamples: int = 1000
                    ) -> StudyResults:
    """Results whose statistics come from per-example outcomes with exact accuracies.

    Every method is right on ``accs[m]`` % of each task's balanced 10-class test set, on its own
    random examples (independent errors); ``same={"twin": "small"}`` copies small's outcomes.
    """
    from vpeft.report.collect import statistics_from_outcomes
    from vpeft.report.uncertainty import TaskOutcomes

    labels = np.arange(N_TEST) % 10
    outs = []
    for k, t in enumerate(study["tasks"]):
        o = TaskOutcomes(t["name"], labels, 10)
        for i, m in enumerate(study["methods"]):
            rng = np.random.default_rng([k, i])
            rows = []
            for s in range(seeds):
                correct = np.zeros(N_TEST, bool)
                correct[rng.permutation(N_TEST)[:round(accs[m] * N_TEST / 100)]] = True
                rows.append(correct)
            o.correct[m] = np.stack(rows)
            o.preds[m] = np.where(o.correct[m], labels, (labels + 1) % 10)
            o.seeds[m] = list(range(seeds))
        for m, src in (same or {}).items():
            o.correct[m], o.preds[m] = o.correct[src].copy(), o.preds[src].copy()
        outs.append(o)
    rows = {m: (accs[m], accs[m], accs[m], accs[m], SIG_PARAMS[m]) for m in study["methods"]}
    base = crafted(rows)
    chance, stats, noise = statistics_from_outcomes(outs, study, base.summary,
                                                    num_resamples=num_resamples)
    return StudyResults(base.results, base.grid, base.summary, {}, chance=chance, stats=stats,
                        seed_noise=noise)


def test_which_method_cheapest_indistinguishable(tmp_path: Path) -> None:
    accs = {"probe": 10.0, "small": 70.0, "twin": 60.0, "tiny": 79.0, "huge": 80.0}
    results = outcome_results(accs)
    stats = {(r["scope"], r["method"]): r for r in results.stats.to_pylist()}
    # 1 pp on 3 x 1000 examples with independent errors is noise; 10 pp is not
    assert stats[("mean", "tiny")]["indistinguishable"] and stats[("mean", "huge")]["best"]
    assert not stats[("mean", "small")]["indistinguishable"]
    assert stats[("mean", "small")]["p_vs_best_holm"] < 0.01
    assert stats[("mean", "tiny")]["p_vs_best_holm"] > 0.05
    assert not stats[("mean", "probe")]["above_chance"]   # 10 % on 10 balanced classes
    assert all(stats[("mean", m)]["above_chance"] for m in ("small", "twin", "tiny", "huge"))
    page = render(tmp_path, results, SIG_STUDY)
    advice = {a["data-scope"]: a for a in _advice(page)}
    assert set(advice) == {"natural", "specialized", "structured", "mean"}
    for a in advice.values():
        assert a["data-kind"] == "pick" and a["data-method"] == "tiny"   # cheaper than huge
        assert set(json.loads(a["data-set"])) >= {"tiny", "huge"}
        assert "probe" in json.loads(a["data-at-chance"])
    spans = {(s["data-column"], s.get("data-method")): float(s["data-value"]) for s in _spans(page)}
    assert spans[("trainable_params", "tiny")] == 3000.0
    assert spans[("mean", "tiny")] == pytest.approx(79.0)
    assert spans[("alpha", None)] == 0.05 and spans[("chance", None)] == pytest.approx(10.0)
    assert "Holm" in page and "Not significantly above chance" in page


def test_all_methods_at_chance_no_recommendation(tmp_path: Path) -> None:
    """The many-shot miniature's failure: every method near 10 % on 10 classes."""
    accs = {"probe": 10.0, "small": 10.4, "twin": 9.6, "tiny": 10.2, "huge": 9.9}
    results = outcome_results(accs)
    assert not any(r["above_chance"] for r in results.stats.to_pylist())
    page = render(tmp_path, results, SIG_STUDY)
    advice = _advice(page)
    assert advice and all(a["data-kind"] == "no-pick" and a["data-method"] == "" for a in advice)
    for a in advice:
        assert sorted(json.loads(a["data-at-chance"])) == sorted(SIG_STUDY["methods"])
    assert "no method is significantly above chance" in page
    cells = [c for c in parse_cells(page, "main-table") if c["attrs"]["data-column"] == "mean"]
    assert cells and all("at-chance" in c["classes"] and "chance" in c["note"] for c in cells)
    chance = [c for c in parse_cells(page, "main-table") if c["attrs"]["data-column"] == "chance"
              and "data-value" in c["attrs"]]
    assert [float(c["attrs"]["data-value"]) for c in chance] == [10.0] * 7   # 3 tasks, 3 groups, mean


def test_ties_are_explicit(tmp_path: Path) -> None:
    accs = {"probe": 10.0, "small": 79.5, "twin": 79.5, "tiny": 80.0, "huge": 80.0}
    results = outcome_results(accs, same={"twin": "small", "tiny": "huge"})
    advice = recommendations(results, SIG_STUDY)
    got = {a.scope: (a.kind, a.method, a.tied, a.best) for a in advice}
    for scope in ("natural", "specialized", "structured", "mean"):
        # tiny and huge share the best mean; small and twin are identical and cheapest
        assert got[scope] == ("pick", "small", ["twin"], ["tiny", "huge"])
    page = render(tmp_path, results, SIG_STUDY)
    lis = {a["data-scope"]: a for a in _advice(page)}
    assert json.loads(lis["mean"]["data-tied"]) == ["twin"]
    assert json.loads(lis["mean"]["data-best"]) == ["tiny", "huge"]
    assert "a tie: 2 methods" in page


# ------------------------------------------------------------------------------------------
# escaping
# ------------------------------------------------------------------------------------------

def test_names_escaped_in_svgs(tmp_path: Path) -> None:
    evil = f"lo{EVIL}ra"
    study = {**CRAFT_STUDY, "methods": ["probe", evil, "huge"]}
    rows = {"probe": CRAFT["probe"], evil: (70.0, 90.0, 50.0, 70.0, 100.0), "huge": CRAFT["huge"]}
    tables = analyze_task(synthetic(f"t_nat{EVIL}", ["probe", evil, "huge"], 1), top_ks=(2,),
                          confidence_threshold=0.9)
    study["tasks"] = [{"name": f"t_nat{EVIL}", "group": "natural"}] + CRAFT_STUDY["tasks"][1:]
    render(tmp_path, crafted(rows, dict(tables)), study)
    page = whole_report(tmp_path)
    lowered = page.lower()
    assert "<script" not in lowered
    assert not re.search(r"https?://", lowered)
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    # the task's heat maps (its page) and the landing page's mean over tasks
    heat = [s for s in svgs if "heatmap" in s and 'data-task="all tasks"' not in s[:300]]
    assert len([s for s in svgs if 'data-task="all tasks"' in s[:300]]) == 1
    scatter = [s for s in svgs if "scatter" in s]
    confhist = [s for s in svgs if "confhist" in s]
    assert len(heat) == len(PAIR_HEATMAPS) and scatter and confhist
    for chart in heat + scatter + confhist:
        assert "lo&lt;script&gt;alert(1)&lt;/script&gt;ra" in chart
    assert any(b.get("data-method") == evil and b.get("data-task") == f"t_nat{EVIL}"
               for b in tags(page, "rect") if "data-bin" in b)
    assert any(c["attrs"].get("data-method") == evil
               for c in parse_cells(page, "confidence-table"))
    assert any(r.get("data-method-a") == evil for r in tags(page, "rect"))
    assert any(c.get("data-method") == evil for c in tags(page, "circle"))
    assert any(evil in json.loads(a["data-best"]) for a in _advice(page))
    assert any(c["attrs"].get("data-value") == ",".join(["probe", evil, "huge"])
               for c in parse_cells(page, "ensembles-table"))


def test_heatmaps_mark_empty_sets(runs: Path, analysed: dict, tmp_path: Path) -> None:
    """A Jaccard of two empty sets keeps its table value (1.0) but is drawn as "∅"."""
    results = collect_study(runs, STUDY)
    render(tmp_path, results)
    page = whole_report(tmp_path)
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
    render(tmp_path, results)
    page = whole_report(tmp_path)
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
    cells = parse_cells(page, "confidence-table")
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
    render(tmp_path, collected)
    page = whole_report(tmp_path)
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
    render(tmp_path, results, study)
    page = whole_report(tmp_path)
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
    render(tmp_path, results)
    page = whole_report(tmp_path)
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

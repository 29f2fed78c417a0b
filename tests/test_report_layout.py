"""The report at the paper's scale (19 VTAB-1K tasks x 16 methods), measured in real Chromium
at 1400 px: nothing scrolls sideways, every task and section has its anchor and page, and no
chart label is clipped by its SVG or printed over another label (rendered extents, not guesses).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from browser import chromium, visit
from test_report_analysis import synthetic
from vpeft.analysis import analyze_task
from vpeft.report import StudyResults, render_report
from vpeft.report.collect import (CHANCE_SCHEMA, GRID_SCHEMA, RESULTS_SCHEMA, STATS_SCHEMA,
                                  SUMMARY_SCHEMA)
from vpeft.report.pages import task_anchor, task_page

# A full-size fabricated report measured in real Chromium.
pytestmark = [pytest.mark.slow, pytest.mark.browser]

WIDTH = 1400
TASKS = [("caltech101", "natural", 102), ("cifar", "natural", 100), ("dtd", "natural", 47),
         ("oxford_flowers102", "natural", 102), ("oxford_iiit_pet", "natural", 37),
         ("svhn", "natural", 10), ("sun397", "natural", 397),
         ("patch_camelyon", "specialized", 2), ("eurosat", "specialized", 10),
         ("resisc45", "specialized", 45), ("diabetic_retinopathy", "specialized", 5),
         ("clevr_count", "structured", 8), ("clevr_dist", "structured", 6),
         ("dmlab", "structured", 6), ("kitti", "structured", 4),
         ("dsprites_loc", "structured", 16), ("dsprites_ori", "structured", 16),
         ("smallnorb_azi", "structured", 18), ("smallnorb_ele", "structured", 9)]
# (method, trainable parameters): lora and adapter_pfeiffer sit close together, as in the paper
METHODS = [("linear", 0), ("full", 85_800_000), ("bitfit", 102_000), ("lora", 295_000),
           ("adapter_pfeiffer", 300_000), ("adapter_houlsby", 1_190_000),
           ("vpt_shallow", 9_200), ("vpt_deep", 92_000), ("ssf", 200_000), ("fact_tt", 40_000),
           ("noah", 430_000), ("convpass", 330_000), ("adaptformer", 160_000),
           ("prefix_tuning", 290_000), ("partial_1", 7_100_000), ("mlp_3", 1_600_000)]
STUDY = {"name": "vtab1k", "title": "VTAB-1K, full size",
         "tasks": [{"name": t, "group": g, "num_classes": c, "description": f"{t} ({g})"}
                   for t, g, c in TASKS],
         "methods": [m for m, _ in METHODS]}


def _acc(i: int, j: int) -> float:
    return 40.0 + (i * 7 + j * 13) % 55 + 0.25 * (j % 4)


def _grid(task: str, group: str, method: str, j: int) -> list[dict[str, Any]]:
    """Half the methods sweep rank x lr x weight decay (a matrix with long row labels), the
    others lr only (a line)."""
    rows = []
    ranks = (1, 8, 16) if j % 2 else (None,)
    for r in ranks:
        for k, lr in enumerate((1e-3, 1e-2, 1e-1)):
            for wd in ((1e-4, 1e-3) if r else (1e-4,)):
                hp = {"rank": r} if r else {}
                rows.append({"study": "vtab1k", "task": task, "group": group, "method": method,
                             "point": f"lr{lr}-wd{wd}" + (f"-rank{r}" if r else ""),
                             "selected": k == 1 and wd == 1e-4 and r in (None, 8),
                             "status": "ok", "val_top1": 50.0 + k + (r or 0) / 4,
                             "hparams_json": json.dumps(hp),
                             "optim_json": json.dumps({"lr": lr, "weight_decay": wd}),
                             "lr": lr, "weight_decay": wd, "seed": 0, "epochs": 100,
                             "wall_time_s": 100.0})
    return rows


def _stat(kind: str, scope: str, method: str, mean: float, chance: float) -> dict[str, Any]:
    return {"scope_kind": kind, "scope": scope, "method": method, "num_tasks": 1,
            "num_seeds": 3, "mean": mean, "std": 0.31, "ci_low": mean - 1.94,
            "ci_high": mean + 1.87, "ci_kind": "seeds and test images", "chance": chance,
            "p_above_chance": 0.4, "p_above_chance_holm": 0.4,
            "above_chance": mean > chance + 10}   # some cells "≈ chance": the widest text


def full_size_results() -> StudyResults:
    results, grid, stats, chance = [], [], [], []
    for i, (task, group, classes) in enumerate(TASKS):
        chance.append({"task": task, "num_classes": classes, "num_test": 1000,
                       "chance": 100.0 / classes + 30 * (classes < 6),
                       "uniform_chance": 100.0 / classes})
        for j, (method, params) in enumerate(METHODS):
            rows = _grid(task, group, method, j)
            grid += rows
            best = next(r for r in rows if r["selected"])
            acc = _acc(i, j)
            results.append({
                "study": "vtab1k", "task": task, "group": group, "method": method,
                "status": "ok", "test_top1": acc, "val_top1": best["val_top1"],
                "point": best["point"], "hparams_json": best["hparams_json"],
                "optim_json": best["optim_json"], "lr": best["lr"],
                "weight_decay": best["weight_decay"], "trainable_params": params,
                "trainable_pct": 100 * params / 85_800_000, "seed": 0, "num_test": 1000,
                "num_seeds": 3, "test_top1_mean": acc, "test_top1_std": 0.31,
                "wall_time_s": 321.0, "protocol": "vtab1k-800-200",
                "grid_wall_time_s": 4321.0, "num_grid_points": len(rows), "num_diverged": 0,
                "git_commit": "0123456789abcdef0123456789abcdef01234567",
                "versions_json": json.dumps({"python": "3.11.7", "torch": "2.4.0",
                                             "timm": "1.0.9", "vpeft": "0.1.0"}),
                "config_json": json.dumps({"task": task, "method": method,
                                           "optim": json.loads(best["optim_json"])})})
            stats.append(_stat("task", task, method, acc, chance[-1]["chance"]))
    summary, methods = [], [m for m, _ in METHODS]
    for j, (method, params) in enumerate(METHODS):
        by_group = {g: [_acc(i, j) for i, (_, tg, _) in enumerate(TASKS) if tg == g]
                    for g in ("natural", "specialized", "structured")}
        means = {g: sum(v) / len(v) for g, v in by_group.items()}
        mean = sum(_acc(i, j) for i in range(len(TASKS))) / len(TASKS)
        summary.append({"method": method, **means, "mean": mean, "num_tasks": 19, "num_ok": 19,
                        "num_diverged": 0, "num_missing": 0, "trainable_params": float(params),
                        "trainable_pct": 100 * params / 85_800_000, "num_seeds": 3})
        stats += [_stat("group", g, method, v, 20.0) for g, v in means.items()]
        stats.append(_stat("overall", "mean", method, mean, 20.0))
    analysis: dict[str, list[pa.Table]] = {}
    for i, (task, _, _) in enumerate(TASKS):
        for name, table in analyze_task(synthetic(task, methods, i), top_ks=(3, 5),
                                        confidence_threshold=0.9).items():
            analysis.setdefault(name, []).append(table)
    return StudyResults(
        results=pa.Table.from_pylist(results, schema=RESULTS_SCHEMA),
        grid=pa.Table.from_pylist(grid, schema=GRID_SCHEMA),
        summary=pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA),
        analysis={n: pa.concat_tables(ts) for n, ts in analysis.items()},
        chance=pa.Table.from_pylist(chance, schema=CHANCE_SCHEMA),
        stats=pa.Table.from_pylist(stats, schema=STATS_SCHEMA))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fullsize") / "vtab1k" / "index.html"
    csv = out.parent.parent / "published.csv"
    csv.write_text("method,task,test_top1\n" + "".join(
        f"{m},{t},{_acc(i, j) - 1.5}\n" for i, (t, _, _) in enumerate(TASKS)
        for j, (m, _) in enumerate(METHODS)))
    render_report(full_size_results(), STUDY, out, published_csv=csv)
    return out


# Rendered layout, measured in the page. Tables (and their scrolling wrappers) must not be wider
# than their box; every text of every chart must lie inside its SVG's viewBox (getBBox, mapped
# through the text's own transform, e.g. the rotated column labels); labels of one scatter must
# not overlap each other or a point.
LAYOUT_JS = r"""
(() => {
  const doc = document.documentElement;
  const out = {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, wide: [],
               clipped: [], overlaps: [], ids: [...document.querySelectorAll('[id]')].map(e => e.id),
               texts: 0, height: doc.scrollHeight};
  for (const e of document.querySelectorAll('table, div.scroll, pre')) {
    if (e.scrollWidth > e.clientWidth) out.wide.push([e.tagName, e.id, e.scrollWidth, e.clientWidth]);
  }
  const box = (el) => {
    const b = el.getBBox(), m = el.getCTM(), svgM = el.ownerSVGElement.getCTM();
    const rel = svgM.inverse().multiply(m);   // the text's user space -> the svg's user space
    const pts = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height],
                 [b.x + b.width, b.y + b.height]].map(([x, y]) => new DOMPoint(x, y).matrixTransform(rel));
    return [Math.min(...pts.map(p => p.x)), Math.min(...pts.map(p => p.y)),
            Math.max(...pts.map(p => p.x)), Math.max(...pts.map(p => p.y))];
  };
  const hit = (a, b) => a[0] < b[2] - 0.5 && b[0] < a[2] - 0.5 && a[1] < b[3] - 0.5 && b[1] < a[3] - 0.5;
  for (const svg of document.querySelectorAll('svg.chart')) {
    const vb = svg.viewBox.baseVal;
    for (const t of svg.querySelectorAll('text')) {
      if (!t.textContent.trim()) continue;
      out.texts += 1;
      const b = box(t);
      if (b[0] < vb.x - 0.5 || b[1] < vb.y - 0.5 || b[2] > vb.x + vb.width + 0.5 || b[3] > vb.y + vb.height + 0.5)
        out.clipped.push([svg.getAttribute('class'), t.textContent, b.map(v => Math.round(v)), vb.width, vb.height]);
    }
    const labels = [...svg.querySelectorAll('text.plabel')].map(t => [t.textContent, box(t)]);
    const points = [...svg.querySelectorAll('circle.point')].map(c => box(c));
    labels.forEach(([name, b], i) => {
      labels.slice(i + 1).forEach(([other, c]) => { if (hit(b, c)) out.overlaps.push([name, other]); });
      points.forEach((p, k) => { if (hit(b, p)) out.overlaps.push([name, 'point ' + k]); });
    });
  }
  return out;
})()
"""


def _measure(page: Path) -> dict[str, Any]:
    seen = visit(page, width=WIDTH, height=900, expressions={"layout": LAYOUT_JS})
    assert seen.requests == [page.resolve().as_uri()]   # nothing but the page itself
    return seen.values["layout"]   # type: ignore[return-value]


def _check_layout(page: Path, m: dict[str, Any]) -> None:
    assert m["clientWidth"] == WIDTH and m["scrollWidth"] <= WIDTH, page
    assert m["wide"] == [], page
    assert m["texts"] > 0 and m["clipped"] == [], page
    assert m["overlaps"] == [], page


def test_pages_and_anchors(report: Path) -> None:
    landing = report.read_text(encoding="utf-8")
    for t, _, _ in TASKS:
        # an anchor and a link per task on the landing page; its page links back to it
        assert f'id="{task_anchor(t)}"' in landing and f'href="{task_page(t)}"' in landing
        page = (report.parent / task_page(t)).read_text(encoding="utf-8")
        assert f'href="../index.html#{task_anchor(t)}"' in page
        assert page.count('class="chart heatmap"') == 4 and "confhist" in page
        assert page.count('class="chart landscape') == len(METHODS)
        assert "http://" not in page and "https://" not in page and "<script" not in page
    for section in ("contents", "how-to-read", "results", "which-method", "params-vs-accuracy",
                    "different-mistakes", "ensemble-gains", "high-confidence", "tasks",
                    "published", "provenance"):
        assert f'id="{section}"' in landing, section
    ids = re.findall(r'\bid="([^"]+)"', landing)
    assert len(ids) == len(set(ids))
    # the per-task detail is not on the landing page: it stays small
    assert 'class="chart landscape' not in landing and 'class="chart confhist"' not in landing
    assert len(landing.encode()) < 1_000_000
    # provenance: the shared commit and versions once, no per-run rows (every run agrees)
    assert landing.count('data-column="git_commit"') == 1
    assert landing.count('data-column="versions_json"') == 1
    assert 'id="provenance-exceptions"' not in landing


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium")
def test_landing_page_fits_1400px(report: Path) -> None:
    m = _measure(report)
    _check_layout(report, m)
    assert {task_anchor(t) for t, _, _ in TASKS} <= set(m["ids"])
    assert "main-table-2" in m["ids"]   # 19 tasks + means + parameters: cut in two parts


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium")
def test_task_page_fits_1400px(report: Path) -> None:
    page = report.parent / task_page("diabetic_retinopathy")
    _check_layout(page, _measure(page))

"""The report's Reproduction section (vpeft.report.reproduction) on runs fabricated from the
published grid itself: two VTAB tasks x three methods, written through the run store's writers
(vpeft.runs) as the training pipeline writes them. One method is shifted on purpose (every val200
and the test top-1 15 points lower), one has its selection flipped (its second-best point made the
best by half a point, everything else the paper's): the report must flag exactly those."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpeft.report import collect_study, render_report
from vpeft.report.published import published_csv
from vpeft.report.published_grid import PUBLISHED_GRID, read_published_grid
from vpeft.report.reproduction import compare_study, difference_band, selection_margins
from vpeft.runs import MethodRuns, RunMetrics, Selection, TestEval

TASKS = {"dtd": "natural", "eurosat": "specialized"}
METHODS = ["linear", "bitfit", "lora"]
SHIFTED, FLIPPED = "lora", "bitfit"
SHIFT = -15.0
NUM_TEST = 1000
STUDY = {"name": "repro", "title": "Reproduction check", "description": "",
         "tasks": [{"name": t, "group": g, "num_classes": 47 if t == "dtd" else 10,
                    "description": t} for t, g in TASKS.items()],
         "methods": METHODS}


@pytest.fixture(scope="module")
def paper():
    """(task, method) -> the published grid's points."""
    out = defaultdict(list)
    for p in read_published_grid():
        if p.task in TASKS and p.method in METHODS:
            out[(p.task, p.method)].append(p)
    return out


def _point_name(p) -> str:
    hp = "".join(f"-{k}{v}" for k, v in sorted(p.hparams.items()))
    return f"lr{p.lr:g}-wd{p.weight_decay:g}{hp}"


def _metrics(task: str, method: str, point: str, phase: str, p, val: float | None) -> RunMetrics:
    return RunMetrics.of(
        study="repro", task=task, method=method, point=point, group=TASKS[task], phase=phase,
        train_split="train800" if phase == "grid" else "train800val200", seed=42,
        eval_split="val200" if phase == "grid" else None, status="ok", val_top1=val,
        hparams=dict(p.hparams), optim={"lr": p.lr, "weight_decay": p.weight_decay},
        trainable_params=1000, trainable_params_with_head=2000, total_params=86_000_000,
        wall_time_s=1.0, epochs=100, protocol="as_published",
        config={"task": task, "method": method}, versions={"vpeft": "0.1.0"},
        git_commit="0" * 40)


def write_pair(study_dir: Path, task: str, method: str, points: list) -> None:
    """One task x method's grid, selection and final run, from the paper's points."""
    runs = MethodRuns(study_dir, task, method)
    vals = {_point_name(p): p.val200_top1 for p in points}
    chosen = next(p for p in points if p.selected)
    selected = _point_name(chosen)
    test = chosen.test_top1
    if method == SHIFTED:
        vals = {k: max(0.0, v + SHIFT) for k, v in vals.items()}  # (a few points are near 0)
        test += SHIFT
    if method == FLIPPED:   # the runner-up made best by half a point: a flip within noise
        runner_up = max((p for p in points if not p.selected), key=lambda p: p.val200_top1)
        selected = _point_name(runner_up)
        vals[selected] = chosen.val200_top1 + 0.5
    for p in points:
        runs.grid(_point_name(p)).write_metrics(
            _metrics(task, method, _point_name(p), "grid", p, vals[_point_name(p)]))
    runs.write_selection(Selection.of(
        task=task, method=method, criterion="last-epoch val200 top-1", best_point=selected,
        best_val_top1=vals[selected],
        candidates=[{"point": _point_name(p), "status": "ok", "val_top1": vals[_point_name(p)],
                     "hparams": dict(p.hparams),
                     "optim": {"lr": p.lr, "weight_decay": p.weight_decay}} for p in points]))
    final = runs.final()
    sel = next(p for p in points if _point_name(p) == selected)
    final.write_metrics(_metrics(task, method, selected, "final", sel, None))
    correct = round(test * NUM_TEST / 100)
    final.write_test_eval(TestEval.of(task=task, method=method, point=selected, seed=42,
                                      test_top1=100 * correct / NUM_TEST, num_test=NUM_TEST,
                                      status="ok"))
    labels = [i % 10 for i in range(NUM_TEST)]
    pq.write_table(pa.table({
        "index": list(range(NUM_TEST)), "label": labels,
        "pred": [y if i < correct else (y + 1) % 10 for i, y in enumerate(labels)],
        "logits": pa.array([[0.0] * 10] * NUM_TEST, pa.list_(pa.float32()))}),
        final.test_predictions_file)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, paper) -> Path:
    root = tmp_path_factory.mktemp("runs") / "repro"
    for (task, method), points in paper.items():
        write_pair(root, task, method, points)
    return root


def _cells(page: str, table: str) -> dict[tuple[str, str, str], str]:
    """(task, method, column) -> the <td>'s class list, of one table of the page."""
    body = page.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    out = {}
    for attrs in re.findall(r"<td ([^>]*)>", body):
        a = dict(re.findall(r'([\w-]+)="([^"]*)"', attrs))
        out[(a.get("data-task"), a.get("data-method"), a["data-column"])] = a.get("class", "")
    return out


def test_the_report_flags_exactly_the_shifted_and_the_flipped_method(study_dir, tmp_path):
    out = tmp_path / "report" / "index.html"
    render_report(collect_study(study_dir, STUDY), STUDY, out, published_grid=PUBLISHED_GRID)
    landing = out.read_text(encoding="utf-8")
    summary = re.search(r'id="reproduction-summary" data-compared="(\d+)" data-agree="(\d+)" '
                        r'data-flips="(\d+)"', landing)
    assert summary and summary.groups() == ("6", "4", "2")
    assert 'data-protocol="as_published"' in landing
    departures = _cells(landing, "reproduction-departures")
    assert {(t, m) for t, m, _ in departures} == {(t, SHIFTED) for t in TASKS}
    for task in TASKS:
        page = (out.parent / "tasks" / f"{task}.html").read_text(encoding="utf-8")
        cells = _cells(page, "reproduction-task")
        departs = {m for (_, m, col), cls in cells.items() if "departs" in cls.split()}
        flips = {m for (_, m, col), cls in cells.items() if "flip" in cls.split()}
        assert departs == {SHIFTED} and flips == {FLIPPED}, task
        # the shifted method's val200 and test both depart, its selection is the paper's
        assert "departs" in cells[(task, SHIFTED, "val200_delta")]
        assert "departs" in cells[(task, SHIFTED, "test_delta")]
        # the paper's points are drawn on the landscapes: one per grid point both ran
        assert page.count('class="paperpoint') + page.count('class="cellvalue delta') > 0


def test_the_comparison_measures_the_shift_and_the_flip(study_dir, paper):
    rep = compare_study(collect_study(study_dir, STUDY), STUDY, read_published_grid())
    by = {(p.task, p.method): p for p in rep.pairs}
    for task in TASKS:
        shifted, flipped, same = by[(task, SHIFTED)], by[(task, FLIPPED)], by[(task, "linear")]
        assert shifted.shift == pytest.approx(SHIFT) and shifted.common == len(paper[(task, SHIFTED)])
        assert shifted.same_selection and shifted.departs
        assert flipped.same_selection is False and flipped.flip_within_noise
        assert flipped.val.delta == 0 and not flipped.departs
        assert same.same_selection and not same.departs and same.shift == 0
        assert not (shifted.notes or flipped.notes or same.notes)
    assert rep.not_published == []


def test_a_partial_study_says_what_it_could_not_compare(study_dir, tmp_path):
    study = dict(STUDY, methods=METHODS + ["ssf"],
                 tasks=STUDY["tasks"] + [{"name": "cifar100_n500", "group": "natural",
                                          "num_classes": 100, "description": ""}])
    results = collect_study(study_dir, study, allow_missing=True)
    rep = compare_study(results, study, read_published_grid())
    missing = {(p.task, p.method): p.notes for p in rep.pairs if not p.compared}
    assert set(missing) == {("dtd", "ssf"), ("eurosat", "ssf")}
    assert all(n == ["no run of this study"] for n in missing.values())
    assert rep.not_published == [("cifar100_n500", m) for m in METHODS + ["ssf"]]
    out = tmp_path / "index.html"
    render_report(results, study, out, published_grid=PUBLISHED_GRID)
    page = out.read_text(encoding="utf-8")
    assert 'data-task="dtd" data-method="ssf">dtd · ssf: no run of this study' in page
    assert "cifar100_n500 · ssf" in page.split('id="reproduction-not-published"')[1]


def test_without_a_published_grid_the_section_is_one_line(study_dir, tmp_path):
    out = tmp_path / "index.html"
    render_report(collect_study(study_dir, STUDY), STUDY, out)
    page = out.read_text(encoding="utf-8")
    section = page.split('<section id="reproduction">')[1].split("</section>")[0]
    assert 'id="reproduction-none"' in section and "study.published_grid" in section
    assert "<table" not in section
    assert 'href="#reproduction"' in page
    assert 'id="reproduction"' not in (out.parent / "tasks" / "dtd.html").read_text("utf-8")


def test_published_grid_key_resolves_shipped_names_and_names_the_key(tmp_path):
    from vpeft.config import load_study
    from vpeft.errors import UserError

    # the paper's study declares the shipped grid; the demo studies declare none (one line)
    vtab = load_study("vtab1k", ["study.data.root=/data/vtab-1k", "model.weights=/w/v.npz"])
    assert published_csv(vtab.cfg.study.published_grid, "study.published_grid") == PUBLISHED_GRID
    assert load_study("demo", []).cfg.study.get("published_grid") is None
    assert published_csv("vtab1k_published_grid.csv", "study.published_grid") == PUBLISHED_GRID
    with pytest.raises(UserError, match=r"study.published_grid: 'nope.csv' is neither"):
        published_csv("nope.csv", "study.published_grid")


def test_the_noise_band_is_agresti_caffo():
    # 50 % vs 50 % on 200 images each: 1.96 * sqrt(2 * .25 / 202) = 9.75 points
    assert difference_band(50, 50, 200, 200) == pytest.approx(9.7512, abs=1e-3)
    # 100 % still has a band: (200 + 1) / 202 each side
    assert difference_band(100, 100, 200, 200) == pytest.approx(1.3688, abs=1e-3)
    assert difference_band(90, 90, 20000, 20000) < difference_band(90, 90, 200, 200)


def test_the_papers_own_selection_is_decided_within_noise_in_302_of_304_pairs():
    """The figure docs/protocol.md states ("What the paper's grid says about selection")."""
    margins = selection_margins(read_published_grid())
    assert len(margins) == 304
    assert sum(m.within_noise for m in margins.values()) == 302
    assert sum(m.gap == 0 for m in margins.values()) == 83
    assert [sum(m.gap <= g for m in margins.values()) for g in (0.5, 1.0)] == [184, 226]
    outside = sorted((m.task, m.method) for m in margins.values() if not m.within_noise)
    assert [method for _, method in outside] == ["full", "full"]


@pytest.mark.slow
@pytest.mark.browser
def test_the_section_fits_1400px_in_chromium(study_dir, tmp_path):
    """The landing page and a task page with the section, in real Chromium: nothing scrolls
    sideways, no chart text is clipped (tests/test_report_layout.py's measurements)."""
    from browser import chromium
    from test_report_layout import _check_layout, _measure

    if chromium() is None:
        pytest.fail("needs Debian's chromium (tests/system_packages.sh installs it)")
    out = tmp_path / "report" / "index.html"
    render_report(collect_study(study_dir, STUDY), STUDY, out, published_grid=PUBLISHED_GRID)
    for page in (out, out.parent / "tasks" / "dtd.html"):
        m = _measure(page)
        _check_layout(page, m)
        assert "reproduction" in m["ids"]


def test_a_line_landscape_carries_the_papers_points():
    """One swept axis: the paper's values are a dashed line of diamonds on the run's y scale,
    the paper's choice filled; without a reference the chart has none."""
    from vpeft.report.landscape import landscape
    from vpeft.report.numbers import fmt_acc

    rows = [{"point": f"lr{lr}", "status": "ok", "val_top1": v, "selected": lr == 0.01,
             "hparams_json": "{}", "optim_json": json.dumps({"lr": lr, "weight_decay": 0.0})}
            for lr, v in ((0.001, 60.0), (0.01, 70.0))]
    ref = {"lr0.001": (80.0, True), "lr0.01": (75.0, False)}
    svg = str(landscape("dtd", "linear", rows, fmt_acc, ref).svg)
    assert svg.count('class="paperpoint') == 2 and svg.count('class="paperpoint selected"') == 1
    assert 'data-value="80.0"' in svg and 'class="pline"' in svg
    assert "paper 80.0 % (paper selected)" in svg   # the point's tooltip names both values
    assert "paperpoint" not in str(landscape("dtd", "linear", rows, fmt_acc).svg)


def test_a_bad_public_grid_row_names_file_line_and_what_was_expected(tmp_path):
    from vpeft.report.published_grid import read_public_grid

    header = "study,setting,method,param_set,val_top1,selected,test_top1_if_selected\n"
    bad = tmp_path / "grid.csv"
    bad.write_text("# comment\n" + header +
                   'x,cifar100/500,lora_8,"{""lr"": 0.001, ""momentum"": 0.9}",50,0,\n')
    with pytest.raises(ValueError, match=rf"{bad}:3: param_set .*expected a JSON object of"):
        read_public_grid(bad)
    bad.write_text(header + 'x,cifar100/500,linear_8,"{""lr"": 0.001}",50,0,\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: method 'linear_8': a capacity suffix"):
        read_public_grid(bad)
    bad.write_text(header + 'x,cifar100/500,lora_8_2,"{""lr"": 0.001}",50,1,70\n')
    (point,) = read_public_grid(bad)
    assert (point.method, point.settings, point.rerun, point.task) == \
        ("lora", {"rank": 8, "lr": 0.001}, True, "cifar100_n500")


def test_a_users_published_grid_is_an_input_of_the_report(tmp_path):
    """Editing one's own published grid CSV must re-render the report: Snakemake's report job
    lists the file among its inputs (a name shipped with vpeft resolves inside the package)."""
    from conftest import run_snakemake, workflow_copy

    grid = tmp_path / "my_grid.csv"
    grid.write_text(PUBLISHED_GRID.read_text(encoding="utf-8"), encoding="utf-8")
    done = run_snakemake(workflow_copy(tmp_path), "-n", "report", "--config", "study=smoke",
                         f'overrides=["+study.published_grid={grid}"]')
    assert done.returncode == 0, done.stderr[-2000:]
    report_job = done.stdout.split("rule report:", 1)[1].split("\n\n", 1)[0]
    inputs = next(line for line in report_job.splitlines() if line.strip().startswith("input:"))
    assert str(grid) in inputs

"""The smoke study end to end through real Snakemake, and the report checked against its data."""
from __future__ import annotations

import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_snakemake, workflow_copy

# End-to-end: the smoke study through real Snakemake.
pytestmark = [pytest.mark.slow]


class CellParser(HTMLParser):
    """Every <td> of the main table that carries a raw value."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.table: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("id")
        if tag == "td" and self.table == "main-table" and "data-value" in attrs:
            self.cells.append(attrs)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, *args, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    workdir = workflow_copy(tmp_path_factory.mktemp("smoke"))
    proc = snakemake(workdir, "all", "--config", "study=smoke", "threads=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def test_smoke_study_produces_every_artefact(smoke_run):
    runs = smoke_run / "runs" / "smoke"
    for task in ("digits", "count"):
        assert (smoke_run / "data" / "prepared" / "smoke" / task / "manifest.json").is_file()
        for method in ("linear", "lora"):
            final = runs / task / method / "final"
            for name in ("metrics.json", "test_logits.parquet", "adapter.safetensors",
                         "test_eval.json", "test_predictions.parquet"):
                assert (final / name).is_file(), final / name
        for table in ("agreement", "accuracy", "oracle", "ensembles", "confidence",
                      "confident_overlap"):
            assert (runs / task / "analysis" / f"{table}.parquet").is_file(), (task, table)
    assert (smoke_run / "models" / "vit_smoke.safetensors").is_file()
    assert (smoke_run / "reports" / "smoke" / "index.html").is_file()


def test_report_numbers_equal_the_data_they_came_from(smoke_run):
    runs = smoke_run / "runs" / "smoke"
    html = (smoke_run / "reports" / "smoke" / "index.html").read_text()
    parser = CellParser()
    parser.feed(html)
    shown = {(c["data-task"], c["data-method"]): float(c["data-value"])
             for c in parser.cells if c.get("data-column") == "test_top1"}
    expected = {}
    for task in ("digits", "count"):
        for method in ("linear", "lora"):
            evaluation = json.loads((runs / task / method / "final" / "test_eval.json").read_text())
            preds = pq.read_table(runs / task / method / "final" / "test_predictions.parquet")
            accuracy = 100.0 * (preds.column("pred").to_numpy() == preds.column("label").to_numpy()).mean()
            assert evaluation["test_top1"] == pytest.approx(accuracy)
            expected[(task, method)] = evaluation["test_top1"]
    assert shown == pytest.approx(expected)
    results = pq.read_table(smoke_run / "reports" / "smoke" / "results.parquet").to_pylist()
    assert {(r["task"], r["method"]): r["test_top1"] for r in results} == pytest.approx(expected)
    # overall mean per method = mean over tasks
    means = {c["data-method"]: float(c["data-value"]) for c in parser.cells
             if c.get("data-column") == "mean"}
    for method in ("linear", "lora"):
        assert means[method] == pytest.approx((expected[("digits", method)]
                                               + expected[("count", method)]) / 2)
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_a_second_run_has_nothing_to_do(smoke_run):
    proc = snakemake(smoke_run, "all", "--config", "study=smoke", "threads=1", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_the_paper_study_is_planned_from_config_alone(tmp_path):
    """study=vtab1k + a data root + a weights file: the full paper grid, no code change."""
    workflow_copy(tmp_path)
    root = tmp_path / "vtab-1k"
    for task in ("dtd", "eurosat"):
        (root / task).mkdir(parents=True)
    weights = tmp_path / "ViT-B_16.npz"
    weights.touch()
    proc = snakemake(tmp_path, "all", "--dry-run", "--config", "study=vtab1k", f"data_root={root}",
                     f"weights={weights}",
                     'overrides=["study.tasks=[dtd,eurosat]","train.points_per_job=1"]')
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    # 522 grid points per task over the 16 methods' paper grids (tests/test_published_grid.py) (one job each with
    # points_per_job=1; tests/test_fused.py checks the fused jobs); one final run per task x method
    assert stats["train_grid"] == str(2 * 522)
    assert stats["train_final"] == stats["evaluate"] == str(2 * 16)
    assert stats["prepare"] == "2" and "pretrain" not in stats


def _require_chromium():
    from browser import chromium

    # A browser check counts only when it ran: a missing Chromium fails (make test installs it)
    # unless a developer opts out explicitly.
    if os.environ.get("VPEFT_SKIP_BROWSER") == "1":
        pytest.skip("VPEFT_SKIP_BROWSER=1: the real-browser check was opted out of")
    if chromium() is None:
        pytest.fail("Debian chromium is not installed: `make test` installs it "
                    "(tests/system_packages.sh), or set VPEFT_SKIP_BROWSER=1 to opt out", pytrace=False)


@pytest.mark.browser
def test_the_report_renders_in_a_real_browser_without_network(smoke_run, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from browser import visit

    _require_chromium()
    page = smoke_run / "reports" / "smoke" / "index.html"
    seen = visit(page)
    shot = Image.open(io.BytesIO(seen.screenshot_png)).convert("RGB")
    assert shot.size == (1280, 2000)
    pixels = np.asarray(shot)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank
    assert 'id="main-table"' in seen.dom and 'data-method="lora"' in seen.dom
    assert seen.requests == [page.resolve().as_uri()], seen.requests


def test_the_browser_check_does_see_requests(tmp_path):
    """Control for the test above: a page that does load something is caught."""
    from browser import visit

    _require_chromium()
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/pixel.png"></body></html>')
    assert "http://127.0.0.1:9/pixel.png" in visit(page).requests


def test_snakemake_report_carries_the_study_report(smoke_run):
    out = smoke_run / "snakemake-report.html"
    proc = snakemake(smoke_run, "--report", str(out), "--config", "study=smoke", "threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text(errors="replace")
    assert "Study report" in text and "train_grid" in text


def test_adding_seeds_reruns_nothing_of_the_single_seed_study(smoke_run):
    """The completed single-seed study stays valid when seeds are added to its params: only the
    new seeds' final runs and evaluations are planned (plus the analysis and report reading
    them); no grid point, selection or first-seed run is redone."""
    study = smoke_run / "params" / "study" / "smoke.yaml"
    original = study.read_text()
    assert "\ntrain:\n" in original
    study.write_text(original.replace("\ntrain:\n", "\ntrain:\n  seeds: [42, 43]\n"))
    try:
        more = snakemake(smoke_run, "all", "--dry-run", "--config", "study=smoke", "threads=1")
    finally:
        study.write_text(original)
    assert more.returncode == 0, more.stderr[-2000:]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", more.stdout + more.stderr, flags=re.M))
    # smoke runs both methods of a task in one job per step (train.methods_per_job: 0)
    assert stats["train_final_seed_group1"] == stats["evaluate_seed_group1"] == "2"  # 2 tasks
    assert not any(name.startswith("train_grid") for name in stats), stats
    for rule in ("select_group1", "train_final_group1", "evaluate_group1", "pretrain", "prepare",
                 "synth"):
        assert rule not in stats, stats

"""vpeft.layout owns the artefact paths: dvc.yaml, the rules and the report agree with it, and
dvc.yaml tracks every method's config (adding a method cannot silently leave it out)."""
from __future__ import annotations

import yaml

from vpeft import layout, methods
from vpeft.config import method_names_in_params
from vpeft.report.pages import TASK_DIR

from conftest import REPO

STUDY_DIR = "reports/${study}/"


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _paths(entries: list) -> list[str]:
    """dvc.yaml list entries as paths (an entry is a path or a one-key mapping path -> options)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_dvc_tracks_exactly_the_files_the_report_writes():
    report = _stages()["report"]
    outs = set(_paths(report["outs"]))
    metrics = set(_paths(report["metrics"]))
    expected = {layout.REPORT_INDEX, TASK_DIR, *layout.report_files()}
    assert metrics == {STUDY_DIR + layout.REPORT_METRICS_JSON}
    assert outs | metrics == {STUDY_DIR + name for name in expected}
    assert not outs & metrics


def test_dvc_tracks_every_method_config_and_every_method_has_one():
    params = [next(iter(p)) for p in _stages()["train"]["params"] if isinstance(p, dict)]
    tracked = sorted(p[len("params/method/"):-len(".yaml")] for p in params
                     if p.startswith("params/method/"))
    assert tracked == method_names_in_params()
    # every registered method has its YAML (peft.yaml: Hugging Face peft's LoRA, a variant)
    assert sorted(methods.names()) == method_names_in_params()

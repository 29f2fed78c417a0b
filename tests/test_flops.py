"""The FLOP lower bound of a study (benchmarks.flops) and the measured projection's ratio to it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package
from benchmarks import flops  # noqa: E402
from benchmarks.project import PUBLIC_IMAGES, flop_bound  # noqa: E402

ONE_TASK = ["study.tasks=[dtd]", "study.methods=[linear,lora,full]", "train.seeds=[42]"]


def test_the_bound_counts_each_method_as_stated():
    bound = flops.study_bound("vtab1k", ONE_TASK)
    f, test = flops.FORWARD_GFLOP, PUBLIC_IMAGES["vtab.dtd.test"]
    # LoRA: 4 ranks x 2 lr x 2 wd = 16 points of 100 epochs x 800 images at 2 forwards, val200 once
    lora = 16 * (100 * 800 * 2 * f + 200 * f) + 100 * 1000 * 2 * f + test * f
    assert bound["methods"]["lora"] == pytest.approx(lora / 1e6)
    full = 10 * (100 * 800 * 3 * f + 200 * f) + 100 * 1000 * 3 * f + test * f
    assert bound["methods"]["full"] == pytest.approx(full / 1e6)
    # cached linear probing: one forward per image, once per grid job (8 points a job, 4 points)
    assert bound["methods"]["linear"] == pytest.approx(((800 + 200) + (1000 + test)) * f / 1e6)
    hours = bound["pflop"] * 1e15 / (flops.PEAK_TFLOPS["A100"] * 1e12) / 3600
    assert bound["hours_at_peak"]["A100"] == pytest.approx(hours)


def test_the_projection_states_its_model_flop_utilisation():
    bound = flops.study_bound("vtab1k", ONE_TASK)
    result = {"study": "vtab1k", "hours": {"total": 4 * bound["hours_at_peak"]["H100 SXM"]}}
    doc = {"machine": {"cuda": "NVIDIA H100 80GB HBM3"}, "settings": {"device": "cuda"}}
    assert flop_bound(result, doc, ONE_TASK, None)["mfu"] == pytest.approx(0.25)
    cpu = {"machine": {"cuda": None}, "settings": {"device": "cpu"}}
    assert flop_bound(result, cpu, ONE_TASK, None)["mfu"] is None
    with pytest.raises(ValueError, match="ViT-B/16 at 224 px only"):
        flops.study_bound("demo")

"""The cost projection (benchmarks.project): device-hours of the paper's studies from measured step
times and vpeft's own study plans. Checked with benchmark documents in the schema benchmarks.run
writes (rows from its own `subjects`) holding round numbers, so every figure can be worked out by
hand, and end to end with a real (tiny, CPU) benchmark run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # the benchmarks package lives at the repository root

from benchmarks.project import (PUBLIC_IMAGES, ProjectionError, newest_result,  # noqa: E402
                                project, read_speeds)
from benchmarks.run import subjects  # noqa: E402
from vpeft.data.manyshot import draw_split  # noqa: E402

STAND_INS = ["-o", "study.data.root=/unused", "-o", "model.weights=/unused"]
TRAIN_S_PER_STEP, BATCH = 0.32, 32    # 0.01 s per training image
EVAL_IPS = 1000.0                     # 0.001 s per evaluated image
EXTRACT_IPS, HEAD_IPS = 2000.0, 1e5   # cached features: 0.0005 s / image, 1e-5 s / image


def benchmark_doc(device: str = "cpu", precisions=("fp32",), methods=None) -> dict:
    """A benchmarks.run result document with the same figures for every method."""
    from vpeft import methods as registry

    rows = [json.loads(json.dumps(row, default=list)) for row in
            [r.__dict__ for r in subjects(methods or registry.names(), references=False)]]
    for row in rows:
        for phase in row["phases"]:
            row[phase] = {}
            for precision in precisions:
                result = {"seconds_per_step": TRAIN_S_PER_STEP, "images_per_s": EVAL_IPS,
                          "images_per_cpu_s": 200.0}  # 0.005 s per image of CPU time
                if row["kind"] == "vpeft_linear_cached":
                    result["cached"] = {"extract_images_per_s": EXTRACT_IPS,
                                        "head_images_per_s": HEAD_IPS}
                row[phase][precision] = result
    return {"date": "2026-11-25T10:00:00+00:00", "command": "python -m benchmarks.run",
            "machine": {"cpu": "Test CPU", "cuda": "NVIDIA H200" if device == "cuda" else None,
                        "torch": "2.x", "timm": "1.x"},
            "settings": {"model": "vit_small64", "device": device, "precisions": list(precisions),
                         "batch_size": BATCH, "eval_batch_size": 128, "threads": 1,
                         "model_spec": {"name": "vit_tiny_patch16_224", "img_size": 64,
                                        "kwargs": {"embed_dim": 192, "depth": 6}}},
            "cases": rows, "ratios": []}


@pytest.fixture(autouse=True)
def params_dir(monkeypatch):
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))


def _vpeft_plan(study: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "vpeft", "plan", "--study", study, *STAND_INS],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout
    return json.loads(out)


def _row(study: dict, method: str) -> dict:
    return next(r for r in study["rows"] if r["method"] == method)


def test_vtab1k_hours_follow_the_study_plan(tmp_path):
    proj = project(benchmark_doc(), tmp_path / "x-cpu.json", ["vtab1k"], overhead_s=10.0)
    (st,) = proj["studies"]
    plan = _vpeft_plan("vtab1k")
    assert st["grid_runs"] == plan["grid_runs"] and st["final_runs"] == plan["final_runs"]
    assert st["methods"] == plan["methods"] and len(st["tasks"]) == 19 and st["complete"]

    lora = _row(st, "lora")
    points = len(plan["grid_points"]["lora"])             # the paper grid of params/method/lora.yaml
    assert lora["grid_points"] == points and lora["path"] == "back-propagation"
    tests = sum(PUBLIC_IMAGES[f"vtab.{t}.test"] for t in st["tasks"])
    # grid: every point 100 epochs x 800 images at 0.01 s, then 200 val images at 0.001 s
    assert lora["seconds"]["grid"] == pytest.approx(19 * points * (100 * 800 * 0.01 + 200 * 0.001))
    assert lora["seconds"]["final"] == pytest.approx(19 * 100 * 1000 * 0.01 + tests * 0.001)
    assert lora["seconds"]["wise"] == 0
    jobs = -(-points // 8)                                  # train.points_per_job: 8
    assert lora["grid_jobs_per_task"] == jobs
    assert lora["seconds"]["start-up"] == pytest.approx(19 * (jobs + 1) * 10.0)
    assert lora["hours"]["total"] == pytest.approx(sum(lora["seconds"].values()) / 3600)

    # linear is head-only: frozen features of train800 + val200 once per job, the head on them.
    linear = _row(st, "linear")
    n = linear["grid_points"]
    assert linear["path"] == "cached features" and linear["grid_jobs_per_task"] == 1
    assert linear["seconds"]["grid"] == pytest.approx(
        19 * (1000 / EXTRACT_IPS + n * 100 * 800 / HEAD_IPS))
    assert linear["seconds"]["final"] == pytest.approx(
        19 * 1000 / EXTRACT_IPS + tests / EXTRACT_IPS + 19 * 100 * 1000 / HEAD_IPS)
    assert st["hours"]["total"] == pytest.approx(sum(r["hours"]["total"] for r in st["rows"]))
    assert proj["unit"] == "CPU-hours" and "not GPU-hours" in proj["warning"]
    assert proj["images_used"]["vtab.kitti.test"] == {"images": 711,
                                                       "source": "public distribution"}


def test_config_overrides_change_the_projection(tmp_path):
    doc = benchmark_doc(methods=["lora"])
    base = _row(project(doc, tmp_path / "x.json", ["vtab1k"],
                        ["study.methods=[lora]"])["studies"][0], "lora")
    changed = _row(project(doc, tmp_path / "x.json", ["vtab1k"],
                           ["study.methods=[lora]", "train.epochs=50", "train.points_per_job=1"],
                           overhead_s=5.0)["studies"][0], "lora")
    points = base["grid_points"]
    assert changed["seconds"]["grid"] == pytest.approx(19 * points * (50 * 800 * 0.01 + 0.2))
    assert changed["grid_jobs_per_task"] == points
    assert changed["seconds"]["start-up"] == pytest.approx(19 * (points + 1) * 5.0)
    assert base["seconds"]["grid"] > 1.9 * changed["seconds"]["grid"]


def test_manyshot_counts_are_those_the_pipeline_draws(tmp_path):
    proj = project(benchmark_doc(), tmp_path / "x.json", ["manyshot"])
    (st,) = proj["studies"]
    images = st["images"]
    # The same draw the `subsets` verb makes, on label arrays of the distributed sizes.
    cifar = np.repeat(np.arange(100), 500)
    for task, size in [("cifar100_n500", 500), ("cifar100_n10000", 10000), ("cifar100", None)]:
        split = draw_split(cifar, 100, dataset="cifar100", seed=0, size=size, val_fraction=0.2,
                           val_max=5000)
        assert images[task]["grid_eval"] == len(split["val"]), task
        assert images[task]["final_train"] == len(split["train"]), task
        assert images[task]["grid_train"] == len(split["train"]) - len(split["val"]), task
        assert images[task]["test"] == 10000
    resisc = draw_split(np.repeat(np.arange(45), 700), 45, dataset="resisc45", seed=0, size=None,
                        val_fraction=0.2, val_max=5000, test_fraction=0.2)
    assert (images["resisc45"]["final_train"], images["resisc45"]["grid_eval"],
            images["resisc45"]["test"]) == (len(resisc["train"]), len(resisc["val"]),
                                            len(resisc["test"]))
    # Augmented training: linear back-propagates through the frozen model (no feature cache).
    assert _row(st, "linear")["path"] == "back-propagation"
    epochs = st["epochs"]
    lora = _row(st, "lora")
    expected = sum(lora["grid_points"] * (epochs * im["grid_train"] * 0.01 + im["grid_eval"] * 0.001)
                   for im in images.values())
    assert lora["seconds"]["grid"] == pytest.approx(expected)


def test_robustness_counts_wise_ft_over_every_alpha_and_shift(tmp_path):
    (st,) = project(benchmark_doc(), tmp_path / "x.json", ["robustness"])["studies"]
    im = st["images"]["imagenet"]
    shifts = 10000 + 50889 + 7500 + 30000
    assert im["test"] == 50000 and im["wise"] == 11 * (50000 + shifts)
    assert _row(st, "lora")["seconds"]["wise"] == pytest.approx(11 * (50000 + shifts) * 0.001)
    assert _row(st, "lora")["device_jobs"] == _row(st, "lora")["grid_jobs_per_task"] + 2


def test_cuda_results_give_gpu_hours_at_the_studys_bf16(tmp_path):
    doc = benchmark_doc("cuda", ("fp32", "bf16"))
    for row in doc["cases"]:  # bf16 twice as fast: the projection must read the bf16 figures
        for phase in row["phases"]:
            row[phase]["bf16"] = {**row[phase]["bf16"], "seconds_per_step": TRAIN_S_PER_STEP / 2}
    proj = project(doc, tmp_path / "vit_b16-cuda.json", ["vtab1k"])
    assert proj["precision"] == "bf16" and proj["unit"] == "GPU-hours (NVIDIA H200)"
    assert proj["warning"] == ""
    fp32 = project(doc, tmp_path / "vit_b16-cuda.json", ["vtab1k"], precision="fp32")
    lora, lora32 = (_row(p["studies"][0], "lora") for p in (proj, fp32))
    assert lora["seconds"]["grid"] < 0.51 * lora32["seconds"]["grid"]


def test_unmeasured_methods_are_reported_not_counted(tmp_path):
    proj = project(benchmark_doc(methods=["lora", "full"]), tmp_path / "x.json", ["vtab1k"])
    (st,) = proj["studies"]
    assert [r["method"] for r in st["rows"]] == ["full", "lora"]
    assert "linear" in st["missing_methods"] and not proj["complete"]


def test_bad_inputs_say_what_is_wrong(tmp_path):
    doc = benchmark_doc(methods=["lora"])
    del doc["cases"]
    with pytest.raises(ProjectionError, match=r"x\.json: key 'cases' missing"):
        project(doc, tmp_path / "x.json", ["vtab1k"])
    doc = benchmark_doc(methods=["lora"])
    doc["cases"][0]["train"]["fp32"] = {"error": "timed out after 900s"}
    with pytest.raises(ProjectionError, match="case 'lora' train fp32 failed.*timed out"):
        read_speeds(doc, tmp_path / "x.json", "fp32")
    with pytest.raises(ProjectionError, match="precision bf16 was not measured"):
        project(benchmark_doc(), tmp_path / "x.json", ["vtab1k"], precision="bf16")
    with pytest.raises(ProjectionError, match="no benchmark results"):
        newest_result(tmp_path)


@pytest.mark.slow
def test_cli_end_to_end_from_a_real_cpu_benchmark(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    bench = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--model", "tiny", "--methods", "linear,lora",
         "--no-references", "--warmup", "1", "--reps", "1", "--steps-per-rep", "1",
         "--cached-epochs", "2", "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    cmd = [sys.executable, "-m", "benchmarks.project", "--from", str(tmp_path / "tiny-cpu.json"),
           "--studies", "vtab1k", "--out", str(tmp_path)]
    proc = subprocess.run([*cmd, "-o", "study.methods=[linear,lora]", "--images",
                           "vtab.kitti.test=1000"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proj = json.loads((tmp_path / "projection-tiny-cpu.json").read_text())
    assert proj["unit"] == "CPU-hours" and proj["total_hours"] > 0
    assert proj["images_used"]["vtab.kitti.test"] == {"images": 1000, "source": "--images"}
    md = (tmp_path / "projection-tiny-cpu.md").read_text()
    assert md.startswith("## Cost projection in CPU-hours")
    assert "**CPU figures of a small model, not GPU-hours.**" in md
    assert "| linear | " in md and "cached features" in md and "| lora | " in md
    # Every method of the study, but only two measured: written, flagged, non-zero exit.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Not measured, so not counted: full" in proc.stdout
    proc = subprocess.run([*cmd, "--images", "kitti=many"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--images 'kitti=many': expected KEY=N" in proc.stderr


def test_cpu_clock_reads_the_cpu_time_figures(tmp_path):
    doc = benchmark_doc(methods=["lora"])
    proj = project(doc, tmp_path / "x.json", ["vtab1k"], ["study.methods=[lora]"], clock="cpu")
    lora = _row(proj["studies"][0], "lora")
    assert lora["seconds"]["grid"] == pytest.approx(
        19 * lora["grid_points"] * (100 * 800 + 200) * 0.005)
    assert proj["clock"] == "cpu"


def test_every_seed_adds_a_final_run(tmp_path):
    doc = benchmark_doc(methods=["lora"])
    one, three = (_row(project(doc, tmp_path / "x.json", ["robustness"],
                               ["study.methods=[lora]", f"train.seeds={seeds}"])["studies"][0],
                       "lora") for seeds in ("[42]", "[42,43,44]"))
    assert three["seconds"]["grid"] == pytest.approx(one["seconds"]["grid"])  # searched once
    assert three["seconds"]["final"] == pytest.approx(3 * one["seconds"]["final"])
    assert three["seconds"]["wise"] == pytest.approx(3 * one["seconds"]["wise"])
    assert three["device_jobs"] == one["device_jobs"] + 2 * 2  # + 2 finals + 2 WiSE-FT jobs

"""The rehearsal and the measured requests.

* the reduced rehearsal (``benchmarks.rehearse --shape tiny``, one method, k = 1, few images)
  through every Snakemake step, so the full-shape command cannot rot;
* ``train.rehearsal`` cuts a run to k steps, mid-epoch, and is checked like any config key;
* the requests of a planned job follow a calibration file, fall back without one, and a bad file
  is an error naming the file and the key.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import half_normaliser, run_snakemake, tiny_vit, toy_images, workflow_copy
from vpeft import calibration
from vpeft.analysis import PLANNING_NUM_TEST
from vpeft.config import load_study
from vpeft.errors import ConfigError, UserError
from vpeft.requests import FALLBACK_MEM_MB, MEM_SAFETY, TIME_SAFETY, Requests
from vpeft.train.protocol import Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the benchmarks package lives at the repository root
from benchmarks import rehearse  # noqa: E402

PLACES = ["study.data.root=/data/vtab-1k", "model.weights=/w/ViT-B_16.npz"]


# --- the reduced rehearsal -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("rehearsal")
    # --threads 1 of --cores 2: two jobs at once, as on a GPU machine where several share it
    code = rehearse.main(["--work", str(work), "--shape", "tiny", "--scale", "0.1",
                          "--methods", "vpt_shallow", "--steps", "1", "--eval-batches", "1",
                          "--cores", "2", "--threads", "1"])
    assert code == 0, (work / "snakemake.log").read_text()[-4000:]
    return work


@pytest.mark.slow
def test_the_reduced_rehearsal_runs_every_step_and_says_it_is_one(rehearsed):
    result = json.loads((rehearsed / "rehearsal.json").read_text())
    assert result["ok"] and set(result["tasks"]) == set(rehearse.TASKS)
    assert (result["cores"], result["threads"]) == (2, 1)
    # the most expensive point: VPT-shallow's 200 prompts
    assert "method.vpt_shallow.hparams.num_prompts=200" in result["overrides"]
    runs = rehearsed / "runs" / "vtab1k"
    for task, counts in result["tasks"].items():
        for phase in ("grid/*", "final"):
            [metrics] = [json.loads(p.read_text()) for p in
                         (runs / task / "vpt_shallow").glob(f"{phase}/metrics.json")]
            assert metrics["rehearsal"] == {"max_steps": 1, "max_eval_batches": 1}
            assert metrics["steps"] == 1 and metrics["hparams"]["num_prompts"] == 200
            assert metrics["eval_images_per_s"] > 0 and metrics["setup_s"] > 0
            assert metrics["machine"]["torch"]["threads"] == 1  # each job got --threads
        scored = json.loads((runs / task / "vpt_shallow" / "final" / "test_eval.json").read_text())
        # one eval batch (the study's 256) of the test split, and it says so
        assert scored["num_test"] == min(256, counts["test"]) and scored["rehearsal"]
    html = (rehearsed / "reports" / "vtab1k" / "index.html").read_text()
    assert "REHEARSAL (max_eval_batches 1, max_steps 1): not a result" in html
    cal = calibration.load(Path(result["calibration"]))
    assert set(cal["methods"]["vpt_shallow"]) == {"grid", "final"}
    assert cal["devices"] == ["cpu"] and cal["rehearsal"]["max_steps"] == 1
    # an interrupted rehearsal is calibrated from the runs it finished, with the same options
    Path(result["calibration"]).unlink()
    assert rehearse.main(["--work", str(rehearsed), "--shape", "tiny", "--scale", "0.1",
                          "--methods", "vpt_shallow", "--calibrate-only"]) == 0
    assert calibration.load(Path(result["calibration"]))["methods"] == cal["methods"]
    summary = (rehearsed / "rehearsal.md").read_text()  # the per-method table, both times
    assert "| vpt_shallow | grid |" in summary and "| vpt_shallow | final |" in summary


def test_rehearsal_threads_must_fit_its_cores(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        rehearse.main(["--work", str(tmp_path), "--cores", "2", "--threads", "4"])
    assert stopped.value.code == 2 and not any(tmp_path.iterdir())
    assert "--threads 4: expected 1 to --cores (2)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_fabricated_root_has_the_real_tasks_sizes_and_modes(rehearsed):
    root = rehearsed / "vtab-1k"
    pet = [Image.open(root / "oxford_iiit_pet" / line.split()[0])
           for line in (root / "oxford_iiit_pet" / "train800.txt").read_text().splitlines()]
    assert {(500, 375), (375, 500), (500, 333)} <= {im.size for im in pet}
    assert {"RGB", "CMYK", "P"} <= {im.mode for im in pet}
    grey = Image.open(root / "dsprites_loc" / "images" / "test" / "000000.jpg")
    assert (grey.mode, grey.size) == ("L", (64, 64))
    with __import__("numpy").load(rehearsed / "ViT-B_16.npz") as npz:  # Google's layout
        assert npz["head/kernel"].shape[1] == rehearse.IN21K_CLASSES and "pre_logits/kernel" in npz


# --- train.rehearsal -----------------------------------------------------------------------------

def test_max_steps_stops_a_run_mid_epoch():
    from vpeft.train.loop import train

    protocol = Protocol.vtab()
    settings = protocol.settings(1e-3, 1e-4, batch_size=4, epochs=3, max_steps=3)
    images, labels = toy_images(n=20)  # 5 steps an epoch
    result = train(tiny_vit(num_classes=4), half_normaliser(), images, labels, settings, seed=0)
    assert result.steps == 3 and len(result.loss_curve) == 1 and result.status == "ok"


def test_rehearsal_values_are_checked():
    with pytest.raises(ConfigError, match=r"train\.rehearsal\.max_steps"):
        load_study("vtab1k", [*PLACES, "train.rehearsal.max_steps=lots"])
    plan = load_study("vtab1k", [*PLACES, "train.rehearsal.max_steps=0"])
    with pytest.raises(UserError, match=r"train\.rehearsal\.max_steps: 0; expected a positive"):
        Protocol.from_config(plan.cfg).settings(1e-3, 1e-4)
    real = load_study("vtab1k", PLACES)  # off by default: a real run
    assert Protocol.from_config(real.cfg).rehearsal() == {}


# --- requests -------------------------------------------------------------------------------------

ENTRY = {"train_images_per_s": 100.0, "eval_images_per_s": 400.0, "setup_s": 30.0,
         "peak_host_rss_mb": 9000.0, "peak_device_mb": 20000.0, "total_params": 86_000_000,
         "trainable_params": 300_000, "runs": 2}


def write_calibration(path: Path, entry: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": calibration.FORMAT, "devices": ["cuda:0 NVIDIA H100 80GB HBM3"],
            "methods": {"lora": {"grid": entry or ENTRY, "final": entry or ENTRY}}}
    path.write_text(json.dumps(data))
    return path


def test_requests_follow_the_calibration_file(tmp_path):
    plan = load_study("vtab1k", [*PLACES, f"paths.runs={tmp_path}"])
    write_calibration(tmp_path / "vtab1k" / "calibration.json")
    req = Requests.of(plan.cfg, 120)
    got = req.train("dtd", ["lora"], "grid", points=8, attempt=1)
    # 8 points x (100 epochs x 800 / 100 + 200 / 400) s + 30 s start-up, x safety
    seconds = 30 + 8 * (100 * 800 / 100 + 200 / 400)
    assert got["runtime"] == -(-TIME_SAFETY * seconds // 60)
    state_mb = 7 * (86_000_000 * 4 + 300_000 * 12) / 2**20
    pixels_mb = (800 + 200) * 224 * 224 * 3 / 2**20  # the splits it reads, as uint8
    assert got["mem_mb"] == -(-MEM_SAFETY * (9000 + pixels_mb + state_mb) // 1)
    assert got["gpu_mem_mb"] == -(-MEM_SAFETY * (20000 + state_mb) // 1)
    assert req.train("dtd", ["lora"], "grid", points=8, attempt=2)["runtime"] == 2 * got["runtime"]
    # cached features (linear probing): the frozen forward over both splits, once a job
    write_calibration(tmp_path / "vtab1k" / "calibration.json",
                      {**ENTRY, "extract_images_per_s": 10.0})
    cached = Requests.of(plan.cfg, 120).train("dtd", ["lora"], "grid", points=8)
    assert cached["runtime"] == -(-TIME_SAFETY * (seconds + (800 + 200) / 10.0) // 60)
    # a rehearsal is sized by its cut: one step of 64, one eval batch of 256
    cut = load_study("vtab1k", [*PLACES, f"paths.runs={tmp_path}", "train.rehearsal.max_steps=1",
                                "train.rehearsal.max_eval_batches=1"])
    assert Requests.of(cut.cfg, 120).train("dtd", ["lora"], "final")["runtime"] == 5


def test_requests_fall_back_without_a_calibration_and_say_so(tmp_path, caplog):
    plan = load_study("vtab1k", [*PLACES, f"paths.runs={tmp_path}"])
    req = Requests.of(plan.cfg, 120)
    with caplog.at_level("WARNING", logger="vpeft.requests"):
        got = req.train("dtd", ["lora"], "grid", points=8, attempt=2)
    assert got == {"runtime": 120 * 2 * 8, "mem_mb": FALLBACK_MEM_MB, "source": "fallback"}
    assert f"no calibration file {tmp_path / 'vtab1k' / 'calibration.json'}" in caplog.text
    write_calibration(tmp_path / "vtab1k" / "calibration.json")  # lora only
    assert Requests.of(plan.cfg, 120).train("dtd", ["ssf"], "final")["source"] == "fallback"


@pytest.mark.parametrize("text, message", [
    ("{not json", r"calibration.json: line 1 column 2: not JSON"),
    ('{"format": "other"}', r"calibration.json: not a calibration file"),
])
def test_a_bad_calibration_file_names_itself(tmp_path, text, message):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(calibration.CalibrationError, match=message):
        calibration.load(path)


def test_a_bad_calibration_value_names_its_key(tmp_path):
    path = write_calibration(tmp_path / "calibration.json", {**ENTRY, "train_images_per_s": 0})
    with pytest.raises(calibration.CalibrationError,
                       match=r"calibration.json: methods\.lora\.grid\.train_images_per_s: 0; "
                             r"expected a positive number"):
        calibration.load(path)


@pytest.mark.slow
def test_planned_jobs_take_their_resources_from_the_calibration(tmp_path):
    """`snakemake -n` of the paper study: the training jobs' mem_mb follows the file, and
    without it the old constants hold."""
    workflow_copy(tmp_path)
    root, weights = tmp_path / "vtab-1k", tmp_path / "ViT-B_16.npz"
    (root / "dtd").mkdir(parents=True)
    weights.touch()
    args = ["all", "--dry-run", "--config", "study=vtab1k", f"data_root={root}",
            f"weights={weights}", 'overrides=["study.tasks=[dtd]","study.methods=[lora]"]']

    def final_resources() -> str:
        proc = run_snakemake(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        job = re.search(r"rule train_final:.*?resources: ([^\n]*)", proc.stdout, flags=re.S)
        return job.group(1)

    assert "runtime=120" in final_resources() and f"mem_mb={FALLBACK_MEM_MB}" in final_resources()
    write_calibration(tmp_path / "runs" / "vtab1k" / "calibration.json")
    planned = final_resources()
    pixels_mb = (1000 + PLANNING_NUM_TEST) * 224 * 224 * 3 / 2**20  # dtd not prepared yet
    assert f"mem_mb={-(-MEM_SAFETY * (9000 + pixels_mb) // 1):.0f}" in planned
    assert f"gpu_mem_mb={-(-MEM_SAFETY * 20000 // 1):.0f}" in planned


def test_calibration_is_measured_from_the_runs_metrics(tmp_path):
    """Medians of the runs' throughput, the largest peak; cached features: extraction rate
    apart from the start-up; a diverged run or one without throughput is left out."""
    plan = load_study("vtab1k", [*PLACES, f"paths.runs={tmp_path}"])
    common = {"study": "vtab1k", "task": "dtd", "status": "ok", "device": "cpu",
              "precision": "fp32", "total_params": 86_000_000, "trainable_params_with_head": 36_000}
    runs = {"linear/grid/a": {"phase": "grid", "method": "linear", "train_images_per_s": 900.0,
                              "eval_images_per_s": 8000.0, "setup_s": 70.0,
                              "peak_memory_bytes": 2 * 2**30,
                              "feature_cache": {"used": True, "images": 128, "extract_s": 64.0}},
            "linear/grid/b": {"phase": "grid", "method": "linear", "train_images_per_s": 1100.0,
                              "eval_images_per_s": 9000.0, "setup_s": 74.0,
                              "peak_memory_bytes": 3 * 2**30,
                              "feature_cache": {"used": True, "images": 128, "extract_s": 64.0}},
            "linear/grid/c": {"phase": "grid", "method": "linear", "status": "diverged",
                              "train_images_per_s": 1.0, "eval_images_per_s": 1.0, "setup_s": 1.0},
            "linear/final": {"phase": "final", "method": "linear", "train_images_per_s": None}}
    for where, fields in runs.items():
        path = tmp_path / "vtab1k" / "dtd" / where / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**common, **fields}))
    cal = calibration.measure(plan.cfg)
    assert list(cal["methods"]["linear"]) == ["grid"]  # the final run recorded no throughput
    grid = cal["methods"]["linear"]["grid"]
    assert (grid["train_images_per_s"], grid["eval_images_per_s"]) == (1000.0, 8500.0)
    assert grid["extract_images_per_s"] == 2.0 and grid["setup_s"] == 8.0
    assert grid["peak_host_rss_mb"] == 3 * 1024 and grid["runs"] == 2


def test_wise_requests_follow_the_calibration_once_the_shifts_are_prepared(tmp_path):
    from vpeft.data.shards import FORMAT

    plan = load_study("vtab1k", [*PLACES, f"paths.runs={tmp_path}"])
    write_calibration(tmp_path / "vtab1k" / "calibration.json")
    req = Requests.of(plan.cfg, 120)
    sketch = tmp_path / "shifts" / "imagenet_sketch"
    assert req.wise("dtd", "lora", [sketch], alphas=11)["source"] == "fallback"  # not prepared
    sketch.mkdir(parents=True)
    (sketch / "manifest.json").write_text(json.dumps({
        "format": FORMAT, "task": "imagenet_sketch", "num_classes": 1000, "image_size": 224,
        "splits": {"test": {"count": 50889, "shards": []}}}))
    got = req.wise("dtd", "lora", [sketch], alphas=11)
    seconds = 30 + 11 * (PLANNING_NUM_TEST + 50889) / 400
    assert got["runtime"] == -(-TIME_SAFETY * seconds // 60)
    largest = max(PLANNING_NUM_TEST, 50889) * 224 * 224 * 3 / 2**20
    assert got["mem_mb"] == -(-MEM_SAFETY * (9000 + largest) // 1)

"""The benchmark harness runs end to end and writes well-formed results (it asserts nothing about
speed: figures come from `python -m benchmarks.run`, see docs/benchmarks.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_harness_writes_json_and_markdown_for_a_method_and_its_reference(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--model", "tiny", "--methods", "lora",
         "--warmup", "1", "--reps", "2", "--steps-per-rep", "1", "--device", "cpu",
         "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    doc = json.loads((tmp_path / "tiny-cpu.json").read_text())
    assert doc["settings"]["device"] == "cpu" and doc["settings"]["precisions"] == ["fp32"]
    assert doc["machine"]["torch"] and doc["machine"]["cpu_count"] >= 1
    rows = {row["label"]: row for row in doc["cases"]}
    assert set(rows) == {"lora", "timm + peft LoRA"}
    assert rows["lora"]["references"] == ["timm + peft LoRA"]
    assert rows["lora"]["hparams"]["rank"] == 8
    for row in rows.values():
        for phase in ("train", "eval"):
            result = row[phase]["fp32"]
            assert "error" not in result, result
            assert result["images_per_s"] > 0 and result["images_per_cpu_s"] > 0
            assert result["peak_memory_mb"] >= 0 and result["process_peak_rss_mb"] > 0
            assert len(result["rep_seconds"]) == 2 and all(s > 0 for s in result["rep_seconds"])
            assert result["trainable_params"] > 0
    # Same LoRA (r=8 on qkv) and the same head on the same model: the same trainable count.
    assert rows["lora"]["train"]["fp32"]["trainable_params"] == \
        rows["timm + peft LoRA"]["train"]["fp32"]["trainable_params"]
    ratios = {(r["case"], r["reference"], r["phase"]): r for r in doc["ratios"]}
    assert set(ratios) == {("lora", "timm + peft LoRA", "train"), ("lora", "timm + peft LoRA", "eval")}
    for r in ratios.values():
        assert r["images_per_s_ratio"] > 0 and r["images_per_cpu_s_ratio"] > 0
        lora = rows["lora"][r["phase"]]["fp32"]["images_per_s"]
        ref = rows["timm + peft LoRA"][r["phase"]]["fp32"]["images_per_s"]
        assert abs(r["images_per_s_ratio"] - lora / ref) < 1e-9

    md = (tmp_path / "tiny-cpu.md").read_text()
    assert md.startswith("## vpeft speed: tiny on cpu")
    table = [line for line in md.splitlines() if line.startswith("| lora |")]
    assert len(table) == 1 and table[0].count("|") == 14 and "×" in table[0]
    assert "| timm + peft LoRA |" in md


@pytest.mark.slow
def test_cpu_kernels_benchmark_compares_the_modes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cpu_kernels", "--rounds", "1",
                           "--steps", "1", "--batch", "4", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "cpu_kernels.json").read_text())
    modes = doc["modes"]
    # each mode ran in its own process with its own switches: the kernel level shows it
    assert modes["scalar"]["cpu_capability"] == "DEFAULT"
    if "avx2" in doc["machine"]["cpu"]["vector_extensions"]:
        assert modes["portable"]["cpu_capability"] == "AVX2"
    assert doc["portable_over_native"] > 0 and doc["scalar_over_native"] > 0
    assert doc["portable_equals_native"] == (modes["portable"]["logits_sha256"]
                                             == modes["native"]["logits_sha256"])
    assert "portable/native step time" in proc.stdout


@pytest.mark.slow
def test_check_speed_benchmark_times_both_checkouts_on_the_same_command(tmp_path):
    """The preflight timing harness runs the paper-scale `vpeft check --no-decode` with each
    checkout's src/ (here this one twice) and records what each printed: equal job counts and
    disk estimates are what make two timings comparable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.check_speed", "--rounds", "1",
                           "--baseline", str(REPO / "src"), "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "check_speed-vtab1k.json").read_text())
    runs = {name: result["runs"] for name, result in doc["results"].items()}
    assert set(runs) == {"this checkout", "baseline"} and all(len(r) == 1 for r in runs.values())
    mine, base = runs["this checkout"][0], runs["baseline"][0]
    assert mine["jobs"] == base["jobs"] and mine["jobs"].startswith("jobs: 2300 ")
    assert mine["disk"] == base["disk"] and mine["wall_seconds"] > 0 and mine["cpu_seconds"] > 0


@pytest.mark.slow
def test_a_run_cut_short_keeps_every_subject_it_measured(tmp_path):
    """benchmarks.run writes its JSON and Markdown after every case: stopped by a time limit (a
    GPU lease's), the subjects measured so far are there, marked incomplete."""
    import signal

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "--model", "tiny", "--methods", "linear,lora",
         "--warmup", "1", "--reps", "1", "--steps-per-rep", "1", "--device", "cpu",
         "--out", str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    printed = []
    for line in proc.stdout:  # the line of a case is printed once its figures are written
        printed.append(line)
        if line.startswith("[1/1] linear") and " eval " in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "".join(printed)
    doc = json.loads((tmp_path / "tiny-cpu.json").read_text())
    assert doc["complete"] is False
    assert [row["label"] for row in doc["cases"]] == ["linear"]  # both its phases measured
    assert "lora" in doc["not_measured"] and "timm + peft LoRA" in doc["not_measured"]
    assert doc["cases"][0]["train"]["fp32"]["images_per_s"] > 0
    md = (tmp_path / "tiny-cpu.md").read_text()
    assert "**Incomplete" in md and "| linear |" in md and "| lora |" not in md

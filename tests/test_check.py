"""`vpeft check`: the preflight of a whole study on data written the public generators' way and a
timm-format weights file; problems named by file and line; job count equal to Snakemake's plan."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import REPO, run_snakemake, workflow_copy
from vpeft.hparams import METHODS as HPARAMS
from vtab_trees import task_arrays, write_vtab_tree

SIZES = {"train800": 12, "val200": 6, "train800val200": 18, "test": 8}
TASKS = {"dtd": (47, False), "smallnorb_ele": (9, True)}  # (classes, grey-scale as stored)
TINY = ("model=vit_demo_tiny", "model.kwargs.img_size=16", "model.img_size=16",
        "model.kwargs.patch_size=8", "model.kwargs.embed_dim=24", "model.kwargs.depth=1",
        "model.kwargs.num_heads=2")


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("check")
    for task, (classes, grey) in TASKS.items():
        sizes = {**SIZES, "train800": max(SIZES["train800"], classes)}
        sizes["train800val200"] = sizes["train800"] + sizes["val200"]
        write_vtab_tree(root / "vtab-1k" / task, task_arrays(classes, sizes, grey=grey))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                              embed_dim=24, depth=1, num_heads=2, num_classes=21843)
    weights = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return root / "vtab-1k", weights


def _overrides(root: Path, weights: Path) -> list[str]:
    sizes = {"train800": "null", "val200": 6, "train800val200": "null", "test": 8}
    return [*TINY, f"study.data.root={root}", f"model.weights={weights}", "train.seeds=[42,7]",
            f"study.tasks=[{','.join(TASKS)}]", "study.methods=[linear,lora,adapter]",
            *(f"study.data.split_sizes.{k}={v}" for k, v in sizes.items())]


def _check(*overrides: str) -> subprocess.CompletedProcess:
    args = [a for o in overrides for a in ("-o", o)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "vpeft", "check", "--study", "vtab1k", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_check_passes_on_generator_layout_and_counts_like_snakemake(study_inputs, tmp_path) -> None:
    root, weights = study_inputs
    proc = _check(*_overrides(root, weights))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^dtd\s+47\s+47\s+6\s+53\s+8\s+ok$", out, re.M), out
    assert re.search(r"^smallnorb_ele\s+9\s+12\s+6\s+18\s+8\s+ok$", out, re.M), out
    assert "train800val200 stored as own copies; equals train800 + val200 by content" in out
    assert "converted to RGB: " in out and " L" in out            # the grey-scale task
    assert "head of 21843 classes (replaced per task)" in out
    assert "OK: nothing wrong found" in out
    jobs = int(re.search(r"^jobs: (\d+) ", out, re.M).group(1))
    # The same study through Snakemake's own planner.
    workdir = workflow_copy(tmp_path)
    overrides = "[" + ",".join(f"'{o}'" for o in _overrides(root, weights)) + "]"
    plan = run_snakemake(workdir, "-n", "all", "--config", "study=vtab1k", f"overrides={overrides}")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    total = re.search(r"^total\s+(\d+)", plan.stdout, re.M)
    assert total and int(total.group(1)) == jobs + 1, plan.stdout  # + the target rule `all`
    # ... and the same check as a Snakemake target, with the same --config
    target = run_snakemake(workdir, "check", "--config", "study=vtab1k", f"overrides={overrides}")
    assert target.returncode == 0 and "OK: nothing wrong found" in target.stdout, target.stderr


@pytest.mark.slow
def test_check_names_every_problem_and_exits_1(study_inputs, tmp_path) -> None:
    import shutil

    root, weights = study_inputs
    bad = tmp_path / "vtab-1k"
    shutil.copytree(root, bad)
    lines = (bad / "dtd" / "val200.txt").read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 47"                    # label out of range
    (bad / "dtd" / "val200.txt").write_text("\n".join(lines) + "\n")
    image = bad / "smallnorb_ele" / "images" / "test" / "000003.jpg"
    image.write_bytes(image.read_bytes()[:40])                      # truncated
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                              embed_dim=32, depth=1, num_heads=2)
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wrong))
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = _check(*_overrides(bad, wrong))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"PROBLEM dtd: .*dtd/val200\.txt:3: label 47 outside \[0, 47\)", out), out
    assert re.search(r"PROBLEM smallnorb_ele: .*test\.txt:4: cannot decode image images/test/000003\.jpg",
                     out), out
    assert re.search(r"PROBLEM model\.weights: .*wrong\.safetensors.*24.*32|"
                     r"PROBLEM model\.weights: .*wrong\.safetensors.*32.*24", out), out
    assert sorted(p for p in tmp_path.rglob("*")) == before     # nothing written


@pytest.mark.parametrize("method", ["linear", "full", "lora", "vpt_shallow", "fact_tk", "convpass"])
def test_disk_estimate_counts_each_head_as_a_build_per_task_would(method) -> None:
    """The preflight builds each method and grid point once, not once per task: the counts it
    derives for other class counts equal those of a model built with that head."""
    from vpeft.check import _trainable_split, _trainable_with_head
    from vpeft.config import load_study

    plan = load_study("vtab1k", ["study.data.root=/data/vtab-1k", "model.weights=/w/ViT-B_16.npz"])
    point = plan.points[method][-1]
    cache: dict = {}
    for classes in (47, 2, 397, 100):  # dtd first: the one build; then derived
        built = _trainable_split(plan.cfg, method, point.hparams, classes, whole=True)[0]
        assert _trainable_with_head(plan.cfg, method, point.hparams, classes, cache) == built
    assert len(cache) == 1


def test_every_weight_file_the_robustness_study_names_is_checked(tmp_path, monkeypatch) -> None:
    # study.robustness.clip.weights (the open_clip checkpoint the zero-shot head is made from)
    # and model.init_head (the zero-shot head, written by rule zeroshot-head) beside model.weights.
    from vpeft.check import check_weight_files
    from vpeft.config import load_study

    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))

    def checks(clip: Path) -> dict:
        plan = load_study("robustness", [f"paths.models={tmp_path / 'models'}",
                                         "model.weights=/w/clip_vit_b16.safetensors",
                                         f"study.robustness.clip.weights={clip}"])
        return {c.task: c for c in check_weight_files(plan)}

    missing = checks(tmp_path / "open_clip_pytorch_model.bin")
    assert missing["study.robustness.clip.weights"].problems == [
        f"study.robustness.clip.weights: {tmp_path / 'open_clip_pytorch_model.bin'}: file not found"]
    assert missing["model.init_head"].problems == []
    assert "written by the pipeline (rule zeroshot-head)" in missing["model.init_head"].notes[0]
    folder = tmp_path / "clip_folder.safetensors"  # a download unpacked into a folder
    folder.mkdir()
    assert checks(folder)["study.robustness.clip.weights"].problems[0].endswith(
        "is a directory, not a weights file")
    empty = tmp_path / "clip.safetensors"
    empty.write_bytes(b"")
    assert checks(empty)["study.robustness.clip.weights"].problems[0].endswith("empty file (0 bytes)")
    empty.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert "not a readable safetensors file" in checks(empty)["study.robustness.clip.weights"].problems[0]
    save_file({"w": torch.zeros(2)}, str(empty))
    good = checks(empty)["study.robustness.clip.weights"]
    assert good.problems == [] and "present" in good.notes[0]


@pytest.mark.slow
@pytest.mark.parametrize("override", ["+study.grid.lora.hparams.rnak=4",
                                      "study.grid.lora.hparams.rnak=4"])
def test_a_misspelled_hyper_parameter_stops_plan_snakemake_and_check(tmp_path, override) -> None:
    """Typed on the command line, the typo is refused before anything is planned, by each of
    the three front doors, naming the override and the method's keys."""
    expected = (f"unknown config key 'study.grid.lora.hparams.rnak' (from the override "
                f"'{override}'). Did you mean 'study.grid.lora.hparams.rank'? Valid keys of "
                f"study.grid.lora.hparams: rank, alpha, dropout")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    for verb in ("plan", "check"):
        proc = subprocess.run([sys.executable, "-m", "vpeft", verb, "--study", "smoke", "-o", override],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and expected in proc.stderr, (verb, proc.stdout + proc.stderr)
    dry = run_snakemake(workflow_copy(tmp_path), "-n", "all", "--config", "study=smoke",
                        f"overrides=['{override}']")
    assert dry.returncode != 0 and expected in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert "train_grid" not in dry.stdout  # nothing planned


# Two valid values of every declared hyper-parameter (vpeft.hparams), for the tiny smoke ViT.
_VALUES = {"rank": (1, 4), "bottleneck": (2, 4), "dim": (2, 4), "num_prompts": (1, 3),
           "scale": (0.1, 10.0), "dropout": (0.0, 0.5), "alpha": (None, 2.0),
           "xavier_init": (True, False), "drop_prompts_after_block0": (False, True),
           "tuner": ("lora", "dora"), "target": (["qkv"], ["qkv", "fc1"])}


def _real_count(cfg, method: str, hparams: dict, classes: int) -> int:
    """Trainable parameters of a model built for real: on the CPU, timm's own initialisation."""
    from vpeft import methods
    from vpeft.models.backbone import create_backbone

    model = create_backbone(cfg.model.name, None, classes, kwargs=dict(cfg.model.kwargs))
    methods.apply(model, method, **hparams)
    return methods.count_trainable(model)["trainable_params_with_head"]


@pytest.mark.parametrize("method", sorted(HPARAMS))
def test_disk_estimate_counts_equal_real_builds_and_build_once_per_shape(method) -> None:
    """The preflight builds a model once per distinct *shape* hyper-parameters (vpeft.hparams):
    changing any other one (a scale, a dropout, an init) must leave the count unchanged. Every
    hyper-parameter is changed alone from a base point, and the derived counts (any head size)
    equal a real build's."""
    from vpeft.check import _trainable_with_head
    from vpeft.config import load_study

    cfg = load_study("smoke").cfg
    spec = HPARAMS[method]
    base = {k: _VALUES[k][0] for k in spec.names}
    points = [base, *({**base, k: _VALUES[k][1]} for k in spec.names)]
    cache: dict = {}
    for hparams in points:
        for classes in (5, 3):
            assert _trainable_with_head(cfg, method, hparams, classes, cache) == \
                _real_count(cfg, method, hparams, classes), (hparams, classes)
    assert len(cache) == 1 + len(spec.shape)  # the base, and one per changed shape parameter


@pytest.mark.slow  # three CLI processes, synth included
def test_the_many_shot_miniature_is_not_refused_for_data_the_pipeline_generates(tmp_path) -> None:
    """demo_manyshot's datasets and pretraining set are written by rule synth: before it ran,
    check notes them (it once refused them as missing dataset roots); once written, they are
    checked like any user's data."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    where = ["-o", f"paths.data={tmp_path}"]

    def vpeft(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vpeft", *args, *where], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    before = vpeft("check", "--study", "demo_manyshot", "--no-decode")
    assert before.returncode == 0, before.stdout + before.stderr
    pending = re.findall(r"^note +(\S+): (\S+): written by `vpeft synth`", before.stdout, re.M)
    assert {task for task, _ in pending} == {"textures_n40", "textures_n80", "textures", "count",
                                             "source"}
    assert "PROBLEM" not in before.stdout
    made = vpeft("synth", "--study", "demo_manyshot", "--task", "textures")
    assert made.returncode == 0, made.stderr
    after = vpeft("check", "--study", "demo_manyshot", "--no-decode")
    assert after.returncode == 0, after.stdout + after.stderr
    still = {task for task in re.findall(r"^note +(\S+): \S+: written by `vpeft synth`",
                                         after.stdout, re.M)}
    assert still == {"count", "source"}  # the textures tasks' views were drawn and checked
    assert re.search(r"^textures_n40 +8 +32 +8 +40 +120 +ok$", after.stdout, re.M), after.stdout

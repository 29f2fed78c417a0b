"""Shared fixtures: a tiny timm ViT saved as a timm-format safetensors file, and tiny prepared
tasks made by the real generator and loader. Nothing touches the network."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file

from vpeft._compat import ensure_torchvision_importable

ensure_torchvision_importable()
import timm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (pyproject.toml: ``-n 2 --dist loadscope``) each test module is one unit
    of work, so that a module-scoped fixture (an end-to-end study, a real SLURM) is built once;
    workers take the units in collection order. The modules with the most `slow` tests go first
    and the many quick ones fill in at the end, so both workers finish at about the same time."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: a module's own order is kept


def workflow_copy(workdir: Path) -> Path:
    """The workflow (Snakefile, rules, params) copied into ``workdir``; the package comes from
    the repository's src/ (see run_snakemake), so nothing here writes into the repository."""
    for item in ("Snakefile", "rules", "params"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / item)
    return workdir


def run_snakemake(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Real Snakemake on 2 cores in ``workdir``, offline, with this checkout's package."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
# The tiny ViT used by the method tests: width 32, depth 2, MLP 128, 4x4 patches of a 16 px image
# (16 patches + CLS), heads 2; the head has CLASSES outputs.
DIM, DEPTH, MLP, CLASSES = 32, 2, 128, 5
TINY_VIT = {"name": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}


def toy_images(n: int = 64, classes: int = 4, seed: int = 0, noise: int = 20):
    """16 px uint8 images whose mean brightness encodes the class: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    base = (labels.float() * (200 / classes) + 20).view(n, 1, 1, 1)
    jitter = torch.randint(0, noise, (n, 16, 16, 3), generator=g).float()
    return (base + jitter).clamp(0, 255).to(torch.uint8), labels


def half_normaliser(size: int = 16):
    """Mean 0.5 / std 0.5 input normalisation at ``size`` px (the tiny test models' own)."""
    from vpeft.train.loop import Normaliser

    return Normaliser(torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5), size)


def tiny_vit(num_classes: int = 5, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {**TINY_VIT["kwargs"], **overrides}
    return timm.create_model(TINY_VIT["name"], pretrained=False, num_classes=num_classes, **kwargs)


def perturb_trainable(model: torch.nn.Module, seed: int = 1, std: float = 0.2) -> None:
    """Move every trainable tensor off its init: zero-initialised up-projections or LoRA B would
    otherwise hide a method's effect (and block its gradients) in a test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A 'pretrained' tiny ViT with a 7-class source head, saved like a downloaded checkpoint."""
    model = tiny_vit(num_classes=7)
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def prepared_task(tmp_path_factory) -> Path:
    """The synthetic `count` task at 16 px with tiny splits, prepared by the real loader."""
    from vpeft.demo.synthetic import DEMO_TASKS, generate_task
    from vpeft.data.vtab import prepare_task

    root = tmp_path_factory.mktemp("raw")
    sizes = {"train800": 36, "val200": 18, "test": 24}
    generate_task("count", root, sizes=sizes, image_size=16, seed=0)
    info = DEMO_TASKS["count"]
    out = tmp_path_factory.mktemp("prepared") / "count"
    prepare_task(root / "count", out, task="count", image_size=16, num_classes=info.num_classes,
                 group=info.group,
                 split_sizes={"train800": 36, "val200": 18, "train800val200": 54, "test": 24})
    return out


def smoke_plan(tmp_path: Path, prepared_task: Path, weights: Path, *extra: str,
               methods: str = "linear,lora"):
    """The smoke study on the prepared ``count`` task (copied under ``tmp_path``), 2 epochs."""
    from vpeft import layout
    from vpeft.config import load_study

    overrides = [f"paths.data={tmp_path}/data", f"paths.runs={tmp_path}/runs",
                 f"model.weights={weights}", "study.tasks=[count]", f"study.methods=[{methods}]",
                 "train.epochs=2", "train.batch_size=16", *extra]
    plan = load_study("smoke", overrides)
    target = layout.prepared_task(plan.cfg, "count")
    if not target.exists():
        shutil.copytree(prepared_task, target)
    return plan

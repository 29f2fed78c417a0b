"""CUDA correctness of the speed features, for every registered method (``pytest -m gpu``;
``benchmarks/gpu_check.sh`` runs them on a GPU machine and records the measured differences).

All runs go through vpeft's own training loop (``vpeft.train.loop.train``: bf16 autocast with
``precision: bf16``, ``torch.compile`` with ``compile: true``) and evaluation (``predict``), on
a randomly initialised timm ViT of ViT-B/16's shape (224 px, 16 px patches, width 768, 12 heads)
and random images that carry a class colour (so training has something to learn and top-1 means
something). Dropout and drop-path are off, so precision and compilation are the only differences.

Tolerances (loss in nats; 10 classes, so about 2.3 at the start):

- bf16 autocast + fused attention vs fp32 with the plain-math attention (TF32 off), 30 steps:
  every step within ``BF16_MAX_ABS`` and on average within ``BF16_MEAN_ABS``;
- ``torch.compile`` vs eager, both fp32, 30 steps: every step within ``COMPILE_MAX_ABS`` (the
  model is ``COMPILE_DEPTH`` blocks deep: compile time grows with depth and the 17 compilations
  must fit the check's time budget; one block is what differs between methods);
- evaluation of the fp32-trained model in bf16 vs fp32: the same top-1 class for at least
  ``AGREEMENT_MIN`` of ``EVAL_IMAGES`` held-out images.

Without CUDA the ``gpu`` tests are skipped with the reason; the unmarked tests below run the same
helpers on the CPU with the tests' tiny ViT, so the helpers themselves are proven everywhere.
``VPEFT_GPU_RECORD=<file>`` appends every measurement as a JSON line (the check's report).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from vpeft import methods
from vpeft.models.backbone import create_backbone
from vpeft.train.loop import (Normaliser, predict, train, uses_fused_attention)
from vpeft.train.protocol import Protocol

from conftest import REPO, TINY_VIT

STEPS = 30
BF16_MAX_ABS, BF16_MEAN_ABS = 0.15, 0.05
COMPILE_MAX_ABS = 0.05
COMPILE_DEPTH = 2
AGREEMENT_MIN = 0.99
EVAL_IMAGES = 1024

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() "
                                "is False); run benchmarks/gpu_check.sh on a GPU machine")
METHODS = [m.strip() for m in os.environ.get("VPEFT_GPU_TEST_METHODS", "").split(",") if m.strip()] \
    or methods.names()


@dataclass(frozen=True)
class Arch:
    """A timm ViT to build with random weights."""

    name: str
    kwargs: dict[str, Any]
    img_size: int
    num_classes: int
    batch: int


VIT_B16 = Arch("vit_base_patch16_224", {}, 224, 10, batch=64)  # 10 classes: all in one batch
VIT_B16_SHALLOW = dataclasses.replace(VIT_B16, kwargs={"depth": COMPILE_DEPTH})
TINY = Arch(TINY_VIT["name"], TINY_VIT["kwargs"], 16, 5, batch=16)


# ------------------------------------------------------------------------------------- helpers

def class_coded_images(n: int, arch: Arch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC noise images shifted by a per-class colour, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, arch.num_classes, (n,), generator=g)
    colours = torch.rand(arch.num_classes, 3, generator=torch.Generator().manual_seed(1234)) * 160
    noise = torch.randint(0, 96, (n, arch.img_size, arch.img_size, 3), generator=g).float()
    return (noise + colours[labels].view(n, 1, 1, 3)).clamp(0, 255).to(torch.uint8), labels


def build(method: str, arch: Arch, seed: int = 0) -> torch.nn.Module:
    """``method`` at its default hyper-parameters, dropout off, on a random ViT without drop-path."""
    hparams = dataclasses.asdict(methods.make_config(method))
    if "dropout" in hparams:
        hparams["dropout"] = 0.0
    model = create_backbone(arch.name, None, arch.num_classes, kwargs=arch.kwargs, drop_path=0.0,
                            seed=seed)
    return methods.apply(model, method, **hparams)


def set_fused_attention(model: torch.nn.Module, fused: bool) -> None:
    """timm's switch between ``scaled_dot_product_attention`` and the plain-math attention."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    assert uses_fused_attention(model) is fused


def normaliser(arch: Arch) -> Normaliser:
    return Normaliser(torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5), arch.img_size)


def loss_curve(method: str, arch: Arch, device: str, *, precision: str = "fp32",
               fused: bool = True, compile: bool = False, steps: int = STEPS,
               seed: int = 0) -> tuple[list[float], torch.nn.Module]:
    """The per-step training losses of ``steps`` steps on one batch of class-coded images, and
    the trained model. One batch per epoch, so the loop's per-epoch loss is the step's loss."""
    torch.manual_seed(seed)
    model = build(method, arch, seed).to(device)
    set_fused_attention(model, fused)
    images, labels = class_coded_images(arch.batch, arch, seed)
    settings = Protocol.vtab().settings(epochs=steps, lr=1e-4 if method == "full" else 1e-3,
                                         weight_decay=1e-4, batch_size=arch.batch, warmup_epochs=0,
                                         log_every_s=1e9, precision=precision, compile=compile)
    result = train(model, normaliser(arch), images.to(device), labels.to(device), settings,
                   seed=seed, desc=f"{method}/{precision}")
    assert result.status == "ok" and len(result.loss_curve) == steps, result
    return [float(x) for x in result.loss_curve], model


def eval_agreement(model: torch.nn.Module, arch: Arch, precisions=("fp32", "bf16"),
                   n: int = EVAL_IMAGES, seed: int = 99) -> dict[str, float]:
    """Top-1 of held-out class-coded images under two evaluation precisions, and how often the
    two predict the same class."""
    images, labels = class_coded_images(n, arch, seed)
    device = next(model.parameters()).device
    a, b = (predict(model, normaliser(arch), images.to(device), 256, precision=p).argmax(1)
            for p in precisions)
    return {"agreement": float((a == b).float().mean()),
            "top1_a": float((a == labels).float().mean()),
            "top1_b": float((b == labels).float().mean())}


def curve_gap(a: list[float], b: list[float]) -> dict[str, float]:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return {"max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs)}


def record(check: str, method: str, **values: Any) -> None:
    """Append a measurement for the GPU check's report (``VPEFT_GPU_RECORD``)."""
    path = os.environ.get("VPEFT_GPU_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"check": check, "method": method, **values}) + "\n")


@pytest.fixture
def exact_fp32():
    """fp32 means fp32: no TF32 in matmuls or convolutions (the patch embedding) while testing."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------- CUDA (marked `gpu`)

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_bf16_fused_attention_follows_the_fp32_loss_curve(method, exact_fp32):
    reference, _ = loss_curve(method, VIT_B16, "cuda", precision="fp32", fused=False)
    fast, _ = loss_curve(method, VIT_B16, "cuda", precision="bf16", fused=True)
    gap = curve_gap(fast, reference)
    record("bf16_vs_fp32_loss", method, **gap, first=reference[0], last=reference[-1])
    assert reference[-1] < reference[0], f"{method}: fp32 loss did not fall: {reference}"
    assert gap["max_abs"] <= BF16_MAX_ABS and gap["mean_abs"] <= BF16_MEAN_ABS, \
        f"{method}: {gap}\nfp32 {reference}\nbf16 {fast}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_compiled_training_gives_the_eager_losses(method, exact_fp32):
    eager, _ = loss_curve(method, VIT_B16_SHALLOW, "cuda")
    tic = time.perf_counter()
    compiled, _ = loss_curve(method, VIT_B16_SHALLOW, "cuda", compile=True)
    gap = curve_gap(compiled, eager)
    record("compile_vs_eager_loss", method, **gap, compiled_run_s=time.perf_counter() - tic)
    assert gap["max_abs"] <= COMPILE_MAX_ABS, f"{method}: {gap}\neager {eager}\ncompiled {compiled}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_bf16_evaluation_agrees_with_fp32(method, exact_fp32):
    _, model = loss_curve(method, VIT_B16, "cuda")
    result = eval_agreement(model, VIT_B16)
    record("bf16_vs_fp32_eval", method, **result)
    assert result["agreement"] >= AGREEMENT_MIN, f"{method}: {result}"


# ---------------------------------------------------------- the same helpers on the CPU (tiny)

@pytest.mark.parametrize("method", ["lora", "vpt_deep", "fact_tk"])
def test_attention_switch_keeps_the_cpu_loss_curve(method):
    """Fused and plain-math attention are the same function: on the CPU in fp32 their curves
    agree far inside the bf16 tolerance, and the class-coded data is learnable."""
    fused, _ = loss_curve(method, TINY, "cpu", fused=True)
    plain, _ = loss_curve(method, TINY, "cpu", fused=False)
    assert len(fused) == STEPS and fused[-1] < fused[0] - 0.1, fused
    assert curve_gap(fused, plain)["max_abs"] < 1e-3


def test_cpu_runs_stay_fp32_whatever_precision_is_asked():
    """bf16 autocast exists only on CUDA in vpeft's loop: on the CPU the two curves are equal."""
    fp32, _ = loss_curve("bitfit", TINY, "cpu", precision="fp32")
    bf16, _ = loss_curve("bitfit", TINY, "cpu", precision="bf16")
    assert fp32 == bf16


def test_compiled_path_runs_through_the_loop_on_cpu():
    """``compile: true`` reaches ``torch.compile`` in the loop (the eager backend here: no C++
    compiler needed); the losses equal the uncompiled ones."""
    import torch._dynamo

    eager, _ = loss_curve("lora", TINY, "cpu", steps=5)
    original = torch.compile
    calls = []

    def compile_eager(model, **kwargs):
        calls.append(model)
        return original(model, backend="eager", **kwargs)

    torch.compile = compile_eager
    try:
        compiled, _ = loss_curve("lora", TINY, "cpu", compile=True, steps=5)
    finally:
        torch.compile = original
        torch._dynamo.reset()
    assert len(calls) == 1
    assert curve_gap(compiled, eager)["max_abs"] < 1e-5


def test_eval_agreement_of_a_trained_tiny_model():
    """The evaluation helper on a model trained by the loss-curve helper: it learned the colours
    (top-1 at least twice the 20 % of chance on held-out images), and one precision agrees
    with itself."""
    _, model = loss_curve("lora", TINY, "cpu", steps=60)
    result = eval_agreement(model, TINY, precisions=("fp32", "fp32"), n=256)
    assert result["agreement"] == 1.0 and result["top1_a"] >= 0.4, result


def test_gpu_check_refuses_a_machine_without_cuda(tmp_path):
    """benchmarks/gpu_check.sh says there is no CUDA device and exits non-zero at once, writing
    nothing (``CUDA_VISIBLE_DEVICES=`` hides any GPU, so this holds on GPU machines too)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    out = tmp_path / "results"
    tic = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - tic
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr
    assert elapsed < 60 and not out.exists()


@pytest.mark.slow
def test_gpu_check_stages_and_report_run_through_on_cpu(tmp_path):
    """--allow-cpu runs every stage of the check on the CPU (gpu tests skip; tiny model, two
    methods; the rehearsal at its tiny shape): the rehearsal's calibration, the JUnit, benchmark
    and projection files and the report come out, consistent."""
    out = tmp_path / "results"
    # The stages' time limits are a GPU machine's; this CPU run shares its cores with the other
    # tests (it took 241 s of a 240 s limit on a loaded machine): generous ones, it checks no speed.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable,
           "GPU_CHECK_TEST_TIMEOUT": "1200", "GPU_CHECK_BENCH_TIMEOUT": "1200",
           "GPU_CHECK_CASE_TIMEOUT": "900", "GPU_CHECK_REHEARSAL_TIMEOUT": "1200",
           "GPU_CHECK_REHEARSAL_WORK": str(tmp_path / "rehearsal")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--allow-cpu",
                           "--model", "tiny", "--methods", "linear,lora", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["passed"] and report["device"]["gpu"] is None
    assert [s["stage"] for s in report["stages"]] == ["rehearsal", "tests", "benchmarks",
                                                      "projection"]
    assert all(s["status"] == "passed" for s in report["stages"])
    # the rehearsal ran first, every step, and its calibration came back beside the report
    rehearsal = report["rehearsal"]
    assert rehearsal["finished"] and rehearsal["ok"] and rehearsal["methods"] == ["linear", "lora"]
    calibration = json.loads((out / rehearsal["calibration"]).read_text())
    assert sorted(calibration["methods"]) == ["linear", "lora"]
    assert calibration["rehearsal"] == {"max_steps": 1, "max_eval_batches": 2}
    assert not list(out.glob("**/*.npz"))  # the data, weights and runs stay in the work folder
    # VPEFT_GPU_TEST_METHODS: the three gpu tests of the two methods asked for, all skipped
    assert report["tests"]["counts"].get("skipped", 0) >= 3 * 2, report["tests"]
    assert "passed" not in report["tests"]["counts"] and not report["tests"]["failures"]
    assert report["measurements"] == []
    for name in ("tiny-cpu.json", "tiny-cpu.md", "projection-tiny-cpu.json", "gpu-tests.xml"):
        assert (out / name).is_file(), name
    projection = json.loads((out / "projection-tiny-cpu.json").read_text())
    assert projection["complete"] and projection["studies"][0]["methods"] == ["linear", "lora"]
    md = (out / "gpu-check.md").read_text()
    assert md.startswith("## GPU check: passed") and "No CUDA device" in md
    assert "| projection | passed |" in md and not (out / ".gpu-check-stages.tsv").exists()
    assert "### Rehearsal of vtab1k (every step in" in md and "| lora | final |" in md

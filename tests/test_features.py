"""Speed features of the training engine, checked for correctness (their speed is measured in
benchmarks, never asserted here): linear probing through cached frozen features, no decoding in
epochs, one evaluation at the end with a large batch, and the GPU options recorded on CPU."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from vpeft import layout, methods
from vpeft.config import load_study
from vpeft.errors import UserError
from vpeft.io import read_json
from vpeft.protocol import run_point
from vpeft.train.features import HeadProbe, extract_features, predict_features
from vpeft.train.loop import Normaliser, Run, predict, train, train_runs
from vpeft.train.protocol import Protocol

from conftest import half_normaliser, tiny_vit, toy_images

from vpeft._compat import ensure_torchvision_importable

ensure_torchvision_importable()
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def _plan(tmp_path: Path, prepared_task: Path, weights: Path, runs: str, *extra: str):
    overrides = [f"paths.data={tmp_path}/data", f"paths.runs={tmp_path}/{runs}",
                 f"model.weights={weights}", "study.tasks=[count]", "study.methods=[linear,lora]",
                 "train.epochs=3", "train.batch_size=16", "train.drop_path=0", *extra]
    plan = load_study("smoke", overrides)
    target = layout.prepared_task(plan.cfg, "count")
    if not target.exists():
        shutil.copytree(prepared_task, target)
    return plan


class _BackboneCalls:
    """Counts images through the backbone (timm's forward_features), split by train/eval mode."""

    def __init__(self, monkeypatch) -> None:
        self.train_images = self.eval_images = 0
        self.eval_batches: list[int] = []
        original = VisionTransformer.forward_features

        def counted(model, x, *args, **kwargs):
            if model.training:
                self.train_images += len(x)
            else:
                self.eval_images += len(x)
                self.eval_batches.append(len(x))
            return original(model, x, *args, **kwargs)

        monkeypatch.setattr(VisionTransformer, "forward_features", counted)




def test_cached_features_train_the_same_head_as_backprop_through_the_frozen_model(monkeypatch):
    """drop_path 0: the frozen backbone computes the same function in train and eval mode, so
    the two paths differ only by float rounding of the features (batches of 16 vs 256)."""
    images, labels = toy_images(48, noise=40)
    settings = Protocol.vtab().settings(epochs=5, lr=1e-2, weight_decay=1e-4, batch_size=16,
                                         warmup_epochs=1, log_every_s=1e9)
    calls = _BackboneCalls(monkeypatch)

    reference = methods.apply(tiny_vit(num_classes=4, drop_path_rate=0.0), "linear")
    ref_result = train(reference, half_normaliser(), images, labels, settings, seed=7)
    assert calls.train_images == settings.epochs * len(images)  # every epoch runs the backbone

    calls.train_images = calls.eval_images = 0
    cached = methods.apply(tiny_vit(num_classes=4, drop_path_rate=0.0), "linear")
    features = extract_features(cached, half_normaliser(), images, batch_size=256)
    probe = HeadProbe(cached)
    result = train(probe, torch.nn.Identity(), features, labels, settings, seed=7)
    # the cache path: the backbone saw each image once, in eval mode, and never while training
    assert (calls.train_images, calls.eval_images) == (0, len(images))
    assert [n for n, _ in probe.named_parameters()] == ["head.weight", "head.bias"]

    assert result.steps == ref_result.steps == 5 * 3
    # Features agree to float32 rounding (~1e-6 relative); 15 AdamW steps of lr <= 1e-2 amplify
    # that by well under 1e3, so heads and losses agree to 1e-4.
    torch.testing.assert_close(torch.tensor(result.loss_curve), torch.tensor(ref_result.loss_curve),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.head.weight, reference.head.weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.head.bias, reference.head.bias, rtol=1e-4, atol=1e-4)
    logits = predict_features(probe, features)
    ref_logits = predict(reference, half_normaliser(), images)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


def test_linear_runs_on_cached_features_with_outputs_a_normal_run_would_write(
        tmp_path, prepared_task, tiny_weights, monkeypatch):
    calls = _BackboneCalls(monkeypatch)
    point = None
    outputs = {}
    for cache in ("true", "false"):
        plan = _plan(tmp_path, prepared_task, tiny_weights, f"runs_{cache}",
                     f"train.cache_linear_features={cache}")
        point = plan.points["linear"][0]
        calls.train_images = calls.eval_images = 0
        run_point(plan, "count", "linear", point, "grid")
        outputs[cache] = (layout.grid_dir(plan.cfg, "count", "linear", point.id),
                          calls.train_images, calls.eval_images)
    (cached_dir, cached_train, cached_eval), (ref_dir, ref_train, ref_eval) = \
        outputs["true"], outputs["false"]
    # 36 train800 images, 18 val200 images, 3 epochs
    assert (cached_train, cached_eval) == (0, 36 + 18)
    assert (ref_train, ref_eval) == (3 * 36, 18)

    cached, ref = read_json(cached_dir / layout.METRICS), read_json(ref_dir / layout.METRICS)
    assert cached["feature_cache"]["used"] is True and cached["feature_cache"]["feature_dim"] == 32
    assert ref["feature_cache"] == {"used": False}
    assert set(cached) == set(ref)  # same record, so selection and the report cannot tell
    for key in ("status", "val_top1", "steps", "trainable_params", "trainable_params_with_head",
                "hparams", "optim", "epochs"):
        assert cached[key] == ref[key], key
    assert cached["loss_curve"] == pytest.approx(ref["loss_curve"], rel=1e-4, abs=1e-4)
    a, b = load_file(str(cached_dir / layout.ADAPTER)), load_file(str(ref_dir / layout.ADAPTER))
    assert a.keys() == b.keys() == {"head.weight", "head.bias"}
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)
    assert read_json(cached_dir / layout.ADAPTER_CONFIG) == read_json(ref_dir / layout.ADAPTER_CONFIG)
    pa_, pb = pq.read_table(cached_dir / layout.PREDICTIONS), pq.read_table(ref_dir / layout.PREDICTIONS)
    assert pa_.schema == pb.schema
    assert pa_.column("pred").equals(pb.column("pred")) and pa_.column("index").equals(pb.column("index"))


def test_epochs_decode_nothing_and_evaluate_once_at_the_end_with_a_large_batch(
        tmp_path, prepared_task, tiny_weights, monkeypatch):
    import PIL.Image

    import vpeft.data.decode as decode

    plan = _plan(tmp_path, prepared_task, tiny_weights, "runs", "train.eval_batch_size=256")

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded during training")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    monkeypatch.setattr(decode, "load_image", no_decoding)
    inputs = []
    original = Normaliser.forward

    def recorded(self, batch):
        inputs.append((batch.dtype, tuple(batch.shape[1:])))
        return original(self, batch)

    monkeypatch.setattr(Normaliser, "forward", recorded)
    calls = _BackboneCalls(monkeypatch)
    metrics = run_point(plan, "count", "lora", plan.points["lora"][0], "grid")
    assert metrics["status"] == "ok"
    # every batch is already a uint8 tensor at the model's input size: no decoding, no resizing
    size = int(plan.cfg.model.img_size)
    assert set(inputs) == {(torch.uint8, (size, size, 3))}
    # val200 is predicted once, after the last epoch, in one batch of up to eval_batch_size
    assert calls.eval_batches == [18]
    assert calls.train_images == 3 * 36


def test_gpu_options_are_recorded_and_checked(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights, "runs", "train.precision=bf16")
    metrics = run_point(plan, "count", "lora", plan.points["lora"][0], "grid")
    # bf16 autocast exists only on CUDA: a CPU run computes (and records) fp32
    assert metrics["precision"] == "fp32" and metrics["device"] == "cpu"
    assert metrics["fused_attention"] is True  # timm's fused scaled-dot-product attention
    assert metrics["compiled"] is False and metrics["fused_points"] == 1
    assert metrics["config"]["train"]["precision"] == "bf16"
    with pytest.raises(UserError, match="train.precision: 'fp16'"):
        Protocol.vtab().settings(epochs=1, lr=1e-3, weight_decay=0.0, precision="fp16")


def test_a_diverged_run_beside_others_stops_alone():
    images, labels = toy_images(48, noise=40)
    settings = Protocol.vtab().settings(epochs=2, lr=1e-3, weight_decay=1e-4, batch_size=16,
                                         warmup_epochs=0)
    bad = Protocol.vtab().settings(epochs=2, lr=1e12, weight_decay=0.0, batch_size=16,
                                    warmup_epochs=0)
    runs = [Run(methods.apply(tiny_vit(num_classes=4), "full"), half_normaliser(), images, labels, s,
                seed=0) for s in (settings, bad)]
    good, diverged = train_runs(runs)
    assert diverged.status == "diverged" and diverged.diverged_at is not None
    assert good.status == "ok" and good.steps == 2 * 3

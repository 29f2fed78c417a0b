"""The training loop and backbone loading."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vpeft import methods
from vpeft.models.backbone import WeightsError, create_backbone
from vpeft.train.loop import predict, top1, train
from vpeft.train.protocol import Protocol

from conftest import TINY_VIT, half_normaliser, tiny_vit, toy_images


def test_loading_goes_through_timm_and_replaces_the_head(tiny_weights):
    model = create_backbone(TINY_VIT["name"], tiny_weights, 7, kwargs=TINY_VIT["kwargs"], seed=1)
    source = tiny_vit(num_classes=7)
    # backbone tensors come from the file ...
    torch.testing.assert_close(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    torch.testing.assert_close(model.pos_embed, source.pos_embed)
    # ... but the head is fresh even though the class counts match (timm would keep the file's)
    assert model.head.out_features == 7
    assert not torch.equal(model.head.weight, source.head.weight)


def test_head_is_sized_for_the_task(tiny_weights):
    model = create_backbone(TINY_VIT["name"], tiny_weights, 3, kwargs=TINY_VIT["kwargs"])
    assert model.head.out_features == 3
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(WeightsError, match=r"model.weights: file not found: .*nope.safetensors"):
        create_backbone(TINY_VIT["name"], tmp_path / "nope.safetensors", 3, kwargs=TINY_VIT["kwargs"])


def test_a_file_missing_backbone_tensors_is_rejected(tmp_path):
    state = {k: v for k, v in tiny_vit().state_dict().items() if not k.startswith("blocks.1.")}
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match="blocks.1"):
        create_backbone(TINY_VIT["name"], path, 3, kwargs=TINY_VIT["kwargs"])


def test_a_file_of_another_width_is_rejected(tiny_weights):
    with pytest.raises(WeightsError, match="does not fit|shape mismatch"):
        create_backbone(TINY_VIT["name"], tiny_weights, 3, kwargs={**TINY_VIT["kwargs"], "embed_dim": 64})


def test_a_few_steps_lower_the_loss():
    images, labels = toy_images()
    model = methods.apply(tiny_vit(num_classes=4), "full")
    settings = Protocol.vtab().settings(epochs=8, lr=1e-3, weight_decay=1e-4, batch_size=16,
                                         warmup_epochs=1, log_every_s=1e9)
    result = train(model, half_normaliser(), images, labels, settings, seed=0)
    assert result.status == "ok"
    assert result.steps == 8 * 4
    assert result.loss_curve[-1] < 0.7 * result.loss_curve[0]
    assert top1(predict(model, half_normaliser(), images), labels) > 50.0


def test_training_is_seeded():
    images, labels = toy_images()
    settings = Protocol.vtab().settings(epochs=2, lr=1e-3, weight_decay=1e-4, batch_size=16,
                                         warmup_epochs=1)
    curves = []
    for _ in range(2):
        model = methods.apply(tiny_vit(num_classes=4), "lora", rank=2)
        curves.append(train(model, half_normaliser(), images, labels, settings, seed=3).loss_curve)
    assert curves[0] == curves[1]


def test_divergence_is_recorded_not_raised():
    images, labels = toy_images()
    model = methods.apply(tiny_vit(num_classes=4), "full")
    settings = Protocol.vtab().settings(epochs=3, lr=1e12, weight_decay=0.0, batch_size=16,
                                         warmup_epochs=0)
    result = train(model, half_normaliser(), images, labels, settings, seed=0)
    assert result.status == "diverged"
    assert result.diverged_at is not None and result.diverged_at["step"] >= 1
    assert result.loss_curve[-1] is None


def test_normaliser_resizes_and_normalises():
    x = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    out = half_normaliser(16)(x)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.ones_like(out))

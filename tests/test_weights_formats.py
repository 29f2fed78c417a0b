"""Weights as users download them: each format is written from a small random model under the
format's own published names, and the vpeft-loaded backbone must compute the same features as the
model that wrote the file.

Formats: Google's original ViT ``.npz`` (flax names, in21k head + pre_logits), timm's
``model.safetensors`` (HF hub), ``torch.save`` state dicts (.pth/.bin, bare or wrapped), the CLIP
image tower in timm's names and in open_clip's checkpoints (``open_clip_pytorch_model.bin``,
``open_clip_model.safetensors``), whose text tower also feeds the zero-shot head.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file

from vpeft.demo.robustness import TEMPLATES, make_clip, tiny_clip_config
from vpeft.models.backbone import WeightsError, check_weights, create_backbone, study_backbone
from vpeft.robustness import zeroshot

import timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package
from benchmarks.vit_npz import write_google_vit_npz  # noqa: E402

VIT = "vit_tiny_patch16_224"
VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}
IN21K_CLASSES = 21843
CLIP_VIT = "vit_base_patch16_clip_quickgelu_224"  # timm's tower for OpenAI CLIP (QuickGELU)
CLIP_WIDTH, CLIP_EMBED = 48, 16
CLIP_KWARGS = {"img_size": 16, "patch_size": 8, "embed_dim": CLIP_WIDTH, "depth": 1, "num_heads": 3}
CLASSNAMES = ["red circle", "blue square", "green cross"]


def randomise(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Every parameter random (timm and open_clip initialise biases and norms to 0/1, which would
    hide a bias or norm that is mapped wrongly)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def random_vit(num_classes: int = IN21K_CLASSES, seed: int = 0, **overrides) -> torch.nn.Module:
    model = timm.create_model(VIT, pretrained=False, num_classes=num_classes, **{**VIT_KWARGS, **overrides})
    return randomise(model, seed)


def images(size: int = 32, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = model.eval().forward_features(x)
    return tokens, model.forward_head(tokens, pre_logits=True)


def assert_same_features(loaded: torch.nn.Module, writer: torch.nn.Module, size: int = 32) -> None:
    x = images(size)
    for got, want in zip(features(loaded, x), features(writer, x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def save_timm_safetensors(model: torch.nn.Module, path: Path) -> Path:
    """As the HF hub stores timm models: ``model.safetensors`` with timm's state-dict names."""
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def model_log(caplog):
    caplog.set_level(logging.INFO, logger="vpeft.models")
    return caplog


# --- 1. Google's original ViT .npz ---------------------------------------------------------------

def test_google_vit_npz_with_pre_logits_loads_to_the_writer_model(tmp_path, model_log):
    writer = random_vit(seed=1)
    rep = (torch.randn(48, 48), torch.randn(48))
    path = write_google_vit_npz(writer, tmp_path / "ViT-B_16.npz", pre_logits=rep)
    with np.load(path) as npz:  # the published layout, as the study's file holds it
        assert npz["embedding/kernel"].shape == (8, 8, 3, 48)
        assert npz["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"].shape == (48, 3, 16)
        assert npz["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel"].shape == (3, 16, 48)
        assert npz["head/kernel"].shape == (48, IN21K_CLASSES) and npz["pre_logits/kernel"].shape == (48, 48)

    loaded = create_backbone(VIT, path, 10, kwargs=VIT_KWARGS, seed=0)
    assert_same_features(loaded, writer)
    assert loaded.head.out_features == 10
    messages = "\n".join(model_log.messages)
    assert "21843-class head is replaced by a fresh 10-class head" in messages
    assert "pre_logits (Linear 48->48 + tanh before the head) is dropped" in messages

    # the writer's names are the format timm itself reads (its own converter, _load_weights)
    from timm.models.vision_transformer import _load_weights

    reference = timm.create_model(VIT, pretrained=False, num_classes=IN21K_CLASSES, **VIT_KWARGS)
    _load_weights(reference, str(path))
    assert_same_features(reference, writer)
    with torch.no_grad():
        torch.testing.assert_close(reference(images()), writer(images()), rtol=1e-5, atol=1e-4)


def test_npz_is_checked_without_loading_and_position_embeddings_are_resampled(tmp_path):
    path = write_google_vit_npz(random_vit(seed=2), tmp_path / "ViT-B_16.npz")
    report = check_weights(VIT, path, VIT_KWARGS)
    assert report["format"] == "google-vit-npz" and report["file_classes"] == IN21K_CLASSES
    assert report["tensors"] == len(random_vit(num_classes=0).state_dict())
    bigger = {**VIT_KWARGS, "img_size": 48}
    report = check_weights(VIT, path, bigger)
    assert any("pos_embed resampled from (1, 17, 48) to (1, 37, 48)" in n for n in report["notes"])
    model = create_backbone(VIT, path, 4, kwargs=bigger)
    assert model.pos_embed.shape == (1, 37, 48) and model(images(48)).shape == (3, 4)


# --- 2. timm model.safetensors (HF hub layout) ---------------------------------------------------

def test_timm_hub_safetensors_loads_to_the_writer_model(tmp_path, model_log):
    writer = random_vit(seed=3)
    path = save_timm_safetensors(writer, tmp_path / "model.safetensors")
    loaded = create_backbone(VIT, path, 37, kwargs=VIT_KWARGS, seed=0)
    assert_same_features(loaded, writer)
    assert "21843-class head is replaced by a fresh 37-class head" in "\n".join(model_log.messages)
    assert check_weights(VIT, path, VIT_KWARGS)["format"] == "timm"


def test_fresh_head_is_seeded_and_logged_even_when_counts_match(tmp_path, model_log):
    writer = random_vit(num_classes=5, seed=4)
    path = save_timm_safetensors(writer, tmp_path / "model.safetensors")
    a = create_backbone(VIT, path, 5, kwargs=VIT_KWARGS, seed=11)
    b = create_backbone(VIT, path, 5, kwargs=VIT_KWARGS, seed=11)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, writer.head.weight)
    assert "same count, but a transfer run starts from a fresh head" in "\n".join(model_log.messages)


# --- 3. torch.save state dicts -------------------------------------------------------------------

@pytest.mark.parametrize("wrap,name", [(None, "pytorch_model.bin"), ("model", "checkpoint.pth"),
                                       ("state_dict", "checkpoint.pth")])
def test_torch_state_dict_bare_or_wrapped(tmp_path, wrap, name):
    writer = random_vit(seed=5)
    sd = writer.state_dict()
    path = tmp_path / name
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    assert_same_features(create_backbone(VIT, path, 10, kwargs=VIT_KWARGS), writer)
    assert check_weights(VIT, path, VIT_KWARGS)["file_classes"] == IN21K_CLASSES


def test_a_pickled_object_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(random_vit(num_classes=3), path)  # a pickled nn.Module, not a state dict
    with pytest.raises(WeightsError, match=r"model.weights: .*whole_model.pth is a pickle holding "
                                           r"Python objects.*weights_only=True"):
        create_backbone(VIT, path, 3, kwargs=VIT_KWARGS)
    with pytest.raises(WeightsError, match="whole_model.pth is a pickle"):
        check_weights(VIT, path, VIT_KWARGS)


# --- 4. CLIP image tower: timm's names and open_clip's checkpoints ------------------------------

def tiny_open_clip(seed: int = 0) -> tuple[torch.nn.Module, dict]:
    config = {**tiny_clip_config(width=CLIP_WIDTH, embed_dim=CLIP_EMBED), "quick_gelu": True}
    clip = randomise(make_clip(config, seed), seed, std=0.1)
    with torch.no_grad():
        clip.logit_scale.fill_(2.0)
    return clip, config


def register_open_clip_config(config: dict, folder: Path, name: str) -> str:
    """Make ``name`` an open_clip architecture name (as ``ViT-B-16-quickgelu`` is one)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{name}.json")
    return name


def write_open_clip_files(clip: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """The two files open_clip publishes on the HF hub for a CLIP model."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    return {"bin": folder / "open_clip_pytorch_model.bin",
            "safetensors": folder / "open_clip_model.safetensors"}


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_open_clip_checkpoint_gives_the_image_tower_of_encode_image(tmp_path, kind):
    """vpeft's tower features (final-norm class token, before CLIP's projection) times the file's
    ``visual.proj`` equal open_clip's ``encode_image`` (unnormalised) of the writer."""
    clip, _ = tiny_open_clip(seed=6)
    path = write_open_clip_files(clip, tmp_path)[kind]
    with open(path, "rb") as f:  # open_clip's published names
        assert kind == "safetensors" or b"visual.transformer.resblocks.0.attn.in_proj_weight" in f.read()
    tower = create_backbone(CLIP_VIT, path, 10, kwargs=CLIP_KWARGS)
    x = images(16)
    with torch.no_grad():
        pooled = features(tower, x)[1]
        torch.testing.assert_close(pooled @ clip.visual.proj, clip.encode_image(x), rtol=1e-5, atol=1e-5)
    report = check_weights(CLIP_VIT, path, CLIP_KWARGS)
    assert report["format"] == "open_clip" and report["file_classes"] == CLIP_EMBED
    assert any("text tower" in n for n in report["notes"])


def test_timm_clip_tower_file_loads_to_the_writer_tower(tmp_path):
    """timm's own CLIP tower names (``norm_pre``, ``head`` = the width->embed projection), as in
    timm's ``vit_base_patch16_clip_224.openai`` model.safetensors."""
    writer = randomise(timm.create_model(CLIP_VIT, pretrained=False, num_classes=CLIP_EMBED,
                                         **CLIP_KWARGS), seed=8)
    path = save_timm_safetensors(writer, tmp_path / "model.safetensors")
    assert "norm_pre.weight" in writer.state_dict()
    tower = create_backbone(CLIP_VIT, path, 10, kwargs=CLIP_KWARGS)
    assert_same_features(tower, writer, size=16)
    with torch.no_grad():  # the file's head was the projection: comparable through pre-logits
        pooled = features(tower, images(16))[1]
        torch.testing.assert_close(F.linear(pooled, writer.head.weight, writer.head.bias),
                                   writer(images(16)), rtol=1e-5, atol=1e-5)


def test_open_clip_files_feed_both_towers_of_the_robustness_study(tmp_path):
    """One open_clip checkpoint as ``model.weights`` (image tower) and as the CLIP file of the
    zero-shot head (text tower): the study's starting model equals CLIP's zero-shot logits."""
    import open_clip

    clip, config = tiny_open_clip(seed=9)
    name = register_open_clip_config(config, tmp_path / "configs", "vpeft-test-tiny-clip")
    files = write_open_clip_files(clip, tmp_path / "clip")
    for path in files.values():  # the text tower loads from either file, equal to the writer's
        loaded = zeroshot.load_clip(name, path)
        tokens = open_clip.get_tokenizer(name)(["a photo of a red circle."])
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode_text(tokens), clip.encode_text(tokens))

    head_file = tmp_path / "head.safetensors"
    meta = zeroshot.write_zeroshot_head(name, files["bin"], CLASSNAMES, head_file,
                                        backbone_weights=files["bin"], templates=TEMPLATES)
    assert meta["projection_matches_backbone"] is True
    cfg = OmegaConf.create({"name": CLIP_VIT, "weights": str(files["bin"]), "kwargs": CLIP_KWARGS,
                            "init_head": str(head_file)})
    model = study_backbone(cfg, len(CLASSNAMES)).eval()
    tokenize = open_clip.get_tokenizer(name)
    x = images(16)
    with torch.no_grad():
        text = torch.stack([F.normalize(F.normalize(clip.encode_text(
            tokenize([t(c) for t in TEMPLATES])), dim=-1).mean(0), dim=0) for c in CLASSNAMES])
        expected = clip.logit_scale.exp() * F.normalize(clip.encode_image(x), dim=-1) @ text.T
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_clip_file_of_another_size_or_an_object_pickle_is_a_clear_error(tmp_path):
    clip, config = tiny_open_clip(seed=10)
    name = register_open_clip_config(config, tmp_path / "configs", "vpeft-test-tiny-clip-2")
    wide_config = {**config, "embed_dim": 24}
    wide = write_open_clip_files(make_clip(wide_config, 0), tmp_path / "wide")
    with pytest.raises(zeroshot.ZeroShotError,
                       match=r"study.robustness.clip.weights: .*wide/open_clip_pytorch_model.bin does "
                             r"not fit open_clip model 'vpeft-test-tiny-clip-2': tensor 'text_projection' has "
                             r"shape \(32, 24\) in the file but \(32, 16\) in the model \(and 1 more"):
        zeroshot.load_clip(name, wide["bin"])
    pickled = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip, pickled)
    with pytest.raises(zeroshot.ZeroShotError, match="open_clip_pytorch_model.bin is a pickle holding"):
        zeroshot.load_clip(name, pickled)


# --- 5. files that do not fit ---------------------------------------------------------------------

def test_another_width_names_the_file_the_first_tensor_and_both_shapes(tmp_path):
    path = save_timm_safetensors(random_vit(seed=1, embed_dim=64, num_heads=4), tmp_path / "wide.safetensors")
    message = (r"model.weights: .*wide.safetensors \(timm format\) does not fit timm model "
               r"'vit_tiny_patch16_224' .*tensor 'cls_token' has shape \(1, 1, 64\) in the file but "
               r"\(1, 1, 48\) in the model \(and \d+ more differences\)")
    with pytest.raises(WeightsError, match=message):
        create_backbone(VIT, path, 3, kwargs=VIT_KWARGS)
    with pytest.raises(WeightsError, match=message):
        check_weights(VIT, path, VIT_KWARGS)
    npz = write_google_vit_npz(random_vit(seed=1, embed_dim=64, num_heads=4), tmp_path / "wide.npz")
    with pytest.raises(WeightsError, match=r"wide.npz \(google-vit-npz format\) .*tensor 'cls_token' "
                                           r"\(file: 'cls'\) has shape \(1, 1, 64\) in the file but "
                                           r"\(1, 1, 48\) in the model"):
        create_backbone(VIT, npz, 3, kwargs=VIT_KWARGS)


def test_another_depth_or_architecture_is_one_clear_error(tmp_path):
    deep = write_google_vit_npz(random_vit(seed=1, depth=3), tmp_path / "deep.npz")
    with pytest.raises(WeightsError, match=r"deep.npz .*the file holds tensor 'blocks.2.norm1.weight' "
                                           r"\(file: 'Transformer/encoderblock_2/LayerNorm_0/scale'\) of "
                                           r"shape \(48,\), which the model does not have"):
        create_backbone(VIT, deep, 3, kwargs=VIT_KWARGS)
    vit_file = save_timm_safetensors(random_vit(seed=1, img_size=16), tmp_path / "vit.safetensors")
    with pytest.raises(WeightsError, match=r"vit.safetensors .*tensor 'norm_pre.weight' of shape \(48,\) "
                                           r"is missing from the file"):
        create_backbone(CLIP_VIT, vit_file, 3, kwargs=CLIP_KWARGS)


def test_missing_corrupt_and_foreign_files_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match=r"model.weights: file not found: .*absent.npz"):
        check_weights(VIT, tmp_path / "absent.npz", VIT_KWARGS)
    good = save_timm_safetensors(random_vit(seed=1), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    npz = write_google_vit_npz(random_vit(seed=1), tmp_path / "good.npz")
    broken_npz = tmp_path / "broken.npz"
    broken_npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (truncated, broken_npz, garbage):
        with pytest.raises(WeightsError, match=rf"model.weights: cannot read .*{path.name} .*corrupt"):
            create_backbone(VIT, path, 3, kwargs=VIT_KWARGS)
    foreign = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, str(foreign))
    with pytest.raises(WeightsError, match=r"resnet.safetensors is neither a timm ViT state dict"):
        check_weights(VIT, foreign, VIT_KWARGS)
    assert check_weights(VIT, None, VIT_KWARGS)["format"] is None

"""The zero-shot head: computed from a real (tiny) open_clip model saved as local files, equal to
CLIP's own zero-shot scoring with encode_text, installed as the head of a timm ViT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vpeft.demo.robustness import TEMPLATES, make_clip, save_clip_dir, tiny_clip_config
from vpeft.models import zeroshot_head
from vpeft.robustness import zeroshot
from vpeft.robustness.imagenet import shipped_wnids

from conftest import DIM, tiny_vit

CLASSNAMES = ["red circle", "blue square", "green cross"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    config = tiny_clip_config(width=DIM, embed_dim=16)
    clip = make_clip(config, seed=5)
    with torch.no_grad():
        clip.logit_scale.fill_(2.0)
    return save_clip_dir(clip, config, tmp_path_factory.mktemp("clip") / "tiny_clip")


def test_head_equals_clip_zero_shot_scoring(clip_dir, tmp_path):
    model_name = f"{zeroshot.LOCAL_DIR}{clip_dir}"
    out = tmp_path / "head.safetensors"
    meta = zeroshot.write_zeroshot_head(model_name, None, CLASSNAMES, out, templates=TEMPLATES)
    assert meta["num_classes"] == 3 and meta["num_templates"] == len(TEMPLATES)
    head = zeroshot_head.load_head(out)

    # Direct computation with open_clip's own API
    import open_clip

    clip = open_clip.create_model(model_name).eval()
    tokenize = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        rows = []
        for name in CLASSNAMES:
            emb = F.normalize(clip.encode_text(tokenize([t(name) for t in TEMPLATES])), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=0))
        text = torch.stack(rows)
        features = torch.randn(5, DIM, generator=torch.Generator().manual_seed(0))
        expected = clip.logit_scale.exp() * F.normalize(features @ clip.visual.proj, dim=-1) @ text.T
        torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-5)
    assert float(clip.logit_scale.detach().exp()) == pytest.approx(meta["logit_scale"])
    assert torch.count_nonzero(head.classifier.bias) == 0


def test_installed_head_is_the_vits_trainable_classifier(clip_dir, tmp_path):
    from vpeft import methods

    out = tmp_path / "head.safetensors"
    zeroshot.write_zeroshot_head(f"{zeroshot.LOCAL_DIR}{clip_dir}", None, CLASSNAMES, out,
                                 templates=TEMPLATES)
    model = zeroshot_head.install_head(tiny_vit(num_classes=7), out)
    assert model.get_classifier() is model.head and isinstance(model.head, zeroshot_head.ZeroShotHead)
    with torch.no_grad():
        images = torch.randn(2, 3, 16, 16)
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(model(images), zeroshot_head.load_head(out)(features))
    methods.apply(model, "linear")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.proj.weight", "head.classifier.weight", "head.classifier.bias"}


def test_width_mismatch_and_missing_files_are_clear_errors(clip_dir, tmp_path):
    out = tmp_path / "head.safetensors"
    zeroshot.write_zeroshot_head(f"{zeroshot.LOCAL_DIR}{clip_dir}", None, CLASSNAMES, out,
                                 templates=TEMPLATES)
    with pytest.raises(zeroshot_head.ZeroShotError, match="32-wide features"):
        zeroshot_head.install_head(tiny_vit(num_classes=3, embed_dim=48, num_heads=2), out)
    with pytest.raises(zeroshot.ZeroShotError, match="never downloads"):
        zeroshot.load_clip("ViT-B-16", tmp_path / "missing.bin")
    with pytest.raises(zeroshot_head.ZeroShotError, match="not found"):
        zeroshot_head.load_head(tmp_path / "nope.safetensors")


def test_shipped_wnid_lists_equal_timms():
    info = Path(__import__("timm").__file__).parent / "data" / "_info"
    for name, count in (("imagenet_synsets.txt", 1000), ("imagenet_a_synsets.txt", 200),
                        ("imagenet_r_synsets.txt", 200)):
        ours = shipped_wnids(name)
        assert ours == (info / name).read_text().split() and len(ours) == count
    assert shipped_wnids() == sorted(shipped_wnids())


def test_imagenet_label_space_pairs_wnids_with_clip_classnames():
    from vpeft.robustness.imagenet import imagenet_label_space

    space = imagenet_label_space()
    assert len(space) == 1000 and space.ids[0] == "n01440764" and space.names[0] == "tench"
    assert len(zeroshot.imagenet_metadata()[1]) == 80


def test_timm_clip_tower_with_the_head_reproduces_clip_zero_shot_logits(tmp_path):
    """The whole path of the study on a tiny CLIP: its image tower converted by timm (which keeps
    visual.proj as head.weight), our head in place of timm's, equals open_clip's own zero-shot
    logits ``exp(s)·normalise(encode_image(x)) @ T̂ᵀ``; the projection check sees both files agree."""
    import timm
    from safetensors.torch import save_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    width = 48
    config = {**tiny_clip_config(width=width, embed_dim=16), "quick_gelu": True}
    clip = make_clip(config, seed=9).eval()
    folder = save_clip_dir(clip, config, tmp_path / "clip")
    tower = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, img_size=16,
                              patch_size=8, embed_dim=width, depth=1, num_heads=3, num_classes=16)
    tower.load_state_dict(checkpoint_filter_fn(clip.state_dict(), tower))
    timm_file = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(timm_file))

    head_file = tmp_path / "head.safetensors"
    meta = zeroshot.write_zeroshot_head(f"{zeroshot.LOCAL_DIR}{folder}", None, CLASSNAMES, head_file,
                                        backbone_weights=timm_file, templates=TEMPLATES)
    assert meta["projection_matches_backbone"] is True
    zeroshot_head.install_head(tower.eval(), head_file)

    import open_clip

    tokenize = open_clip.get_tokenizer(f"{zeroshot.LOCAL_DIR}{folder}")
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = torch.stack([F.normalize(F.normalize(clip.encode_text(
            tokenize([t(c) for t in TEMPLATES])), dim=-1).mean(0), dim=0) for c in CLASSNAMES])
        expected = clip.logit_scale.exp() * F.normalize(clip.encode_image(images), dim=-1) @ text.T
        torch.testing.assert_close(tower(images), expected, rtol=1e-4, atol=1e-4)

    with torch.no_grad():  # an image tower from another CLIP is refused
        tower_state = {k: v.contiguous() for k, v in tower.state_dict().items() if not k.startswith("head.")}
        save_file({**tower_state, "head.weight": torch.randn(16, width)}, str(timm_file))
    with pytest.raises(zeroshot.ZeroShotError, match="different CLIP models"):
        zeroshot.write_zeroshot_head(f"{zeroshot.LOCAL_DIR}{folder}", None, CLASSNAMES, head_file,
                                     backbone_weights=timm_file, templates=TEMPLATES)

"""The offline miniature of the robustness study: a tiny CLIP and shifted renditions of a source
label space (the demo's synthetic ``source`` classes), written in the ImageNet-family formats
(the ``robust-synth`` and ``fit-clip`` verbs: :func:`write_miniature_trees`, :func:`fit_clip`).

- the tiny CLIP is a real open_clip ``CLIP`` (tiny text tower, a one-layer image tower that is
  never used) saved as an open_clip ``local-dir`` folder; its text tower and ``visual.proj`` are
  fitted contrastively to the pretrained demo ViT's features of the source images, so zero-shot
  classification means something (far above chance) after a few seconds of CPU time;
- the images are fresh renders of the source classes (another seed than pretraining) under a
  photographic condition of their own: washed out, each image keeping only
  ``miniature.contrast`` of its contrast about its mean colour. This is the analogue of ImageNet
  against CLIP's web pretraining data: the backbone and the zero-shot head were fitted on the
  source renders, so in distribution they meet images a little unlike theirs, which a few shots
  of fine-tuning adapt to (every method's WiSE-FT alpha = 1 beats alpha = 0 in distribution, as
  fine-tuning on ImageNet beats zero-shot CLIP by 10+ points), while zero-shot stays far above
  chance. Without it, zero-shot is a read-out fitted on more images (70 a class) of the very
  distribution fine-tuning sees 8 shots of, and no method beats it;
- the trees: a class-per-folder ``train`` and ``val`` tree (wnid-style folders), an edges-only
  ``sketch`` tree, a colour-inverted tree with class-index folders (ImageNet-V2's format) and a
  re-textured tree holding half of the classes (ImageNet-A/R's format: the logit mask's path);
  every shift is applied to an in-distribution (washed-out) render, as ImageNet's shifts are
  renditions of ImageNet's classes, not of CLIP's pretraining data.

The label space (``study.robustness.label_space: synthetic_source``) and the 4 prompt templates
(``templates: miniature``) are the core's (:mod:`vpeft.robustness.pipeline`,
:data:`vpeft.robustness.zeroshot.MINIATURE_TEMPLATES`): the study reads them without this module.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from vpeft import layout
from vpeft.errors import UserError
from vpeft.io import atomic_dir, write_json
from vpeft.robustness.inputs import label_space, settings
from vpeft.robustness.zeroshot import LOCAL_DIR, MINIATURE_TEMPLATES as TEMPLATES

log = logging.getLogger("vpeft.robustness")


def tiny_clip_config(width: int, embed_dim: int = 32, text_width: int = 32) -> dict[str, Any]:
    """An open_clip model config: a tiny text tower; an image tower of ``width`` (one layer),
    so that ``visual.proj`` maps the demo ViT's ``width``-wide features."""
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": width, "patch_size": 8,
                           "head_width": width // 3 if width % 3 == 0 else width // 2},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": text_width,
                         "heads": 2, "layers": 1}}


def make_clip(config: dict[str, Any], seed: int = 0) -> nn.Module:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**config)


def save_clip_dir(clip: nn.Module, config: dict[str, Any], folder: str | Path) -> Path:
    """An open_clip ``local-dir`` folder: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    with atomic_dir(Path(folder)) as tmp:
        (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()},
                  str(tmp / "open_clip_model.safetensors"))
    return Path(folder)


def fit_tiny_clip(features: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                  folder: str | Path, *, steps: int = 300, lr: float = 3e-3, seed: int = 0
                  ) -> dict[str, Any]:
    """Fit a tiny CLIP's text tower and ``visual.proj`` to image ``features`` [N, width] (CLIP's
    contrastive loss with the classes' template prompts as texts) and save it to ``folder``."""
    width = int(features.shape[1])
    config = tiny_clip_config(width)
    clip = make_clip(config, seed)
    tokens = _tokens(clip, config, classnames)  # [T, C, L]
    params = [clip.visual.proj, clip.logit_scale, *clip.transformer.parameters(),
              clip.token_embedding.weight, clip.positional_embedding, *clip.ln_final.parameters(),
              clip.text_projection]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    clip.train()
    losses = []
    for step in range(steps):
        batch = torch.randint(0, len(labels), (256,), generator=g)
        template = int(torch.randint(0, tokens.shape[0], (1,), generator=g))
        image = F.normalize(features[batch] @ clip.visual.proj, dim=-1)
        text = F.normalize(clip.encode_text(tokens[template]), dim=-1)
        loss = F.cross_entropy(clip.logit_scale.exp() * image @ text.T, labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)
        losses.append(float(loss.detach()))
    save_clip_dir(clip.eval(), config, folder)
    info = {"steps": steps, "first_loss": losses[0], "last_loss": float(np.mean(losses[-20:])),
            "classes": len(classnames), "width": width}
    write_json(layout.weights_info(folder), info)
    log.info("tiny CLIP fitted: loss %.3f -> %.3f", info["first_loss"], info["last_loss"])
    return info


def _tokens(clip: nn.Module, config: dict[str, Any], classnames: Sequence[str]) -> torch.Tensor:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    tokenize = open_clip.get_tokenizer("", context_length=config["text_cfg"]["context_length"])
    return torch.stack([tokenize([t(c) for c in classnames]) for t in TEMPLATES])


def _sketch(image):
    from PIL import ImageFilter, ImageOps

    edges = image.convert("L").filter(ImageFilter.FIND_EDGES)
    return ImageOps.invert(ImageOps.autocontrast(edges)).convert("RGB")


def _inverted(image):
    from PIL import ImageOps

    return ImageOps.invert(image.convert("RGB"))


def _retextured(image, rng: np.random.Generator):
    from PIL import Image

    stripes = (np.sin(np.arange(image.size[0]) * rng.uniform(0.8, 2.0)) > 0).astype(np.float32)
    pattern = np.broadcast_to(stripes[None, :, None], (*image.size[::-1], 3))
    array = np.asarray(image, np.float32) * (0.6 + 0.4 * pattern)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def _washed_out(image, contrast: float):
    """The in-distribution condition: each channel pulled towards the image's mean colour, keeping
    ``contrast`` of its deviations (1: the source rendering unchanged)."""
    from PIL import Image

    if contrast == 1.0:
        return image
    array = np.asarray(image.convert("RGB"), np.float32)
    mean = array.mean(axis=(0, 1), keepdims=True)
    array = mean + contrast * (array - mean)
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB")


def id_contrast(settings) -> float:
    """``miniature.contrast``: the fraction of contrast the in-distribution condition keeps."""
    value = settings.get("contrast", 1.0)
    try:
        contrast = float(value)
    except (TypeError, ValueError):
        contrast = float("nan")
    if not 0.0 < contrast <= 1.0:
        raise UserError(f"study.robustness.miniature.contrast must be a number in (0, 1] (the "
                        f"fraction of contrast the ID renders keep), got {value!r}")
    return contrast


def write_shift_trees(root: Path, space, settings, seed: int = 0) -> Path:
    """Fresh renders of the source classes in the ImageNet-family formats (see the module doc)."""
    from vpeft.demo.synthetic import render_source

    size, per_class = int(settings.image_size), int(settings.per_class)
    contrast = id_contrast(settings)
    rng = np.random.default_rng(10_000 + seed)  # not the pretraining seed: new images
    subset = list(range(0, len(space), 2))  # every other class: the class-subset shift
    with atomic_dir(root) as tmp:
        trees = {"train": (int(settings.train_per_class), None, "id"),
                 "val": (per_class, None, "id"), "sketch": (per_class, None, "sketch"),
                 "inverted": (per_class, None, "inverted"), "retextured": (per_class, subset, "retex")}
        for tree, (count, classes, kind) in trees.items():
            for c in (classes if classes is not None else range(len(space))):
                folder = tmp / tree / (str(c) if kind == "inverted" else space.ids[c])
                folder.mkdir(parents=True)
                for i in range(count):
                    image = _washed_out(render_source(rng, c, "test" if tree != "train"
                                                       else "train", size), contrast)
                    if kind == "sketch":
                        image = _sketch(image)
                    elif kind == "inverted":
                        image = _inverted(image)
                    elif kind == "retex":
                        image = _retextured(image, rng)
                    image.save(folder / f"{i:04d}.png")
    return root


def write_miniature_trees(cfg: DictConfig) -> Path:
    """``robust-synth``: the miniature's trees under ``study.robustness.miniature.root``."""
    return write_shift_trees(Path(settings(cfg).miniature.root), label_space(cfg),
                             settings(cfg).miniature, seed=int(cfg.train.seeds[0]))


def fit_clip(cfg: DictConfig) -> dict[str, Any]:
    """``fit-clip``: fit the tiny CLIP to the pretrained demo ViT's features of the source set."""
    from vpeft.data.shards import read_split
    from vpeft.models.backbone import create_backbone, normalisation
    from vpeft.train.loop import Normaliser

    data = read_split(layout.prepared_task(cfg, layout.SOURCE_TASK), "train800")
    model = create_backbone(cfg.model.name, cfg.model.weights, 1, kwargs=cfg.model.kwargs).eval()
    mean, std = normalisation(model, cfg.model.mean, cfg.model.std)
    normaliser = Normaliser(mean, std, int(cfg.model.img_size))
    with torch.no_grad():
        images = torch.from_numpy(data.images)
        features = torch.cat([model.forward_head(model.forward_features(normaliser(images[i:i + 256])),
                                                 pre_logits=True) for i in range(0, len(images), 256)])
    folder = str(settings(cfg).clip.model)
    if not folder.startswith(LOCAL_DIR):
        raise UserError("study.robustness.clip.model must be 'local-dir:<folder>' to fit a tiny CLIP")
    return fit_tiny_clip(features, torch.from_numpy(data.labels), list(label_space(cfg).names),
                         folder[len(LOCAL_DIR):], steps=int(settings(cfg).miniature.clip_steps),
                         seed=int(cfg.train.seeds[0]))

"""The zero-shot head of a CLIP image tower, computed once from the CLIP text tower.

CLIP scores an image against class ``c`` as ``exp(logit_scale) · <ẑ, t̂_c>`` where
``ẑ = normalise(visual_proj(features))`` and ``t̂_c`` is the L2-normalised mean, over the 80 OpenAI
ImageNet templates, of the L2-normalised text embeddings of ``template(classname)``. timm's CLIP
ViTs (``vit_base_patch16_clip_224.*``) keep ``visual.proj`` as their ``head`` (768→512, zero
bias) and have no normalisation after it, so the classifier cannot be a single ``nn.Linear``.
:class:`ZeroShotHead` is that whole function — projection, L2 normalisation, linear classifier
(weights ``exp(logit_scale)·t̂``, bias zero) — installed as the ViT's ``head``: it is what
``get_classifier()`` returns, so every method trains all of it (the head is always trainable)
and WiSE-FT interpolates it.

The head file (safetensors) holds ``proj.weight`` and ``classifier.{weight,bias}``; its metadata
records the CLIP model, the number of templates and the class names.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vpeft.errors import UserError
from vpeft.io import atomic_path, write_json

log = logging.getLogger("vpeft.robustness")

METADATA_KEY = "vpeft_zeroshot_head"
LOCAL_DIR = "local-dir:"  # open_clip's schema for a folder with open_clip_config.json + weights


class ZeroShotError(UserError):
    """The CLIP text tower or the head file cannot be used."""


class ZeroShotHead(nn.Module):
    """``classifier(normalise(proj(x)))``: CLIP's visual projection and zero-shot classifier."""

    def __init__(self, width: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.normalize(self.proj(x), dim=-1))

    @classmethod
    def from_tensors(cls, proj_weight: torch.Tensor, class_weight: torch.Tensor,
                     class_bias: torch.Tensor | None = None) -> "ZeroShotHead":
        embed_dim, width = proj_weight.shape
        head = cls(width, embed_dim, class_weight.shape[0])
        with torch.no_grad():
            head.proj.weight.copy_(proj_weight)
            head.classifier.weight.copy_(class_weight)
            head.classifier.bias.copy_(torch.zeros(class_weight.shape[0]) if class_bias is None
                                       else class_bias)
        return head


def imagenet_metadata() -> tuple[list[str], list[Callable[[str], str]]]:
    """open_clip's 1000 CLIP class names (standard index order) and the 80 OpenAI templates."""
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def load_clip(model: str, weights: str | Path | None) -> nn.Module:
    """An open_clip CLIP model from local files only (never a pretrained tag, which downloads).

    ``model`` is an open_clip architecture name (``ViT-B-16-quickgelu``) with ``weights`` a local
    checkpoint, or ``local-dir:<folder>`` holding ``open_clip_config.json`` and the weights.
    """
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR):])
        if not (folder / "open_clip_config.json").is_file():
            raise ZeroShotError(f"study.robustness.clip.model: {folder}/open_clip_config.json not found")
        pretrained = None
    else:
        if weights is None or not Path(weights).is_file():
            raise ZeroShotError(f"study.robustness.clip.weights: local CLIP weights file not found: "
                                f"{weights} (open_clip model {model!r}; vpeft never downloads them)")
        pretrained = str(weights)
    try:
        clip = open_clip.create_model(model, pretrained=pretrained, pretrained_text=False,
                                      require_pretrained=True)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as err:
        raise ZeroShotError(f"study.robustness.clip: cannot load open_clip model {model!r} from "
                            f"{weights}: {err}") from err
    return clip.eval()


def tokenizer_for(model: str, clip: nn.Module) -> Callable[[Sequence[str]], torch.Tensor]:
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    return open_clip.get_tokenizer(model, context_length=int(clip.context_length))


@torch.no_grad()
def class_text_embeddings(clip: nn.Module, tokenize: Callable[[Sequence[str]], torch.Tensor],
                          classnames: Sequence[str], templates: Sequence[Callable[[str], str]],
                          batch_classes: int = 32) -> torch.Tensor:
    """[C, E]: per class, the L2-normalised mean of the L2-normalised template embeddings."""
    rows = []
    for start in range(0, len(classnames), batch_classes):
        names = classnames[start:start + batch_classes]
        texts = [template(name) for name in names for template in templates]
        emb = F.normalize(clip.encode_text(tokenize(texts)).float(), dim=-1)
        emb = emb.view(len(names), len(templates), -1).mean(dim=1)
        rows.append(F.normalize(emb, dim=-1))
    return torch.cat(rows)


def visual_projection(clip: nn.Module) -> torch.Tensor:
    """CLIP's ``visual.proj`` as a Linear weight [E, width] (open_clip stores it [width, E])."""
    proj = getattr(clip.visual, "proj", None)
    if not isinstance(proj, torch.Tensor):
        raise ZeroShotError(f"the CLIP image tower {type(clip.visual).__name__} has no visual.proj "
                            "matrix (only open_clip's own VisionTransformer towers are supported)")
    return proj.detach().float().T.contiguous()


@torch.no_grad()
def build_zeroshot_head(clip: nn.Module, tokenize: Callable[[Sequence[str]], torch.Tensor],
                        classnames: Sequence[str], templates: Sequence[Callable[[str], str]]
                        ) -> ZeroShotHead:
    text = class_text_embeddings(clip, tokenize, classnames, templates)
    return ZeroShotHead.from_tensors(visual_projection(clip),
                                     text * clip.logit_scale.detach().float().exp())


def save_head(head: ZeroShotHead, path: str | Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    write_json(path.with_suffix(".json"), {**meta, "tensors": {k: list(v.shape)
                                                               for k, v in state.items()}})


def load_head(path: str | Path) -> ZeroShotHead:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ZeroShotError(f"model.init_head: zero-shot head file not found: {path}")
    state = load_file(str(path))
    expected = {"proj.weight", "classifier.weight", "classifier.bias"}
    if set(state) != expected:
        raise ZeroShotError(f"{path}: tensors {sorted(state)}; expected {sorted(expected)} "
                            "(a head written by `vpeft zeroshot-head`)")
    return ZeroShotHead.from_tensors(state["proj.weight"], state["classifier.weight"],
                                     state["classifier.bias"])


def install_head(model: nn.Module, head: ZeroShotHead | str | Path) -> nn.Module:
    """Make ``head`` (or the head file) the classification head of a timm ViT, in place."""
    if not isinstance(head, ZeroShotHead):
        head = load_head(head)
    width = int(model.num_features)
    if head.proj.in_features != width:
        raise ZeroShotError(f"zero-shot head expects {head.proj.in_features}-wide features; the "
                            f"backbone {type(model).__name__} has {width}")
    ref = next(model.parameters())
    model.head = head.to(device=ref.device, dtype=ref.dtype)
    model.num_classes = head.classifier.out_features
    return model


def check_projection(weights: str | Path, proj_weight: torch.Tensor) -> bool | None:
    """Whether a timm CLIP image-tower file's ``head.weight`` (timm stores CLIP's visual.proj
    there) equals the text checkpoint's projection; None when the file has no such head."""
    from safetensors import safe_open

    path = Path(weights)
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        if "head.weight" not in f.keys():
            return None
        head = f.get_tensor("head.weight").float()
    if tuple(head.shape) != tuple(proj_weight.shape):
        return None
    return bool(torch.allclose(head, proj_weight, atol=1e-6))


def write_zeroshot_head(clip_model: str, clip_weights: str | Path | None, classnames: Sequence[str],
                        out: str | Path, *, backbone_weights: str | Path | None = None,
                        templates: Sequence[Callable[[str], str]] | None = None) -> dict[str, Any]:
    """Compute the head from local CLIP files and save it to ``out``; returns its metadata."""
    if templates is None:
        templates = imagenet_metadata()[1]
    clip = load_clip(clip_model, clip_weights)
    head = build_zeroshot_head(clip, tokenizer_for(clip_model, clip), classnames, templates)
    same_proj = (check_projection(backbone_weights, head.proj.weight)
                 if backbone_weights is not None else None)
    if same_proj is False:
        raise ZeroShotError(f"model.weights {backbone_weights}: its head.weight (timm's copy of CLIP's "
                            f"visual.proj) differs from visual.proj of {clip_model} {clip_weights}: "
                            "the image tower and the text tower come from different CLIP models")
    meta = {"clip_model": clip_model, "clip_weights": None if clip_weights is None else str(clip_weights),
            "num_classes": len(classnames), "num_templates": len(templates),
            "embed_dim": head.proj.out_features, "width": head.proj.in_features,
            "logit_scale": float(clip.logit_scale.detach().exp()), "projection_matches_backbone": same_proj,
            "classnames": list(classnames)}
    save_head(head, out, meta)
    log.info("zero-shot head: %d classes x %d templates from %s -> %s", len(classnames),
             len(templates), clip_model, out)
    return meta

"""The zero-shot head of a CLIP image tower, computed once from the CLIP text tower.

CLIP scores an image against class ``c`` as ``exp(logit_scale) · <ẑ, t̂_c>`` where
``ẑ = normalise(visual_proj(features))`` and ``t̂_c`` is the L2-normalised mean, over the 80 OpenAI
ImageNet templates, of the L2-normalised text embeddings of ``template(classname)``. The head
itself (:class:`~vpeft.models.zeroshot_head.ZeroShotHead`), its file and its installation on a
backbone belong to the model (:mod:`vpeft.models.zeroshot_head`); this module computes it from
local CLIP files and writes that file (``vpeft zeroshot-head``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vpeft.models.zeroshot_head import ZeroShotError, ZeroShotHead, save_head
from vpeft.robustness.imagenet import imagenet_metadata

log = logging.getLogger("vpeft.robustness")

LOCAL_DIR = "local-dir:"  # open_clip's schema for a folder with open_clip_config.json + weights
# The checkpoint names open_clip looks for in such a folder, in its order of preference.
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                   "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
# study.robustness.templates: miniature -- the 4 templates the miniature's tiny CLIP is fitted
# with (vpeft.demo.robustness); the head must be built from the prompts the text tower learnt.
MINIATURE_TEMPLATES: tuple[Callable[[str], str], ...] = (
    lambda c: f"a photo of a {c}.", lambda c: f"a sketch of a {c}.",
    lambda c: f"a rendering of a {c}.", lambda c: f"a bad photo of the {c}.")


def load_clip(model: str, weights: str | Path | None) -> nn.Module:
    """An open_clip CLIP model from local files only (never a pretrained tag, which downloads).

    ``model`` is an open_clip architecture name (``ViT-B-16-quickgelu``) with ``weights`` a local
    checkpoint as open_clip publishes them (``open_clip_pytorch_model.bin``,
    ``open_clip_model.safetensors``), or ``local-dir:<folder>`` holding ``open_clip_config.json``
    and one of those files. The file is read by vpeft (safetensors or
    ``torch.load(weights_only=True)``) and must fit the architecture tensor for tensor.
    """
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR):])
        if not (folder / "open_clip_config.json").is_file():
            raise ZeroShotError(f"study.robustness.clip.model: {folder}/open_clip_config.json not found")
        path = next((folder / n for n in OPEN_CLIP_FILES if (folder / n).is_file()), None)
        if path is None:
            raise ZeroShotError(f"study.robustness.clip.model: {folder} holds none of {OPEN_CLIP_FILES}")
    else:
        if weights is None or not Path(weights).is_file():
            raise ZeroShotError(f"study.robustness.clip.weights: local CLIP weights file not found: "
                                f"{weights} (open_clip model {model!r}; vpeft never downloads them)")
        path = Path(weights)
    quiet = _DropMessage("Model initialized randomly")  # open_clip's warning; the weights follow
    logging.getLogger().addFilter(quiet)
    try:
        clip = open_clip.create_model(model, pretrained=None, load_weights=False, pretrained_text=False)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as err:
        raise ZeroShotError(f"study.robustness.clip.model: cannot build open_clip model {model!r}: "
                            f"{err}") from err
    finally:
        logging.getLogger().removeFilter(quiet)
    _load_clip_state(clip, path, model)
    log.info("CLIP %s loaded from %s", model, path)
    return clip.eval()


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _load_clip_state(clip: nn.Module, path: Path, model: str) -> None:
    """Load an open_clip checkpoint strictly; the first tensor that differs is the error."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    from vpeft.models.backbone import WeightsError, read_tensors, shape_problems

    key = "study.robustness.clip.weights"
    try:
        state = read_tensors(path, key=key)
    except WeightsError as err:
        raise ZeroShotError(str(err)) from err
    scale = state.get("logit_scale")
    if scale is not None and scale.ndim != clip.logit_scale.ndim:  # scalar vs [1] across versions
        state["logit_scale"] = scale.reshape(clip.logit_scale.shape)
    resize_pos_embed(state, clip)  # as open_clip's own loader: other image/text lengths resample
    resize_text_pos_embed(state, clip)
    problems = shape_problems({k: tuple(v.shape) for k, v in clip.state_dict().items()},
                              {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise ZeroShotError(f"{key}: {path} does not fit open_clip model {model!r}: "
                            f"{problems[0]}{more}")
    clip.load_state_dict(state, strict=True)


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


def check_projection(weights: str | Path, proj_weight: torch.Tensor) -> bool | None:
    """Whether the image-tower file's CLIP projection (timm keeps CLIP's visual.proj as
    ``head.weight``; an open_clip file holds ``visual.proj``) equals the text checkpoint's; None
    when the file has no head of that shape (not a CLIP image tower)."""
    from vpeft.models.backbone import read_tensors, to_timm

    converted = to_timm(read_tensors(weights), weights)
    head = converted.head.get("head.weight")
    if head is None or tuple(head.shape) != tuple(proj_weight.shape):
        return None
    return bool(torch.allclose(head.float(), proj_weight, atol=1e-6))


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

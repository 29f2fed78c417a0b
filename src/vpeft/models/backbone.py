"""Build a timm ViT by name and load it from a local weights file through timm's own loading path.

timm re-initialises (and loads non-strictly) a head whose class count differs from the
pretrained config's, and keeps the file's head when the counts happen to match. Neither is what a
transfer run wants, so ``create_backbone`` (1) tells timm the file's real head size so that only
the head is dropped, (2) checks that every backbone tensor of the model was present in the file
with the right shape, and (3) always replaces the head with a fresh, seeded one for the task.
"""
from __future__ import annotations

from vpeft.errors import UserError

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vpeft._compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before timm, which imports torchvision
import timm  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

log = logging.getLogger("vpeft.models")

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin")


class WeightsError(UserError):
    """A weights file is missing, unreadable, or does not fit the architecture."""


def _file_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Names and shapes of the tensors in a timm-format file, without loading the data.

    Returns None for formats timm converts itself (the original ViT ``.npz``), where timm's own
    loader is strict about what it reads.
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return None


def _head_classes(shapes: Mapping[str, tuple[int, ...]] | None, head_name: str) -> int | None:
    if shapes is None:
        return None
    shape = shapes.get(f"{head_name}.weight")
    return int(shape[0]) if shape else 0


def create_backbone(name: str, weights: str | Path | None, num_classes: int, *,
                    kwargs: Mapping[str, Any] | None = None, drop_path: float = 0.0,
                    seed: int | None = None) -> VisionTransformer:
    """A timm ViT ``name`` with weights from the local file ``weights`` and a fresh head.

    ``weights=None`` builds a randomly initialised model (pretraining from scratch).
    """
    kwargs = dict(kwargs or {})
    if weights is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                  drop_path_rate=drop_path, **kwargs)
        return _checked_vit(model, name)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"model.weights: file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"model.weights: {path} has suffix '{path.suffix}'; expected one of "
                           f"{WEIGHT_SUFFIXES}")
    try:
        shapes = _file_tensor_shapes(path)
    except Exception as err:  # corrupt header, pickle content refused by weights_only, ...
        raise WeightsError(f"model.weights: cannot read {path}: {err}") from err
    head_name = "head"
    file_classes = _head_classes(shapes, head_name)
    overlay: dict[str, Any] = {"file": str(path), "source": "", "hf_hub_id": None, "url": None}
    if file_classes is not None:
        overlay["num_classes"] = file_classes
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                  num_classes=num_classes, drop_path_rate=drop_path, **kwargs)
    except (RuntimeError, KeyError, ValueError) as err:
        raise WeightsError(f"model.weights: {path} does not fit timm model '{name}' "
                           f"(kwargs {kwargs}): {err}") from err
    model = _checked_vit(model, name)
    if shapes is not None:
        _check_backbone_covered(model, shapes, path, head_name)
    if seed is not None:
        torch.manual_seed(seed)
    # Fresh head for the task, whatever the file held (timm keeps the file's head when the
    # class counts match, which would leak the source task's classifier into transfer).
    model.reset_classifier(num_classes)
    log.info("loaded %s from %s (%d backbone tensors), new head with %d classes",
             name, path, len(model.state_dict()), num_classes)
    return model


def study_backbone(model_cfg: Any, num_classes: int, *, drop_path: float = 0.0,
                   seed: int | None = None) -> VisionTransformer:
    """The model every run of a study starts from, before a method attaches: ``model_cfg``'s
    architecture and weights with a fresh head, or with the study's zero-shot head when
    ``model_cfg.init_head`` names one (the robustness study). Training, WiSE-FT and export all
    build their model here, so the head an adapter file was trained on is always the one it
    is loaded into."""
    model = create_backbone(model_cfg.name, model_cfg.weights, num_classes,
                            kwargs=model_cfg.kwargs, drop_path=drop_path, seed=seed)
    if model_cfg.get("init_head"):
        from vpeft.robustness.zeroshot import install_head

        install_head(model, model_cfg.init_head)
    return model


def _checked_vit(model: nn.Module, name: str) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"model.name: '{name}' builds a {type(model).__name__}; vpeft methods "
                           "attach to timm's VisionTransformer")
    return model


def _check_backbone_covered(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], path: Path,
                            head_name: str) -> None:
    """Every non-head tensor of the model must come from the file (timm loads non-strictly when
    it drops a head, so a wrong file would otherwise load partially and silently)."""
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in model_shapes if not k.startswith(f"{head_name}.") and k not in shapes]
    wrong = [f"{k}: file {shapes[k]} vs model {model_shapes[k]}" for k in model_shapes
             if not k.startswith(f"{head_name}.") and k in shapes and shapes[k] != model_shapes[k]
             and k != "pos_embed"]  # timm resamples position embeddings itself
    if missing or wrong:
        details = "; ".join([f"missing {missing[:8]}" if missing else "",
                             f"shape mismatch {wrong[:8]}" if wrong else ""]).strip("; ")
        raise WeightsError(f"model.weights: {path} does not hold the backbone of this model: {details}")


def normalisation(model: nn.Module, mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input mean/std: the config's, else the backbone's pretrained config (timm)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5))
    std = std if std is not None else cfg.get("std", (0.5, 0.5, 0.5))
    return (torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1),
            torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

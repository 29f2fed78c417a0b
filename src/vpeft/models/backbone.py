"""Build a timm ViT by name and load it from a local weights file in the format users download.

Each file is read without executing code (safetensors, ``torch.load(weights_only=True)``, npz
without pickles), turned into timm's state-dict names, compared tensor by tensor with the model
(the first difference is the error), resampled where timm resamples (position embeddings, patch
kernel) and loaded strictly. Formats, detected from the file's names:

- ``timm``: timm's names, as the HF hub stores timm models (``model.safetensors``) or a
  ``torch.save`` of a state dict (``.pth/.pt/.bin``; also wrapped as ``{'model': sd}`` or
  ``{'state_dict': sd}``);
- ``google-vit-npz``: Google's original ViT release (``ViT-B_16.npz``, flax names), converted with
  the mapping of timm's ``_load_weights``;
- ``open_clip``: an open_clip CLIP checkpoint (``open_clip_pytorch_model.bin``,
  ``open_clip_model.safetensors``); its image tower ``visual.*`` is converted by timm's own
  OpenAI-CLIP converter (``visual.proj`` becomes ``head.weight``), its text tower is not used here.

The file's head is never loaded: transfer wants a fresh, seeded head for the task (timm would keep
the file's head when the class counts happen to match), and a log line says what was replaced.
A representation layer (``pre_logits``, in the original in21k ``ViT-B_16.npz`` and old timm
files) is dropped with a log line, as timm does: timm's ViT has none.
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vpeft._compat import ensure_torchvision_importable
from vpeft.errors import UserError

ensure_torchvision_importable()  # before timm, which imports torchvision
import timm  # noqa: E402
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn  # noqa: E402

log = logging.getLogger("vpeft.models")

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin")
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema")  # training checkpoints nest the weights
NPZ_PREFIXES = ("", "opt/target/", "params/")  # where the original ViT names sit in its .npz files
KEY = "model.weights"


class WeightsError(UserError):
    """A weights file is missing, unreadable, or does not fit the architecture."""


@dataclass
class TimmTensors:
    """A weights file in timm's names: ``backbone`` tensors, the file's head and notes."""

    format: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # timm name -> the file's own name
    notes: list[str] = field(default_factory=list)

    @property
    def head_classes(self) -> int | None:
        weight = self.head.get("head.weight")
        return None if weight is None else int(weight.shape[0])


# --- reading files -------------------------------------------------------------------------------

def read_tensors(path: str | Path, *, key: str = KEY, shapes_only: bool = False
                 ) -> dict[str, torch.Tensor]:
    """The tensors of a weights file under the file's own names, unwrapped from training
    checkpoints and DDP's ``module.`` prefix. ``shapes_only`` gives meta tensors (no data read)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{key}: file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{key}: {path} has suffix '{path.suffix}'; expected one of {WEIGHT_SUFFIXES}")
    try:
        if path.suffix == ".safetensors":
            tensors = _safetensors_tensors(path, shapes_only)
        elif path.suffix == ".npz":
            tensors = _npz_tensors(path, shapes_only)
        else:
            tensors = _torch_tensors(path, shapes_only, key)
    except WeightsError:
        raise
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(err)
        if "Unsupported global" not in detail:  # bytes that are no pickle at all
            raise WeightsError(f"{key}: cannot read {path} as a {path.suffix} weights file (corrupt, "
                               f"or not written by torch.save?): {detail}") from err
        raise WeightsError(f"{key}: {path} is a pickle holding Python objects, not a state dict of "
                           "tensors; vpeft reads .pth/.bin only with torch.load(weights_only=True), "
                           f"which refuses it ({detail}). Save model.state_dict() (or a .safetensors "
                           "file) instead") from err
    except Exception as err:  # truncated zip, bad safetensors header, object arrays in an npz, ...
        raise WeightsError(f"{key}: cannot read {path} as a {path.suffix} weights file (corrupt or "
                           f"truncated?): {type(err).__name__}: {err}") from err
    if not tensors:
        raise WeightsError(f"{key}: {path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _unpickler_detail(err: Exception) -> str:
    """The one informative phrase of torch's long weights_only refusal."""
    found = re.search(r"Unsupported[^\n]*?(?=\.\s|\n|$)", str(err))
    return found.group(0) if found else str(err).strip().splitlines()[0]


def _safetensors_tensors(path: Path, shapes_only: bool) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if shapes_only:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        return {k: f.get_tensor(k) for k in f.keys()}


def _npz_tensors(path: Path, shapes_only: bool) -> dict[str, torch.Tensor]:
    if shapes_only:  # shapes from each member's .npy header, without reading the arrays
        tensors = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    tensors[info.filename[:-4]] = torch.empty(read_header(f)[0], device="meta")
        return tensors
    with np.load(path, allow_pickle=False) as npz:
        return {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}


def _torch_tensors(path: Path, shapes_only: bool, key: str) -> dict[str, torch.Tensor]:
    location = "meta" if shapes_only else "cpu"
    try:
        state = torch.load(path, map_location=location, weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        state = torch.load(path, map_location=location, weights_only=True)  # legacy (non-zip) file
    if isinstance(state, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        state = state[wrapper] if wrapper else state
    if not isinstance(state, dict):
        raise WeightsError(f"{key}: {path} holds a {type(state).__name__}, not a state dict "
                           "(a dict of parameter name -> tensor)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# --- converting to timm's names ------------------------------------------------------------------

def to_timm(tensors: Mapping[str, torch.Tensor], path: str | Path, *, key: str = KEY) -> TimmTensors:
    """Detect the file's format from its names and convert it to timm's ViT names."""
    if any(k.endswith("embedding/kernel") for k in tensors):
        converted = _npz_to_timm(tensors, path, key)
    elif "visual.class_embedding" in tensors:
        converted = _open_clip_to_timm(tensors)
    elif "patch_embed.proj.weight" in tensors or "cls_token" in tensors:
        converted = TimmTensors("timm", dict(tensors))
    else:
        raise WeightsError(f"{key}: {path} is neither a timm ViT state dict ('patch_embed.proj.weight', "
                           "'cls_token', ...), Google's ViT .npz ('embedding/kernel', ...) nor an "
                           f"open_clip checkpoint ('visual.class_embedding', ...); its first names: "
                           f"{sorted(tensors)[:5]}")
    _split_head_and_pre_logits(converted)
    return converted


def _split_head_and_pre_logits(converted: TimmTensors) -> None:
    for name in [k for k in converted.backbone if k.startswith("head.")]:
        converted.head[name] = converted.backbone.pop(name)
    dropped = {k: converted.backbone.pop(k) for k in list(converted.backbone)
               if k.startswith("pre_logits.")}
    if dropped:
        weight = dropped.get("pre_logits.fc.weight")
        size = "" if weight is None else f" {weight.shape[1]}->{weight.shape[0]}"
        converted.notes.append(f"the file's representation layer pre_logits (Linear{size} + tanh "
                               "before the head) is dropped, as timm does: timm's ViT has none, its "
                               "features are the final-norm class token")


def _npz_to_timm(raw: Mapping[str, torch.Tensor], path: str | Path, key: str) -> TimmTensors:
    """Google's original ViT layout, converted as timm's ``_load_weights`` does (flax kernels are
    [in, out]; attention kernels [D, heads, head_dim] and [heads, head_dim, D])."""
    prefix = next((p for p in NPZ_PREFIXES if f"{p}embedding/kernel" in raw), None)
    if prefix is None or f"{prefix}Transformer/encoderblock_0/LayerNorm_0/scale" not in raw:
        raise WeightsError(f"{key}: {path} is not in the layout of Google's original ViT release "
                           "('embedding/kernel', 'Transformer/encoderblock_0/...'); big_vision/SigLIP "
                           "layouts are not read by vpeft (convert with timm and save "
                           f"model.state_dict() as .safetensors). First names: {sorted(raw)[:5]}")
    out = TimmTensors("google-vit-npz", {})
    used: set[str] = set()

    def put(name: str, sources: Sequence[str], convert: Callable[..., torch.Tensor]) -> None:
        names = [prefix + s for s in sources]
        out.sources[name] = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
        if all(n in raw for n in names):
            out.backbone[name] = convert(*(raw[n] for n in names))
            used.update(names)

    same = lambda w: w  # noqa: E731
    dense = lambda w: w.T  # noqa: E731  flax Dense kernel [in, out] -> torch Linear [out, in]
    put("cls_token", ["cls"], same)
    put("pos_embed", ["Transformer/posembed_input/pos_embedding"], same)
    put("patch_embed.proj.weight", ["embedding/kernel"], lambda w: w.permute(3, 2, 0, 1))  # HWIO->OIHW
    put("patch_embed.proj.bias", ["embedding/bias"], same)
    i = 0
    while f"{prefix}Transformer/encoderblock_{i}/LayerNorm_0/scale" in raw:
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = src + "MultiHeadDotProductAttention_1/"
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            put(f"{dst}{norm}.weight", [f"{src}{ln}/scale"], same)
            put(f"{dst}{norm}.bias", [f"{src}{ln}/bias"], same)
        qkv = ("query", "key", "value")
        put(f"{dst}attn.qkv.weight", [f"{mha}{n}/kernel" for n in qkv],
            lambda *ws: torch.cat([w.flatten(1).T for w in ws]))
        put(f"{dst}attn.qkv.bias", [f"{mha}{n}/bias" for n in qkv],
            lambda *bs: torch.cat([b.reshape(-1) for b in bs]))
        put(f"{dst}attn.proj.weight", [f"{mha}out/kernel"], lambda w: w.permute(2, 0, 1).flatten(1))
        put(f"{dst}attn.proj.bias", [f"{mha}out/bias"], same)
        for r in range(2):
            put(f"{dst}mlp.fc{r + 1}.weight", [f"{src}MlpBlock_3/Dense_{r}/kernel"], dense)
            put(f"{dst}mlp.fc{r + 1}.bias", [f"{src}MlpBlock_3/Dense_{r}/bias"], same)
        i += 1
    put("norm.weight", ["Transformer/encoder_norm/scale"], same)
    put("norm.bias", ["Transformer/encoder_norm/bias"], same)
    put("head.weight", ["head/kernel"], dense)
    put("head.bias", ["head/bias"], same)
    put("pre_logits.fc.weight", ["pre_logits/kernel"], dense)
    put("pre_logits.fc.bias", ["pre_logits/bias"], same)
    for name in sorted(n for n in raw if n.startswith(prefix) and n not in used):
        out.backbone[name] = raw[name]  # not part of the layout: reported as unexpected
        out.sources[name] = name
    return out


def _open_clip_to_timm(raw: Mapping[str, torch.Tensor]) -> TimmTensors:
    """The image tower of an OpenAI/open_clip CLIP checkpoint, through timm's own converter
    (one name at a time, so that errors can quote the file's name)."""
    from timm.models.vision_transformer import _convert_openai_clip

    out = TimmTensors("open_clip", {})
    for name, tensor in raw.items():
        if name.startswith("visual."):
            for timm_name, value in _convert_openai_clip({name: tensor}, None).items():
                out.backbone[timm_name] = value
                out.sources[timm_name] = name
    text = sum(1 for n in raw if not n.startswith("visual."))
    out.notes.append(f"the CLIP text tower and logit scale ({text} tensors) are not part of the "
                     "image tower (the zero-shot head reads them: study.robustness.clip)")
    return out


# --- comparing with the model --------------------------------------------------------------------

def shape_problems(model_shapes: Mapping[str, tuple[int, ...]], file_shapes: Mapping[str, tuple[int, ...]],
                   *, sources: Mapping[str, str] | None = None,
                   resizable: Callable[[str, tuple[int, ...], tuple[int, ...]], bool] = lambda *a: False
                   ) -> list[str]:
    """What keeps a file from loading strictly, in the model's tensor order, then the file's
    surplus: missing tensors, shape differences (file vs model) unless ``resizable``, extra tensors."""
    sources = sources or {}

    def named(k: str) -> str:
        return f"'{k}'" if sources.get(k, k) == k else f"'{k}' (file: '{sources[k]}')"

    problems = []
    for name, shape in model_shapes.items():
        if name not in file_shapes:
            problems.append(f"tensor {named(name)} of shape {shape} is missing from the file")
        elif file_shapes[name] != shape and not resizable(name, file_shapes[name], shape):
            problems.append(f"tensor {named(name)} has shape {file_shapes[name]} in the file but "
                            f"{shape} in the model")
    problems += [f"the file holds tensor {named(n)} of shape {s}, which the model does not have"
                 for n, s in file_shapes.items() if n not in model_shapes]
    return problems


def _vit_resizable(name: str, file: tuple[int, ...], model: tuple[int, ...]) -> bool:
    """Differences timm's loader resamples: the position-embedding grid (token count) and the
    patch kernel's spatial size; width and channels must agree."""
    if name == "pos_embed":
        return len(file) == len(model) == 3 and file[0] == model[0] and file[2] == model[2]
    if name == "patch_embed.proj.weight":
        return len(file) == len(model) == 4 and file[:2] == model[:2]
    return False


def _check_fits(model: nn.Module, converted: TimmTensors, path: Path, name: str,
                kwargs: Mapping[str, Any], key: str) -> list[str]:
    """Raise one WeightsError for the first difference; return notes about resampling."""
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.")}
    file_shapes = {k: tuple(v.shape) for k, v in converted.backbone.items()}
    problems = shape_problems(model_shapes, file_shapes, sources=converted.sources,
                              resizable=_vit_resizable)
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise WeightsError(f"{key}: {path} ({converted.format} format) does not fit timm model "
                           f"'{name}' (kwargs {dict(kwargs)}): {problems[0]}{more}; a file for "
                           "another architecture or size?")
    return [f"{k} resampled from {file_shapes[k]} to {s}" for k, s in model_shapes.items()
            if file_shapes[k] != s]


def check_weights(name: str, weights: str | Path | None, kwargs: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Validate a weights file against the architecture without loading its data: the model is
    built on the meta device and only shapes are read. For ``vpeft check``.

    Returns ``{file, format, tensors, file_classes, notes}`` or raises WeightsError."""
    kwargs = dict(kwargs or {})
    if weights is None:
        return {"file": None, "format": None, "tensors": 0, "file_classes": None,
                "notes": ["no weights file: the backbone starts from random initialisation"]}
    path = Path(weights)
    converted = to_timm(read_tensors(path, shapes_only=True), path)
    with torch.device("meta"):
        model = _checked_vit(_create(name, kwargs), name)
    notes = converted.notes + _check_fits(model, converted, path, name, kwargs, KEY)
    return {"file": str(path), "format": converted.format, "tensors": len(converted.backbone),
            "file_classes": converted.head_classes, "notes": notes}


# --- building ------------------------------------------------------------------------------------

def _create(name: str, kwargs: Mapping[str, Any], **extra: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **extra, **kwargs)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise WeightsError(f"model.name: cannot build timm model '{name}' with kwargs "
                           f"{dict(kwargs)}: {err}") from err


def create_backbone(name: str, weights: str | Path | None, num_classes: int, *,
                    kwargs: Mapping[str, Any] | None = None, drop_path: float = 0.0,
                    seed: int | None = None) -> VisionTransformer:
    """A timm ViT ``name`` with weights from the local file ``weights`` and a fresh head.

    ``weights=None`` builds a randomly initialised model (pretraining from scratch).
    """
    kwargs = dict(kwargs or {})
    model = _checked_vit(_create(name, kwargs, num_classes=num_classes, drop_path_rate=drop_path), name)
    if weights is None:
        return model
    path = Path(weights)
    converted = to_timm(read_tensors(path), path)
    notes = converted.notes + _check_fits(model, converted, path, name, kwargs, KEY)
    try:  # timm's filter resamples the position embeddings / patch kernel where they differ
        state = checkpoint_filter_fn(converted.backbone, model)
    except (RuntimeError, ValueError) as err:
        raise WeightsError(f"{KEY}: {path}: timm cannot resample it to '{name}': {err}") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):  # _check_fits rules this out
        raise WeightsError(f"{KEY}: {path}: unexpected {unexpected[:4]}, missing {missing[:4]}")
    if seed is not None:
        torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    for note in notes:
        log.info("%s: %s", path, note)
    file_classes = converted.head_classes
    if file_classes is None:
        log.info("%s: the file has no head; a fresh %d-class head is made for the task", path, num_classes)
    else:
        log.info("%s: the file's %d-class head is replaced by a fresh %d-class head for the task%s",
                 path, file_classes, num_classes,
                 "" if file_classes != num_classes else " (same count, but a transfer run starts "
                 "from a fresh head)")
    log.info("loaded %s from %s (%s format, %d backbone tensors)", name, path, converted.format,
             len(converted.backbone))
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
        from vpeft.models.zeroshot_head import install_head

        install_head(model, model_cfg.init_head)
    return model


def _checked_vit(model: nn.Module, name: str) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"model.name: '{name}' builds a {type(model).__name__}; vpeft methods "
                           "attach to timm's VisionTransformer")
    return model


def normalisation(model: nn.Module, mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input mean/std: the config's, else the backbone's pretrained config (timm)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5))
    std = std if std is not None else cfg.get("std", (0.5, 0.5, 0.5))
    return (torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1),
            torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

"""Pretrain the demo's tiny ViT on the synthetic source set and save it as a timm-format
safetensors file, which every run then loads exactly like a downloaded ViT-B/16."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import save_file

from vpeft import layout
from vpeft.data.shards import read_manifest, read_split
from vpeft.io import atomic_path, write_json
from vpeft.methods import apply
from vpeft.models.backbone import create_backbone, normalisation
from vpeft.train.loop import Normaliser, predict, resolve_device, top1, train
from vpeft.train.protocol import Protocol

log = logging.getLogger("vpeft.pretrain")


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` from scratch on the prepared source set; write ``cfg.model.weights``."""
    settings_cfg = cfg.study.pretrain
    if settings_cfg is None:
        raise ValueError(f"study '{cfg.study.name}' has no study.pretrain section: its backbone "
                         "comes from a weights file (model.weights)")
    started = time.perf_counter()
    prepared = layout.prepared_task(cfg, layout.SOURCE_TASK)
    manifest = read_manifest(prepared)
    # One backbone per study, pretrained once with the first of train.seeds: every seed's runs
    # fine-tune the same weights, as every seed of a real study starts from one downloaded ViT.
    seed = layout.seeds(cfg)[0]
    torch.manual_seed(seed)
    model = create_backbone(cfg.model.name, None, int(manifest["num_classes"]),
                            kwargs=cfg.model.kwargs, drop_path=0.0)
    apply(model, "full")
    model.to(resolve_device(cfg.train.get("device", "auto")))
    mean, std = normalisation(model, cfg.model.mean, cfg.model.std)
    normaliser = Normaliser(mean, std, int(cfg.model.img_size))
    # params/train/vtab.yaml with study.pretrain's values, whatever the study's train group and
    # overrides say: the backbone stands in for downloaded weights, so changing how the methods
    # are fine-tuned (train=vtab_as_published, train.label_smoothing=...) must not change it.
    settings = Protocol.vtab().settings(
        epochs=int(settings_cfg.epochs), lr=float(settings_cfg.lr),
        weight_decay=float(settings_cfg.weight_decay), batch_size=int(settings_cfg.batch_size),
        warmup_epochs=max(1, int(settings_cfg.epochs) // 10),
        log_every_s=float(cfg.train.log_every_s))
    data = read_split(prepared, "train800")
    result = train(model, normaliser, torch.from_numpy(data.images), torch.from_numpy(data.labels),
                   settings, seed=seed, desc="pretrain/source")
    if result.status != "ok":
        raise RuntimeError("pretraining diverged; lower study.pretrain.lr")
    val = read_split(prepared, "val200")
    val_top1 = top1(predict(model, normaliser, torch.from_numpy(val.images)), val.labels)
    out = Path(cfg.model.weights)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": cfg.model.name})
    info = {"architecture": cfg.model.name, "kwargs": dict(cfg.model.kwargs),
            "source_classes": int(manifest["num_classes"]), "source_val_top1": val_top1,
            "epochs": settings.epochs, "loss_curve": result.loss_curve, "seed": seed,
            "wall_time_s": time.perf_counter() - started}
    write_json(layout.weights_info(out), info)
    log.info("pretrained %s on the source set: val top-1 %.1f%% in %.0fs -> %s",
             cfg.model.name, val_top1, info["wall_time_s"], out)
    return info

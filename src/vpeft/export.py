"""Export a trained run as a plain timm checkpoint with the method folded into the weights.

Mergeable methods (those registered with a ``merge`` function) give a file that loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": ...}, num_classes=C)``
and needs no vpeft at inference time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vpeft import layout
from vpeft.config import StudyPlan
from vpeft.errors import UserError
from vpeft.io import atomic_path, read_json, write_json

log = logging.getLogger("vpeft.export")


def export_merged(plan: StudyPlan, task: str, method: str, out: Path | None = None) -> Path:
    """Fold the final run's adapter of ``task``/``method`` into its backbone; returns the file."""
    from safetensors.torch import save_file

    from vpeft.data.vtab import read_manifest
    from vpeft.methods import load_adapter, spec
    from vpeft.models.backbone import create_backbone

    merge = spec(method).merge
    if merge is None:
        raise UserError(f"method '{method}' adds modules that cannot be folded into the backbone; "
                        "use its adapter file (final/adapter.safetensors) with vpeft instead")
    cfg = plan.cfg
    final = layout.final_dir(cfg, task, method)
    metrics = read_json(final / layout.METRICS)
    if metrics["status"] != "ok":
        raise UserError(f"{final / layout.METRICS}: the final run is '{metrics['status']}'; "
                        "nothing to export")
    num_classes = int(read_manifest(layout.prepared_task(cfg, task))["num_classes"])
    model = create_backbone(cfg.model.name, cfg.model.weights, num_classes, kwargs=cfg.model.kwargs)
    load_adapter(model, final / layout.ADAPTER)
    model.eval()
    merge(model)
    out = out or final / "merged.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": cfg.model.name})
    info: dict[str, Any] = {"architecture": cfg.model.name, "kwargs": dict(cfg.model.kwargs),
                            "num_classes": num_classes, "method": method,
                            "point": metrics["point"], "merged_from": str(final / layout.ADAPTER)}
    write_json(out.with_suffix(".json"), info)
    log.info("exported %s/%s as a plain timm checkpoint: %s", task, method, out)
    return out

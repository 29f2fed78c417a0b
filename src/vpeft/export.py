"""Export a trained run as a plain timm checkpoint with the method folded into the weights.

Mergeable methods (those registered with a ``merge`` function) give a file that loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": ...}, num_classes=C)``
and needs no vpeft at inference time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from vpeft import layout
from vpeft.config import StudyPlan
from vpeft.errors import UserError
from vpeft.io import atomic_path, write_json
from vpeft.runs import MethodRuns, RunMetrics

log = logging.getLogger("vpeft.export")


def export_peft_adapter(model: "torch.nn.Module", out_dir: Path) -> Path:
    """Write a model carrying vpeft's ``lora`` as a Hugging Face peft LoRA adapter directory.

    The result (``adapter_config.json`` + ``adapter_model.safetensors``, written by peft itself)
    loads with ``PeftModel.from_pretrained(timm_model, out_dir)`` onto the same pretrained
    backbone. The head travels as a peft ``modules_to_save`` module.
    """
    import copy

    import torch

    from vpeft.methods.checkpoint import method_of
    from vpeft.methods.hf_peft import import_peft
    from vpeft.methods.lora import LoRALinear

    name, hparams = method_of(model)
    if name != "lora":
        raise UserError(f"peft export needs a model with vpeft's 'lora' method; this one has '{name}'")
    peft = import_peft()
    base = copy.deepcopy(model)
    factors = {}
    for parent_name, parent in list(base.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                path = f"{parent_name}.{child_name}" if parent_name else child_name
                factors[path] = (child.lora_a.detach(), child.lora_b.detach(), child.scale)
                setattr(parent, child_name, child.base)  # unwrapped, not merged
    scales = {scale for _, _, scale in factors.values()}
    rank = int(hparams["rank"])
    if len(scales) != 1:
        raise UserError(f"LoRA layers have different scales {sorted(scales)}")
    config = peft.LoraConfig(r=rank, lora_alpha=scales.pop() * rank, lora_dropout=hparams["dropout"],
                             target_modules=sorted({p.rsplit(".", 1)[-1] for p in factors}),
                             modules_to_save=["head"])
    wrapped = peft.get_peft_model(base, config)
    inner = wrapped.base_model.model
    with torch.no_grad():
        for path, (lora_a, lora_b, _) in factors.items():
            layer = inner.get_submodule(path)
            layer.lora_A["default"].weight.copy_(lora_a)
            layer.lora_B["default"].weight.copy_(lora_b)
        head = inner.get_submodule("head").modules_to_save["default"]
        head.load_state_dict(model.get_classifier().state_dict())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    return out_dir


def final_model(plan: StudyPlan, task: str, method: str) -> tuple["torch.nn.Module", RunMetrics]:
    """The final run of ``task``/``method``: its backbone with the saved adapter, and its metrics."""
    from vpeft.data.shards import read_manifest
    from vpeft.methods import load_adapter
    from vpeft.models.backbone import study_backbone

    cfg = plan.cfg
    run = MethodRuns.of(cfg, task, method).final()
    final = run.path
    metrics = run.read_metrics()
    if metrics.status != "ok":
        raise UserError(f"{run.metrics_file}: the final run is '{metrics.status}'; "
                        "nothing to export")
    num_classes = int(read_manifest(layout.prepared_task(cfg, task))["num_classes"])
    model = study_backbone(cfg.model, num_classes)
    load_adapter(model, final / layout.ADAPTER)
    return model.eval(), metrics


def export_merged(plan: StudyPlan, task: str, method: str, out: Path | None = None) -> Path:
    """Fold the final run's adapter of ``task``/``method`` into its backbone; returns the file."""
    from safetensors.torch import save_file

    from vpeft.methods import spec

    merge = spec(method).merge
    if merge is None:
        raise UserError(f"method '{method}' adds modules that cannot be folded into the backbone; "
                        "use its adapter file (final/adapter.safetensors) with vpeft instead")
    cfg = plan.cfg
    final = layout.final_dir(cfg, task, method)
    model, metrics = final_model(plan, task, method)
    num_classes = model.num_classes
    merge(model)
    out = out or final / "merged.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": cfg.model.name})
    info: dict[str, Any] = {"architecture": cfg.model.name, "kwargs": dict(cfg.model.kwargs),
                            "num_classes": num_classes, "method": method,
                            "point": metrics.point, "merged_from": str(final / layout.ADAPTER)}
    if cfg.model.get("init_head"):
        # Trained from the zero-shot head (robustness study): a timm backbone plus that head, which
        # is not a linear layer; vpeft.models.zeroshot_head.install_head rebuilds it.
        info["head"] = "zero-shot: head.proj -> L2 norm -> head.classifier"
    write_json(layout.weights_info(out), info)
    log.info("exported %s/%s with the method folded in: %s", task, method, out)
    return out


EXPORT_FORMATS = ("merged", "peft")


def export(plan: StudyPlan, task: str, method: str, kind: str = "merged",
           out: Path | None = None) -> Path:
    """``vpeft export``: the final run of ``task``/``method`` as a plain timm checkpoint
    (``kind="merged"``: :func:`export_merged`) or as a Hugging Face peft adapter directory
    (``"peft"``: :func:`export_peft_adapter`, by default ``final/peft_adapter``); returns what it
    wrote."""
    if kind == "peft":
        model, _ = final_model(plan, task, method)
        out = out or layout.final_dir(plan.cfg, task, method) / "peft_adapter"
        return export_peft_adapter(model, out)
    if kind != "merged":
        raise UserError(f"export format {kind!r}: expected one of {EXPORT_FORMATS}")
    return export_merged(plan, task, method, out)

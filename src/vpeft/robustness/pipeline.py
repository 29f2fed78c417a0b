"""The robustness study's steps (each one CLI verb and one Snakemake rule, see rules/robustness.smk;
``vpeft.cli``'s verb table calls each one here).

imagenet-split   few-shot train / held-out val / ID test as a VTAB-layout task (saved list files)
prepare-shift    one shift set (V2, Sketch, A, R, ...) into a prepared test-only set
zeroshot-head    the zero-shot head from the CLIP text tower, once per study (model.init_head)
wise             WiSE-FT curve of one method's final run on the ID test set and every shift
robust-synth     the offline miniature's image trees; fit-clip: its tiny CLIP (both in
                 vpeft.demo.robustness, the demo's generators)
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from vpeft import layout
from vpeft.config import StudyPlan
from vpeft.errors import UserError
from vpeft.io import write_json, write_parquet
from vpeft.robustness.inputs import SECTION, label_space, read_set, settings, write_split_view
from vpeft.robustness.tables import WISE_RUN_SCHEMA
from vpeft.runs import MethodRuns

log = logging.getLogger("vpeft.robustness")



def required(cfg: DictConfig, key: str) -> str:
    """The value of ``key`` as a string, or a ConfigError saying how to set it."""
    from omegaconf import OmegaConf

    from vpeft.config import ConfigError

    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as err:  # MissingMandatoryValue, or an unresolvable ${oc.env:...}
        raise ConfigError(f"config key '{key}' has no value; set it, e.g. "
                          f"--config 'overrides=[\"{key}=/path\"]' ({err})") from err
    if value is None:
        raise ConfigError(f"config key '{key}' is required")
    return str(value)


def shift_dir(cfg: DictConfig, name: str) -> Path:
    return layout.prepared_task(cfg, "shifts") / name


def imagenet_split(cfg: DictConfig, task: str) -> Path:
    """Draw the seeded few-shot split and write the task view (list files = the saved split)."""
    return write_split_view(cfg, layout.data_root_dir(cfg, task))


def prepare_shift(cfg: DictConfig, name: str) -> dict[str, Any]:
    from vpeft.robustness.shifts import prepare_eval_set

    shifts = settings(cfg).shifts
    if name not in shifts:
        raise UserError(f"study.robustness.shifts has no {name!r}; known: {list(shifts)}")
    space = label_space(cfg)
    return prepare_eval_set(read_set(name, shifts[name], space, f"{SECTION}.shifts.{name}"),
                            shift_dir(cfg, name),
                            image_size=int(cfg.model.img_size), num_classes=len(space))


def zeroshot_head(cfg: DictConfig) -> dict[str, Any]:
    from vpeft.robustness import zeroshot

    clip = settings(cfg).clip
    templates = None
    if settings(cfg).get("templates") == "miniature":
        templates = zeroshot.MINIATURE_TEMPLATES
    return zeroshot.write_zeroshot_head(str(clip.model), clip.get("weights"),
                                        list(label_space(cfg).names), cfg.model.init_head,
                                        backbone_weights=cfg.model.weights, templates=templates)


def zero_shot_model(cfg: DictConfig, num_classes: int):
    """The CLIP image tower with the zero-shot head (the α = 0 end of every WiSE curve)."""
    from vpeft.models.backbone import study_backbone

    return study_backbone(cfg.model, num_classes)


def _eval_sets(cfg: DictConfig, task: str) -> dict[str, tuple[Path, list[int] | None]]:
    from vpeft.robustness.shifts import class_subset

    sets = {layout.WISE_ID_SET: (layout.prepared_task(cfg, task), None)}
    for name in settings(cfg).shifts:
        sets[str(name)] = (shift_dir(cfg, name), class_subset(shift_dir(cfg, name)))
    return sets


def run_wise(plan: StudyPlan, task: str, method: str, seed: int | None = None) -> dict[str, Any]:
    """Top-1 of the WiSE-FT models α ∈ study.robustness.alphas on the ID test set and every
    shift, from one seed's final run (default: the first seed's)."""
    import torch

    from vpeft.data.shards import read_manifest, read_split, read_test_labels
    from vpeft.methods import load_adapter
    from vpeft.protocol import check_seed
    from vpeft.robustness.shifts import top1
    from vpeft.robustness.wise import prepare_wise
    from vpeft.train.loop import predict, resolve_device
    from vpeft.train.protocol import Protocol

    cfg = plan.cfg
    started = time.perf_counter()
    seed = check_seed(cfg, seed)
    run = MethodRuns.of(cfg, task, method).final(seed)
    final = run.path
    status = run.read_metrics().status
    alphas = [float(a) for a in settings(cfg).alphas]
    num_classes = int(read_manifest(layout.prepared_task(cfg, task))["num_classes"])
    rows: list[dict[str, Any]] = []
    sets = _eval_sets(cfg, task)
    if status == "ok":
        model = zero_shot_model(cfg, num_classes)
        wise = prepare_wise(model, lambda m: load_adapter(m, final / layout.ADAPTER))
        device = resolve_device(cfg.train.get("device", "auto"))
        model.to(device).eval()
        normaliser = Protocol.from_config(cfg).normaliser(model)  # the final run's inputs
        batch = int(cfg.train.eval_batch_size)
        for name, (path, subset) in sets.items():
            images = torch.from_numpy(read_split(path, "test").images)
            labels = read_test_labels(path)[1]
            for alpha in alphas:
                with torch.no_grad():
                    logits = predict(wise.set_alpha(alpha), normaliser, images, batch)
                rows.append({"alpha": alpha, "eval_set": name, "top1": top1(logits, labels, subset),
                             "num_images": len(labels), "num_classes_scored":
                             len(subset) if subset else num_classes})
    table = pa.Table.from_pylist(rows, schema=WISE_RUN_SCHEMA)
    out = layout.wise_dir(cfg, task, method, seed)
    write_parquet(out / layout.WISE_TABLE, table)
    summary = {"task": task, "method": method, "seed": seed, "status": status, "alphas": alphas,
               "eval_sets": list(sets), "id_set": layout.WISE_ID_SET,
               "wall_time_s": time.perf_counter() - started}
    write_json(out / layout.WISE_SUMMARY, summary)
    log.info("%s/%s: WiSE-FT over %d alphas x %d sets", task, method, len(alphas), len(sets))
    return summary

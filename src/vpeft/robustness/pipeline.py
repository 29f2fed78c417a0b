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
from omegaconf import DictConfig

from vpeft import layout
from vpeft.config import StudyPlan
from vpeft.errors import UserError
from vpeft.io import write_json, write_parquet
from vpeft.robustness.imagenet import (LabelSpace, few_shot_split, imagenet_label_space,
                                       read_eval_set, write_task_view)
from vpeft.robustness.tables import WISE_RUN_SCHEMA

log = logging.getLogger("vpeft.robustness")



def settings(cfg: DictConfig) -> DictConfig:
    section = cfg.study.get("robustness")
    if section is None:
        raise UserError(f"study '{cfg.study.name}' has no study.robustness section")
    return section


def label_space(cfg: DictConfig) -> LabelSpace:
    space = settings(cfg).label_space
    if space == "imagenet":
        return imagenet_label_space()
    if space == "synthetic_source":
        from vpeft.data.catalog import DEMO_SOURCE

        return LabelSpace(tuple(DEMO_SOURCE.class_names),
                          tuple(n.replace("-", " ") for n in DEMO_SOURCE.class_names))
    raise UserError(f"study.robustness.label_space: {space!r}; expected 'imagenet' or "
                    "'synthetic_source'")


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


def _read(name: str, spec: DictConfig, space: LabelSpace):
    return read_eval_set(name, spec.root, spec.format, space, list_file=spec.get("list_file"),
                         expected_subset=spec.get("expected_subset"), devkit=spec.get("devkit"),
                         solution_csv=spec.get("solution_csv"))


def input_checks(cfg: DictConfig):
    """``vpeft check`` for the robustness study: (name, check) per input set, where
    ``check(decode)`` reads the set (and decodes its images) and returns (split counts, classes)."""
    from vpeft.data.decode import undecodable
    from vpeft.data.errors import raise_collected

    r = settings(cfg)

    def reader(name: str, spec: DictConfig, few_shot: bool):
        def check(decode: bool) -> tuple[dict[str, int], int]:
            space = label_space(cfg)
            found = _read(name, spec, space)
            files = found.files
            if few_shot:
                train, val = few_shot_split(files, int(r.shots), int(r.val_shots),
                                            int(r.split_seed), len(space))
                files, counts = train + val, {"train800": len(train), "val200": len(val),
                                              "train800val200": len(train) + len(val)}
            else:
                counts = {"test": len(files)}
            if decode:
                raise_collected(undecodable((name, found.root / f.path) for f in files))
            return counts, len(found.subset) if found.subset is not None else len(space)
        return check

    yield "imagenet (few-shot train/val)", reader("train", r.train, True)
    yield str(r.test.name), reader(str(r.test.name), r.test, False)
    for name, spec in r.shifts.items():
        yield str(name), reader(str(name), spec, False)


def imagenet_split(cfg: DictConfig, task: str) -> Path:
    """Draw the seeded few-shot split and write the task view (list files = the saved split)."""
    r = settings(cfg)
    space = label_space(cfg)
    train_set = _read("train", r.train, space)
    train, val = few_shot_split(train_set.files, int(r.shots), int(r.val_shots),
                                int(r.split_seed), len(space))
    test = _read(str(r.test.name), r.test, space)
    info = {"shots": int(r.shots), "val_shots": int(r.val_shots), "seed": int(r.split_seed),
            "train_root": str(r.train.root), "test_root": str(r.test.root)}
    return write_task_view(layout.data_root_dir(cfg, task), train_set.root, train, val, test, info)


def prepare_shift(cfg: DictConfig, name: str) -> dict[str, Any]:
    from vpeft.robustness.shifts import prepare_eval_set

    shifts = settings(cfg).shifts
    if name not in shifts:
        raise UserError(f"study.robustness.shifts has no {name!r}; known: {list(shifts)}")
    space = label_space(cfg)
    return prepare_eval_set(_read(name, shifts[name], space), shift_dir(cfg, name),
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
    from vpeft.io import read_json
    from vpeft.methods import load_adapter
    from vpeft.protocol import check_seed
    from vpeft.robustness.shifts import top1
    from vpeft.robustness.wise import prepare_wise
    from vpeft.train.loop import predict, resolve_device
    from vpeft.train.published import input_normaliser

    cfg = plan.cfg
    started = time.perf_counter()
    seed = check_seed(cfg, seed)
    final = layout.final_dir(cfg, task, method, seed)
    status = read_json(final / layout.METRICS)["status"]
    alphas = [float(a) for a in settings(cfg).alphas]
    num_classes = int(read_manifest(layout.prepared_task(cfg, task))["num_classes"])
    rows: list[dict[str, Any]] = []
    sets = _eval_sets(cfg, task)
    if status == "ok":
        model = zero_shot_model(cfg, num_classes)
        wise = prepare_wise(model, lambda m: load_adapter(m, final / layout.ADAPTER))
        device = resolve_device(cfg.train.get("device", "auto"))
        model.to(device).eval()
        normaliser = input_normaliser(cfg, model)  # the inputs the final run trained on
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

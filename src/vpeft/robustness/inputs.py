"""The robustness study's inputs as its config names them: the study.robustness section, its
label space, and each input set (ImageNet train, the in-distribution test, every shift) read
through its data format. Below the steps (robustness.pipeline) so that the study kind's preflight
(``vpeft check``) reads the sets exactly as the steps do."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vpeft.data.formats import parse_source
from vpeft.errors import UserError
from vpeft.robustness.imagenet import (EvalSet, LabelSpace, few_shot_split, imagenet_label_space,
                                       read_eval_set, write_task_view)

SECTION = "study.robustness"


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


EVAL_SET_KEYS = ("name", "expected_subset")  # an evaluation set's own keys beside its format's


def read_set(name: str, spec: DictConfig, space: LabelSpace, where: str) -> EvalSet:
    """The evaluation set of config block ``spec`` (at config key ``where``)."""
    block = OmegaConf.to_container(spec, resolve=True)
    source = parse_source(block, where=where, base=Path(), extra_keys=EVAL_SET_KEYS)
    return read_eval_set(name, source, space, expected_subset=block.get("expected_subset"))


def write_split_view(cfg: DictConfig, out_dir: Path) -> Path:
    """Draw the seeded few-shot split and write it as a VTAB-layout task view at ``out_dir``
    (``imagenet-split``; `vpeft check` writes it into a scratch folder and checks it as
    ``prepare`` will read it)."""
    r = settings(cfg)
    space = label_space(cfg)
    train_set = read_set("train", r.train, space, f"{SECTION}.train")
    train, val = few_shot_split(train_set.files, int(r.shots), int(r.val_shots),
                                int(r.split_seed), len(space))
    test = read_set(str(r.test.name), r.test, space, f"{SECTION}.test")
    info = {"shots": int(r.shots), "val_shots": int(r.val_shots), "seed": int(r.split_seed),
            "train_root": str(r.train.root), "test_root": str(r.test.root)}
    return write_task_view(out_dir, train_set.root, train, val, test, info)


def shift_checks(cfg: DictConfig):
    """``vpeft check`` for the shift sets: (name, check) per set, where ``check(decode)`` reads
    the set as ``prepare-shift`` does (and decodes its images, worded as it words failures) and
    returns (its count, its classes)."""
    from vpeft.data.errors import raise_collected
    from vpeft.robustness.shifts import eval_set_problems

    r = settings(cfg)

    def reader(name: str, spec: DictConfig, where: str):
        def check(decode: bool) -> tuple[dict[str, int], int]:
            space = label_space(cfg)
            found = read_set(name, spec, space, where)
            if decode:
                raise_collected(eval_set_problems(found))
            return {"test": len(found.files)}, len(found.subset or space)
        return check

    for name, spec in r.shifts.items():
        yield str(name), reader(str(name), spec, f"{SECTION}.shifts.{name}")

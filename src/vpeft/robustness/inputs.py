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
                                       read_eval_set)

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


def input_checks(cfg: DictConfig):
    """``vpeft check`` for the robustness study: (name, check) per input set, where
    ``check(decode)`` reads the set (and decodes its images) and returns (split counts, classes)."""
    from vpeft.data.decode import undecodable
    from vpeft.data.errors import raise_collected

    r = settings(cfg)

    def reader(name: str, spec: DictConfig, where: str, few_shot: bool):
        def check(decode: bool) -> tuple[dict[str, int], int]:
            space = label_space(cfg)
            found = read_set(name, spec, space, where)
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

    yield "imagenet (few-shot train/val)", reader("train", r.train, f"{SECTION}.train", True)
    yield str(r.test.name), reader(str(r.test.name), r.test, f"{SECTION}.test", False)
    for name, spec in r.shifts.items():
        yield str(name), reader(str(name), spec, f"{SECTION}.shifts.{name}", False)

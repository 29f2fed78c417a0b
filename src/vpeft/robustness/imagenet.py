"""The ImageNet family as users hold it: label space, few-shot splits, and the shift test sets.

The standard 1000-class index is the sorted order of the 1000 wnids (shipped here as
``data/imagenet_synsets.txt``, a copy of timm's). Each set is read by its dataset format
(:mod:`vpeft.data.formats`, design.md §3): ``wnid_folders`` (ImageNet train/val,
ImageNet-Sketch; ImageNet-A and -R, whose 200-class subset is read from the folders and checked
against the shipped 200-wnid list, ``expected_subset``), ``index_folders`` (ImageNet-V2),
``list``, or ``val_flat`` (the official validation archive with the devkit or Kaggle's csv).

The few-shot split draws, per class and with a seeded generator over the path-sorted files,
``val_shots`` validation images and ``shots`` training images, disjoint. It is written as a task
folder in the VTAB-1K layout (``train800.txt`` = the few-shot train set, ``val200.txt`` = the
held-out validation set, ``train800val200.txt`` their union, ``test.txt`` the ID evaluation set),
with links to the image roots: those list files are the saved split, and the existing protocol
(grid on train/val, one final run, one evaluation) and its loader run on them unchanged.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vpeft.data.errors import DataError
from vpeft.data.folder import LabelledFile, write_list_view
from vpeft.data.formats import Source

SHIPPED_SUBSETS = {"imagenet_a": "imagenet_a_synsets.txt", "imagenet_r": "imagenet_r_synsets.txt"}
TRAIN_LINK, TEST_LINK = "train_images", "test_images"  # links inside the task view


def shipped_wnids(name: str = "imagenet_synsets.txt") -> list[str]:
    """A wnid list shipped with vpeft (``imagenet_synsets.txt``, ``imagenet_{a,r}_synsets.txt``)."""
    text = (files("vpeft.robustness") / "data" / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class LabelSpace:
    """Class ids (folder names, in index order) and the names the text prompts use."""

    ids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names) or len(set(self.ids)) != len(self.ids):
            raise DataError(f"label space: {len(self.ids)} ids ({len(set(self.ids))} distinct) "
                            f"for {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.ids)


def imagenet_metadata() -> tuple[list[str], list[Callable[[str], str]]]:
    """open_clip's 1000 CLIP class names (standard index order) and the 80 OpenAI templates."""
    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def imagenet_label_space() -> LabelSpace:
    wnids = shipped_wnids()
    if wnids != sorted(wnids) or len(wnids) != 1000:
        raise DataError("shipped imagenet_synsets.txt is not the 1000 sorted wnids")
    return LabelSpace(tuple(wnids), tuple(imagenet_metadata()[0]))


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set: files (labels in the full label space) and, for a class-subset set,
    the sorted label indices it covers (its logits are restricted to them before the argmax)."""

    name: str
    root: Path
    files: list[LabelledFile]
    subset: list[int] | None


def read_eval_set(name: str, source: Source, space: LabelSpace, *,
                  expected_subset: str | None = None) -> EvalSet:
    """Read one ImageNet-family set (labels in ``space``); derive its class subset from the data.

    ``expected_subset`` names a shipped wnid list (``imagenet_a``, ``imagenet_r``) or a file of
    wnids the derived subset must equal.
    """
    root = source.image_root
    found = source.read(len(space), space.ids).files
    present = sorted({f.label for f in found})
    subset = present if len(present) < len(space) else None
    if expected_subset is not None:
        path = (files("vpeft.robustness") / "data" / SHIPPED_SUBSETS[expected_subset]
                if expected_subset in SHIPPED_SUBSETS else Path(expected_subset))
        wanted = sorted(space.ids.index(w) for w in _wnids(path, space, name))
        if present != wanted:
            missing = [space.ids[i] for i in sorted(set(wanted) - set(present))]
            extra = [space.ids[i] for i in sorted(set(present) - set(wanted))]
            raise DataError(f"{root}: {name} holds {len(present)} classes, expected the "
                            f"{len(wanted)} of {expected_subset}: missing {missing[:8]}, "
                            f"unexpected {extra[:8]}")
        subset = wanted if len(wanted) < len(space) else None
    return EvalSet(name, root, found, subset)


def _wnids(path, space: LabelSpace, name: str) -> list[str]:
    wnids = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    unknown = [w for w in wnids if w not in space.ids]
    if unknown:
        raise DataError(f"{path}: {name}: class ids not in the label space: {unknown[:8]}")
    return wnids


def few_shot_split(train: Sequence[LabelledFile], shots: int, val_shots: int, seed: int,
                   num_classes: int) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """Per class, ``val_shots`` validation and ``shots`` training images, disjoint, seeded.

    Deterministic for a given file set: files are ordered by path before the draw.
    """
    by_class: dict[int, list[LabelledFile]] = defaultdict(list)
    for f in sorted(train, key=lambda f: f.path):
        by_class[f.label].append(f)
    short = [c for c in range(num_classes) if len(by_class[c]) < shots + val_shots]
    if short:
        raise DataError(f"few-shot split: {len(short)} classes have fewer than {shots} + "
                        f"{val_shots} images (first: class {short[0]} with {len(by_class[short[0]])})")
    rng = np.random.default_rng(seed)
    train_out, val_out = [], []
    for c in range(num_classes):
        order = rng.permutation(len(by_class[c]))
        picked = [by_class[c][i] for i in order[:val_shots + shots]]
        val_out += picked[:val_shots]
        train_out += picked[val_shots:]
    return train_out, val_out


def write_task_view(task_dir: str | Path, train_root: str | Path, train: Sequence[LabelledFile],
                    val: Sequence[LabelledFile], test: EvalSet, info: dict) -> Path:
    """The few-shot task as a VTAB-1K layout folder of list files and links to the image roots."""
    return write_list_view(
        task_dir, {"train800": (TRAIN_LINK, train), "val200": (TRAIN_LINK, val),
                   "train800val200": (TRAIN_LINK, [*train, *val]), "test": (TEST_LINK, test.files)},
        {TRAIN_LINK: train_root, TEST_LINK: test.root}, "split.json",
        {**info, "train": len(train), "val": len(val), "test": len(test.files)})

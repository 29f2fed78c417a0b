"""The ImageNet family as users hold it: label space, few-shot splits, and the shift test sets.

The standard 1000-class index is the sorted order of the 1000 wnids (shipped here as
``data/imagenet_synsets.txt``, a copy of timm's). Formats (design.md §3):

- ``wnid_folders``: ``root/<wnid>/<image>`` — ImageNet train/val, ImageNet-Sketch (all 1000),
  ImageNet-A and -R (200 each: their class subset is read from the folders and checked against
  the shipped 200-wnid list);
- ``index_folders``: ``root/<class index>/<image>`` with folders ``0`` … ``999`` — ImageNet-V2;
- ``list``: a ``<relpath> <label>`` file (labels in the 1000-class index);
- ``val_flat``: the official validation archive as it unpacks, ``root/ILSVRC2012_val_00000001.JPEG``
  … (flat), labelled by the devkit (``devkit``: the ``ILSVRC2012_devkit_t12`` folder; its
  ground-truth IDs map to wnids only through its ``meta.mat``) or by Kaggle's
  ``LOC_val_solution.csv`` (``solution_csv``).

The few-shot split draws, per class and with a seeded generator over the path-sorted files,
``val_shots`` validation images and ``shots`` training images, disjoint. It is written as a task
folder in the VTAB-1K layout (``train800.txt`` = the few-shot train set, ``val200.txt`` = the
held-out validation set, ``train800val200.txt`` their union, ``test.txt`` the ID evaluation set),
with links to the image roots: those list files are the saved split, and the existing protocol
(grid on train/val, one final run, one evaluation) and its loader run on them unchanged.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vpeft.data.folder import (LabelledFile, is_hidden, read_class_folders, read_list_file,
                               write_list_view)
from vpeft.data.errors import DataError, raise_collected

FORMATS = ("wnid_folders", "index_folders", "list", "val_flat")
SHIPPED_SUBSETS = {"imagenet_a": "imagenet_a_synsets.txt", "imagenet_r": "imagenet_r_synsets.txt"}
TRAIN_LINK, TEST_LINK = "train_images", "test_images"  # links inside the task view

# The official validation archive (ILSVRC2012_img_val.tar) and its devkit (ILSVRC2012_devkit_t12).
VAL_IMAGE_RE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
VAL_IMAGE_NAME = "ILSVRC2012_val_{:08d}.JPEG"
DEVKIT_GROUND_TRUTH = Path("data") / "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = Path("data") / "meta.mat"
NUM_LEAF_IDS = 1000  # ILSVRC2012_IDs 1..1000 are the classification classes (leaf synsets)
SOLUTION_HEADER = ["ImageId", "PredictionString"]  # Kaggle's LOC_val_solution.csv


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


def read_eval_set(name: str, root: str | Path, fmt: str, space: LabelSpace, *,
                  list_file: str | Path | None = None, expected_subset: str | None = None,
                  devkit: str | Path | None = None,
                  solution_csv: str | Path | None = None) -> EvalSet:
    """Read one ImageNet-family set in format ``fmt``; derive its class subset from the data.

    ``expected_subset`` names a shipped wnid list (``imagenet_a``, ``imagenet_r``) or a file of
    wnids the derived subset must equal. ``val_flat`` needs ``devkit`` or ``solution_csv``.
    """
    root = Path(root)
    if fmt == "wnid_folders":
        found, _ = read_class_folders(root, classes=list(space.ids))
    elif fmt == "index_folders":
        found, _ = read_class_folders(root, classes=[str(i) for i in range(len(space))])
    elif fmt == "list":
        if list_file is None:
            raise DataError(f"{name}: format 'list' needs a list file")
        found = read_list_file(Path(list_file), root=root, num_classes=len(space))
    elif fmt == "val_flat":
        found = read_val_flat(root, space, devkit=devkit, solution_csv=solution_csv, name=name)
    else:
        raise DataError(f"{name}: unknown format {fmt!r}; expected one of {FORMATS}")
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


def read_val_flat(root: str | Path, space: LabelSpace, *, devkit: str | Path | None = None,
                  solution_csv: str | Path | None = None, name: str = "imagenet_val"
                  ) -> list[LabelledFile]:
    """The flat validation folder, labelled by the devkit or by Kaggle's solution csv.

    Every image must have exactly one label and every label an image: a partial copy of the
    folder, or a label file for another copy, is refused rather than scored on what overlaps.
    """
    if (devkit is None) == (solution_csv is None):
        raise DataError(f"{name}: format 'val_flat' needs exactly one of 'devkit' (the "
                        "ILSVRC2012_devkit_t12 folder) or 'solution_csv' (Kaggle's "
                        "LOC_val_solution.csv)")
    root = Path(root)
    images = _val_images(root)
    label_of = {wnid: i for i, wnid in enumerate(space.ids)}
    if devkit is not None:
        labels = _devkit_labels(Path(devkit), root, images, label_of)
    else:
        labels = _solution_labels(Path(solution_csv), root, images, label_of)
    return [LabelledFile(images[n], labels[n]) for n in sorted(images)]


def _val_images(root: Path) -> dict[int, str]:
    """Image number -> file name of the flat ``ILSVRC2012_val_%08d.JPEG`` folder."""
    if not root.is_dir():
        raise DataError(f"{root}: validation image folder not found (expected the flat "
                        "ILSVRC2012_val_00000001.JPEG ... folder)")
    images: dict[int, str] = {}
    errors: list[str] = []
    for p in sorted(root.iterdir()):
        if is_hidden(p):
            continue
        m = VAL_IMAGE_RE.fullmatch(p.name)
        if p.is_dir():
            errors.append(f"{p}: sub-folder in a 'val_flat' folder; the validation archive unpacks "
                          "flat (for class folders use format 'wnid_folders')")
        elif m is None or int(m.group(1)) == 0:
            errors.append(f"{p}: not a validation image name; expected ILSVRC2012_val_%08d.JPEG "
                          "numbered from 00000001")
        else:
            images[int(m.group(1))] = p.name
    if not images and not errors:
        errors.append(f"{root}: no ILSVRC2012_val_%08d.JPEG images found")
    raise_collected(errors)
    return images


def _devkit_labels(devkit: Path, root: Path, images: dict[int, str],
                   label_of: dict[str, int]) -> dict[int, int]:
    """Labels from the devkit: line i of the ground truth is image i's ILSVRC2012_ID (1-based),
    which names a wnid only through meta.mat (ID order is not the sorted-wnid order)."""
    truth, meta = devkit / DEVKIT_GROUND_TRUTH, devkit / DEVKIT_META
    for path, what in ((truth, "the validation ground truth"),
                       (meta, "meta.mat, which maps ILSVRC2012_IDs to wnids")):
        if not path.is_file():
            raise DataError(f"{path}: not found; the devkit folder {devkit} must hold {what} "
                            "(ILSVRC2012_devkit_t12 as it unpacks)")
    wnid_of_id = read_devkit_synsets(meta)
    lines = truth.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    errors: list[str] = []
    if len(lines) != len(images):
        errors.append(f"{truth}: {len(lines)} lines for {len(images)} images in {root}; line i "
                      "labels ILSVRC2012_val_%08d.JPEG number i, so the counts must match")
    labels: dict[int, int] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{truth}:{number}"
        text = line.strip()
        if number not in images:
            errors.append(f"{where}: labels {VAL_IMAGE_NAME.format(number)}, which is not in "
                          f"{root}")
        elif not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= NUM_LEAF_IDS:
            errors.append(f"{where}: {text!r} is not an ILSVRC2012_ID in 1..{NUM_LEAF_IDS}")
        elif int(text) not in wnid_of_id:
            errors.append(f"{where}: ILSVRC2012_ID {text} has no leaf synset in {meta}")
        elif wnid_of_id[int(text)] not in label_of:
            errors.append(f"{where}: ILSVRC2012_ID {text} is {wnid_of_id[int(text)]} (per {meta}), "
                          "which is not in the label space")
        else:
            labels[number] = label_of[wnid_of_id[int(text)]]
    errors += [f"{root / images[n]}: no label; {truth} has {len(lines)} lines"
               for n in sorted(images) if n > len(lines)]
    raise_collected(errors)
    return labels


def read_devkit_synsets(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the leaf synsets (``num_children`` 0) in the devkit's meta.mat."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:  # squeeze_me: the 1860x1 struct array becomes a 1-D record array, 1x1 fields scalars
        mat = loadmat(meta, squeeze_me=True, struct_as_record=True, variable_names=["synsets"])
    except (MatReadError, ValueError, TypeError, NotImplementedError, OSError) as err:
        raise DataError(f"{meta}: not a readable MATLAB v5 file ({err})") from err
    if "synsets" not in mat:
        raise DataError(f"{meta}: no variable 'synsets'; expected the devkit's meta.mat")
    synsets = np.atleast_1d(mat["synsets"]).ravel()
    needed = ("ILSVRC2012_ID", "WNID", "num_children")
    fields = synsets.dtype.names or ()
    if any(f not in fields for f in needed):
        raise DataError(f"{meta}: 'synsets' has fields {list(fields)}; expected a struct array "
                        f"with {list(needed)}")
    wnid_of_id: dict[int, str] = {}
    errors: list[str] = []
    for i, entry in enumerate(synsets, start=1):  # synsets(i), as MATLAB numbers them
        ident, children, wnid = (_integral(entry["ILSVRC2012_ID"]),
                                 _integral(entry["num_children"]), str(entry["WNID"]).strip())
        if ident is None or children is None:
            errors.append(f"{meta}: synsets({i}) ({wnid}): ILSVRC2012_ID and num_children must be "
                          "integers")
        elif children == 0 and not 1 <= ident <= NUM_LEAF_IDS:
            errors.append(f"{meta}: synsets({i}) ({wnid}) is a leaf with ILSVRC2012_ID {ident}; "
                          f"leaves are 1..{NUM_LEAF_IDS}")
        elif children == 0 and ident in wnid_of_id:
            errors.append(f"{meta}: synsets({i}): ILSVRC2012_ID {ident} given twice "
                          f"({wnid_of_id[ident]}, {wnid})")
        elif children == 0:
            wnid_of_id[ident] = wnid
    raise_collected(errors)
    return wnid_of_id


def _integral(value) -> int | None:
    """A MATLAB scalar (stored as uint8/uint16/double) as an int, or None if it is not one."""
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "iuf":
        return None
    item = arr.item()
    return int(item) if float(item).is_integer() else None


def _solution_labels(path: Path, root: Path, images: dict[int, str],
                     label_of: dict[str, int]) -> dict[int, int]:
    """Labels from Kaggle's ``LOC_val_solution.csv``: rows in any order, the wnid is the first
    token of ``PredictionString`` (``<wnid> x_min y_min x_max y_max`` per box)."""
    if not path.is_file():
        raise DataError(f"{path}: solution csv not found (Kaggle's LOC_val_solution.csv)")
    labels: dict[int, int] = {}
    first_line: dict[int, int] = {}
    errors: list[str] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != SOLUTION_HEADER:
            found = "an empty file" if header is None else f"header {','.join(header)!r}"
            raise DataError(f"{path}:1: {found}; expected the header {','.join(SOLUTION_HEADER)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != 2:
                errors.append(f"{where}: {len(row)} fields; expected ImageId,PredictionString")
                continue
            m = VAL_IMAGE_RE.fullmatch(row[0] + ".JPEG")
            number = int(m.group(1)) if m else None
            if m is None:
                errors.append(f"{where}: ImageId {row[0]!r} is not an ILSVRC2012_val_%08d id")
            elif number not in images:
                errors.append(f"{where}: image {row[0]}.JPEG is not in {root}")
            elif number in first_line:
                errors.append(f"{where}: {row[0]} labelled again (first at line "
                              f"{first_line[number]})")
            else:
                first_line[number] = reader.line_num
                wnid = _box_wnid(row[1])
                if wnid is None:
                    errors.append(f"{where}: PredictionString {row[1]!r}; expected one or more "
                                  "'<wnid> x_min y_min x_max y_max' boxes, all of one wnid")
                elif wnid not in label_of:
                    errors.append(f"{where}: wnid {wnid} is not in the label space")
                else:
                    labels[number] = label_of[wnid]
    errors += [f"{root / images[n]}: no label; {path} has no row for {images[n][:-5]}"
               for n in sorted(images) if n not in first_line]
    raise_collected(errors)
    return labels


def _box_wnid(prediction: str) -> str | None:
    """The one wnid of a PredictionString's boxes, or None if it is malformed or mixes wnids
    (a validation image has one class; its boxes all carry it)."""
    tokens = prediction.split()
    if not tokens or len(tokens) % 5 or len(set(tokens[::5])) != 1:
        return None
    return tokens[0]


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

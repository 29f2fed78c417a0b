"""``val_flat``: ImageNet's validation archive as it unpacks, ``root/ILSVRC2012_val_00000001.JPEG``
... (flat), labelled by the devkit (``devkit``: the ``ILSVRC2012_devkit_t12`` folder; its
ground-truth IDs map to wnids only through its ``meta.mat``) or by Kaggle's
``LOC_val_solution.csv`` (``solution_csv``): exactly one of the two. The labels are indices into
the class ids the caller gives (the label space's wnids), in file-number order.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpeft.data.errors import DataError, raise_collected
from vpeft.data.folder import LabelledFile, is_hidden
from vpeft.data.formats.base import FormatConfigError, Part, Source, register

# The official validation archive (ILSVRC2012_img_val.tar) and its devkit (ILSVRC2012_devkit_t12).
VAL_IMAGE_RE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
VAL_IMAGE_NAME = "ILSVRC2012_val_{:08d}.JPEG"
DEVKIT_GROUND_TRUTH = Path("data") / "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = Path("data") / "meta.mat"
NUM_LEAF_IDS = 1000  # ILSVRC2012_IDs 1..1000 are the classification classes (leaf synsets)
SOLUTION_HEADER = ["ImageId", "PredictionString"]  # Kaggle's LOC_val_solution.csv
NEEDS = ("'devkit' (the ILSVRC2012_devkit_t12 folder) or 'solution_csv' (Kaggle's "
         "LOC_val_solution.csv)")


@register
@dataclass(frozen=True)
class ValFlat(Source):
    format = "val_flat"

    root: Path
    devkit: Path | None = None
    solution_csv: Path | None = None

    @classmethod
    def check_values(cls, values: Mapping[str, Any], where: str) -> None:
        if ("devkit" in values) == ("solution_csv" in values):
            raise FormatConfigError(where, f"format 'val_flat' needs exactly one of {NEEDS}")

    def read(self, num_classes: int, classes: Sequence[str] | None) -> Part:
        if classes is None:
            raise DataError(f"{self.root}: format 'val_flat' labels images by wnid, so it needs "
                            "the class ids in label order (a label space)")
        return Part(read_val_flat(self.root, classes, devkit=self.devkit,
                                  solution_csv=self.solution_csv), None)

    @property
    def image_root(self) -> Path:
        return self.root

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.root, self.devkit if self.devkit is not None else self.solution_csv)  # type: ignore[return-value]


def read_val_flat(root: str | Path, classes: Sequence[str], *, devkit: str | Path | None = None,
                  solution_csv: str | Path | None = None, name: str = "imagenet_val"
                  ) -> list[LabelledFile]:
    """The flat validation folder, labelled by the devkit or by Kaggle's solution csv.

    Every image must have exactly one label and every label an image: a partial copy of the
    folder, or a label file for another copy, is refused rather than scored on what overlaps.
    """
    if (devkit is None) == (solution_csv is None):
        raise DataError(f"{name}: format 'val_flat' needs exactly one of {NEEDS}")
    root = Path(root)
    images = _val_images(root)
    label_of = {wnid: i for i, wnid in enumerate(classes)}
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
    import numpy as np
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
    import numpy as np

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

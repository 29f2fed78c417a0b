"""Generic image-set readers: class-per-folder trees and ``<relpath> <label>`` list files.

These are the two formats users actually hold image classification data in (ImageNet and its
shifts, RESISC45, CIFAR exports, ...). Both return :class:`LabelledFile` rows relative to a root;
decoding, resizing and the prepared format are left to the callers (``vpeft.data.manyshot``,
the ImageNet readers), which reuse the VTAB-1K preparation code.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpeft.data.errors import DataError, raise_collected
from vpeft.data.listfile import LIST_LINE_RE, check_relpath, image_file_problem, list_lines_of

__all__ = ["IMAGE_EXTENSIONS", "LabelledFile", "is_hidden", "read_class_folders", "read_list_file"]

# Lower-cased; matched case-insensitively (ImageNet ships ".JPEG").
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LabelledFile:
    """One image of a dataset: ``path`` relative to the dataset root (POSIX separators), ``label``."""

    path: str
    label: int


def is_hidden(p: Path) -> bool:
    # .DS_Store, ._foo (macOS), .ipynb_checkpoints: never data, present in many real trees.
    return p.name.startswith(".")


def read_class_folders(root: Path, classes: Sequence[str] | None = None
                       ) -> tuple[list[LabelledFile], list[str]]:
    """Read a class-per-folder tree ``root/<class>/<image>``.

    The class order is the sorted folder names, unless ``classes`` gives it: then every folder
    must be one of them, and folders may be missing (ImageNet-A/R hold subsets of the 1000
    classes). Images must lie directly in their class folder. Regular files directly under
    ``root`` (a README, a LICENSE) and hidden entries (``.DS_Store``) are ignored.

    Returns the files sorted by path and the class list. Raises one :class:`DataError` naming
    every offending path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (expected a folder holding one folder per class)")
    if classes is not None:
        classes = [str(c) for c in classes]
        dup = sorted({c for c in classes if classes.count(c) > 1})
        if dup:
            raise DataError(f"{root}: class list names {', '.join(dup)} more than once")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p))
    if not folders:
        raise DataError(f"{root}: no class folders found; expected root/<class>/<image>")

    errors: list[str] = []
    if classes is None:
        class_list = [p.name for p in folders]
    else:
        class_list = list(classes)
        known = set(class_list)
        for p in folders:
            if p.name not in known:
                shown = ", ".join(class_list[:5]) + (", ..." if len(class_list) > 5 else "")
                errors.append(f"{p}: folder {p.name!r} is not one of the {len(class_list)} given "
                              f"classes ({shown})")
    label_of = {name: i for i, name in enumerate(class_list)}

    files: list[LabelledFile] = []
    allowed = ", ".join(IMAGE_EXTENSIONS)
    for folder in folders:
        if folder.name not in label_of:
            continue
        count = 0
        for p in sorted(folder.iterdir()):
            if is_hidden(p):
                continue
            if p.is_dir():
                errors.append(f"{p}: unexpected sub-folder; images must lie directly in their "
                              "class folder")
            elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                errors.append(f"{p}: not an image file by its extension; allowed: {allowed} "
                              "(any case)")
            else:
                files.append(LabelledFile(f"{folder.name}/{p.name}", label_of[folder.name]))
                count += 1
        if count == 0 and not any(e.startswith(f"{folder}/") for e in errors):
            errors.append(f"{folder}: class folder {folder.name!r} holds no images")
    raise_collected(errors)
    files.sort(key=lambda f: f.path)
    return files, class_list


def read_list_file(path: Path, root: Path | None = None, num_classes: int | None = None
                   ) -> list[LabelledFile]:
    """Read a ``<relpath> <label>`` list file (the VTAB-1K format), in file order.

    Checks every line (one space, integer label, a relative path without ``..``, no duplicate
    paths, label in ``[0, num_classes)`` when given, the image exists under ``root`` when given)
    and raises one :class:`DataError` whose lines start with ``file:line:``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"{path}: num_classes must be >= 1, got {num_classes}")
    raw_lines, problem = list_lines_of(path)
    if problem is not None:
        raise DataError(problem)
    if not raw_lines:
        raise DataError(f"{path}: list file is empty; expected '<relpath> <label>' lines")
    errors: list[str] = []
    seen: dict[str, int] = {}
    files: list[LabelledFile] = []
    for lineno, raw in enumerate(raw_lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        where = f"{path}:{lineno}"
        m = LIST_LINE_RE.match(line)
        if m is None:
            what = "blank line before the end of the file" if not line.strip() else f"malformed line {line!r}"
            errors.append(f"{where}: {what}; expected '<relpath> <label>' (one space, integer label)")
            continue
        rel = check_relpath(m.group(1))
        if rel is None:
            errors.append(f"{where}: image path {m.group(1)!r} must be relative without '..' components")
            continue
        label = int(m.group(2))
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else "[0, ...)"
            errors.append(f"{where}: label {label} outside {bound}")
            continue
        if rel in seen:
            errors.append(f"{where}: duplicate image path {rel} (first at line {seen[rel]})")
            continue
        seen[rel] = lineno
        problem = None if root is None else image_file_problem(Path(root) / rel)
        if problem == "image not found":
            errors.append(f"{where}: image not found: {rel} (looked for {Path(root) / rel})")
        elif problem is not None:
            errors.append(f"{where}: image {rel}: {problem} ({Path(root) / rel})")
        files.append(LabelledFile(rel.replace("\\", "/"), label))
    raise_collected(errors)
    return files


def list_lines(files: Sequence[LabelledFile], prefix: str) -> str:
    """``files`` as VTAB-1K list-file lines, ``<prefix>/<relpath> <label>``."""
    for f in files:
        if any(ch.isspace() for ch in f.path):
            raise DataError(f"{f.path}: image paths with white space cannot be listed in the "
                            "'<relpath> <label>' format; rename the file")
    return "".join(f"{prefix}/{f.path} {f.label}\n" for f in files)


def write_list_view(out_dir: str | Path, splits: Mapping[str, tuple[str, Sequence[LabelledFile]]],
                    links: Mapping[str, str | Path], info_file: str,
                    info: Mapping[str, object],
                    write_images: Callable[[Path], None] | None = None) -> Path:
    """Publish a VTAB-1K layout view of image files held elsewhere, atomically: a list file per
    split (``splits``: name -> (link, files)), a link per image root (``links``: link -> root)
    and a JSON record of how the view was made. The VTAB-1K loader reads it like any task.

    ``write_images``, if given, is called with the unpublished view folder to write image files
    the view holds itself (images that exist only as arrays, e.g. CIFAR-100's pickles), so they
    are published together with the list files or not at all."""
    from vpeft.io import atomic_dir, write_json  # pyarrow: not for the readers (schema checks)

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name, (link, files) in splits.items():
            (tmp / f"{name}.txt").write_text(list_lines(files, link), encoding="utf-8")
        for link, root in links.items():
            os.symlink(Path(root).resolve(), tmp / link, target_is_directory=True)
        if write_images is not None:
            write_images(tmp)
        write_json(tmp / info_file, dict(info))
    return out_dir

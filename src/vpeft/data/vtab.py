"""VTAB-1K: the 19 tasks, and a task as users bring it, checked and prepared into Parquet shards.

On-disk input (per task)::

    <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
    <root>/<task>/images/<split>/000000.jpg ...

:func:`validate_task` checks the four list files together (sizes, train800 / val200 disjointness,
class coverage); :func:`prepare_task` decodes every image, compares the splits by content
(:func:`content_report`) and writes the prepared task; :func:`inspect_task` does every check of
``prepare_task`` without writing. The pieces live elsewhere: one list file is parsed by
:mod:`vpeft.data.listfile`, images are decoded by :mod:`vpeft.data.decode`, and the prepared
format (shards, manifest, test labels) is written and read by :mod:`vpeft.data.shards`.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from vpeft.data.decode import (DECODE_ERRORS, Decoded, decode_image, decode_problem, digest_files,
                               read_image, strict_decoding)
from vpeft.data.duplicates import Overlap, duplicate_note, judge_overlaps
from vpeft.data.errors import MAX_SHOWN_ERRORS, DataError, raise_collected
from vpeft.data.listfile import Entry, ParsedList, parse_list
from vpeft.data.shards import FORMAT, SPLITS, ShardWriter, shard_schema
from vpeft.io import atomic_dir, sha256_file, write_json, write_parquet

__all__ = [
    "GROUPS", "TaskInfo", "VTAB_TASKS", "DEFAULT_SPLIT_SIZES", "task_info", "validate_task",
    "inspect_task", "prepare_task", "content_report", "same_file_problems",
]

log = logging.getLogger("vpeft.data")

GROUPS = ("natural", "specialized", "structured")
# Not a VTAB group: the label space a backbone is pretrained on (the demo's source set).
PRETRAINING_GROUP = "source"
LABELLED_SPLITS = ("train800", "val200", "train800val200")
DEFAULT_SPLIT_SIZES: dict[str, int | None] = {
    "train800": 800, "val200": 200, "train800val200": 1000, "test": None,
}


@dataclass(frozen=True)
class TaskInfo:
    """A VTAB task's name, number of classes and group."""

    name: str
    num_classes: int
    group: str


def _tasks(group: str, spec: Sequence[tuple[str, int]]) -> dict[str, TaskInfo]:
    return {name: TaskInfo(name, n, group) for name, n in spec}


VTAB_TASKS: dict[str, TaskInfo] = {
    **_tasks("natural", [("caltech101", 102), ("cifar", 100), ("dtd", 47),
                         ("oxford_flowers102", 102), ("oxford_iiit_pet", 37), ("svhn", 10),
                         ("sun397", 397)]),
    **_tasks("specialized", [("patch_camelyon", 2), ("eurosat", 10), ("resisc45", 45),
                             ("diabetic_retinopathy", 5)]),
    **_tasks("structured", [("clevr_count", 8), ("clevr_dist", 6), ("dmlab", 6), ("kitti", 4),
                            ("dsprites_loc", 16), ("dsprites_ori", 16), ("smallnorb_azi", 18),
                            ("smallnorb_ele", 9)]),
}


def task_info(task: str, num_classes: int | None = None, group: str | None = None) -> TaskInfo:
    """Task metadata; explicit ``num_classes``/``group`` override (or stand in for) VTAB_TASKS."""
    known = VTAB_TASKS.get(task)
    if known is None and (num_classes is None or group is None):
        missing = " and ".join(n for n, v in (("num_classes", num_classes), ("group", group)) if v is None)
        raise DataError(f"{task}: unknown task and no {missing} given; known tasks: "
                        + ", ".join(sorted(VTAB_TASKS)))
    n = num_classes if num_classes is not None else known.num_classes  # type: ignore[union-attr]
    g = group if group is not None else known.group  # type: ignore[union-attr]
    if g not in GROUPS:
        raise DataError(f"{task}: group {g!r} is not one of {', '.join(GROUPS)}")
    if int(n) < 1:
        raise DataError(f"{task}: num_classes must be >= 1, got {n}")
    return TaskInfo(task, int(n), g)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _split_sizes(split_sizes: Mapping[str, int | None] | None) -> dict[str, int | None]:
    sizes = dict(DEFAULT_SPLIT_SIZES)
    if split_sizes is not None:
        unknown = set(split_sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"split_sizes has unknown splits {sorted(unknown)}; known: {SPLITS}")
        sizes.update(split_sizes)
    return sizes


def validate_task(task_dir: Path, task: str, num_classes: int,
                  split_sizes: Mapping[str, int | None] | None = None,
                  unwritten: Collection[str] = frozenset()) -> dict[str, list[Entry]]:
    """Check a task's list files and image presence; return its entries per split.

    Raises one :class:`DataError` listing every problem found. Image contents are checked by
    :func:`prepare_task`, which decodes them anyway. ``unwritten``: images taken as present
    (:func:`vpeft.data.listfile.parse_list`).
    """
    sizes = _split_sizes(split_sizes)
    task_dir = Path(task_dir).absolute()
    if not task_dir.is_dir():
        raise DataError(f"{task_dir}: task directory for {task!r} not found")
    if num_classes < 1:
        raise DataError(f"{task_dir}: num_classes must be >= 1, got {num_classes}")
    missing = [f"{s}.txt" for s in SPLITS if not (task_dir / f"{s}.txt").is_file()]
    if missing:
        raise DataError(f"{task_dir}: missing list file(s) {', '.join(missing)}; "
                        f"expected all of {', '.join(s + '.txt' for s in SPLITS)}")

    errors: list[str] = []
    parsed = {s: parse_list(task_dir, task_dir / f"{s}.txt", num_classes, errors, unwritten)
              for s in SPLITS}

    for split, p in parsed.items():
        list_file = task_dir / f"{split}.txt"
        want = sizes[split]
        if p.records == 0:
            errors.append(f"{list_file}: split {split} is empty; expected "
                          + (f"{want} entries" if want is not None else "at least 1 entry"))
        elif want is not None and p.records != want:
            errors.append(f"{list_file}: expected {want} entries, found {p.records}")

    if not any(parsed[s].broken for s in LABELLED_SPLITS):
        errors.extend(_disjoint_path_errors(task_dir, parsed))
    if not parsed["train800val200"].broken:
        present = {e.label for e in parsed["train800val200"].entries}
        absent = [c for c in range(num_classes) if c not in present]
        if absent and parsed["train800val200"].records:
            shown = ", ".join(map(str, absent[:MAX_SHOWN_ERRORS]))
            more = f" ... and {len(absent) - MAX_SHOWN_ERRORS} more" if len(absent) > MAX_SHOWN_ERRORS else ""
            errors.append(f"{task_dir / 'train800val200.txt'}: {len(absent)} of {num_classes} classes "
                          f"never appear; every class in [0, {num_classes}) must: missing {shown}{more}")

    raise_collected(errors)
    return {s: parsed[s].entries for s in SPLITS}


def _disjoint_path_errors(task_dir: Path, parsed: Mapping[str, ParsedList]) -> list[str]:
    """train800 and val200 must not name the same image file (the cheap, path-level half of the
    disjointness rule; equal pixels under other names are caught by :func:`content_report`)."""
    val_paths = {e.path: e.line for e in parsed["val200"].entries}
    return [f"{task_dir / 'train800.txt'}:{e.line}: image {e.path} is also in val200.txt "
            f"(line {val_paths[e.path]}); train800 and val200 must be disjoint"
            for e in parsed["train800"].entries if e.path in val_paths]


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------

def _images_checksum(task_dir: Path, relpaths: set[str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(relpaths):
        digest.update(rel.encode("utf-8"))
        with open(task_dir / rel, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# Decoded pixels of train800 / val200 kept for train800val200's byte-identical copies, up to this
# many bytes (beyond it copies are decoded again: many-shot tasks hold tens of thousands of images).
DECODE_CACHE_BYTES = 1 << 30
MAX_SHOWN_EXAMPLES = 5


def _decode_error(list_file: Path, e: Entry, problem: str) -> str:
    """The one wording of an image that does not decode (prepare and check alike)."""
    return f"{list_file}:{e.line}: cannot decode image {e.path}: {problem}"


def _decode_entries(task_dir: Path, entries: Mapping[str, list[Entry]], image_size: int | None,
                    errors: list[str]) -> Iterator[tuple[str, int, Entry, Decoded]]:
    """Decode every entry of every split, in SPLITS order, appending failures to ``errors``.

    A file whose bytes equal an already decoded train800 / val200 file is not decoded again: the
    public generators write train800val200 as re-encoded copies, which PIL's deterministic
    encoder makes byte-identical; vpeft's older layout shares the very files.
    """
    by_bytes: dict[bytes, Decoded] = {}
    cached = 0
    with strict_decoding():
        for split in SPLITS:
            list_file = Path(task_dir).absolute() / f"{split}.txt"
            for index, e in enumerate(entries[split]):
                try:
                    data = read_image(e.file)
                except OSError as exc:
                    errors.append(_decode_error(list_file, e, decode_problem(exc)))
                    continue
                key = hashlib.blake2b(data, digest_size=16).digest()
                decoded = by_bytes.get(key)
                if decoded is None:
                    try:
                        decoded = decode_image(data, image_size)
                    except DECODE_ERRORS as exc:
                        errors.append(_decode_error(list_file, e, decode_problem(exc)))
                        continue
                    size = len(decoded.pixels or b"")
                    if split in ("train800", "val200") and cached + size <= DECODE_CACHE_BYTES:
                        by_bytes[key] = decoded
                        cached += size
                yield split, index, e, decoded


def _where(task_dir: Path, split: str, e: Entry) -> str:
    return f"{Path(task_dir).absolute() / (split + '.txt')}:{e.line}"


def _same_file(a: Entry, b: Entry) -> bool:
    try:
        return a.file.resolve() == b.file.resolve()
    except OSError:
        return False


def _overlaps(task_dir: Path, entries: Mapping[str, list[Entry]],
              keys: Mapping[str, Sequence[str]]) -> list[Overlap]:
    """val200 images equal to a train800 image and test images equal to a training image, where
    equal is having the same ``keys[split][i]`` (a pixel digest, or the file itself)."""
    overlaps: list[Overlap] = []
    first_seen: dict[str, tuple[str, Entry]] = {}
    for split in ("train800", "val200", "train800val200"):
        for c, e in zip(keys[split], entries[split]):
            first_seen.setdefault(c, (split, e))
    train = dict(zip(keys["train800"], entries["train800"]))
    for c, e in zip(keys["val200"], entries["val200"]):
        if c in train:
            overlaps.append(Overlap("val200", (
                f"{_where(task_dir, 'val200', e)}: image {e.path} has the same pixels as "
                f"{_where(task_dir, 'train800', train[c])} ({train[c].path})"),
                _same_file(e, train[c])))
    for c, e in zip(keys["test"], entries["test"]):
        if c in first_seen:
            split, other = first_seen[c]
            overlaps.append(Overlap("test", (
                f"{_where(task_dir, 'test', e)}: test image {e.path} has the same pixels "
                f"as {_where(task_dir, split, other)} ({other.path})"), _same_file(e, other)))
    return overlaps


def same_file_problems(task_dir: Path, entries: Mapping[str, list[Entry]], *,
                       allow_duplicates: bool = False, drawn_splits: bool = False,
                       unwritten: Collection[str] = frozenset()) -> list[str]:
    """What :func:`content_report` refuses that needs no pixels: a val200 or test line naming
    the very file a training line names (`vpeft check --no-decode`). Worded as it words them;
    pixel-identical images under other names are only found by decoding, so where a task holds
    those too, prepare's counts of shared images are larger. ``unwritten``: images not on disk
    (:func:`validate_task`), each its own file."""
    folders: dict[str, str] = {}

    def real(file: Path) -> str:  # os.path.realpath, each folder resolved once (0.4 M lines)
        if os.path.islink(file):
            return os.path.realpath(file)
        folder, name = os.path.split(file)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return os.path.join(folders[folder], name)

    keys = {s: [e.path if e.path in unwritten else real(e.file) for e in entries[s]]
            for s in SPLITS}
    errors, _ = judge_overlaps(task_dir, _overlaps(task_dir, entries, keys),
                               {s: len(v) for s, v in entries.items()},
                               drawn_splits=drawn_splits, allow=allow_duplicates)
    return errors


def content_report(task_dir: Path, entries: Mapping[str, list[Entry]],
                   contents: Mapping[str, Sequence[str]], *, allow_duplicates: bool = False,
                   drawn_splits: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Compare the splits by image content (``contents[split][i]`` is entry i's pixel digest).

    Returns (errors, record). A val200 image also in train800 and a test image also in a training
    split are judged by :mod:`vpeft.data.duplicates`: a property of the dataset (recorded in
    ``record["duplicates"]``) or a mistake in the splits (an error); ``drawn_splits``: vpeft drew
    the train / val split from a dataset's official parts, ``allow_duplicates``: record them all.
    train800val200 must equal train800 ⊎ val200 as a multiset of (content, label); where it does
    not, the record says what differs (counts and a few ``file:line`` examples) and training goes
    on: the final run simply trains on what the list names.
    """
    def pairs(split: str) -> list[tuple[str, int]]:
        return [(c, e.label) for c, e in zip(contents[split], entries[split])]

    overlaps = _overlaps(task_dir, entries, contents)
    errors, duplicates = judge_overlaps(task_dir, overlaps, {s: len(v) for s, v in entries.items()},
                                        drawn_splits=drawn_splits, allow=allow_duplicates)

    union = Counter(pairs("train800") + pairs("val200"))
    both = Counter(pairs("train800val200"))
    missing, extra = union - both, both - union
    relabelled = {c for c, _ in missing} & {c for c, _ in extra}
    examples = [f"{_where(task_dir, 'train800val200', e)}: {e.path} (label {e.label}) is in neither "
                "train800 nor val200" + (" with this label" if c in relabelled else "")
                for c, e in zip(contents["train800val200"], entries["train800val200"])
                if (c, e.label) in extra][:MAX_SHOWN_EXAMPLES]
    examples += [f"{_where(task_dir, split, e)}: {e.path} (label {e.label}) is missing from "
                 "train800val200" for split in ("train800", "val200")
                 for c, e in zip(contents[split], entries[split]) if (c, e.label) in missing
                 ][:MAX_SHOWN_EXAMPLES]
    shared = {e.path for s in ("train800", "val200") for e in entries[s]}
    n_shared = sum(e.path in shared for e in entries["train800val200"])
    layout = ("shared paths" if n_shared == len(entries["train800val200"])
              else "own copies" if n_shared == 0 else "mixed")
    record: dict[str, Any] = {
        "train800val200_layout": layout,
        "train800val200_union": "exact" if not missing and not extra else "differs",
        "missing_from_train800val200": sum(missing.values()),
        "extra_in_train800val200": sum(extra.values()),
        "relabelled": len(relabelled),
        "examples": examples,
        "duplicates": duplicates,
    }
    if missing or extra:
        log.warning("%s: train800val200 differs from train800 + val200 by content: %d missing, "
                    "%d extra (%d relabelled), e.g. %s", task_dir, record["missing_from_train800val200"],
                    record["extra_in_train800val200"], len(relabelled), examples[:2])
    return errors, record


def _checked_prepare_args(image_size: int | None, shard_rows: int, group: str) -> None:
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    if group not in (*GROUPS, PRETRAINING_GROUP):
        raise ValueError(f"group {group!r} is not one of {(*GROUPS, PRETRAINING_GROUP)}")


def inspect_task(task_dir: Path, *, task: str, num_classes: int,
                 split_sizes: Mapping[str, int | None] | None = None,
                 allow_duplicates: bool = False, drawn_splits: bool = False,
                 workers: int | None = None) -> dict[str, Any]:
    """Everything :func:`prepare_task` checks, without writing anything: the lists, every image
    (decoded, not resized, on ``workers`` processes: default every core; progress reported as
    :func:`vpeft.data.decode.digest_files` reports it) and the splits' contents. Returns split
    counts, source modes and the content record; raises one :class:`DataError` listing every
    problem, worded as :func:`prepare_task` words it."""
    entries = validate_task(task_dir, task, num_classes, split_sizes)
    task_dir = Path(task_dir)
    flat = [(split, e) for split in SPLITS for e in entries[split]]
    results = digest_files([e.file for _, e in flat], workers=workers)
    errors: list[str] = []
    contents: dict[str, list[str]] = {s: [] for s in SPLITS}
    modes: Counter[str] = Counter()
    for (split, e), (status, mode, content) in zip(flat, results):
        if status != "ok":
            errors.append(_decode_error(task_dir.absolute() / f"{split}.txt", e, mode))
            continue
        contents[split].append(content)
        modes[mode] += 1
    raise_collected(errors)
    errors, record = content_report(task_dir, entries, contents, allow_duplicates=allow_duplicates,
                                    drawn_splits=drawn_splits)
    raise_collected(errors)
    return {"task": task, "num_classes": num_classes,
            "counts": {s: len(entries[s]) for s in SPLITS}, "modes": dict(sorted(modes.items())),
            "content": record}


def prepare_task(task_dir: Path, out_dir: Path, *, task: str, image_size: int, num_classes: int,
                 group: str, split_sizes: Mapping[str, int | None] | None = None,
                 shard_rows: int = 4096, allow_duplicates: bool = False,
                 drawn_splits: bool = False) -> dict[str, Any]:
    """Validate ``task_dir``, decode/convert/resize every image and publish ``out_dir`` atomically.

    Returns the manifest. On any failure no new ``out_dir`` is published and the temp dir is
    removed; a previously prepared ``out_dir`` is left untouched.
    """
    _checked_prepare_args(image_size, shard_rows, group)
    task_dir = Path(task_dir)
    out_dir = Path(out_dir).absolute()
    entries = validate_task(task_dir, task, num_classes, split_sizes)

    if out_dir.exists() and (not out_dir.is_dir() or out_dir.is_symlink()):
        raise DataError(f"{out_dir}: exists and is not a directory; refusing to replace it")
    with atomic_dir(out_dir) as tmp:
        manifest = _build(task_dir, tmp, entries, task=task, image_size=image_size,
                          num_classes=num_classes, group=group, shard_rows=shard_rows,
                          allow_duplicates=allow_duplicates, drawn_splits=drawn_splits)
    return manifest


def _build(task_dir: Path, tmp: Path, entries: Mapping[str, list[Entry]], *, task: str,
           image_size: int, num_classes: int, group: str, shard_rows: int,
           allow_duplicates: bool, drawn_splits: bool) -> dict[str, Any]:
    errors: list[str] = []
    contents: dict[str, list[str]] = {s: [] for s in SPLITS}
    conversions: dict[str, str] = {}  # distinct source image (by content) -> its mode, when not RGB
    modes: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    writers = {s: ShardWriter(tmp, s, shard_schema(image_size, s != "test"), shard_rows) for s in SPLITS}
    test_index: list[int] = []
    test_label: list[int] = []

    for split, index, e, decoded in _decode_entries(task_dir, entries, image_size, errors):
        contents[split].append(decoded.content)
        if decoded.mode != "RGB":
            modes[split][decoded.mode] += 1
            conversions[decoded.content] = decoded.mode
        if errors:  # output will be discarded; keep decoding only to report every bad image
            continue
        row = {"index": index, "path": e.path, "image": decoded.pixels}
        if split == "test":
            test_index.append(index)
            test_label.append(e.label)
        else:
            row["label"] = e.label
        writers[split].add(**row)
    raise_collected(errors)
    errors, content = content_report(task_dir, entries, contents, allow_duplicates=allow_duplicates,
                                     drawn_splits=drawn_splits)
    raise_collected(errors)
    duplicates = content["duplicates"]
    if duplicates["test_in_training"] or duplicates["val200_in_train800"]:
        log.warning("%s: %s (%s), e.g. %s", task, duplicate_note(duplicates), duplicates["policy"],
                    duplicates["examples"][0])

    splits: dict[str, Any] = {}
    for split in SPLITS:
        writers[split].flush()
        for mode, n in sorted(modes[split].items()):
            log.info("%s/%s: converted %d %s image(s) to RGB", task, split, n, mode)
        info: dict[str, Any] = {"count": len(entries[split]), "shards": writers[split].shards}
        if split != "test":
            counts = Counter(e.label for e in entries[split])
            info["class_counts"] = {str(c): counts.get(c, 0) for c in range(num_classes)}
        splits[split] = info

    write_parquet(tmp / "test_labels.parquet", pa.table(
        {"index": pa.array(test_index, pa.int64()), "label": pa.array(test_label, pa.int64())}))

    from vpeft import __version__

    all_paths = {e.path for split in SPLITS for e in entries[split]}
    checksums = {f"{s}.txt": sha256_file(task_dir / f"{s}.txt") for s in SPLITS}
    checksums["images"] = _images_checksum(task_dir, all_paths)
    manifest: dict[str, Any] = {
        "task": task,
        "group": group,
        "num_classes": num_classes,
        "image_size": image_size,
        "format": FORMAT,
        "splits": splits,
        "conversions": dict(sorted(Counter(conversions.values()).items())),
        "content": content,
        "source": {"root": str(task_dir), "checksums": checksums},
        "vpeft_version": __version__,
    }
    write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete build
    return manifest

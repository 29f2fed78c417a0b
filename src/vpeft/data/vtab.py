"""VTAB-1K: validate a task as users bring it, prepare it into Parquet shards, read it back.

On-disk input (per task)::

    <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
    <root>/<task>/images/<split>/000000.jpg ...

Each list line is ``<relpath> <label>``. Prepared output (per task, written atomically)::

    out_dir/<split>/part-00000.parquet ...   index, path, label, image   (test: no label column)
    out_dir/test_labels.parquet              index, label
    out_dir/manifest.json                    written last

Test labels live only in ``test_labels.parquet`` and only :func:`read_test_labels` opens it, so
model selection can be shown never to touch them.
"""
from __future__ import annotations

from vpeft.errors import UserError

import hashlib
import io
import logging
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile, UnidentifiedImageError

from vpeft.io import atomic_dir, read_json, sha256_file, write_json, write_parquet

__all__ = [
    "GROUPS", "SPLITS", "TaskInfo", "VTAB_TASKS", "DEFAULT_SPLIT_SIZES", "FORMAT", "DataError",
    "Entry", "Decoded", "SplitData", "task_info", "validate_task", "inspect_task", "prepare_task",
    "content_report", "content_digest", "decode_image", "undecodable", "read_split",
    "read_test_labels", "read_manifest",
]

log = logging.getLogger("vpeft.data")

GROUPS = ("natural", "specialized", "structured")
# Not a VTAB group: the label space a backbone is pretrained on (the demo's source set).
PRETRAINING_GROUP = "source"
SPLITS = ("train800", "val200", "train800val200", "test")
LABELLED_SPLITS = ("train800", "val200", "train800val200")
FORMAT = "vpeft-prepared-v1"
MAX_SHOWN_ERRORS = 20
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


class DataError(UserError):
    """Invalid input data or prepared output.

    The message starts with ``path:line: `` when a list-file line is at fault, else ``path: ``.
    ``errors`` holds every individual message (the message itself shows at most 20).
    """

    def __init__(self, message: str, errors: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = list(errors) if errors is not None else [message]


def raise_collected(errors: Sequence[str]) -> None:
    if not errors:
        return
    shown = list(errors[:MAX_SHOWN_ERRORS])
    if len(errors) > MAX_SHOWN_ERRORS:
        shown.append(f"... and {len(errors) - MAX_SHOWN_ERRORS} more")
    raise DataError("\n".join(shown), errors)


@dataclass(frozen=True)
class Entry:
    """One list-file line: image ``path`` relative to the task dir, ``label``, 1-based ``line``, absolute ``file``."""

    path: str
    label: int
    line: int
    file: Path


@dataclass(frozen=True, eq=False)
class SplitData:
    """A prepared split in list-file order: images uint8 [N,H,W,3], labels int64 [N] (None for test), index int64 [N]."""

    images: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return int(self.index.shape[0])


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

LIST_LINE_RE = re.compile(r"^(\S+) (-?\d+)$")


def _split_sizes(split_sizes: Mapping[str, int | None] | None) -> dict[str, int | None]:
    sizes = dict(DEFAULT_SPLIT_SIZES)
    if split_sizes is not None:
        unknown = set(split_sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"split_sizes has unknown splits {sorted(unknown)}; known: {SPLITS}")
        sizes.update(split_sizes)
    return sizes


def check_relpath(raw: str) -> str | None:
    """Normalised POSIX relpath, or None when it is absolute or escapes the task dir."""
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).drive or PurePosixPath(raw).is_absolute():
        return None
    if ".." in re.split(r"[/\\]", raw):
        return None
    return posixpath.normpath(raw)


@dataclass
class _ParsedList:
    entries: list[Entry]
    records: int          # non-blank lines, malformed ones included (what the split size counts)
    broken: bool          # a line could not be parsed: cross-file checks on it would be noise


def _parse_list(task_dir: Path, list_file: Path, num_classes: int, errors: list[str]) -> _ParsedList:
    raw_lines = list_file.read_bytes().decode("utf-8", errors="replace").split("\n")
    # Blank lines are allowed only at the end of the file.
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    records = 0
    broken = False
    for lineno, raw in enumerate(raw_lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        where = f"{list_file}:{lineno}"
        if not line.strip():
            errors.append(f"{where}: blank line before the end of the file; expected '<relpath> <label>'")
            broken = True
            continue
        records += 1
        m = LIST_LINE_RE.match(line)
        if m is None:
            errors.append(f"{where}: malformed line {line!r}; expected '<relpath> <label>' "
                          "(one space, integer label)")
            broken = True
            continue
        relpath = check_relpath(m.group(1))
        if relpath is None:
            errors.append(f"{where}: image path {m.group(1)!r} must be relative to {task_dir} "
                          "without '..' components")
            broken = True
            continue
        label = int(m.group(2))
        if not 0 <= label < num_classes:
            errors.append(f"{where}: label {label} outside [0, {num_classes})")
            broken = True
            continue
        if relpath in seen:
            errors.append(f"{where}: duplicate image path {relpath} (first at line {seen[relpath]})")
            continue
        seen[relpath] = lineno
        file = task_dir / relpath
        if not file.is_file():
            errors.append(f"{where}: image not found: {relpath} (looked for {file})")
        entries.append(Entry(relpath, label, lineno, file))
    return _ParsedList(entries, records, broken)


def validate_task(task_dir: Path, task: str, num_classes: int,
                  split_sizes: Mapping[str, int | None] | None = None) -> dict[str, list[Entry]]:
    """Check a task's list files and image presence; return its entries per split.

    Raises one :class:`DataError` listing every problem found. Image contents are checked by
    :func:`prepare_task`, which decodes them anyway.
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
    parsed = {s: _parse_list(task_dir, task_dir / f"{s}.txt", num_classes, errors) for s in SPLITS}

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


def _disjoint_path_errors(task_dir: Path, parsed: Mapping[str, _ParsedList]) -> list[str]:
    """train800 and val200 must not name the same image file (the cheap, path-level half of the
    disjointness rule; equal pixels under other names are caught by :func:`content_report`)."""
    val_paths = {e.path: e.line for e in parsed["val200"].entries}
    return [f"{task_dir / 'train800.txt'}:{e.line}: image {e.path} is also in val200.txt "
            f"(line {val_paths[e.path]}); train800 and val200 must be disjoint"
            for e in parsed["train800"].entries if e.path in val_paths]


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------

@contextmanager
def strict_decoding() -> Iterator[None]:
    # PIL would otherwise silently pad a truncated file with grey; we want it rejected.
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError,
                  Image.DecompressionBombError)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        # PIL's own I;16 -> RGB clips at 255, turning most of a 16-bit image white; rescale instead.
        arr = np.asarray(img, dtype=np.uint32)
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        # Via RGBA so palette transparency is handled without PIL's transparency warning.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Decoded:
    """One decoded image: the resized HWC uint8 bytes (None when no size was asked for), the
    source mode, and a digest of the decoded source pixels that equal images share whatever
    their file names or encodings (how train800val200's copies are matched to their originals)."""

    pixels: bytes | None
    mode: str
    content: str


def content_digest(img: Image.Image) -> str:
    """Digest of a decoded image's mode, size and pixels."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{img.mode}:{img.width}x{img.height}:".encode("ascii"))
    digest.update(img.tobytes())
    return digest.hexdigest()


def decode_image(data: bytes, size: int | None) -> Decoded:
    """Decode fully; with ``size``, also convert to RGB and bicubic-resize to size x size."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        mode, content = img.mode, content_digest(img)
        if size is None:
            return Decoded(None, mode, content)
        rgb = _to_rgb(img).resize((size, size), Image.BICUBIC)
    arr = np.asarray(rgb, dtype=np.uint8)
    assert arr.shape == (size, size, 3), arr.shape
    return Decoded(arr.tobytes(), mode, content)


def undecodable(images: Iterable[tuple[str, Path]]) -> list[str]:
    """``"<where>: cannot decode <file>: ..."`` for every (where, file) that does not decode fully
    (missing, truncated, not an image); what ``vpeft check`` reports without writing anything."""
    errors: list[str] = []
    with strict_decoding():
        for where, file in images:
            try:
                decode_image(Path(file).read_bytes(), None)
            except (*DECODE_ERRORS, OSError) as exc:
                errors.append(f"{where}: cannot decode {file}: {type(exc).__name__}: {exc}")
    return errors


def load_image(data: bytes, size: int) -> tuple[bytes, str]:
    """(HWC uint8 bytes, source mode) of ``data`` resized to size x size."""
    decoded = decode_image(data, size)
    return decoded.pixels, decoded.mode  # type: ignore[return-value]


def shard_schema(image_size: int, labelled: bool) -> pa.Schema:
    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("path", pa.string(), nullable=False)]
    if labelled:
        fields.append(pa.field("label", pa.int64(), nullable=False))
    fields.append(pa.field("image", pa.binary(image_size * image_size * 3), nullable=False))
    return pa.schema(fields)


class ShardWriter:
    """Buffers rows of one split and writes them as part-NNNNN.parquet shards of at most ``rows`` rows."""

    def __init__(self, root: Path, split: str, schema: pa.Schema, rows: int) -> None:
        self.root, self.split, self.schema, self.rows = root, split, schema, rows
        self.buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        self.shards: list[str] = []

    def add(self, **row: Any) -> None:
        for name in self.schema.names:
            self.buffer[name].append(row[name])
        if len(self.buffer["index"]) >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer["index"]:
            return
        rel = f"{self.split}/part-{len(self.shards):05d}.parquet"
        write_parquet(self.root / rel, pa.table(self.buffer, schema=self.schema))
        self.shards.append(rel)
        self.buffer = {name: [] for name in self.schema.names}


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
                    data = e.file.read_bytes()
                except OSError as exc:
                    errors.append(f"{list_file}:{e.line}: cannot read image {e.path}: {exc}")
                    continue
                key = hashlib.blake2b(data, digest_size=16).digest()
                decoded = by_bytes.get(key)
                if decoded is None:
                    try:
                        decoded = decode_image(data, image_size)
                    except DECODE_ERRORS as exc:
                        errors.append(f"{list_file}:{e.line}: cannot decode image {e.path}: "
                                      f"{type(exc).__name__}: {exc}")
                        continue
                    size = len(decoded.pixels or b"")
                    if split in ("train800", "val200") and cached + size <= DECODE_CACHE_BYTES:
                        by_bytes[key] = decoded
                        cached += size
                yield split, index, e, decoded


def _where(task_dir: Path, split: str, e: Entry) -> str:
    return f"{Path(task_dir).absolute() / (split + '.txt')}:{e.line}"


def content_report(task_dir: Path, entries: Mapping[str, list[Entry]],
                   contents: Mapping[str, Sequence[str]], *, allow_duplicates: bool = False
                   ) -> tuple[list[str], dict[str, Any]]:
    """Compare the splits by image content (``contents[split][i]`` is entry i's pixel digest).

    Returns (errors, record). Errors are what would corrupt the protocol: a val200 image that is
    also in train800 (selection would score training images) and a test image in any training
    split (the one evaluation would score training images); with ``allow_duplicates`` (a dataset
    whose source holds genuine duplicates) they are recorded instead. train800val200 must equal
    train800 ⊎ val200 as a multiset of (content, label); where it does not, the record says what
    differs (counts and a few ``file:line`` examples) and training goes on: the final run simply
    trains on what the list names.
    """
    def pairs(split: str) -> list[tuple[str, int]]:
        return [(c, e.label) for c, e in zip(contents[split], entries[split])]

    errors: list[str] = []
    overlaps: list[str] = []
    first_seen: dict[str, tuple[str, Entry]] = {}
    for split in ("train800", "val200", "train800val200"):
        for c, e in zip(contents[split], entries[split]):
            first_seen.setdefault(c, (split, e))
    train = dict(zip(contents["train800"], entries["train800"]))
    for c, e in zip(contents["val200"], entries["val200"]):
        if c in train:
            overlaps.append(f"{_where(task_dir, 'val200', e)}: image {e.path} has the same pixels as "
                            f"{_where(task_dir, 'train800', train[c])} ({train[c].path}); "
                            "train800 and val200 must be disjoint")
    for c, e in zip(contents["test"], entries["test"]):
        if c in first_seen:
            split, other = first_seen[c]
            overlaps.append(f"{_where(task_dir, 'test', e)}: test image {e.path} has the same pixels "
                            f"as {_where(task_dir, split, other)} ({other.path}); test images must "
                            "not be in a training split")
    if allow_duplicates:
        for message in overlaps:
            log.warning("%s (allowed: study.data.allow_duplicates)", message)
    elif overlaps:
        errors.extend(overlaps)
        errors.append(f"{task_dir}: {len(overlaps)} image(s) shared between splits; if the source "
                      "genuinely holds pixel-identical images (e.g. blank frames), set "
                      "study.data.allow_duplicates=true to record them instead")

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
        "allowed_overlaps": overlaps if allow_duplicates else [],
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
                 allow_duplicates: bool = False) -> dict[str, Any]:
    """Everything :func:`prepare_task` checks, without writing anything: the lists, every image
    (decoded, not resized) and the splits' contents. Returns split counts, source modes and the
    content record; raises one :class:`DataError` listing every problem."""
    entries = validate_task(task_dir, task, num_classes, split_sizes)
    errors: list[str] = []
    contents: dict[str, list[str]] = {s: [] for s in SPLITS}
    modes: Counter[str] = Counter()
    for split, _, _, decoded in _decode_entries(Path(task_dir), entries, None, errors):
        contents[split].append(decoded.content)
        modes[decoded.mode] += 1
    raise_collected(errors)
    errors, record = content_report(Path(task_dir), entries, contents,
                                    allow_duplicates=allow_duplicates)
    raise_collected(errors)
    return {"task": task, "num_classes": num_classes,
            "counts": {s: len(entries[s]) for s in SPLITS}, "modes": dict(sorted(modes.items())),
            "content": record}


def prepare_task(task_dir: Path, out_dir: Path, *, task: str, image_size: int, num_classes: int,
                 group: str, split_sizes: Mapping[str, int | None] | None = None,
                 shard_rows: int = 4096, allow_duplicates: bool = False) -> dict[str, Any]:
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
                          allow_duplicates=allow_duplicates)
    return manifest


def _build(task_dir: Path, tmp: Path, entries: Mapping[str, list[Entry]], *, task: str,
           image_size: int, num_classes: int, group: str, shard_rows: int,
           allow_duplicates: bool) -> dict[str, Any]:
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
    errors, content = content_report(task_dir, entries, contents, allow_duplicates=allow_duplicates)
    raise_collected(errors)

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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    """Load and sanity-check ``prepared_dir/manifest.json``."""
    path = Path(prepared_dir) / "manifest.json"
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found; is {prepared_dir} a prepared task "
                        "(vpeft.data.vtab.prepare_task)?") from None
    except ValueError as exc:  # read_json already names the file
        raise DataError(str(exc)) from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: unknown format {manifest.get('format')!r}; expected {FORMAT!r}")
    for key in ("task", "num_classes", "image_size", "splits"):
        if key not in manifest:
            raise DataError(f"{path}: missing key {key!r}")
    return manifest


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise DataError(f"{path}: shard not found")
    # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset and pandas (~0.6 s of
    # start-up in every job that reads a shard); it also ignores unknown columns, hence the check.
    try:
        shard = pq.ParquetFile(path)
        missing = [c for c in columns if c not in shard.schema_arrow.names]
        if not missing:
            return shard.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: unreadable Parquet file or missing columns {columns}: {exc}") from exc
    raise DataError(f"{path}: unreadable Parquet file or missing columns {columns}: no column "
                    f"{missing}")


def _index_order(index: np.ndarray, count: int, where: Path) -> np.ndarray:
    order = np.argsort(index, kind="stable")
    if index.shape[0] != count or not np.array_equal(index[order], np.arange(count)):
        raise DataError(f"{where}: index column is not 0..{count - 1} ({index.shape[0]} rows found)")
    return order


def read_split(prepared_dir: Path, split: str) -> SplitData:
    """Images/labels/index of a prepared split in list-file order. Never reads test labels."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    if split not in SPLITS:
        raise DataError(f"{prepared_dir}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    info = manifest["splits"].get(split)
    if not isinstance(info, dict) or "shards" not in info or "count" not in info:
        raise DataError(f"{prepared_dir / 'manifest.json'}: no valid entry for split {split!r}")
    size = int(manifest["image_size"])
    width = size * size * 3
    labelled = split != "test"
    columns = ["index", "path", *(["label"] if labelled else []), "image"]
    tables = []
    for rel in info["shards"]:
        path = prepared_dir / rel
        table = _read_table(path, columns)
        if table.schema.field("image").type != pa.binary(width):
            raise DataError(f"{path}: image column is {table.schema.field('image').type}, "
                            f"expected fixed_size_binary({width}) for image_size {size}")
        tables.append(table)
    if not tables:
        raise DataError(f"{prepared_dir / 'manifest.json'}: split {split!r} lists no shards")
    table = pa.concat_tables(tables)
    index = table.column("index").to_numpy().astype(np.int64, copy=False)
    order = _index_order(index, int(info["count"]), prepared_dir / split)
    images = _fixed_binary_to_numpy(table.column("image"), width).reshape(-1, size, size, 3)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)[order] if labelled else None
    paths = table.column("path").to_pylist()
    return SplitData(images=images[order], labels=labels, index=index[order],
                     paths=[paths[i] for i in order])


def _fixed_binary_to_numpy(column: pa.ChunkedArray, width: int) -> np.ndarray:
    # Read the value buffers directly: going through Python bytes objects would copy every image twice.
    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise DataError("prepared image column contains nulls")
        buf = chunk.buffers()[1]
        parts.append(np.frombuffer(buf, dtype=np.uint8, offset=chunk.offset * width,
                                   count=len(chunk) * width))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def read_test_labels(prepared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(index, label) of the test split in list-file order: the only reader of test labels."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    path = prepared_dir / "test_labels.parquet"
    table = _read_table(path, ["index", "label"])
    index = table.column("index").to_numpy().astype(np.int64, copy=False)
    order = _index_order(index, int(manifest["splits"]["test"]["count"]), path)
    return index[order], table.column("label").to_numpy().astype(np.int64, copy=False)[order]

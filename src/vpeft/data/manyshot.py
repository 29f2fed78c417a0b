"""Many-shot study data: datasets as users hold them, deterministic saved subsets, VTAB-layout views.

A many-shot *dataset* (CIFAR-100, RESISC45, Clevr-Dist) has a train part and, optionally, a test
part, each a source block in a dataset format (:mod:`vpeft.data.formats`: a class-per-folder
tree, a ``<relpath> <label>`` list file, CIFAR-100's pickled "python version", ...). A many-shot
*task* is a dataset at one training-set size::

    <dataset>_n<size>   a class-balanced subset of <size> training images (cifar100_n500)
    <dataset>           all of its training images (cifar100)

Every task is turned into a **view** in the VTAB-1K on-disk layout, so the ordinary VTAB validator
and preparation (``vpeft.data.vtab.prepare_task``) and every later rule work unchanged::

    <views>/<task>/train800.txt        the task's training images minus its validation part
    <views>/<task>/val200.txt          the validation part: grid selection happens here, never on test
    <views>/<task>/train800val200.txt  all of the task's training images (the final run)
    <views>/<task>/test.txt            the dataset's test images
    <views>/<task>/images -> <train image root>     test_images -> <test image root> (if separate)

A part without image files (CIFAR-100's pickles) has the images its view lists written into the
view itself as PNGs (``images/<row>.png``, lossless, published atomically with the list files), so
that one preparation path reads every dataset.

The split names are the pipeline's; the sizes are the task's. Which training images a task uses
is decided once and saved as an **index file** (``<subsets_dir>/<task>.json``: seed, source
fingerprint, sorted indices into the dataset's train file list); a later run reads it and never
draws again. Subsets are class-balanced (round-robin over the classes in a seeded order) and
nested (every smaller subset of a dataset is inside every larger one). The validation part is a
class-balanced ``val_fraction`` of the task's images (at most ``val_max``). A dataset without a
test part gets a seeded class-stratified ``test_fraction`` carved out of its train part first
(RESISC45 ships no split); the carved images never enter any subset.
"""
from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpeft.data.decode import advance
from vpeft.data.errors import DataError, raise_collected
from vpeft.data.folder import LabelledFile, write_list_view
from vpeft.data.formats import Part, Source, parse_source
from vpeft.data.vtab import GROUPS
from vpeft.errors import UserError
from vpeft.io import atomic_dir, atomic_path, read_json, write_json

__all__ = ["DatasetSpec", "ManyShotTask", "dataset_specs", "resolve_task", "task_names",
           "draw_split", "subset_file", "ensure_split", "write_view", "clevr_dist_label",
           "write_clevr_dist"]

log = logging.getLogger("vpeft.data")

INDEX_FORMAT = "vpeft-subset-v1"
_TASK_RE = re.compile(r"^(?P<dataset>.+)_n(?P<size>[1-9][0-9]*)$")


@dataclass(frozen=True)
class DatasetSpec:
    """``study.data.datasets.<name>``: where a dataset lives and which subsets the study uses."""

    name: str
    num_classes: int
    group: str
    train: Source
    test: Source | None
    test_fraction: float
    subsets: tuple[int | None, ...]  # None = the full train part
    flips: tuple[str, ...]
    classes: tuple[str, ...] | None
    description: str


@dataclass(frozen=True)
class ManyShotTask:
    name: str
    dataset: DatasetSpec
    size: int | None  # None = full


FLIPS = ("horizontal", "vertical")


def _source(raw: Any, base: Path, where: str) -> Source | None:
    return None if raw is None else parse_source(raw, where=where, base=base)


def dataset_specs(cfg: Any) -> dict[str, DatasetSpec]:
    """Every dataset of ``study.data.datasets``; relative paths are relative to ``study.data.root``."""
    from omegaconf import OmegaConf

    data = cfg.study.data
    raw = OmegaConf.to_container(data.get("datasets") or {}, resolve=True)
    if not raw:
        raise UserError("study.data.datasets: a many-shot study needs at least one dataset")
    base = Path(str(data.root))
    specs: dict[str, DatasetSpec] = {}
    for name, d in raw.items():
        where = f"study.data.datasets.{name}"
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: expected a mapping")
        unknown = set(d) - {"num_classes", "group", "train", "test", "test_fraction", "subsets",
                            "flips", "classes", "description",
                            "synthetic"}  # a miniature's generator spec (vpeft.demo.manyshot)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(unknown)}")
        for key in ("num_classes", "group", "train"):
            if d.get(key) is None:
                raise UserError(f"{where}.{key} is required")
        if d["group"] not in GROUPS:
            raise UserError(f"{where}.group: {d['group']!r} is not one of {', '.join(GROUPS)}")
        subsets: list[int | None] = []
        for s in d.get("subsets") or ["full"]:
            if s == "full":
                subsets.append(None)
            elif isinstance(s, int) and not isinstance(s, bool) and s >= 1:
                subsets.append(s)
            else:
                raise UserError(f"{where}.subsets: {s!r} is neither a positive integer nor 'full'")
        flips = tuple(d.get("flips") or ("horizontal",))
        bad = [f for f in flips if f not in FLIPS]
        if bad:
            raise UserError(f"{where}.flips: {bad} not among {list(FLIPS)}")
        test_fraction = float(d.get("test_fraction") or 0.0)
        test = _source(d.get("test"), base, f"{where}.test")
        if test is None and not 0.0 < test_fraction < 1.0:
            raise UserError(f"{where}: no test part given, so test_fraction (a share of train to "
                            f"carve out as test) must be in (0, 1); got {d.get('test_fraction')!r}")
        specs[name] = DatasetSpec(
            name=name, num_classes=int(d["num_classes"]), group=str(d["group"]),
            train=_source(d["train"], base, f"{where}.train"), test=test,  # type: ignore[arg-type]
            test_fraction=test_fraction if test is None else 0.0, subsets=tuple(subsets),
            flips=flips, classes=tuple(d["classes"]) if d.get("classes") else None,
            description=str(d.get("description") or ""))
    return specs


def task_name(dataset: str, size: int | None) -> str:
    return dataset if size is None else f"{dataset}_n{size}"


def task_names(specs: Mapping[str, DatasetSpec]) -> list[str]:
    """Every task the datasets' subsets define, dataset by dataset, smallest subset first."""
    return [task_name(s.name, size) for s in specs.values()
            for size in sorted(s.subsets, key=lambda n: float("inf") if n is None else n)]


def resolve_task(cfg: Any, task: str) -> ManyShotTask:
    specs = dataset_specs(cfg)
    if task in specs and None in specs[task].subsets:
        return ManyShotTask(task, specs[task], None)
    m = _TASK_RE.match(task)
    if m and m["dataset"] in specs and int(m["size"]) in specs[m["dataset"]].subsets:
        return ManyShotTask(task, specs[m["dataset"]], int(m["size"]))
    raise UserError(f"study.tasks: '{task}' is not a task of study.data.datasets; known: "
                    f"{task_names(specs)} (<dataset>_n<size> for each listed subset size, "
                    "<dataset> for 'full')")


# ---------------------------------------------------------------------------------------------
# Reading a dataset and drawing its splits
# ---------------------------------------------------------------------------------------------

def fingerprint(files: Sequence[LabelledFile]) -> str:
    """sha256 of the ``path label`` listing: a saved index file is only valid for this listing."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.path} {f.label}\n".encode())
    return digest.hexdigest()


def _round_robin(labels: np.ndarray, num_classes: int, rng: np.random.Generator
                 ) -> tuple[list[int], dict[int, np.ndarray]]:
    """A seeded class order, each class's indices in a seeded order, and the sequence of classes
    that round-robin allocation visits: its first ``n`` entries give a class-balanced quota for
    ``n`` images, and quotas only grow with ``n`` (so subsets nest)."""
    order = rng.permutation(num_classes)
    members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)}
    sequence: list[int] = []
    for k in range(max((len(v) for v in members.values()), default=0)):
        sequence.extend(int(c) for c in order if len(members[int(c)]) > k)
    return sequence, members


def _quota(sequence: Sequence[int], n: int, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(sequence[:n], dtype=np.int64), minlength=num_classes)


def draw_split(labels: np.ndarray, num_classes: int, *, dataset: str, seed: int,
               size: int | None, val_fraction: float, val_max: int | None,
               test_fraction: float = 0.0) -> dict[str, list[int]]:
    """Sorted indices (into ``labels``) of a task's ``train`` (all training images of the task),
    ``val`` (its validation part, inside ``train``) and, with ``test_fraction``, the carved ``test``.

    Deterministic in its arguments; nested in ``size``; class-balanced; the carved test part is the
    same for every size, since it is drawn from its own stream first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    base = [seed, zlib.crc32(dataset.encode())]
    pool = np.arange(len(labels))
    test: np.ndarray = np.zeros(0, np.int64)
    if test_fraction > 0:
        rng = np.random.default_rng([*base, 1])
        n_test = int(round(len(labels) * test_fraction))
        seq, members = _round_robin(labels, num_classes, rng)
        quota = _quota(seq, n_test, num_classes)
        test = np.sort(np.concatenate([members[c][:quota[c]] for c in range(num_classes)]))
        pool = np.setdiff1d(pool, test)
    rng = np.random.default_rng([*base, 2])
    seq, members_local = _round_robin(labels[pool], num_classes, rng)
    n = len(pool) if size is None else size
    if n > len(pool):
        raise DataError(f"{dataset}: subset of {n} images asked for, but only {len(pool)} training "
                        "images are available")
    present = int(np.unique(labels[pool]).size)
    if n < present:
        raise DataError(f"{dataset}: a subset of {n} images cannot hold every one of its "
                        f"{present} classes; use at least {present}")
    quota = _quota(seq, n, num_classes)
    n_val = int(round(n * val_fraction))
    if val_max is not None:
        n_val = min(n_val, int(val_max))
    # Validation takes the last picks of each class within the subset, round-robin again, and
    # leaves every class present in the subset at least one training image.
    val_seq = [c for k in range(int(quota.max(initial=0)))
               for c in (int(x) for x in rng.permutation(num_classes)) if quota[c] - 1 > k]
    val_quota = _quota(val_seq, n_val, num_classes)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        picks = pool[members_local[c][:quota[c]]]
        train_idx.append(picks)
        val_idx.append(picks[quota[c] - val_quota[c]:])
    split = {"train": np.sort(np.concatenate(train_idx)).tolist() if train_idx else [],
             "val": np.sort(np.concatenate(val_idx)).tolist() if val_idx else []}
    if test_fraction > 0:
        split["test"] = test.tolist()
    return split


# ---------------------------------------------------------------------------------------------
# Saved index files and views
# ---------------------------------------------------------------------------------------------

def subset_file(cfg: Any, task: str) -> Path:
    return Path(str(cfg.study.data.subsets_dir)) / f"{task}.json"


def _split_settings(cfg: Any) -> dict[str, Any]:
    data = cfg.study.data
    val_max = data.get("val_max")
    return {"seed": int(data.get("seed", 0)), "val_fraction": float(data.get("val_fraction", 0.2)),
            "val_max": None if val_max is None else int(val_max)}


def ensure_split(cfg: Any, task: ManyShotTask, train_files: Sequence[LabelledFile], *,
                 save: bool = True) -> dict[str, Any]:
    """The task's saved index file, written on first use (``save``; `vpeft check` draws it in
    memory instead, exactly as it would be written); later calls read it and never redraw.

    A saved file drawn from another train listing (the data changed) or with other settings is an
    error, not something to silently replace: the user deletes it to draw again.
    """
    path = subset_file(cfg, task.name)
    settings = _split_settings(cfg)
    expected = {"format": INDEX_FORMAT, "task": task.name, "dataset": task.dataset.name,
                "size": task.size, "test_fraction": task.dataset.test_fraction, **settings,
                "train_listing": fingerprint(train_files), "train_listing_count": len(train_files)}
    if path.is_file():
        saved = read_json(path)
        diff = [k for k, v in expected.items() if saved.get(k) != v]
        if diff:
            raise DataError(f"{path}: saved subset index was drawn with other "
                            f"{', '.join(diff)} than now; delete the file to draw a new subset "
                            "(results made with the old one then no longer match)")
        n = len(train_files)
        for key in ("train", "val", *(("test",) if task.dataset.test_fraction else ())):
            idx = saved.get(key)
            if not isinstance(idx, list) or any(not isinstance(i, int) or not 0 <= i < n for i in idx) \
                    or idx != sorted(set(idx)):
                raise DataError(f"{path}: '{key}' must be sorted distinct indices in [0, {n})")
        log.info("%s: using saved subset index %s", task.name, path)
        return saved
    labels = np.array([f.label for f in train_files], dtype=np.int64)
    split = draw_split(labels, task.dataset.num_classes, dataset=task.dataset.name,
                       seed=settings["seed"], size=task.size, val_fraction=settings["val_fraction"],
                       val_max=settings["val_max"], test_fraction=task.dataset.test_fraction)
    record = {**expected, **split}
    if not save:
        return record
    write_json(path, record)
    log.info("%s: wrote subset index %s (%d train, %d val)", task.name, path,
             len(split["train"]), len(split["val"]))
    return record


def write_png(path: Path, pixels: np.ndarray) -> None:
    """One image as PNG: lossless, and deterministic (PIL writes no time stamp)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


def _png_writer(parts: Mapping[str, tuple[Part, Sequence[LabelledFile]]],
                unwritten: set[str] | None = None):
    """A ``write_list_view`` hook that writes, under ``<view>/<link>/``, the listed images of
    the parts given by pixels (link -> (part, files the view lists under that link)).
    ``unwritten``: write none, add their paths in the view (``<link>/<file>``) to this set."""
    def write(view: Path) -> None:
        for link, (part, listed) in parts.items():
            assert part.pixels is not None
            row = {f.path: i for i, f in enumerate(part.files)}
            (view / link).mkdir()
            for f in sorted(set(listed), key=lambda f: f.path):
                if unwritten is not None:
                    unwritten.add(f"{link}/{f.path}")
                else:
                    write_png(view / link / f.path, part.pixels[row[f.path]])
                    advance()  # `vpeft check`'s progress bar counts them: half its time
    return write


def write_view(cfg: Any, task_name_: str, out_dir: Path, *, save_index: bool = True,
               unwritten: set[str] | None = None) -> dict[str, int]:
    """Read the task's dataset, draw or read its saved index file, and publish the VTAB-layout
    view ``out_dir`` atomically (list files + an ``images`` link to the dataset root; a part
    given by pixels instead has its listed images written into the view as PNGs).
    ``save_index=False``: an index file not yet saved is drawn in memory (`vpeft check`, which
    writes the view into a scratch folder and checks it as `vpeft prepare` will).
    ``unwritten``: those PNGs are not written, their paths in the view are added to this set
    instead (`vpeft check --no-decode`: writing CIFAR-100's 116,500 took over a minute)."""
    task = resolve_task(cfg, task_name_)
    ds = task.dataset
    train_part = ds.train.read(ds.num_classes, ds.classes)
    train_files, class_list = train_part.files, train_part.classes
    test_part = None
    if ds.test is not None:
        test_part = ds.test.read(ds.num_classes, class_list or ds.classes)
        test_files, test_classes = test_part.files, test_part.classes
        if class_list is not None and test_classes is not None and test_classes != class_list:
            raise DataError(f"{ds.test.describe()}: test classes differ from the train classes")
    split = ensure_split(cfg, task, train_files, save=save_index)
    if ds.test is None:
        test_files = [train_files[i] for i in split["test"]]
    train = [train_files[i] for i in split["train"]]
    val_set = set(split["val"])
    val = [train_files[i] for i in split["val"]]
    train_only = [train_files[i] for i in split["train"] if i not in val_set]
    # A separate test part keeps its own root: linked as test_images/.
    test_prefix = "images" if ds.test is None else "test_images"
    links: dict[str, Path] = {}
    own: dict[str, tuple[Part, list[LabelledFile]]] = {}
    if train_part.pixels is None:
        links["images"] = ds.train.image_root
    else:
        own["images"] = (train_part, train + (test_files if ds.test is None else []))
    if ds.test is not None and test_part is not None:
        if test_part.pixels is None:
            links["test_images"] = ds.test.image_root
        else:
            own["test_images"] = (test_part, test_files)
    write_list_view(out_dir, {"train800": ("images", train_only), "val200": ("images", val),
                              "train800val200": ("images", train), "test": (test_prefix, test_files)},
                    links, "classes.json",
                    {"classes": class_list, "dataset": ds.name, "size": task.size,
                     "subset_index": str(subset_file(cfg, task.name))},
                    write_images=_png_writer(own, unwritten) if own else None)
    counts = {"train": len(train_only), "val": len(val), "train_total": len(train),
              "test": len(test_files)}
    log.info("%s: view %s %s", task.name, out_dir, counts)
    return counts


# ---------------------------------------------------------------------------------------------
# Clevr-Dist from the VTAB source
# ---------------------------------------------------------------------------------------------

# VTAB's closest_object_distance bins (task_adaptation data/clevr.py): the label is the largest i
# with CLEVR_DIST_THRESHOLDS[i] < min over objects of pixel_coords[:, 2], so 6 classes.
CLEVR_DIST_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
_SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def clevr_dist_label(z: Sequence[float] | np.ndarray) -> int:
    """VTAB's Clevr-Dist label of one scene from its objects' ``pixel_coords[:, 2]`` (depth)."""
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if z.size == 0 or not np.all(np.isfinite(z)):
        raise ValueError(f"expected the finite depths of at least one object, got {z.tolist()}")
    dist = float(z.min())
    thr = CLEVR_DIST_THRESHOLDS
    if not thr[0] < dist <= thr[-1]:
        raise ValueError(f"closest object at depth {dist} lies outside VTAB's bins ({thr[0]}, {thr[-1]}]")
    return int(np.searchsorted(thr, dist, side="left")) - 1


def write_clevr_dist(records: Iterable[tuple[np.ndarray, Sequence[float] | np.ndarray]],
                     out_dir: str | Path, split: str) -> int:
    """Write one Clevr-Dist split in the list-file layout a many-shot dataset reads:
    ``out_dir/images/<split>/%06d.png`` and ``out_dir/<split>.txt`` (``images/<split>/000000.png
    <label>`` lines, record order). ``records`` yields (image uint8 H x W [x 3|4], the objects'
    ``pixel_coords[:, 2]``), e.g. from ``tensorflow_datasets`` ``clevr`` (docs/data.md).

    PNG keeps the rendered pixels exactly. The image folder is published atomically and the list
    file only after it, so a failure (a bad record: one :class:`DataError` naming it) leaves no
    half-written split. Returns the number of images written.
    """
    out_dir = Path(out_dir)
    if not _SPLIT_NAME_RE.match(split):
        raise DataError(f"{out_dir}: split name {split!r} must be letters, digits, '_' or '-'")
    lines: list[str] = []
    with atomic_dir(out_dir / "images" / split) as tmp:
        for i, (image, z) in enumerate(records):
            where = f"{out_dir / 'images' / split}: record {i}"
            image = np.asarray(image)
            if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
                raise DataError(f"{where}: image must be uint8 H x W, H x W x 3 or H x W x 4, found "
                                f"{image.dtype} of shape {image.shape}")
            try:
                label = clevr_dist_label(z)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None
            name = f"{i:06d}.png"
            write_png(tmp / name, image)
            lines.append(f"images/{split}/{name} {label}\n")
        if not lines:
            raise DataError(f"{out_dir / 'images' / split}: no records given for split {split!r}")
    with atomic_path(out_dir / f"{split}.txt") as tmp_list:
        tmp_list.write_text("".join(lines), encoding="utf-8")
    log.info("clevr_dist %s: %d images under %s", split, len(lines), out_dir)
    return len(lines)


def report_metadata(cfg: Any, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per task: its dataset, subset size and image counts (from the prepared manifest), for the
    report's accuracy-vs-training-set-size section."""
    from vpeft import layout
    from vpeft.data.shards import read_manifest

    out: dict[str, dict[str, Any]] = {}
    for name in tasks:
        task = resolve_task(cfg, name)
        splits = read_manifest(layout.prepared_task(cfg, name))["splits"]
        out[name] = {"dataset": task.dataset.name, "subset": "full" if task.size is None else task.size,
                     "train_images": int(splits["train800val200"]["count"]),
                     "grid_train_images": int(splits["train800"]["count"]),
                     "val_images": int(splits["val200"]["count"]),
                     "test_images": int(splits["test"]["count"])}
    return out

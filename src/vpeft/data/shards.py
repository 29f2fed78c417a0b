"""Prepared tasks on disk: Parquet shards of decoded images, written by :class:`ShardWriter` and
read back by :func:`read_split`, :func:`read_test_labels` and :func:`read_manifest`.

A prepared task, as its preparer (``vpeft.data.vtab.prepare_task``, the robustness study's
evaluation sets) writes it, atomically::

    out_dir/<split>/part-00000.parquet ...   index, path, label, image   (test: no label column)
    out_dir/test_labels.parquet              index, label
    out_dir/manifest.json                    written last; "format" is FORMAT

``image`` holds image_size x image_size x 3 uint8 bytes (HWC, RGB); ``index`` is the row's position
in the split's list. Test labels live only in ``test_labels.parquet`` and only
:func:`read_test_labels` opens it, so model selection can be shown never to touch them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vpeft.data.errors import DataError
from vpeft.io import read_json, write_parquet

__all__ = ["SPLITS", "FORMAT", "SplitData", "shard_schema", "ShardWriter", "read_manifest",
           "read_split", "read_test_labels"]

SPLITS = ("train800", "val200", "train800val200", "test")
FORMAT = "vpeft-prepared-v1"


@dataclass(frozen=True, eq=False)
class SplitData:
    """A prepared split in list-file order: images uint8 [N,H,W,3], labels int64 [N] (None for test), index int64 [N]."""

    images: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return int(self.index.shape[0])


def shard_schema(image_size: int, labelled: bool) -> pa.Schema:
    """A split's shard columns: index, path, label (``labelled`` only) and the fixed-size image bytes."""
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
    """Images/labels/index of a prepared split in list-file order. Never reads test labels.

    The images go straight into one array allocated for the whole split, shard by shard: peak
    memory is the split plus one shard (concatenating the shards, then reordering, held three
    copies: 33 GB for a 73,728-image test split at 224 px)."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    if split not in SPLITS:
        raise DataError(f"{prepared_dir}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    info = manifest["splits"].get(split)
    if not isinstance(info, dict) or "shards" not in info or "count" not in info:
        raise DataError(f"{prepared_dir / 'manifest.json'}: no valid entry for split {split!r}")
    if not info["shards"]:
        raise DataError(f"{prepared_dir / 'manifest.json'}: split {split!r} lists no shards")
    size, count = int(manifest["image_size"]), int(info["count"])
    width = size * size * 3
    labelled = split != "test"
    columns = ["index", "path", *(["label"] if labelled else []), "image"]
    images = np.empty((count, size, size, 3), np.uint8)
    labels = np.empty(count, np.int64) if labelled else None
    paths: list[str] = [""] * count
    filled = np.zeros(count, bool)
    rows = 0
    for rel in info["shards"]:
        path = prepared_dir / rel
        table = _read_table(path, columns)
        if table.schema.field("image").type != pa.binary(width):
            raise DataError(f"{path}: image column is {table.schema.field('image').type}, "
                            f"expected fixed_size_binary({width}) for image_size {size}")
        index = table.column("index").to_numpy().astype(np.int64, copy=False)
        rows += len(index)
        if len(index) and (index.min() < 0 or index.max() >= count or filled[index].any()
                           or len(np.unique(index)) != len(index)):
            break  # reported below, as for any other gap or duplicate
        filled[index] = True
        images[index] = _fixed_binary_to_numpy(table.column("image"), width).reshape(-1, size, size, 3)
        if labelled:
            labels[index] = table.column("label").to_numpy()
        for i, p in zip(index.tolist(), table.column("path").to_pylist()):
            paths[i] = p
        del table
    if rows != count or not filled.all():
        raise DataError(f"{prepared_dir / split}: index column is not 0..{count - 1} "
                        f"({rows} rows found)")
    return SplitData(images=images, labels=labels, index=np.arange(count, dtype=np.int64),
                     paths=paths)


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

"""Evaluation sets of the robustness study and their scoring, with the class-subset logit mask.

An evaluation set is prepared like a VTAB-1K test split (the same decoding, RGB conversion and
bicubic resize, the same Parquet shards), holding only ``test``: ``read_split(dir, "test")``
returns its images and ``read_test_labels(dir)`` its labels, in the full label space. A set that
covers a subset of the classes (ImageNet-A, -R) records it in the manifest; its predictions are
the argmax of the logits *restricted to the subset* — never a global argmax that lands on a class
the set cannot contain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from vpeft.data.decode import (DECODE_ERRORS, decode_problem, digest_files, load_image, read_image,
                               strict_decoding)
from vpeft.data.errors import raise_collected
from vpeft.data.shards import FORMAT, shard_schema, ShardWriter, read_manifest
from vpeft.io import atomic_dir, write_json, write_parquet
from vpeft.robustness.imagenet import EvalSet

GROUP = "natural"  # the report groups tasks by VTAB group; ImageNet and its shifts are natural images


def masked_argmax(logits, subset: Sequence[int] | None) -> np.ndarray:
    """Predicted labels (full label space); with ``subset``, the argmax among those classes only."""
    scores = np.asarray(logits)
    if subset is None:
        return scores.argmax(axis=1)
    index = np.asarray(list(subset), dtype=np.int64)
    if index.size == 0:
        raise ValueError("empty class subset")
    return index[scores[:, index].argmax(axis=1)]


def top1(logits, labels: np.ndarray, subset: Sequence[int] | None) -> float:
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("top1 of an empty set")
    return float(100.0 * np.mean(masked_argmax(logits, subset) == labels))


def _decode_error(eval_set: EvalSet, path: str, problem: str) -> str:
    """The one wording of a shift-set image that does not decode (prepare-shift and check)."""
    return f"{eval_set.root / path}: cannot decode: {problem}"


def eval_set_problems(eval_set: EvalSet) -> list[str]:
    """Every image of ``eval_set`` that :func:`prepare_eval_set` would refuse, decoded on every
    core (`vpeft check`, under its progress bar); nothing is written."""
    results = digest_files([eval_set.root / f.path for f in eval_set.files])
    return [_decode_error(eval_set, f.path, problem)
            for f, (status, problem, _) in zip(eval_set.files, results) if status != "ok"]


def prepare_eval_set(eval_set: EvalSet, out_dir: str | Path, *, image_size: int,
                     num_classes: int, shard_rows: int = 4096) -> dict[str, Any]:
    """Decode, convert and resize every image of ``eval_set``; publish ``out_dir`` atomically."""
    errors: list[str] = []
    with atomic_dir(Path(out_dir)) as tmp, strict_decoding():
        writer = ShardWriter(tmp, "test", shard_schema(image_size, labelled=False), shard_rows)
        for index, f in enumerate(eval_set.files):
            try:
                pixels, _ = load_image(read_image(eval_set.root / f.path), image_size)
            except DECODE_ERRORS as exc:
                errors.append(_decode_error(eval_set, f.path, decode_problem(exc)))
                continue
            writer.add(index=index, path=f.path, image=pixels)
        raise_collected(errors)
        writer.flush()
        labels = [f.label for f in eval_set.files]
        write_parquet(tmp / "test_labels.parquet", pa.table(
            {"index": pa.array(range(len(labels)), pa.int64()), "label": pa.array(labels, pa.int64())}))
        manifest = {"task": eval_set.name, "group": GROUP, "num_classes": num_classes,
                    "image_size": image_size, "format": FORMAT,
                    "splits": {"test": {"count": len(labels), "shards": writer.shards}},
                    "class_subset": eval_set.subset, "source": {"root": str(eval_set.root)}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def class_subset(prepared_dir: str | Path) -> list[int] | None:
    return read_manifest(Path(prepared_dir)).get("class_subset")

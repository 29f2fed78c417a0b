"""VTAB-1K task trees written the way the public split generators write them.

NOAH's ``data/vtab-source/get_vtab1k.py`` and OSU-MLB/MLB-VTAB's ``get_vtab1k.py`` (design.md §3)
decode each TFDS split — ``train800``, ``val200``, ``test`` and ``train800val200`` (= train800
then val200) — and write item i as ``images/<split>/%06d.jpg`` with
``PIL.Image.fromarray(array).save(path)`` (JPEG, PIL's defaults) plus the list line
``images/<split>/%06d.jpg <label>``. So train800val200 is a folder of re-encoded *copies*.
``write_vtab_tree(..., layout="vpeft-v1")`` writes vpeft's older layout instead, in which
train800val200.txt names the train800 / val200 files themselves.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_ORDER = ("train800", "val200", "test", "train800val200")


def task_arrays(num_classes: int, sizes: dict[str, int], *, grey: bool, side: int = 16,
                seed: int = 0) -> dict[str, list[tuple[np.ndarray, int]]]:
    """Decoded (array, label) records per split, as TFDS would hand them to the generator: each
    image distinct (a per-image colour and a per-class pattern), ``grey`` gives H x W arrays."""
    rng = np.random.default_rng(seed)
    records: dict[str, list[tuple[np.ndarray, int]]] = {}
    for split in ("train800", "val200", "test"):
        rows = []
        for i in range(sizes[split]):
            label = i % num_classes
            yy, xx = np.mgrid[0:side, 0:side]
            pattern = ((xx + yy * (label + 1)) % (side // 2)) * (128 // side)
            base = rng.integers(20, 120, size=3)
            array = np.clip(base[None, None, :] + pattern[..., None], 0, 255).astype(np.uint8)
            rows.append((array[..., 0] if grey else array, label))
        records[split] = rows
    records["train800val200"] = records["train800"] + records["val200"]
    return records


def write_vtab_tree(task_dir: Path, records: dict[str, list[tuple[np.ndarray, int]]], *,
                    layout: str = "generator") -> Path:
    """Write ``records`` as a VTAB-1K task folder; ``layout`` is "generator" or "vpeft-v1"."""
    if layout not in ("generator", "vpeft-v1"):
        raise ValueError(layout)
    task_dir = Path(task_dir)
    lines: dict[str, list[str]] = {}
    for split in SPLIT_ORDER:
        if split == "train800val200" and layout == "vpeft-v1":
            lines[split] = lines["train800"] + lines["val200"]
            continue
        (task_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i, (array, label) in enumerate(records[split]):
            rel = "images/%s/%06d.jpg" % (split, i)
            Image.fromarray(array).save(task_dir / rel)  # exactly the generators' call
            lines[split].append(f"{rel} {label}\n")
    for split, rows in lines.items():
        (task_dir / f"{split}.txt").write_text("".join(rows))
    return task_dir

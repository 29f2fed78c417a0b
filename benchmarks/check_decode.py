"""Decode throughput of `vpeft check` (img/s) on one core and on every core.

    python -m benchmarks.check_decode --out benchmarks/results [--test 2000] [--workers 1,2]

Fabricates, under a temporary directory, two VTAB-1K tasks laid out as the public generator
writes them (design.md §3: train800 / val200 / test and train800val200 as its own re-encoded
copies, ``PIL.Image.save`` defaults) at the real image sizes and modes: a caltech101-like task of
500 x 375 RGB JPEGs (photographs: smooth shading plus sensor-like noise, so the files have a real
photo's size) and a dsprites-like task of 64 x 64 single-channel PNGs. Then runs exactly what
`vpeft check` runs on a task (``vpeft.data.vtab.inspect_task``: the lists, every image decoded
strictly and digested, the splits compared by content) with 1 worker process and with every core,
and reports images per second and the ratio. Wall seconds, the cores this process may use and
the load average are recorded, with the speed-up a pure-Python CPU loop gets from the same
number of processes at that moment (``cpu_headroom``): on a shared machine that is the ceiling of
any pool's gain, and the decode ratio is to be read against it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

TASKS = {  # name: (width, height, mode, format, classes)
    "caltech101_like": (500, 375, "RGB", "JPEG", 102),
    "dsprites_like": (64, 64, "L", "PNG", 16),
}


def _image(rng, width: int, height: int, mode: str):
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if mode == "L":  # a white sprite on black, as dSprites renders
        cx, cy, r = rng.uniform(10, width - 10), rng.uniform(10, height - 10), rng.uniform(3, 9)
        return Image.fromarray((((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).astype(np.uint8) * 255, "L")
    shade = np.stack([np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6)) *
                      np.cos(yy / rng.uniform(20, 80) + rng.uniform(0, 6)) for _ in range(3)], -1)
    pixels = 128 + 90 * shade + rng.normal(0, 12, shade.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_task(task_dir: Path, size: tuple[int, int, str, str, int], test: int, seed: int) -> int:
    """One task in the generator's layout; returns the number of list entries."""
    import numpy as np

    width, height, mode, fmt, classes = size
    rng = np.random.default_rng(seed)
    ext = "jpg" if fmt == "JPEG" else "png"
    counts = {"train800": 800, "val200": 200, "test": test}
    kept: dict[str, list] = {}
    for split, n in counts.items():
        (task_dir / "images" / split).mkdir(parents=True)
        lines, kept[split] = [], []
        for i in range(n):
            img, label = _image(rng, width, height, mode), i % classes
            img.save(task_dir / "images" / split / f"{i:06d}.{ext}", format=fmt)
            lines.append(f"images/{split}/{i:06d}.{ext} {label}\n")
            if split != "test":
                kept[split].append((img, label))
        (task_dir / f"{split}.txt").write_text("".join(lines))
    (task_dir / "images" / "train800val200").mkdir()
    lines = []
    for i, (img, label) in enumerate(kept["train800"] + kept["val200"]):
        img.save(task_dir / "images" / "train800val200" / f"{i:06d}.{ext}", format=fmt)
        lines.append(f"images/train800val200/{i:06d}.{ext} {label}\n")
    (task_dir / "train800val200.txt").write_text("".join(lines))
    return sum(counts.values()) + 1000


def measure(task_dir: Path, classes: int, workers: int) -> float:
    from vpeft.data.vtab import inspect_task

    sizes = {"train800": 800, "val200": 200, "train800val200": 1000, "test": None}
    start = time.perf_counter()
    inspect_task(task_dir, task=task_dir.name, num_classes=classes, split_sizes=sizes,
                 workers=workers)
    return time.perf_counter() - start


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_headroom(workers: int, n: int = 3_000_000) -> float:
    """Speed-up of a pure-Python loop on ``workers`` processes over one: what this machine,
    with whatever else runs on it, lets any process pool gain right now (the decode ratio's
    ceiling; on a shared machine it can be below 1)."""
    import multiprocessing

    start = time.perf_counter()
    for _ in range(workers):
        _burn(n)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_burn, [n] * workers)
    return serial / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from vpeft.data.decode import decode_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--test", type=int, default=2000, help="test images per task")
    parser.add_argument("--workers", default=None,
                        help="comma-separated worker counts (default: 1 and every core)")
    args = parser.parse_args(argv)
    cores = decode_workers()
    counts = sorted({int(w) for w in args.workers.split(",")}) if args.workers else sorted({1, cores})
    results: dict[str, Any] = {"cores": cores, "cpu": platform.processor() or platform.machine(),
                               "python": sys.version.split()[0], "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="vpeft-bench-decode-") as tmp:
        for seed, (name, size) in enumerate(TASKS.items()):
            task_dir = Path(tmp) / name
            images = write_task(task_dir, size, args.test, seed)
            row: dict[str, Any] = {"images": images, "size": f"{size[0]}x{size[1]} {size[2]} {size[3]}"}
            for w in counts:
                load = os.getloadavg()[0]
                wall = measure(task_dir, size[4], w)
                row[f"workers_{w}"] = {"wall_seconds": round(wall, 2),
                                       "images_per_second": round(images / wall, 1),
                                       "load_average_1min": round(load, 2)}
            first, last = row[f"workers_{counts[0]}"], row[f"workers_{counts[-1]}"]
            row["speedup"] = round(last["images_per_second"] / first["images_per_second"], 2)
            row["cpu_headroom"] = round(cpu_headroom(counts[-1]), 2) if counts[-1] > 1 else 1.0
            results["tasks"][name] = row
            print(f"{name} ({row['size']}, {images} images): "
                  + ", ".join(f"{w} worker(s) {row[f'workers_{w}']['images_per_second']} img/s"
                              for w in counts) + f"; x{row['speedup']} (a pure CPU loop: "
                  f"x{row['cpu_headroom']})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check_decode.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

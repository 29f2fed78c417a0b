"""Peak memory and time of reading one prepared split (``vpeft.data.shards.read_split``), as a
final run reads a large test split (dSprites: 73,728 images; at 224 px 11.1 GB of pixels).

    python -m benchmarks.read_split --images 8192 [--size 224] [--shard-rows 1024] [--work DIR]

Writes a prepared split of random images in vpeft's shard format, then reads it in a fresh
process and prints its wall time and the growth of its peak RSS, as a ratio to the split's bytes
(1.0 = the array alone). Run it with another checkout's ``PYTHONPATH`` to compare versions.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_split(root: Path, n: int, size: int, shard_rows: int) -> None:
    from vpeft.data.shards import FORMAT, ShardWriter, shard_schema
    from vpeft.io import write_json

    writer = ShardWriter(root, "test", shard_schema(size, labelled=False), shard_rows)
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=(64, size * size * 3), dtype=np.uint8)
    for i in range(n):
        writer.add(index=i, path=f"images/test/{i:06d}.jpg", image=block[i % 64].tobytes())
    writer.flush()
    write_json(root / "manifest.json", {"format": FORMAT, "image_size": size, "num_classes": 2, "task": "bench",
                                        "splits": {"test": {"count": n, "shards": writer.shards}}})


def measure(root: Path) -> dict:
    from vpeft.data.shards import read_split

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tic = time.perf_counter()
    data = read_split(root, "test")
    seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"images": len(data), "split_bytes": int(data.images.nbytes), "seconds": seconds,
            "peak_growth_bytes": peak - before, "ratio": (peak - before) / data.images.nbytes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_split", description=__doc__)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--shard-rows", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child: only the read, in a fresh process
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        write_split(Path(tmp), args.images, args.size, args.shard_rows)
        out = subprocess.run([sys.executable, "-m", "benchmarks.read_split", "--measure", tmp],
                             capture_output=True, text=True, check=True).stdout
    print(out.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A full-size CIFAR-100 "python version" tree, for timing `vpeft check` on the many-shot study.

    python -m benchmarks.cifar100_tree /tmp/manyshot-raw
    time python -m vpeft check --study manyshot [--no-decode] -o study.data.root=/tmp/manyshot-raw \
        -o 'study.tasks=[cifar100_n500,cifar100_n1000,cifar100_n5000,cifar100_n10000,cifar100]' ...

Writes ``<root>/cifar-100-python/{train,test,meta}`` as the public archive unpacks: 50,000 train
and 10,000 test rows of 3,072 uint8 values (R, G, B planes of 32 x 32), 100 fine classes (500 / 100
images each), pickled the way Python 2's cPickle wrote the originals (the tests' ``Py2Pickler``;
the train file is 155 MB, as the original's). Pixels are photo-like (a smooth 4 x 4 colour field
upsampled, plus noise), every image distinct, so a PNG of one costs what a real one costs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the archive's own pickling lives with the tests

PARTS = {"train": 50_000, "test": 10_000}
CLASSES = 100


def _rows(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    images = np.repeat(np.repeat(low, 8, 1), 8, 2) + rng.normal(0, 10, (n, 32, 32, 3))
    images = np.clip(images, 0, 255).astype(np.uint8)
    rows = np.concatenate([images[..., c].reshape(n, -1) for c in range(3)], 1)
    labels = np.tile(np.arange(CLASSES), n // CLASSES)[rng.permutation(n)]
    return rows, [int(v) for v in labels]


def write_tree(root: Path) -> Path:
    from test_manyshot_formats import _pickle_bytes

    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class_{i:02d}" for i in range(CLASSES)]
    for seed, (part, n) in enumerate(PARTS.items(), start=1):
        rows, labels = _rows(n, seed)
        d = {b"filenames": [f"{names[v]}_s_{i:06d}.png".encode() for i, v in enumerate(labels)],
             b"batch_label": f"{'training' if part == 'train' else 'testing'} batch 1 of 1".encode(),
             b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels], b"data": rows}
        (folder / part).write_bytes(_pickle_bytes(d, 2, py2=True))
    meta = {b"fine_label_names": [c.encode() for c in names],
            b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(_pickle_bytes(meta, 2, py2=True))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="study.data.root of the many-shot study")
    args = parser.parse_args()
    start = time.perf_counter()
    folder = write_tree(args.root)
    print(f"{folder}: written in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

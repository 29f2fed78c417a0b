"""The many-shot miniature's datasets (``vpeft synth`` in a ``study.data.kind: manyshot`` demo
study): a synthetic demo task written in the formats users hold their many-shot datasets in, a
class-per-folder tree or ``<relpath> <label>`` list files, which the real many-shot code
(:mod:`vpeft.data.manyshot`) then reads like any user's dataset."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vpeft.data.folder import read_list_file
from vpeft.demo import synthetic
from vpeft.errors import UserError
from vpeft.io import atomic_dir

__all__ = ["generate_demo_dataset"]


def _write_lists(vtab_dir: Path, out: Path) -> None:
    """The VTAB list files as they are: ``train800.txt`` and ``test.txt`` with ``images/``."""
    for name in ("train800.txt", "test.txt"):
        shutil.copy2(vtab_dir / name, out / name)
    shutil.copytree(vtab_dir / "images", out / "images")


def _write_folders(vtab_dir: Path, out: Path) -> None:
    """``train/<class>/`` and ``test/<class>/`` trees (class ``c<label>``)."""
    for split, part in (("train800", "train"), ("test", "test")):
        for f in read_list_file(vtab_dir / f"{split}.txt", vtab_dir):
            target = out / part / f"c{f.label:02d}" / Path(f.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(vtab_dir / f.path, target)


# synthetic.layout -> how the generated task is written (the dataset's blocks read it back)
LAYOUTS = {"folders": _write_folders, "list": _write_lists}


def generate_demo_dataset(cfg: Any, dataset: str, seed: int = 0) -> Path:
    """Write ``<study.data.root>/<dataset>`` from its ``synthetic`` spec (demo studies only).

    ``synthetic: {task, layout, train, test, image_size}``: ``task`` is a synthetic demo task
    (``vpeft.demo.synthetic``); ``layout: folders`` writes ``train/<class>/`` and ``test/<class>/``
    trees (``test: 0``: no test part), ``layout: list`` keeps the VTAB list files
    (``train800.txt`` as the train list, ``test.txt`` as the test list).
    """
    raw = OmegaConf.to_container(cfg.study.data.datasets, resolve=True).get(dataset)
    spec = (raw or {}).get("synthetic")
    if not spec:
        raise UserError(f"study.data.datasets.{dataset}: no 'synthetic' spec, so vpeft cannot "
                        f"generate it; put the dataset under {cfg.study.data.root}/{dataset}")
    write = LAYOUTS.get(spec.get("layout", "folders"))
    if write is None:
        raise UserError(f"study.data.datasets.{dataset}.synthetic.layout: expected "
                        f"{' or '.join(LAYOUTS)}")
    root = Path(str(cfg.study.data.root))
    sizes = {"train800": int(spec["train"]), "val200": 0, "test": int(spec.get("test", 0))}
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        vtab_dir = synthetic.generate_task(spec["task"], Path(scratch), sizes=sizes,
                                           image_size=int(spec.get("image_size", 32)), seed=seed)
        with atomic_dir(root / dataset) as tmp:
            write(vtab_dir, tmp)
    return root / dataset

"""The many-shot study: saved class-balanced subsets, views in the VTAB layout, batch augmentation,
and the miniature study end to end through real Snakemake with its report section."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_snakemake, workflow_copy
from vpeft.config import load_study
from vpeft.data.manyshot import draw_split, ensure_split, resolve_task
from vpeft.data.folder import LabelledFile
from vpeft.data.errors import DataError
from vpeft.train.augment import CenterCrop, RandomResizedCropFlip, build_transforms

STUDY = "demo_manyshot"


# ---------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------

def _labels(per_class=(30, 30, 30, 12, 30)) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(3).permutation(labels)


def _draw(labels, size, **kw):
    args = {"dataset": "toy", "seed": 0, "val_fraction": 0.2, "val_max": None, **kw}
    return draw_split(labels, 5, size=size, **args)


def test_subsets_are_deterministic_nested_and_class_balanced():
    labels = _labels()
    small, mid, full = (_draw(labels, n) for n in (20, 60, None))
    assert small == _draw(labels, 20)
    assert _draw(labels, 20, seed=1)["train"] != small["train"]
    assert set(small["train"]) <= set(mid["train"]) <= set(full["train"])
    assert len(small["train"]) == 20 and len(full["train"]) == len(labels)
    assert np.bincount(labels[small["train"]], minlength=5).tolist() == [4] * 5
    # class 3 has only 12 images: balanced as far as it goes, the rest spread over the others
    counts = np.bincount(labels[_draw(labels, 100)["train"]], minlength=5)
    assert counts[3] == 12 and counts.sum() == 100 and counts.max() - counts[counts != 12].min() <= 1
    for split in (small, mid, full):
        assert split["train"] == sorted(split["train"]) and set(split["val"]) < set(split["train"])
        assert len(split["val"]) == round(0.2 * len(split["train"]))
        train_only = set(split["train"]) - set(split["val"])
        assert set(labels[sorted(train_only)]) == set(range(5))  # every class keeps a train image


def test_carved_test_part_is_fixed_and_never_in_a_subset():
    labels = _labels()
    a, b = _draw(labels, 20, test_fraction=0.25), _draw(labels, None, test_fraction=0.25)
    assert a["test"] == b["test"] and len(a["test"]) == round(0.25 * len(labels))
    assert not set(a["test"]) & set(b["train"])
    assert len(b["train"]) == len(labels) - len(b["test"])
    with pytest.raises(DataError, match="only 99 training images"):
        _draw(labels, 10_000, test_fraction=0.25)


def test_a_subset_must_cover_every_class():
    with pytest.raises(DataError, match="cannot hold every one of its 5 classes"):
        _draw(_labels(), 4)


def test_val_max_caps_the_validation_part():
    assert len(_draw(_labels(), None, val_max=7)["val"]) == 7


def _cfg(tmp_path, *overrides):
    os.environ["VPEFT_PARAMS"] = str(REPO / "params")
    try:
        return load_study(STUDY, [f"paths.data={tmp_path}", *overrides]).cfg
    finally:
        del os.environ["VPEFT_PARAMS"]


def test_index_file_is_written_once_then_only_read(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    task = resolve_task(cfg, "textures_n40")
    assert task.size == 40 and task.dataset.flips == ("horizontal", "vertical")
    files = [LabelledFile(f"c{i % 8}/{i}.jpg", i % 8) for i in range(200)]
    first = ensure_split(cfg, task, files)
    path = tmp_path / "subsets" / STUDY / "textures_n40.json"
    saved = path.read_bytes()
    assert json.loads(saved)["train"] == first["train"] and first["seed"] == 0

    def no_redraw(*a, **k):
        raise AssertionError("a saved index file must be read, not drawn again")

    monkeypatch.setattr("vpeft.data.manyshot.draw_split", no_redraw)
    assert ensure_split(cfg, task, files) == first
    assert path.read_bytes() == saved
    with pytest.raises(DataError, match="train_listing.*delete the file"):
        ensure_split(cfg, task, files[:-1])
    with pytest.raises(DataError, match="seed"):
        ensure_split(_cfg(tmp_path, "study.data.seed=1"), task, files)


def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="textures_n40"):
        resolve_task(_cfg(tmp_path), "textures_n41")


def test_grid_sweeps_drop_path_with_readable_ids(tmp_path):
    os.environ["VPEFT_PARAMS"] = str(REPO / "params")
    try:
        plan = load_study("manyshot", ["study.data.root=/nowhere", "model.weights=/w.npz"])
    finally:
        del os.environ["VPEFT_PARAMS"]
    lora = plan.points["lora"]
    assert len(lora) == 2 * 2 * 3 * 9
    assert "lr0.0005-wd0.0001-drop_path0.2-rank256" in {p.id for p in lora}
    assert {p.optim["drop_path"] for p in lora} == {0.0, 0.1, 0.2}
    assert {p.hparams["bottleneck"] for p in plan.points["adapter"]} == {2 ** k for k in range(9)}
    assert {p.hparams["dim"] for p in plan.points["fact_tk"]} == {2 ** k for k in range(9)}
    assert plan.cfg.train.epochs == 40


def _write_folder_dataset(root: Path, per_class: int, corrupt: str | None = None) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("test", 2)):
        for c in range(8):
            folder = root / "textures" / part / f"c{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "textures" / corrupt).write_bytes(b"not a png")


def test_view_of_a_folder_dataset_prepares_like_vtab_and_rejects_bad_images(tmp_path):
    from vpeft.data.manyshot import write_view
    from vpeft.data.shards import read_split
    from vpeft.data.vtab import prepare_task

    cfg = _cfg(tmp_path, f"study.data.root={tmp_path / 'raw'}")
    _write_folder_dataset(tmp_path / "raw", per_class=10)
    view = tmp_path / "views" / "textures_n40"
    counts = write_view(cfg, "textures_n40", view)
    assert counts == {"train": 32, "val": 8, "train_total": 40, "test": 16}
    assert (view / "train800val200.txt").read_text().splitlines()[0].startswith("images/c0")
    assert (view / "test.txt").read_text().startswith("test_images/c00/")
    manifest = prepare_task(view, tmp_path / "prepared", task="textures_n40", image_size=18,
                            num_classes=8, group="natural", split_sizes=dict.fromkeys(
                                ("train800", "val200", "train800val200", "test")))
    assert manifest["splits"]["train800val200"]["class_counts"] == {str(c): 5 for c in range(8)}
    assert read_split(tmp_path / "prepared", "train800").images.shape == (32, 18, 18, 3)

    _write_folder_dataset(tmp_path / "raw2", per_class=10, corrupt="train/c03/bad.png")
    cfg2 = _cfg(tmp_path / "second", f"study.data.root={tmp_path / 'raw2'}")
    write_view(cfg2, "textures", tmp_path / "views2" / "textures")
    with pytest.raises(DataError, match=r"cannot decode image images/c03/bad\.png"):
        prepare_task(tmp_path / "views2" / "textures", tmp_path / "prepared2", task="textures",
                     image_size=18, num_classes=8, group="natural",
                     split_sizes=dict.fromkeys(("train800", "val200", "train800val200", "test")))


def test_report_section_escapes_names():
    import pyarrow as pa

    from vpeft.report.manyshot import manyshot_curves
    from vpeft.report.render import environment

    evil = "<script>alert(1)</script>"
    study = {"methods": [evil, "lora"], "manyshot": {
        "d_n10": {"dataset": "d<b>", "subset": 10, "train_images": 10},
        "d": {"dataset": "d<b>", "subset": "full", "train_images": 40}}}

    class Results:
        results = pa.table({"task": ["d_n10", "d", "d_n10"], "method": [evil, evil, "lora"],
                            "status": ["ok", "ok", "diverged"], "test_top1": [12.5, 47.25, None]})

    curves = manyshot_curves(Results(), study)
    assert [m.value for m in curves[0].lines[0].marks] == ["12.5", "47.25"]
    assert len(curves[0].lines) == 1  # a diverged run draws no mark
    html = environment().get_template("_manyshot.html.j2").render(manyshot=curves)
    assert "<script>" not in html and "&lt;script&gt;" in html and "d&lt;b&gt;" in html
    assert 'data-value="47.25"' in html and ">47.3<" in html  # the report's half-up rounding


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------

def _batch(n=6, size=20) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_train_augmentation_is_deterministic_given_the_seed():
    aug = RandomResizedCropFlip(16, horizontal=True, vertical=True)
    images = _batch()
    torch.manual_seed(7)
    a = aug(images)
    torch.manual_seed(7)
    b = aug(images)
    torch.manual_seed(8)
    c = aug(images)
    assert a.dtype == torch.uint8 and a.shape == (6, 16, 16, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_geometry_whole_image_and_flips_are_exact():
    images = _batch(size=16)
    identity = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), horizontal=False)
    assert torch.equal(identity(images), images)
    torch.manual_seed(0)
    flipped = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), horizontal=True,
                                    vertical=True)(images)
    for got, img in zip(flipped, images):
        assert any(torch.equal(got, v) for v in (img, img.flip(1), img.flip(0), img.flip(0).flip(1)))
    assert not torch.equal(flipped, images)
    boxes = RandomResizedCropFlip(16).boxes(500, 20, 20)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 20).all() and (left + w <= 20).all()
    area = h * w / 400
    assert area.min() >= 0.05 and area.max() <= 1.0 and (w / h).max() <= 4 / 3 + 0.15


def test_eval_transform_is_a_centre_crop_that_draws_nothing():
    train, evaluate = build_transforms({"scale": [0.08, 1.0]}, 16, ["horizontal"])
    assert isinstance(train, RandomResizedCropFlip) and not train.vertical
    assert isinstance(evaluate, CenterCrop)
    images = _batch(size=18)
    state = torch.get_rng_state()
    out = evaluate(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, images[:, 1:17, 1:17])
    assert build_transforms(None, 16) == (None, None)


def test_training_loop_applies_augmentation_reproducibly_and_eval_crops(tmp_path):
    from conftest import tiny_vit
    from vpeft.train.loop import Normaliser, predict, train
    from vpeft.train.protocol import Protocol

    images = _batch(n=12, size=18)
    labels = torch.arange(12) % 5
    settings = Protocol.vtab().settings(epochs=2, lr=1e-3, weight_decay=1e-4, batch_size=4,
                                         warmup_epochs=1)
    seen = []

    def spy(batch):
        seen.append((batch.dtype, tuple(batch.shape)))
        return RandomResizedCropFlip(16)(batch)

    def trained(augment):
        model = tiny_vit()
        norm = Normaliser(torch.zeros(3, 1, 1), torch.ones(3, 1, 1), 16)
        train(model, norm, images, labels, settings, seed=3, augment=augment)
        return model, norm

    a, norm = trained(spy)
    assert seen == [(torch.uint8, (4, 18, 18, 3))] * 6  # every batch, before normalisation
    b, _ = trained(RandomResizedCropFlip(16))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c, _ = trained(RandomResizedCropFlip(16, scale=(0.5, 0.6)))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    crop = CenterCrop(16)
    assert torch.equal(predict(a, norm, images, 5, transform=crop), predict(a, norm, crop(images), 5))


# ---------------------------------------------------------------------------------------------
# The miniature through real Snakemake
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def miniature(tmp_path_factory) -> Path:
    workdir = workflow_copy(tmp_path_factory.mktemp("manyshot"))
    proc = run_snakemake(workdir, "all", "--config", f"study={STUDY}", "threads=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


class MarkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict[str, str]] = []
        self.cells: list[dict[str, str]] = []
        self.in_table = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "circle" and "mark" in (attrs.get("class") or ""):
            self.marks.append(attrs)
        if tag == "table":
            self.in_table = "manyshot-table" in (attrs.get("class") or "")
        if tag == "td" and self.in_table:
            self.cells.append(attrs)


@pytest.mark.slow
def test_subset_index_files_are_saved_deterministic_and_reread(miniature):
    subsets = miniature / "data" / "subsets" / STUDY
    index = {t: json.loads((subsets / f"{t}.json").read_text())
             for t in ("textures_n40", "textures_n80", "textures", "count")}
    assert len(index["textures_n40"]["train"]) == 40 and len(index["textures_n80"]["train"]) == 80
    assert set(index["textures_n40"]["train"]) <= set(index["textures_n80"]["train"])
    assert len(index["textures_n40"]["val"]) == 8
    # the saved indices are what a fresh draw with the recorded seed gives
    files = sorted((miniature / "data" / "raw" / STUDY / "textures" / "train").glob("*/*.jpg"))
    labels = np.array([int(f.parent.name[1:]) for f in files])
    again = draw_split(labels, 8, dataset="textures", seed=index["textures_n40"]["seed"], size=40,
                       val_fraction=0.2, val_max=5000)
    assert again["train"] == index["textures_n40"]["train"] and again["val"] == index["textures_n40"]["val"]
    # count has no test part: a quarter of it is carved out, the same for every run
    assert len(index["count"]["test"]) == 30 and not set(index["count"]["test"]) & set(index["count"]["train"])
    # rerunning the verb reads the saved file: byte-identical, view identical
    before = {t: (subsets / f"{t}.json").read_bytes() for t in index}
    view = miniature / "data" / "views" / STUDY / "textures_n40"
    lists = {p.name: p.read_text() for p in view.glob("*.txt")}
    proc = subprocess.run([sys.executable, "-m", "vpeft", "subsets", "--study", STUDY,
                           "--task", "textures_n40"], cwd=miniature, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "using saved subset index" in proc.stderr
    assert {t: (subsets / f"{t}.json").read_bytes() for t in index} == before
    assert {p.name: p.read_text() for p in view.glob("*.txt")} == lists
    manifest = json.loads((miniature / "data" / "prepared" / STUDY / "textures_n40" / "manifest.json").read_text())
    assert manifest["image_size"] == 18
    assert {k: v["count"] for k, v in manifest["splits"].items()} == \
        {"train800": 32, "val200": 8, "train800val200": 40, "test": 120}


@pytest.mark.slow
def test_runs_swept_drop_path_and_augmented(miniature):
    runs = miniature / "runs" / STUDY / "textures_n40"
    for dp in ("0", "0.1"):
        m = json.loads((runs / "linear" / "grid" / f"lr0.01-wd0.0001-drop_path{dp}" / "metrics.json").read_text())
        assert m["optim"]["drop_path"] == float(dp) and m["status"] == "ok"
        assert m["config"]["train"]["augment"]["scale"] == [0.5, 1.0]
    sel = json.loads((runs / "lora" / "selection.json").read_text())
    assert {c["point"] for c in sel["candidates"]} == {"lr0.01-wd0.0001-rank1", "lr0.01-wd0.0001-rank2"}


@pytest.mark.slow
def test_report_section_numbers_equal_the_metrics(miniature):
    html = (miniature / "reports" / STUDY / "index.html").read_text()
    assert 'id="manyshot"' in html
    parser = MarkParser()
    parser.feed(html)
    runs = miniature / "runs" / STUDY
    expected = {}
    for task in ("textures_n40", "textures_n80", "textures", "count"):
        manifest = json.loads((miniature / "data" / "prepared" / STUDY / task / "manifest.json").read_text())
        for method in ("linear", "lora"):
            ev = json.loads((runs / task / method / "final" / "test_eval.json").read_text())
            expected[(task, method)] = (ev["test_top1"], manifest["splits"]["train800val200"]["count"])
    marks = {(m["data-task"], m["data-method"]): (float(m["data-value"]), int(m["data-train-images"]))
             for m in parser.marks}
    cells = {(c["data-task"], c["data-method"]): float(c["data-value"]) for c in parser.cells}
    assert marks == expected
    assert cells == {k: v[0] for k, v in expected.items()}
    assert {k[0]: v[1] for k, v in marks.items()}["textures"] == 200


@pytest.mark.slow
def test_the_curve_rises_with_the_training_set_far_above_chance(miniature):
    """What the many-shot miniature is there to show, on its own results: every method's test
    accuracy rises from the smallest to the largest training set, and ends at least twice
    chance (8 classes: 25 %)."""
    runs = miniature / "runs" / STUDY
    chance = 100 / 8
    for method in ("linear", "lora"):
        acc = [json.loads((runs / t / method / "final" / "test_eval.json").read_text())["test_top1"]
               for t in ("textures_n40", "textures_n80", "textures")]
        assert acc[0] < acc[-1] and acc[-1] >= 2 * chance, (method, acc)

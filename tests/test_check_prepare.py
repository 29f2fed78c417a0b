"""`vpeft check` refuses exactly what the pipeline's data steps refuse, with the same messages.

For each study kind the same spoiled tree goes through the kind's check (``check_task`` /
``check_data``: what `vpeft check` runs, writing nothing) and through the steps that will read it
(`subsets` / `imagenet-split` then `prepare`, and `prepare-shift`); the refusals must be equal,
message for message. Trees are written the way the datasets ship: CIFAR-100's pickled "python
version", NWPU-RESISC45-like class folders, ImageNet-like wnid folders, a VTAB-1K tree as the public
generator writes it. Each duplicates branch of vpeft.data.duplicates is shown on the kind it
belongs to: a dataset's own duplicates are recorded without a switch, mistakes are refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from test_manyshot_formats import CIFAR_SMALL, TEST_LABELS, TRAIN_LABELS, _cfg, _row
from test_manyshot_formats import write_cifar100_python
from vpeft import layout
from vpeft.config import load_study
from vpeft.data.catalog import DEMO_SOURCE
from vpeft.data.errors import DataError
from vpeft.data.shards import read_manifest
from vpeft.kinds import study_kind
from vtab_trees import task_arrays, write_vtab_tree


def _pipeline_refusals(step) -> list[str]:
    """Every message the pipeline's step refuses with ([] when it succeeds)."""
    try:
        step()
    except DataError as err:
        return err.errors
    return []


# ---------------------------------------------------------------------------------------------
# Many-shot: CIFAR-100's pickles
# ---------------------------------------------------------------------------------------------

TEST_ROWS = 40  # CIFAR-100 ships 10,000 test images; 40 keep one duplicate below the 10 % limit


def _cifar_with_test_copies(root: Path, copies: int) -> None:
    """CIFAR-100 python version with TEST_ROWS test rows, the first ``copies`` of them repeating
    the first training rows pixel for pixel (and label)."""
    def edit(part: str, d: dict) -> None:
        if part != "test":
            return
        rng = np.random.default_rng(7)
        images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(TEST_ROWS)]
        labels = [i % 3 for i in range(TEST_ROWS)]
        rows = np.stack([_row(im) for im in images]).astype(np.uint8)
        train_rows = train_data["rows"]
        for i in range(copies):
            rows[i] = train_rows[i]
            labels[i] = TRAIN_LABELS[i]
        d[b"data"] = rows
        d[b"fine_labels"] = labels
        d[b"coarse_labels"] = [lab // 2 for lab in labels]
        d[b"filenames"] = [f"test_{i:06d}.png".encode() for i in range(TEST_ROWS)]

    train_data: dict = {}

    def keep_train(part: str, d: dict) -> None:
        if part == "train":
            train_data["rows"] = d[b"data"].copy()
        edit(part, d)

    write_cifar100_python(root, edit=keep_train)


def _manyshot_both(monkeypatch, tmp_path: Path, task: str, *extra: str,
                   decode: bool = True) -> tuple:
    """(config, check's TaskCheck, the pipeline's refusals) of a many-shot task (3 classes):
    check, then the pipeline's `subsets` and `prepare`."""
    from vpeft.data.manyshot import write_view

    cfg = _cfg(monkeypatch, tmp_path, *CIFAR_SMALL, *extra)
    kind = study_kind(cfg)
    check = kind.check_task(task, 3, decode=decode)
    refusals = _pipeline_refusals(lambda: (write_view(cfg, task, kind.raw_task(task)),
                                           kind.prepare(task)))
    return cfg, check, refusals


def test_cifar100_own_test_duplicates_are_recorded_without_a_switch(tmp_path, monkeypatch):
    _cifar_with_test_copies(tmp_path / "raw", copies=1)
    cfg, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100")
    assert check.problems == [] and refusals == []
    assert any("1 test image also appears in training" in n for n in check.notes), check.notes
    duplicates = read_manifest(layout.prepared_task(cfg, "cifar100"))["content"]["duplicates"]
    assert duplicates["test_in_training"] == 1
    assert "test.txt:1: test image" in duplicates["examples"][0]


def test_cifar100_test_part_mostly_training_images_refused_alike(tmp_path, monkeypatch):
    _cifar_with_test_copies(tmp_path / "raw", copies=12)  # 30 % of test: not the dataset's own
    cfg, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100")
    assert refusals, "prepare accepted a test part that is mostly training images"
    assert check.problems == refusals
    assert any("12 of 40 test images (30 %) have the same pixels" in p for p in refusals)
    assert str(layout.view_dir(cfg, "cifar100").absolute()) in refusals[0]  # where prepare reads
    assert not layout.prepared_task(cfg, "cifar100").exists()


def test_cifar100_own_train_duplicate_split_into_val_and_train_is_recorded(tmp_path, monkeypatch):
    # Both images come from CIFAR-100's own train part: vpeft's draw put one in val and one in
    # train, so the pair is the dataset's, not a mistake in anyone's lists.
    from vpeft.data.manyshot import draw_split

    split = draw_split(np.array(TRAIN_LABELS), 3, dataset="cifar100", seed=0, size=None,
                       val_fraction=0.2, val_max=5000)
    val = split["val"][0]
    twin = next(i for i in split["train"] if i not in split["val"]
                and TRAIN_LABELS[i] == TRAIN_LABELS[val])

    def edit(part: str, d: dict) -> None:
        if part == "train":
            d[b"data"][val] = d[b"data"][twin]

    write_cifar100_python(tmp_path / "raw", edit=edit)
    cfg, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100")
    assert check.problems == [] and refusals == []
    duplicates = read_manifest(layout.prepared_task(cfg, "cifar100"))["content"]["duplicates"]
    assert (duplicates["val200_in_train800"], duplicates["test_in_training"]) == (1, 0)
    assert any("1 val200 image also in train800" in n for n in check.notes), check.notes


# ---------------------------------------------------------------------------------------------
# Many-shot: a list-file dataset (the same file named by train and test) and class folders
# ---------------------------------------------------------------------------------------------

def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)


def _list_dataset(root: Path, *, test_names_train_file: bool) -> list[str]:
    lines = {"train": [], "test": []}
    for split, n, offset in (("train", 24, 0), ("test", 30, 100)):
        for i in range(n):
            _png(root / "images" / split / f"{i:06d}.png", offset + i)
            lines[split].append(f"images/{split}/{i:06d}.png {i % 3}")
    if test_names_train_file:  # the user's test list points at a training image
        lines["test"][4] = "images/train/000004.png 1"
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return ["~study.data.datasets.cifar100.train", "~study.data.datasets.cifar100.test",
            f"+study.data.datasets.cifar100.train={{format: list, list: {root / 'train.txt'}}}",
            f"+study.data.datasets.cifar100.test={{format: list, list: {root / 'test.txt'}}}"]


@pytest.mark.parametrize("decode", [True, False], ids=["decoded", "no-decode"])
@pytest.mark.parametrize("spoiled", [False, True], ids=["clean", "same-file-in-train-and-test"])
def test_list_dataset_same_file_in_two_splits_refused_alike(tmp_path, monkeypatch, spoiled, decode):
    # the same file needs no pixels to be seen: --no-decode refuses it too, in prepare's words
    extra = _list_dataset(tmp_path / "raw" / "lists", test_names_train_file=spoiled)
    _, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100", *extra, decode=decode)
    assert check.problems == refusals
    if spoiled:
        assert any("test.txt:5: test image test_images/images/train/000004.png has the same pixels"
                   in p and "(the same file is listed in both splits)" in p for p in refusals), refusals
    else:
        assert refusals == []


def test_class_folder_dataset_empty_image_refused_alike(tmp_path, monkeypatch):
    # NWPU-RESISC45 as it ships: <class>/<class>_NNN.jpg, no official split (test carved out).
    root = tmp_path / "raw" / "NWPU-RESISC45"
    for c, name in enumerate(("airplane", "beach", "church")):
        for i in range(12):
            path = root / name / f"{name}_{i + 1:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(c * 100 + i)
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    (root / "beach" / "beach_007.jpg").write_bytes(b"")  # an interrupted copy
    extra = ["~study.data.datasets.cifar100.train", "~study.data.datasets.cifar100.test",
             "+study.data.datasets.cifar100.train={format: folders, root: " + str(root) + "}",
             "+study.data.datasets.cifar100.test_fraction=0.25"]
    _, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100", *extra)
    assert refusals and check.problems == refusals
    assert any("beach/beach_007.jpg: empty file (0 bytes)" in p for p in refusals), refusals


# ---------------------------------------------------------------------------------------------
# Many-shot without decoding: the structure checked as prepare checks it, the pixels said skipped
# ---------------------------------------------------------------------------------------------

def _label_out_of_range(part: str, d: dict) -> None:
    if part == "train":
        d[b"fine_labels"][5] = 7  # a 3-class meta: a re-pickle gone wrong


def _labels_cut_short(part: str, d: dict) -> None:
    if part == "test":
        d[b"fine_labels"] = d[b"fine_labels"][:-1]  # a row without its label


@pytest.mark.parametrize("spoil,expect", [
    (_label_out_of_range, "cifar-100-python/train: fine label 7 of row 5 outside [0, 3)"),
    (_labels_cut_short, "cifar-100-python/test: b'data' has 6 rows but b'fine_labels' has 5"),
], ids=["label-out-of-range", "labels-cut-short"])
def test_no_decode_refuses_a_cifar_tree_as_the_pipeline_does(tmp_path, monkeypatch, spoil, expect):
    write_cifar100_python(tmp_path / "raw", edit=spoil)
    _, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100_n6", decode=False)
    assert refusals and check.problems == refusals
    assert any(expect in p for p in refusals), refusals


def test_no_decode_refuses_a_missing_list_image_as_the_pipeline_does(tmp_path, monkeypatch):
    extra = _list_dataset(tmp_path / "raw" / "lists", test_names_train_file=False)
    (tmp_path / "raw" / "lists" / "images" / "test" / "000003.png").unlink()  # a partial download
    _, check, refusals = _manyshot_both(monkeypatch, tmp_path, "cifar100", *extra, decode=False)
    assert refusals and check.problems == refusals
    assert any("image not found: images/test/000003.png" in p for p in refusals), refusals


def test_no_decode_lists_cifar_images_without_writing_them(tmp_path, monkeypatch):
    from vpeft.data.manyshot import write_view

    write_cifar100_python(tmp_path / "raw")
    cfg = _cfg(monkeypatch, tmp_path, *CIFAR_SMALL)
    unwritten: set[str] = set()
    write_view(cfg, "cifar100_n6", tmp_path / "view", save_index=False, unwritten=unwritten)
    listed = {line.split(" ")[0] for split in ("train800", "val200", "train800val200", "test")
              for line in (tmp_path / "view" / f"{split}.txt").read_text().splitlines()}
    assert unwritten == listed and len(listed) == 6 + len(TEST_LABELS)
    assert [p for p in (tmp_path / "view").rglob("*.png")] == []
    full = study_kind(cfg).check_task("cifar100_n6", 3, decode=True)
    quick = study_kind(cfg).check_task("cifar100_n6", 3, decode=False)
    assert quick.counts == full.counts and quick.problems == full.problems == []
    assert f"{len(listed)} images the step writes into the view from the dataset's pixel " \
           "arrays: listed and counted, not written: --no-decode" in quick.notes


def test_no_decode_check_says_pixel_duplicates_were_not_checked(tmp_path, monkeypatch, capsys):
    # 12 of 40 test images repeat training images: only decoding can see it, and prepare refuses.
    from vpeft import cli

    _cifar_with_test_copies(tmp_path / "raw", copies=12)
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    argv = ["check", "--study", "manyshot", "-o", "study.tasks=[cifar100]"]
    for o in (f"paths.data={tmp_path / 'data'}", f"study.data.root={tmp_path / 'raw'}",
              "model.weights=/w.npz", *CIFAR_SMALL):
        argv += ["-o", o]
    assert cli.main([*argv, "--no-decode"]) == 1  # the weights file is missing
    quick = capsys.readouterr().out
    assert "SKIPPED pixel duplicates not checked: --no-decode" in quick
    assert [line for line in quick.splitlines() if line.startswith("PROBLEM")] == [
        "PROBLEM model.weights: model.weights: file not found: /w.npz"]
    assert cli.main(argv) == 1
    full = capsys.readouterr().out
    assert "SKIPPED" not in full
    assert any(line.startswith("PROBLEM cifar100: ") and "12 of 40 test images (30 %)" in line
               for line in full.splitlines()), full


# ---------------------------------------------------------------------------------------------
# VTAB-1K: the user's own tree
# ---------------------------------------------------------------------------------------------

SIZES = {"train800": 12, "val200": 6, "train800val200": 18, "test": 20}


def _vtab(tmp_path: Path, monkeypatch, records) -> tuple:
    write_vtab_tree(tmp_path / "vtab" / "toy", records)
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    cfg = load_study("vtab1k", [f"paths.data={tmp_path / 'data'}", f"study.data.root={tmp_path / 'vtab'}",
                                "model.weights=/w.npz", "study.tasks=[toy]",
                                "+study.task_info={toy: {num_classes: 3, group: natural}}",
                                "study.data.split_sizes=" + json.dumps(SIZES).replace('"', "")]).cfg
    kind = study_kind(cfg)
    return cfg, kind.check_task("toy", 3, decode=True), _pipeline_refusals(lambda: kind.prepare("toy"))


def test_vtab_tree_val200_copy_of_train800_refused_alike(tmp_path, monkeypatch):
    records = task_arrays(3, SIZES, grey=False)
    records["val200"][2] = records["train800"][5]
    records["train800val200"] = records["train800"] + records["val200"]
    cfg, check, refusals = _vtab(tmp_path, monkeypatch, records)
    assert refusals and check.problems == refusals
    assert "val200.txt:3: image images/val200/000002.jpg has the same pixels as" in refusals[0]


def test_vtab_tree_test_duplicate_recorded_alike(tmp_path, monkeypatch):
    records = task_arrays(3, SIZES, grey=False)
    records["test"][0] = records["train800"][5]
    cfg, check, refusals = _vtab(tmp_path, monkeypatch, records)
    assert check.problems == [] and refusals == []
    manifest = read_manifest(layout.prepared_task(cfg, "toy"))
    assert manifest["content"]["duplicates"]["test_in_training"] >= 1
    assert any("also appear" in n for n in check.notes), check.notes


# ---------------------------------------------------------------------------------------------
# Robustness: ImageNet-like wnid folders (few-shot split, ID test set) and a shift set
# ---------------------------------------------------------------------------------------------

CLASSES = DEMO_SOURCE.class_names  # label_space: synthetic_source (24 classes)


def _wnid_tree(root: Path, per_class: int, offset: int) -> None:
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            _png(root / name / f"{name}_{i:04d}.png", offset + 1000 * c + i)


def _robustness_plan(tmp_path: Path, monkeypatch, spoil):
    """The robustness study on ImageNet-like train / val trees and one shift set."""
    trees = tmp_path / "trees"
    _wnid_tree(trees / "train", 11, 0)
    _wnid_tree(trees / "val", 3, 50_000)
    _wnid_tree(trees / "sketch", 2, 90_000)
    spoil(trees)
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    return load_study("demo_robustness", [
        f"paths.data={tmp_path / 'data'}", f"paths.models={tmp_path / 'models'}",
        "~study.robustness.train", "~study.robustness.test", "~study.robustness.shifts",
        f"+study.robustness.train={{root: {trees / 'train'}, format: wnid_folders}}",
        f"+study.robustness.test={{name: val, root: {trees / 'val'}, format: wnid_folders}}",
        f"+study.robustness.shifts={{sketch: {{root: {trees / 'sketch'}, format: wnid_folders}}}}",
        "study.robustness.miniature=null"])


def _robustness(tmp_path: Path, monkeypatch, spoil) -> tuple:
    from vpeft.robustness.pipeline import imagenet_split, prepare_shift

    cfg = _robustness_plan(tmp_path, monkeypatch, spoil).cfg
    kind = study_kind(cfg)
    checks = {c.task: c for c in kind.check_data(["imagenet"], decode=True)}
    task = _pipeline_refusals(lambda: (imagenet_split(cfg, "imagenet"), kind.prepare("imagenet")))
    shift = _pipeline_refusals(lambda: prepare_shift(cfg, "sketch"))
    return cfg, checks, task, shift


def test_imagenet_val_holding_a_train_image_is_recorded_and_a_bad_shift_refused_alike(
        tmp_path, monkeypatch):
    def spoil(trees: Path) -> None:
        name = CLASSES[3]
        (trees / "val" / name / f"{name}_0001.png").write_bytes(
            (trees / "train" / name / f"{name}_0005.png").read_bytes())
        (trees / "sketch" / CLASSES[0] / f"{CLASSES[0]}_0001.png").write_bytes(b"")

    cfg, checks, task, shift = _robustness(tmp_path, monkeypatch, spoil)
    assert checks["imagenet"].problems == task == []
    assert any("1 test image also appears in training" in n for n in checks["imagenet"].notes)
    duplicates = read_manifest(layout.prepared_task(cfg, "imagenet"))["content"]["duplicates"]
    assert duplicates["test_in_training"] == 1
    assert shift and checks["sketch"].problems == shift
    assert shift[0].endswith(f"{CLASSES[0]}_0001.png: cannot decode: empty file (0 bytes)")


def test_imagenet_val_copied_from_train_refused_alike(tmp_path, monkeypatch):
    def spoil(trees: Path) -> None:  # the val folder filled from the train folder by mistake
        for name in CLASSES:
            for i in range(3):
                (trees / "val" / name / f"{name}_{i:04d}.png").write_bytes(
                    (trees / "train" / name / f"{name}_{i:04d}.png").read_bytes())

    cfg, checks, task, shift = _robustness(tmp_path, monkeypatch, spoil)
    assert task and checks["imagenet"].problems == task
    # (the 24 train images left out of the few-shot split are not training images)
    assert any("64 of 72 test images (89 %) have the same pixels" in p for p in task), task
    assert shift == checks["sketch"].problems == []


# ---------------------------------------------------------------------------------------------
# Decoding on every core gives what one process gives, in order
# ---------------------------------------------------------------------------------------------

def test_decoding_on_a_pool_matches_one_process_in_order(tmp_path):
    from vpeft.data.decode import SERIAL_BELOW, digest_files

    paths = []
    for i in range(SERIAL_BELOW + 40):  # enough for the pool to start
        path = tmp_path / f"{i:04d}.png"
        _png(path, i % 50)              # repeats: equal pixels give equal digests
        paths.append(path)
    paths[7].write_bytes(b"")
    paths[100].write_bytes(b"GIF89a broken")
    (tmp_path / "folder.png").mkdir()
    paths.append(tmp_path / "folder.png")
    serial = digest_files(paths, workers=1)
    pooled = digest_files(paths, workers=2)
    assert pooled == serial
    assert serial[7] == ("error", "empty file (0 bytes)", "")
    assert serial[100][0] == "error" and " at 0x" not in serial[100][1]
    assert serial[-1] == ("error", "is a directory, not an image file", "")
    assert serial[1] == serial[51] and serial[1][:2] == ("ok", "RGB")


# ---------------------------------------------------------------------------------------------
# One progress bar for the whole study: its total is every image decoding will read
# ---------------------------------------------------------------------------------------------

class _Bar:
    """A progress factory that records what `vpeft check` tells its bar (no terminal needed)."""

    def __init__(self) -> None:
        self.totals: list[int] = []
        self.done = 0

    def __call__(self, total: int) -> _Bar:
        self.totals.append(total)
        return self

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.done += n


def test_one_bar_counts_every_image_of_a_many_shot_study(tmp_path, monkeypatch):
    from vpeft.check import check_tasks

    write_cifar100_python(tmp_path / "raw")
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    plan = load_study("manyshot", [f"paths.data={tmp_path / 'data'}", f"study.data.root={tmp_path / 'raw'}",
                                   "model.weights=/w.npz", *CIFAR_SMALL, "study.tasks=[cifar100_n6,cifar100]"])
    bar = _Bar()
    checks = check_tasks(plan, True, progress=bar)
    assert [c.problems for c in checks] == [[], []]
    # each task lists its training images twice (train800 / val200, train800val200), then test
    decoded = (2 * 6 + len(TEST_LABELS)) + (2 * len(TRAIN_LABELS) + len(TEST_LABELS))
    assert sum(n for c in checks for n in c.counts.values()) == decoded
    written = (6 + len(TEST_LABELS)) + (len(TRAIN_LABELS) + len(TEST_LABELS))  # PNGs, once each
    assert bar.totals == [decoded + written] and bar.done == decoded + written
    quiet = _Bar()
    check_tasks(plan, False, progress=quiet)
    assert quiet.totals == []  # --no-decode: no bar


def test_one_bar_counts_the_robustness_task_and_its_shift_sets(tmp_path, monkeypatch):
    from vpeft.check import check_tasks

    plan = _robustness_plan(tmp_path, monkeypatch, lambda trees: None)
    bar = _Bar()
    checks = {c.task: c for c in check_tasks(plan, True, progress=bar)}
    assert not any(c.problems for c in checks.values())
    assert checks["sketch"].counts == {"test": 2 * len(CLASSES)}
    assert checks["imagenet"].counts["test"] == 3 * len(CLASSES)
    assert bar.totals == [sum(n for c in checks.values() for n in c.counts.values())]
    assert bar.done == bar.totals[0]


def test_one_bar_leaves_out_a_task_refused_before_decoding(tmp_path, monkeypatch):
    from vpeft.check import check_tasks

    for task in ("good", "broken"):
        write_vtab_tree(tmp_path / "vtab" / task, task_arrays(3, SIZES, grey=False))
    with open(tmp_path / "vtab" / "broken" / "val200.txt", "a") as fh:
        fh.write("images/val200/000000.jpg\n")  # a line without its label
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    info = "{good: {num_classes: 3, group: natural}, broken: {num_classes: 3, group: natural}}"
    plan = load_study("vtab1k", [f"paths.data={tmp_path / 'data'}", f"study.data.root={tmp_path / 'vtab'}",
                                 "model.weights=/w.npz", "study.tasks=[good,broken]",
                                 f"+study.task_info={info}",
                                 "study.data.split_sizes=" + json.dumps(SIZES).replace('"', "")])
    bar = _Bar()
    good, broken = check_tasks(plan, True, progress=bar)
    assert good.problems == [] and any("malformed line" in p for p in broken.problems)
    assert bar.totals == [sum(SIZES.values())] and bar.done == sum(SIZES.values())

"""Many-shot datasets read as they are distributed, in place: CIFAR-100's "python version"
pickles, NWPU-RESISC45's class folders, Clevr-Dist written from the VTAB source as list files.
Each goes through the verbs the pipeline runs (`vpeft subsets`, `vpeft prepare`), and the prepared
labels and pixels are checked image by image against what was written; bad input is one clear
error naming the file, with nothing half-written."""
from __future__ import annotations

import codecs
import io
import json
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from vpeft import cli
from vpeft.config import load_study
from vpeft.data.cifar import read_cifar100
from vpeft.data.manyshot import clevr_dist_label, dataset_specs, write_clevr_dist, write_view
from vpeft.data.errors import DataError
from vpeft.data.formats import source
from vpeft.data.shards import read_split, read_test_labels
from vpeft.errors import UserError

CLASSES = ["apple", "aquarium_fish", "baby"]
TRAIN_LABELS = [0, 1, 2] * 8                # 24 rows, 8 per class, interleaved as in the original
TEST_LABELS = [2, 0, 1, 1, 2, 0]


# ---------------------------------------------------------------------------------------------
# Writing the real layouts
# ---------------------------------------------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the CIFAR-100 originals: every str and bytes as a py2
    str (SHORT_BINSTRING / BINSTRING), numpy arrays through ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)


def _pickle_bytes(obj, protocol=2, py2=False) -> bytes:
    buf = io.BytesIO()
    (Py2Pickler(buf, protocol=2) if py2 else pickle.Pickler(buf, protocol=protocol)).dump(obj)
    return buf.getvalue()


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _row(img: np.ndarray) -> np.ndarray:
    """One CIFAR row as the archive's README states it: 1024 R values (row-major), then G, then B."""
    return np.concatenate([img[:, :, 0].ravel(), img[:, :, 1].ravel(), img[:, :, 2].ravel()])


def _part_dict(labels, images, part) -> dict:
    # key order of the original files
    return {b"filenames": [f"{CLASSES[lab]}_s_{i:06d}.png".encode() for i, lab in enumerate(labels)],
            b"batch_label": b"training batch 1 of 1" if part == "train" else b"testing batch 1 of 1",
            b"fine_labels": list(labels), b"coarse_labels": [lab // 2 for lab in labels],
            b"data": np.stack([_row(im) for im in images]).astype(np.uint8)}


def write_cifar100_python(root: Path, protocol=2, py2=False, edit=None) -> dict[str, list[np.ndarray]]:
    """``root/cifar-100-python/{train,test,meta}`` as the archive unpacks; ``edit(part, dict)``
    may spoil a dict before it is pickled. Returns the images written, per part."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    meta = {b"fine_label_names": [c.encode() for c in CLASSES],
            b"coarse_label_names": [b"fruit_and_vegetables", b"fish"]}
    for part, labels, offset in (("train", TRAIN_LABELS, 0), ("test", TEST_LABELS, 1000)):
        images = [_image(offset + i) for i in range(len(labels))]
        d = _part_dict(labels, images, part)
        if edit is not None:
            edit(part, d)
        (folder / part).write_bytes(_pickle_bytes(d, protocol, py2))
        written[part] = images
    if edit is not None:
        edit("meta", meta)
    (folder / "meta").write_bytes(_pickle_bytes(meta, protocol, py2))
    return written


def _globals(data: bytes) -> set[str]:
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        if isinstance(arg, str):
            strings.append(arg)
    return found


# ---------------------------------------------------------------------------------------------
# The pipeline's verbs on the paper study's config, pointed at a tmp data root
# ---------------------------------------------------------------------------------------------

def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"paths.data={tmp_path / 'data'}", f"study.data.root={tmp_path / 'raw'}",
            "model.weights=/w.npz", *extra]


def _verb(monkeypatch, tmp_path, verb, task, *extra) -> None:
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    argv = [verb, "--study", "manyshot", "--task", task]
    for o in _overrides(tmp_path, *extra):
        argv += ["-o", o]
    assert cli.main(argv) == 0, f"vpeft {verb} --task {task} failed"


def _cfg(monkeypatch, tmp_path, *extra):
    monkeypatch.setenv("VPEFT_PARAMS", str(REPO / "params"))
    return load_study("manyshot", _overrides(tmp_path, *extra)).cfg


CIFAR_SMALL = ("study.data.datasets.cifar100.num_classes=3",
               "study.data.datasets.cifar100.subsets=[6,full]",
               "study.data.stored_size=32")  # stored at the source size: prepared pixels stay exact


# ---------------------------------------------------------------------------------------------
# CIFAR-100 python version
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("py2,protocol,expect", [
    (True, 2, "numpy.core.multiarray._reconstruct"),    # the original files (Python 2 cPickle)
    (False, 2, "_codecs.encode"),                        # re-pickled under Python 3, protocol 2
    (False, 3, "numpy._core.multiarray._reconstruct"),
    (False, 5, "numpy._core.numeric._frombuffer"),       # pickle.HIGHEST_PROTOCOL
])
def test_cifar100_python_reads_labels_classes_and_pixels_image_by_image(tmp_path, py2, protocol, expect):
    written = write_cifar100_python(tmp_path, protocol, py2)
    folder = tmp_path / "cifar-100-python"
    assert expect in _globals((folder / "train").read_bytes())  # the path under test is exercised
    for part, labels in (("train", TRAIN_LABELS), ("test", TEST_LABELS)):
        got = read_cifar100(folder, part)
        assert got.classes == CLASSES and got.labels.tolist() == labels
        assert got.images.shape == (len(labels), 32, 32, 3) and got.images.dtype == np.uint8
        for i, img in enumerate(written[part]):
            assert np.array_equal(got.images[i], img), f"{part} row {i}"
    # plane order spelled out on the raw row: R(0,0), G(0,0), B(0,0), R(0,1), R(1,0)
    raw = pickle.loads((folder / "train").read_bytes(), encoding="bytes")[b"data"][0]
    img = read_cifar100(folder, "train").images[0]
    assert img[0, 0].tolist() == [raw[0], raw[1024], raw[2048]]
    assert img[0, 1, 0] == raw[1] and img[1, 0, 0] == raw[32]


def test_cifar100_through_subsets_and_prepare_pixels_and_labels_exact(tmp_path, monkeypatch):
    written = write_cifar100_python(tmp_path / "raw")
    for task in ("cifar100_n6", "cifar100"):
        _verb(monkeypatch, tmp_path, "subsets", task, *CIFAR_SMALL)
        _verb(monkeypatch, tmp_path, "prepare", task, *CIFAR_SMALL)
    views = tmp_path / "data" / "views" / "manyshot"
    prepared = tmp_path / "data" / "prepared" / "manyshot"

    # the n6 view holds just its 6 training images (2 a class) and the 6 test images, as PNGs
    view = views / "cifar100_n6"
    assert not (view / "images").is_symlink() and len(list((view / "images").iterdir())) == 6
    assert sorted(p.name for p in (view / "test_images").iterdir()) == \
        [f"{i:05d}.png" for i in range(6)]
    assert json.loads((view / "classes.json").read_text())["classes"] == CLASSES
    lines = (view / "train800val200.txt").read_text().splitlines()
    assert len(lines) == 6 and all(ln.startswith("images/") and ln.endswith(".png " + ln[-1]) for ln in lines)
    assert sorted(int(ln[-1]) for ln in lines) == [0, 0, 1, 1, 2, 2]
    index = json.loads((tmp_path / "data" / "subsets" / "manyshot" / "cifar100_n6.json").read_text())
    assert set(index["train"]) <= set(range(24)) and len(index["train"]) == 6

    for task, n_train in (("cifar100_n6", 6), ("cifar100", 24)):
        train = read_split(prepared / task, "train800val200")
        assert len(train.paths) == n_train
        for path, label, pixels in zip(train.paths, train.labels, train.images):
            row = int(Path(path).stem)  # images/<row>.png
            assert label == TRAIN_LABELS[row]
            assert np.array_equal(pixels, written["train"][row]), f"{task} {path}"
        test = read_split(prepared / task, "test")
        _, test_labels = read_test_labels(prepared / task)
        assert test.paths == [f"test_images/{i:05d}.png" for i in range(6)]
        assert test_labels.tolist() == TEST_LABELS
        for i, pixels in enumerate(test.images):
            assert np.array_equal(pixels, written["test"][i])
        assert len(read_split(prepared / task, "val200").paths) == round(0.2 * n_train)

    # rewriting a view gives byte-identical PNGs (deterministic), from the saved index
    before = {p.name: p.read_bytes() for p in (view / "images").iterdir()}
    _verb(monkeypatch, tmp_path, "subsets", "cifar100_n6", *CIFAR_SMALL)
    assert {p.name: p.read_bytes() for p in (view / "images").iterdir()} == before


def test_paper_study_reads_cifar_python_and_still_takes_folders(tmp_path, monkeypatch):
    cfg = _cfg(monkeypatch, tmp_path)
    cifar = dataset_specs(cfg)["cifar100"]
    root = tmp_path / "raw" / "cifar-100-python"
    assert cifar.train == source("cifar100_python", root=root, part="train")
    assert cifar.test.inputs == (root / "test", root / "meta")
    folders = _cfg(monkeypatch, tmp_path, "~study.data.datasets.cifar100.train",
                   "+study.data.datasets.cifar100.train={format: folders, root: c/train}")
    assert dataset_specs(folders)["cifar100"].train == source("folders",
                                                              root=tmp_path / "raw" / "c" / "train")
    with pytest.raises(UserError, match=r"cifar100\.train\.part: 'val' is not one of train, test"):
        dataset_specs(_cfg(monkeypatch, tmp_path, "study.data.datasets.cifar100.train.part=val"))
    with pytest.raises(UserError, match=r"'study\.data\.datasets\.cifar100\.train\.part' \(from "
                                        r"the override .*\): missing; format 'cifar100_python' "
                                        r"needs it \(keys of format 'cifar100_python': format, "
                                        r"root, part\)"):
        _cfg(monkeypatch, tmp_path, "~study.data.datasets.cifar100.train.part")


class Custom:
    """Any class of the user's: a pickle naming it must not be resolved."""


class RunsACommand:
    def __reduce__(self):
        return (os.system, ('touch "$VPEFT_TEST_MARKER"',))


class OtherCodec:
    def __reduce__(self):
        return (codecs.encode, ("data", "rot13"))


def _drop(key):
    return lambda part, d: d.pop(key) if part == "train" else None


def _set(key, value, part="train"):
    return lambda p, d: d.__setitem__(key, value(d) if callable(value) else value) if p == part else None


BAD_CIFAR = {
    "missing file": (None, "train", r"train: file not found"),
    "truncated": ("truncate", "train", r"train: not a readable pickle \(corrupt or truncated\?\)"),
    "not a pickle": ("garbage", "train", r"train: not a readable pickle"),
    "runs a command": (_set(b"data", RunsACommand()), "train", r"train: refused to load global (posix|os)\.system"),
    "custom class": (_set(b"fine_labels", [Custom()]), "train",
                     r"train: refused to load global test_manyshot_formats\.Custom"),
    "other codec": (_set(b"batch_label", OtherCodec()), "train", r"train: not a readable pickle.*rot13"),
    "missing key": (_drop(b"fine_labels"), "train", r"train: key b'fine_labels' missing"),
    "label out of range": (_set(b"fine_labels", lambda d: d[b"fine_labels"][:-1] + [3]), "train",
                           r"train: fine label 3 of row 23 outside \[0, 3\)"),
    "wrong row width": (_set(b"data", lambda d: d[b"data"][:, :3071]), "train",
                        r"train: b'data' must be a uint8 array of N x 3072.*\(24, 3071\)"),
    "wrong dtype": (_set(b"data", lambda d: d[b"data"].astype(np.float32)), "train",
                    r"train: b'data' must be a uint8 array.*float32"),
    "row count mismatch": (_set(b"fine_labels", lambda d: d[b"fine_labels"][:-1], "test"), "test",
                           r"test: b'data' has 6 rows but b'fine_labels' has 5 entries"),
    "meta names 2 classes": (_set(b"fine_label_names", [b"apple", b"baby"], "meta"), "meta",
                             r"train: fine label 2 of row 2 outside \[0, 2\).*meta names 2 classes"),
    "meta not a dict": (lambda p, d: None, "meta", r"meta: expected a pickled dict, found list"),
}


@pytest.mark.parametrize("case", list(BAD_CIFAR))
def test_bad_cifar_input_is_one_error_naming_the_file_and_nothing_is_written(tmp_path, monkeypatch, case):
    edit, name, message = BAD_CIFAR[case]
    marker = tmp_path / "marker"
    monkeypatch.setenv("VPEFT_TEST_MARKER", str(marker))
    write_cifar100_python(tmp_path / "raw", edit=edit if callable(edit) else None)
    target = tmp_path / "raw" / "cifar-100-python" / name
    if case == "missing file":
        target.unlink()
    elif edit == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif edit == "garbage":
        target.write_bytes(b"not a pickle at all")
    elif case == "meta not a dict":
        target.write_bytes(_pickle_bytes([b"apple"]))
    cfg = _cfg(monkeypatch, tmp_path, *CIFAR_SMALL)
    view = tmp_path / "data" / "views" / "manyshot" / "cifar100_n6"
    with pytest.raises(DataError, match=message) as err:
        write_view(cfg, "cifar100_n6", view)
    assert str(target) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists(), "the pickle ran a command"
    assert not view.exists()
    assert not view.parent.exists() or not any(view.parent.iterdir())  # no temporary left over
    assert not (tmp_path / "data" / "subsets").exists()


def test_class_count_other_than_declared_is_an_error_naming_meta(tmp_path, monkeypatch):
    write_cifar100_python(tmp_path / "raw")
    cfg = _cfg(monkeypatch, tmp_path, *CIFAR_SMALL, "study.data.datasets.cifar100.num_classes=100")
    with pytest.raises(DataError, match=r"cifar-100-python/meta: fine_label_names names 3 classes, "
                                        r"but the dataset declares num_classes=100"):
        write_view(cfg, "cifar100", tmp_path / "v")


# ---------------------------------------------------------------------------------------------
# NWPU-RESISC45 as distributed; odd but valid JPEGs
# ---------------------------------------------------------------------------------------------

NWPU_CLASSES = ["airplane", "baseball_diamond", "chaparral"]


def write_nwpu(root: Path, per_class: int = 10) -> dict[str, np.ndarray]:
    """``NWPU-RESISC45/<class>/<class>_NNN.jpg``, 256 x 256 RGB JPEGs; returns the decoded pixels."""
    rng = np.random.default_rng(7)
    decoded = {}
    for c in NWPU_CLASSES:
        (root / "NWPU-RESISC45" / c).mkdir(parents=True)
        for i in range(1, per_class + 1):
            rel = f"{c}/{c}_{i:03d}.jpg"
            base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(32, 0).repeat(32, 1)
            Image.fromarray(base).save(root / "NWPU-RESISC45" / rel, quality=90)
            with Image.open(root / "NWPU-RESISC45" / rel) as im:
                decoded[rel] = np.asarray(im.convert("RGB"))
    return decoded


def test_nwpu_resisc45_reads_in_place_with_a_carved_test_part(tmp_path, monkeypatch):
    decoded = write_nwpu(tmp_path / "raw")
    small = ("study.data.datasets.resisc45.num_classes=3",)
    _verb(monkeypatch, tmp_path, "subsets", "resisc45", *small)
    _verb(monkeypatch, tmp_path, "prepare", "resisc45", *small)
    view = tmp_path / "data" / "views" / "manyshot" / "resisc45"
    assert (view / "images").is_symlink()  # read in place: nothing copied
    assert (view / "images").resolve() == (tmp_path / "raw" / "NWPU-RESISC45").resolve()
    assert json.loads((view / "classes.json").read_text())["classes"] == NWPU_CLASSES
    test_lines = (view / "test.txt").read_text().splitlines()
    assert len(test_lines) == 6 and sorted(int(ln[-1]) for ln in test_lines) == [0, 0, 1, 1, 2, 2]
    prepared = tmp_path / "data" / "prepared" / "manyshot" / "resisc45"
    train = read_split(prepared, "train800val200")
    assert len(train.paths) == 24
    assert not {p.removeprefix("images/") for p in train.paths} & \
        {ln.split()[0].removeprefix("images/") for ln in test_lines}
    for path, label, pixels in zip(train.paths, train.labels, train.images):
        rel = path.removeprefix("images/")
        assert NWPU_CLASSES[label] == rel.split("/")[0]
        assert np.array_equal(pixels, decoded[rel]), path  # stored at 256: the decoded JPEG


def test_png_bytes_under_jpg_name_and_cmyk_jpeg_are_read(tmp_path, monkeypatch):
    decoded = write_nwpu(tmp_path / "raw", per_class=5)
    folder = tmp_path / "raw" / "NWPU-RESISC45" / "airplane"
    png_pixels = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(png_pixels).save(folder / "airplane_001.jpg", format="PNG")
    cmyk = np.random.default_rng(2).integers(0, 256, (8, 8, 4), dtype=np.uint8).repeat(32, 0).repeat(32, 1)
    Image.fromarray(cmyk, "CMYK").save(folder / "airplane_002.jpg", format="JPEG", quality=95)
    assert (folder / "airplane_001.jpg").read_bytes()[:4] == b"\x89PNG"
    with Image.open(folder / "airplane_002.jpg") as im:
        assert im.format == "JPEG" and im.mode == "CMYK"
        decoded["airplane/airplane_002.jpg"] = np.asarray(im.convert("RGB"))
    decoded["airplane/airplane_001.jpg"] = png_pixels
    small = ("study.data.datasets.resisc45.num_classes=3", "study.data.datasets.resisc45.test_fraction=0.5")
    _verb(monkeypatch, tmp_path, "subsets", "resisc45", *small)
    _verb(monkeypatch, tmp_path, "prepare", "resisc45", *small)
    prepared = tmp_path / "data" / "prepared" / "manyshot" / "resisc45"
    seen = {}
    for split in ("train800val200", "test"):
        data = read_split(prepared, split)
        seen.update({p.split("/", 1)[1]: px for p, px in zip(data.paths, data.images)})
    assert len(seen) == 15
    for rel in ("airplane/airplane_001.jpg", "airplane/airplane_002.jpg"):
        assert np.array_equal(seen[rel], decoded[rel]), rel
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["conversions"].get("CMYK") == 1  # the conversion is recorded, not hidden


# ---------------------------------------------------------------------------------------------
# Clevr-Dist from the VTAB source
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("z,label", [([8.0], 0), ([0.5, 30.0], 0), ([8.0001], 1), ([12.0, 8.7], 2),
                                     ([9.0], 2), ([9.25], 3), ([10.0], 4), ([10.5, 11.0], 5),
                                     ([100.0], 5)])
def test_clevr_dist_label_uses_vtab_bins_of_the_closest_object(z, label):
    assert clevr_dist_label(np.asarray(z, np.float32)) == label


@pytest.mark.parametrize("z", [[], [0.0], [100.5], [float("nan")]])
def test_clevr_dist_label_refuses_depths_outside_the_bins(z):
    with pytest.raises(ValueError):
        clevr_dist_label(z)


def _clevr_records(n: int, offset: int):
    """(image, pixel_coords[:, 2]) as tfds clevr yields them: 320 x 480 RGB, a few objects."""
    rng = np.random.default_rng(offset)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # small stand-in for 320 x 480
        closest = [7.5, 8.2, 8.7, 9.2, 9.7, 11.0][i % 6]
        z = rng.permutation(np.array([closest, closest + 0.5, 14.0], dtype=np.float32))
        out.append((image, z))
    return out


def test_clevr_dist_written_as_a_list_layout_reads_through_the_pipeline(tmp_path, monkeypatch):
    root = tmp_path / "raw" / "clevr_dist"
    train, test = _clevr_records(18, 0), _clevr_records(6, 1)
    assert write_clevr_dist(iter(train), root, "train") == 18
    assert write_clevr_dist(test, root, "test") == 6
    lines = (root / "train.txt").read_text().splitlines()
    assert lines[:7] == [f"images/train/{i:06d}.png {i % 6}" for i in range(6)] + ["images/train/000006.png 0"]
    for i, (image, _) in enumerate(train):
        with Image.open(root / "images" / "train" / f"{i:06d}.png") as im:
            assert im.format == "PNG" and np.array_equal(np.asarray(im), image)
    _verb(monkeypatch, tmp_path, "subsets", "clevr_dist")
    _verb(monkeypatch, tmp_path, "prepare", "clevr_dist", "study.data.stored_size=24")
    prepared = tmp_path / "data" / "prepared" / "manyshot" / "clevr_dist"
    data = read_split(prepared, "train800val200")
    assert sorted(int(Path(p).stem) for p in data.paths) == list(range(18))
    assert all(label == int(Path(p).stem) % 6 for p, label in zip(data.paths, data.labels))
    assert read_test_labels(prepared)[1].tolist() == [i % 6 for i in range(6)]


@pytest.mark.parametrize("bad,message", [
    ((np.zeros((4, 4, 3), np.uint8), [101.0]), r"record 2: closest object at depth 101"),
    ((np.zeros((4, 4, 3), np.uint8), []), r"record 2: expected the finite depths"),
    ((np.zeros((4, 4, 3), np.float32), [9.0]), r"record 2: image must be uint8.*float32"),
    ((np.zeros((4, 4, 2), np.uint8), [9.0]), r"record 2: image must be uint8.*\(4, 4, 2\)"),
])
def test_clevr_dist_bad_record_is_one_error_and_leaves_the_split_as_it_was(tmp_path, bad, message):
    root = tmp_path / "clevr_dist"
    good = _clevr_records(3, 0)
    write_clevr_dist(good, root, "train")
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=message):
        write_clevr_dist([*_clevr_records(2, 5), bad], root, "train")
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    with pytest.raises(DataError, match="record 0"):
        write_clevr_dist([bad], root, "test")
    assert not (root / "test.txt").exists() and not (root / "images" / "test").exists()
    with pytest.raises(DataError, match="split name"):
        write_clevr_dist(good, root, "../x")


def test_vpeft_check_reads_cifar_python_in_place_counts_splits_and_writes_nothing(tmp_path, monkeypatch):
    from vpeft.data.manyshot import draw_split
    from vpeft.kinds import study_kind

    write_cifar100_python(tmp_path / "raw")
    cfg = _cfg(monkeypatch, tmp_path, *CIFAR_SMALL)
    before = sorted(tmp_path.rglob("*"))
    check = study_kind(cfg).check_task("cifar100_n6", 3, decode=True)
    assert check.problems == []
    assert sorted(tmp_path.rglob("*")) == before                   # no index file, no view
    split = draw_split(np.array(TRAIN_LABELS), 3, dataset="cifar100", seed=0, size=6,
                       val_fraction=0.2, val_max=5000)
    assert check.counts == {"train800": 6 - len(split["val"]), "val200": len(split["val"]),
                            "train800val200": 6, "test": len(TEST_LABELS)}
    # the saved index, once drawn by `vpeft subsets`, is what check reads
    _verb(monkeypatch, tmp_path, "subsets", "cifar100_n6", *CIFAR_SMALL)
    assert study_kind(cfg).check_task("cifar100_n6", 3, decode=False).counts == check.counts
    (tmp_path / "raw" / "cifar-100-python" / "test").write_bytes(b"\x80\x02}q\x00(")  # truncated
    problems = study_kind(cfg).check_task("cifar100_n6", 3, decode=True).problems
    assert any("cifar-100-python/test" in p for p in problems), problems

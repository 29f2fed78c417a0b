"""ImageNet in the layouts it is distributed in: the flat validation archive labelled by the
devkit (ground-truth IDs mapped to wnids through a real meta.mat) or by Kaggle's
LOC_val_solution.csv, and the ImageNet-A / -R trees with their README.txt. Every image encodes
its class in its colour, so labels are checked image by image against what was written."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from omegaconf import OmegaConf
from PIL import Image

from vpeft.data.errors import DataError
from vpeft.errors import UserError
from vpeft.data.formats import source
from vpeft.data.shards import read_test_labels
from vpeft.data.formats.val_flat import read_devkit_synsets
from vpeft.robustness.imagenet import imagenet_label_space, read_eval_set, shipped_wnids
from vpeft.robustness.shifts import prepare_eval_set

REPO = Path(__file__).resolve().parents[1]
SPACE = imagenet_label_space()

# Leaf synsets with their real ILSVRC2012_IDs (meta.mat order is not the sorted-wnid order:
# ID 1 is kit fox, sorted index 278), and the colour their images are drawn in.
LEAVES = {1: ("n02119789", "kit fox, Vulpes macrotis", (230, 30, 30)),
          2: ("n02100735", "English setter", (30, 230, 30)),
          3: ("n02110185", "Siberian husky", (30, 30, 230)),
          490: ("n01751748", "sea snake", (230, 230, 30))}
NON_LEAF = (1001, "n02084071", "dog, domestic dog, Canis familiaris", [2, 3])
# The ILSVRC2012_ID of validation images 1..12 (line i of the ground truth = image i).
IMAGE_IDS = [490, 1, 3, 2, 1, 490, 2, 3, 3, 1, 490, 2]
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                 "wordnet_height", "num_train_images")


def read_set(name, root, fmt, space, *, expected_subset=None, **keys):
    """An evaluation set whose source is given as its config block gives it (format + keys)."""
    return read_eval_set(name, source(fmt, root=root, **keys), space,
                         expected_subset=expected_subset)


def val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def write_val_folder(root: Path, ids=IMAGE_IDS) -> Path:
    """The flat folder the validation tar unpacks to: one JPEG per image, in its class colour."""
    root.mkdir(parents=True)
    for number, ident in enumerate(ids, start=1):
        Image.fromarray(np.full((16, 16, 3), LEAVES[ident][2], np.uint8)).save(
            root / val_name(number), format="JPEG")
    return root


def write_meta_mat(path: Path, id_dtype=np.uint16, leaves=LEAVES) -> Path:
    """meta.mat as the devkit holds it: a struct array ``synsets`` (n x 1) with the devkit's
    fields in its order; MATLAB stores the integral doubles in the smallest integer type."""
    rows = [(ident, wnid, words, f"gloss of {words}", 0, np.zeros((1, 0), np.uint8), 0, 1300)
            for ident, (wnid, words, _) in leaves.items()]
    ident, wnid, words, children = NON_LEAF
    rows.append((ident, wnid, words, f"gloss of {words}", len(children),
                 np.array([children], np.uint16), 2, 0))
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        for field, value in zip(SYNSET_FIELDS, row):
            if field == "ILSVRC2012_ID":
                value = np.array([[value]], id_dtype)
            elif isinstance(value, int):
                value = np.array([[value]], np.uint16 if value > 255 else np.uint8)
            synsets[i, 0][field] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})
    return path


def write_devkit(root: Path, ids=IMAGE_IDS, **meta) -> Path:
    """ILSVRC2012_devkit_t12 as it unpacks: data/meta.mat and the validation ground truth."""
    write_meta_mat(root / "data" / "meta.mat", **meta)
    (root / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{i}\n" for i in ids))
    (root / "readme.txt").write_text("ILSVRC2012 development kit\n")
    return root


def solution_rows(ids=IMAGE_IDS) -> list[str]:
    """Kaggle's LOC_val_solution.csv rows: one or more boxes, all of the image's wnid."""
    rows = []
    for number, ident in enumerate(ids, start=1):
        wnid = LEAVES[ident][0]
        boxes = [f"{wnid} {10 + k} {20 + k} {300 + k} {250 + k}" for k in range(1 + number % 3)]
        rows.append(f"{val_name(number)[:-5]},{' '.join(boxes)} ")
    random.Random(0).shuffle(rows)  # Kaggle's rows are not in image order
    return rows


def write_solution(path: Path, rows: list[str]) -> Path:
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return path


def colour_label(path: Path) -> int:
    """The label the image was written for, read back from its colour."""
    mean = np.asarray(Image.open(path).convert("RGB"), np.float64).mean(axis=(0, 1))
    ident = min(LEAVES, key=lambda i: np.abs(mean - LEAVES[i][2]).sum())
    return SPACE.ids.index(LEAVES[ident][0])


@pytest.fixture
def val(tmp_path) -> Path:
    return write_val_folder(tmp_path / "ILSVRC2012_img_val")


def assert_labelled_by_colour(found, root: Path) -> None:
    assert [f.path for f in found.files] == [val_name(n) for n in range(1, len(IMAGE_IDS) + 1)]
    assert [f.label for f in found.files] == [colour_label(root / f.path) for f in found.files]
    assert found.subset == sorted(SPACE.ids.index(w) for w, _, _ in LEAVES.values())


# --------------------------------------------------------------------------------------------
# The flat validation folder
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("id_dtype", [np.uint16, np.float64])
def test_devkit_labels_every_image_through_meta_mat(tmp_path, val, id_dtype):
    devkit = write_devkit(tmp_path / "ILSVRC2012_devkit_t12", id_dtype=id_dtype)
    assert read_devkit_synsets(devkit / "data" / "meta.mat") == {
        i: w for i, (w, _, _) in LEAVES.items()}  # leaves only: the ID-1001 synset is not a class
    found = read_set("imagenet_val", val, "val_flat", SPACE, devkit=devkit)
    assert_labelled_by_colour(found, val)
    # ID 1 is kit fox, index 278 in the sorted-wnid order, not index 0 (ID order != sorted order)
    assert SPACE.ids.index("n02119789") == 278
    assert found.files[1].label == 278 and found.files[0].label == 65  # image 1: sea snake
    assert {f.label for f in found.files}.isdisjoint({0, 1, 2, 489})


def test_kaggle_solution_labels_every_image(tmp_path, val):
    rows = solution_rows()
    assert [r.split(",")[0] for r in rows] != sorted(r.split(",")[0] for r in rows)  # shuffled
    assert any(len(r.split(",")[1].split()) > 5 for r in rows)  # multi-box rows
    csv = write_solution(tmp_path / "LOC_val_solution.csv", rows)
    found = read_set("imagenet_val", val, "val_flat", SPACE, solution_csv=csv)
    assert_labelled_by_colour(found, val)
    devkit = write_devkit(tmp_path / "ILSVRC2012_devkit_t12")
    assert found == read_set("imagenet_val", val, "val_flat", SPACE, devkit=devkit)


def test_flat_val_prepares_as_an_evaluation_set(tmp_path, val):
    found = read_set("imagenet_val", val, "val_flat", SPACE,
                          devkit=write_devkit(tmp_path / "devkit"))
    prepare_eval_set(found, tmp_path / "out", image_size=8, num_classes=len(SPACE))
    assert read_test_labels(tmp_path / "out")[1].tolist() == [
        colour_label(val / val_name(n)) for n in range(1, len(IMAGE_IDS) + 1)]


def test_documented_default_reads_the_flat_val_with_the_devkit(tmp_path, val):
    from vpeft.robustness.inputs import read_set as _read

    test = OmegaConf.load(REPO / "params/study/robustness.yaml").study.robustness.test
    assert test.format == "val_flat" and OmegaConf.is_missing(test, "devkit")
    assert test.solution_csv is None
    devkit = write_devkit(tmp_path / "ILSVRC2012_devkit_t12")
    csv = write_solution(tmp_path / "LOC_val_solution.csv", solution_rows())
    key = "study.robustness.test"
    by_devkit = _read("imagenet_val", OmegaConf.merge(test, {"root": str(val),
                                                             "devkit": str(devkit)}), SPACE, key)
    assert_labelled_by_colour(by_devkit, val)
    # Kaggle's csv instead: the devkit left unset ("???") counts as not given
    by_csv = _read("imagenet_val", OmegaConf.merge(test, {"root": str(val),
                                                          "solution_csv": str(csv)}), SPACE, key)
    assert by_csv == by_devkit
    with pytest.raises(UserError, match=r"^study\.robustness\.test: format 'val_flat' needs "
                                        "exactly one of 'devkit'"):
        _read("imagenet_val", OmegaConf.merge(test, {"root": str(val)}), SPACE, key)
    # switched to class folders on the command line, the block keeps its unset devkit (???)
    # and solution_csv (null): they belong to another format and are ignored
    tree = tmp_path / "val_folders"
    (tree / "n02119789").mkdir(parents=True)
    (val / val_name(2)).rename(tree / "n02119789" / val_name(2))
    folders = _read("imagenet_val", OmegaConf.merge(test, {"root": str(tree),
                                                           "format": "wnid_folders"}), SPACE, key)
    assert [(f.path, f.label) for f in folders.files] == [(f"n02119789/{val_name(2)}", 278)]


# --------------------------------------------------------------------------------------------
# Bad input: one DataError naming the file (and line)
# --------------------------------------------------------------------------------------------

def ground_truth(devkit: Path) -> Path:
    return devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"


def test_ground_truth_line_count_must_match_the_images(tmp_path, val):
    devkit = write_devkit(tmp_path / "devkit", ids=[*IMAGE_IDS, 1])
    with pytest.raises(DataError, match=r"ground_truth.txt: 13 lines for 12 images") as err:
        read_set("v", val, "val_flat", SPACE, devkit=devkit)
    assert f"ground_truth.txt:13: labels {val_name(13)}, which is not in" in str(err.value)
    short = write_devkit(tmp_path / "short", ids=IMAGE_IDS[:11])
    with pytest.raises(DataError, match=r"11 lines for 12 images") as err:
        read_set("v", val, "val_flat", SPACE, devkit=short)
    assert f"{val / val_name(12)}: no label; {ground_truth(short)} has 11 lines" in str(err.value)


@pytest.mark.parametrize("bad", ["0", "1001", "-3", "kit fox", "1.0"])
def test_ground_truth_ids_must_be_classification_ids(tmp_path, val, bad):
    devkit = write_devkit(tmp_path / "devkit")
    lines = [str(i) for i in IMAGE_IDS]
    lines[4] = bad
    ground_truth(devkit).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"ground_truth.txt:5: '{bad}' is not an ILSVRC2012_ID "
                                        r"in 1\.\.1000"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)


def test_ground_truth_id_without_a_leaf_in_meta_mat(tmp_path, val):
    devkit = write_devkit(tmp_path / "devkit", ids=[*IMAGE_IDS[:-1], 7])
    with pytest.raises(DataError, match=r"ground_truth.txt:12: ILSVRC2012_ID 7 has no leaf "
                                        r"synset in .*meta.mat"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)


def test_missing_or_broken_meta_mat(tmp_path, val):
    devkit = write_devkit(tmp_path / "devkit")
    meta = devkit / "data" / "meta.mat"
    meta.unlink()
    with pytest.raises(DataError, match=rf"{meta}: not found; .* maps ILSVRC2012_IDs to wnids"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)
    meta.write_bytes(b"not a MATLAB file" * 20)
    with pytest.raises(DataError, match=rf"{meta}: not a readable MATLAB v5 file"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)
    scipy.io.savemat(meta, {"classes": np.arange(3)})
    with pytest.raises(DataError, match=rf"{meta}: no variable 'synsets'"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)
    write_meta_mat(meta, leaves={**LEAVES, 1200: ("n09999999", "bogus", (0, 0, 0))})
    with pytest.raises(DataError, match=r"synsets\(5\) \(n09999999\) is a leaf with "
                                        r"ILSVRC2012_ID 1200"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)


def test_missing_ground_truth(tmp_path, val):
    devkit = write_devkit(tmp_path / "devkit")
    ground_truth(devkit).unlink()
    with pytest.raises(DataError, match=rf"{ground_truth(devkit)}: not found"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)


def test_labels_for_images_not_present(tmp_path, val):
    (val / val_name(4)).unlink()
    devkit = write_devkit(tmp_path / "devkit")
    with pytest.raises(DataError, match=rf"ground_truth.txt:4: labels {val_name(4)}, which is "
                                        rf"not in {val}"):
        read_set("v", val, "val_flat", SPACE, devkit=devkit)
    csv = write_solution(tmp_path / "LOC_val_solution.csv", solution_rows())
    line = 2 + [r.split(",")[0] for r in solution_rows()].index(val_name(4)[:-5])
    with pytest.raises(DataError, match=rf"LOC_val_solution.csv:{line}: image "
                                        rf"{val_name(4)} is not in {val}"):
        read_set("v", val, "val_flat", SPACE, solution_csv=csv)


def test_csv_rows_must_name_known_images_and_wnids(tmp_path, val):
    rows = solution_rows()
    path = tmp_path / "LOC_val_solution.csv"
    for bad, message in [("ILSVRC2012_val_00000013,n02119789 1 2 3 4", "image "
                          "ILSVRC2012_val_00000013.JPEG is not in"),
                         ("ILSVRC2012_test_00000001,n02119789 1 2 3 4", "is not an "
                          "ILSVRC2012_val_%08d id"),
                         (f"{rows[0].split(',')[0]},n99999999 1 2 3 4", "wnid n99999999 is not in "
                          "the label space"),
                         (f"{rows[0].split(',')[0]},n02119789 1 2 3 4 n02100735 1 2 3 4",
                          "all of one wnid"),
                         (f"{rows[0].split(',')[0]},n02119789 1 2 3", "all of one wnid")]:
        swapped = [bad, *rows[1:]] if bad.startswith(rows[0].split(",")[0]) else [*rows, bad]
        write_solution(path, swapped)
        line = 2 if swapped[0] == bad else 2 + len(rows)
        with pytest.raises(DataError, match=rf"LOC_val_solution.csv:{line}: .*{message}"):
            read_set("v", val, "val_flat", SPACE, solution_csv=path)
    write_solution(path, [*rows, rows[3]])
    with pytest.raises(DataError, match=rf"csv:{2 + len(rows)}: .* labelled again \(first at "
                                        r"line 5\)"):
        read_set("v", val, "val_flat", SPACE, solution_csv=path)
    path.write_text("ImageId,PredictionStrings\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"csv:1: header 'ImageId,PredictionStrings'"):
        read_set("v", val, "val_flat", SPACE, solution_csv=path)


def test_image_without_a_csv_row(tmp_path, val):
    rows = [r for r in solution_rows() if not r.startswith(val_name(7)[:-5])]
    csv = write_solution(tmp_path / "LOC_val_solution.csv", rows)
    with pytest.raises(DataError, match=rf"{val / val_name(7)}: no label; {csv} has no row"):
        read_set("v", val, "val_flat", SPACE, solution_csv=csv)


def test_val_flat_needs_one_label_source_and_a_flat_folder(tmp_path, val):
    devkit = write_devkit(tmp_path / "devkit")
    csv = write_solution(tmp_path / "LOC_val_solution.csv", solution_rows())
    for kwargs in ({}, {"devkit": devkit, "solution_csv": csv}):
        with pytest.raises(UserError, match="exactly one of 'devkit'"):
            read_set("v", val, "val_flat", SPACE, **kwargs)
    (val / "n02119789").mkdir()
    (val / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="use format 'wnid_folders'") as err:
        read_set("v", val, "val_flat", SPACE, devkit=devkit)
    assert f"{val / 'notes.txt'}: not a validation image name" in str(err.value)


# --------------------------------------------------------------------------------------------
# ImageNet-A and -R as distributed: README.txt beside 200 wnid folders
# --------------------------------------------------------------------------------------------

def write_shift_tree(root: Path, wnids: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "README.txt").write_text("ImageNet-A/-R: 200 ImageNet classes; folder = wnid\n")
    for k, wnid in enumerate(wnids):
        (root / wnid).mkdir()
        Image.fromarray(np.full((4, 4, 3), k, np.uint8)).save(root / wnid / f"{k:04d}.jpg")
    return root


@pytest.mark.parametrize("name, folder", [("imagenet_a", "imagenet-a"),
                                          ("imagenet_r", "imagenet-r")])
def test_shift_trees_with_readme_read_their_200_classes(tmp_path, name, folder):
    wnids = shipped_wnids(f"{name}_synsets.txt")
    root = write_shift_tree(tmp_path / folder, wnids)
    found = read_set(name, root, "wnid_folders", SPACE, expected_subset=name)
    assert len(found.files) == 200 and all("README" not in f.path for f in found.files)
    assert [f.label for f in found.files] == [SPACE.ids.index(f.path.split("/")[0])
                                              for f in found.files]
    assert found.subset == sorted(SPACE.ids.index(w) for w in wnids) and len(found.subset) == 200
    other = "imagenet_r" if name == "imagenet_a" else "imagenet_a"
    with pytest.raises(DataError, match=rf"{root}: {name} holds 200 classes, expected the 200 "
                                        rf"of {other}"):
        read_set(name, root, "wnid_folders", SPACE, expected_subset=other)

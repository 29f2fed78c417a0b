"""VTAB-1K trees as users bring them: the public generators' layout (train800val200 as its own
re-encoded copies), vpeft's older shared-path layout, and what the content check refuses."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpeft.data.errors import DataError
from vpeft.data.shards import read_split
from vpeft.data.vtab import inspect_task, prepare_task
from vtab_trees import task_arrays, write_vtab_tree

SIZES = {"train800": 12, "val200": 6, "train800val200": 18, "test": 8}
CLASSES = 3


def _prepare(task_dir: Path, out: Path, **kw) -> dict:
    return prepare_task(task_dir, out, task="toy", image_size=8, num_classes=CLASSES,
                        group="structured", split_sizes=SIZES, **kw)


@pytest.mark.parametrize("grey", [False, True], ids=["rgb", "grey-L"])
@pytest.mark.parametrize("layout", ["generator", "vpeft-v1"])
def test_real_layouts_prepare_with_union_by_content(tmp_path: Path, grey: bool, layout: str) -> None:
    task_dir = write_vtab_tree(tmp_path / "vtab" / "toy", task_arrays(CLASSES, SIZES, grey=grey),
                               layout=layout)
    if layout == "generator":
        assert (task_dir / "images/train800val200/000017.jpg").is_file()
        assert (task_dir / "train800val200.txt").read_text().splitlines()[0] == \
            "images/train800val200/000000.jpg 0"
    manifest = _prepare(task_dir, tmp_path / "out")
    content = manifest["content"]
    assert content["train800val200_union"] == "exact"
    assert content["train800val200_layout"] == ("own copies" if layout == "generator" else "shared paths")
    assert manifest["conversions"] == ({"L": SIZES["train800"] + SIZES["val200"] + SIZES["test"]}
                                       if grey else {})
    both = read_split(tmp_path / "out", "train800val200")
    train, val = (read_split(tmp_path / "out", s) for s in ("train800", "val200"))
    np.testing.assert_array_equal(both.images, np.concatenate([train.images, val.images]))
    np.testing.assert_array_equal(both.labels, np.concatenate([train.labels, val.labels]))
    assert inspect_task(task_dir, task="toy", num_classes=CLASSES,
                        split_sizes=SIZES)["content"] == content


def test_generator_order_need_not_follow_train_then_val(tmp_path: Path) -> None:
    records = task_arrays(CLASSES, SIZES, grey=False)
    records["train800val200"] = records["train800val200"][::-1]  # a multiset: order is free
    manifest = _prepare(write_vtab_tree(tmp_path / "toy", records), tmp_path / "out")
    assert manifest["content"]["train800val200_union"] == "exact"


def test_copies_saved_by_another_encoder_still_match_by_pixels(tmp_path: Path) -> None:
    task_dir = write_vtab_tree(tmp_path / "toy", task_arrays(CLASSES, SIZES, grey=False))
    # Re-save one copy as PNG of the decoded JPEG: other bytes, same decoded pixels.
    original = task_dir / "images/train800/000003.jpg"
    with Image.open(original) as img:
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, format="PNG")
    (task_dir / "images/train800val200/000003.jpg").write_bytes(buffer.getvalue())  # PNG bytes, .jpg name
    assert _prepare(task_dir, tmp_path / "out")["content"]["train800val200_union"] == "exact"


def test_missing_and_foreign_copies_are_recorded_with_file_line(tmp_path: Path) -> None:
    records = task_arrays(CLASSES, SIZES, grey=False)
    foreign = task_arrays(CLASSES, SIZES, grey=False, seed=7)["train800"][5]
    records["train800val200"] = records["train800val200"][:-1] + [foreign]
    task_dir = write_vtab_tree(tmp_path / "toy", records)
    content = _prepare(task_dir, tmp_path / "out")["content"]
    assert (content["missing_from_train800val200"], content["extra_in_train800val200"],
            content["relabelled"]) == (1, 1, 0)
    assert any("train800val200.txt:18:" in m and "in neither train800 nor val200" in m
               for m in content["examples"])
    assert any("val200.txt:6:" in m and "missing from train800val200" in m for m in content["examples"])


def test_val_image_copied_into_train_is_refused(tmp_path: Path) -> None:
    records = task_arrays(CLASSES, SIZES, grey=False)
    records["train800"][2] = records["val200"][4]
    records["train800val200"] = records["train800"] + records["val200"]
    task_dir = write_vtab_tree(tmp_path / "toy", records)
    with pytest.raises(DataError, match=r"val200\.txt:5: image images/val200/000004\.jpg has the same "
                                        r"pixels as .*train800\.txt:3 .*must be disjoint"):
        _prepare(task_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_test_image_in_training_is_recorded_as_a_property_of_the_data(tmp_path: Path) -> None:
    # A dataset's own duplicates across its official train and test splits (audits found them in
    # CIFAR-100 and ImageNet): recorded in the manifest, not refused, without any switch.
    sizes = {**SIZES, "test": 20}
    records = task_arrays(CLASSES, sizes, grey=True)
    records["test"][1] = records["train800"][7]
    task_dir = write_vtab_tree(tmp_path / "toy", records)
    manifest = prepare_task(task_dir, tmp_path / "out", task="toy", image_size=8,
                            num_classes=CLASSES, group="structured", split_sizes=sizes)
    duplicates = manifest["content"]["duplicates"]
    training = [a.tobytes() for s in ("train800", "val200") for a, _ in records[s]]
    expected = sum(a.tobytes() in training for a, _ in records["test"])  # the toy's own, and ours
    assert (duplicates["test_in_training"], duplicates["val200_in_train800"]) == (expected, 0)
    assert 1 <= expected <= 0.1 * sizes["test"]
    assert "test.txt:2: test image" in duplicates["examples"][0]
    assert "train800.txt:8" in duplicates["examples"][0]


def test_most_of_a_split_duplicated_is_refused_unless_duplicates_allowed(tmp_path: Path) -> None:
    records = task_arrays(CLASSES, SIZES, grey=True)
    for i in range(3):  # 3 of 8 test images: far beyond any dataset's own duplicates
        records["test"][i] = records["train800"][i + 4]
    task_dir = write_vtab_tree(tmp_path / "toy", records)
    with pytest.raises(DataError, match=r"3 of 8 test images \(38 %\) have the same pixels"):
        _prepare(task_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    content = _prepare(task_dir, tmp_path / "out", allow_duplicates=True)["content"]
    assert content["duplicates"]["test_in_training"] == 3
    assert "allow_duplicates" in content["duplicates"]["policy"]


def test_same_file_listed_as_test_and_training_is_refused(tmp_path: Path) -> None:
    sizes = {**SIZES, "test": 20}
    task_dir = write_vtab_tree(tmp_path / "toy", task_arrays(CLASSES, sizes, grey=False))
    lines = (task_dir / "test.txt").read_text().splitlines()
    label = (task_dir / "train800.txt").read_text().splitlines()[0].split()[1]
    lines[3] = f"images/train800/000000.jpg {label}"  # the user's list points at a training file
    (task_dir / "test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"test\.txt:4: test image images/train800/000000\.jpg has "
                                        r"the same pixels .*\(the same file is listed in both splits\)"):
        prepare_task(task_dir, tmp_path / "out", task="toy", image_size=8, num_classes=CLASSES,
                     group="structured", split_sizes=sizes)
    assert not (tmp_path / "out").exists()


def test_cmyk_jpeg_is_read(tmp_path: Path) -> None:
    task_dir = write_vtab_tree(tmp_path / "toy", task_arrays(CLASSES, SIZES, grey=False))
    for split in ("train800", "train800val200"):  # the copy is re-encoded the same way
        path = task_dir / f"images/{split}/{0:06d}.jpg"
        with Image.open(task_dir / "images/train800/000000.jpg") as img:
            cmyk = img.convert("CMYK")
        cmyk.save(path, format="JPEG")
    manifest = _prepare(task_dir, tmp_path / "out")
    assert manifest["conversions"] == {"CMYK": 1}
    assert manifest["content"]["train800val200_union"] == "exact"


def test_missing_copy_file_names_list_line(tmp_path: Path) -> None:
    task_dir = write_vtab_tree(tmp_path / "toy", task_arrays(CLASSES, SIZES, grey=False))
    (task_dir / "images/train800val200/000004.jpg").unlink()
    with pytest.raises(DataError, match=r"train800val200\.txt:5: image not found"):
        inspect_task(task_dir, task="toy", num_classes=CLASSES, split_sizes=SIZES)
    shutil.rmtree(task_dir / "images/test")
    with pytest.raises(DataError, match=r"test\.txt:1: image not found"):
        _prepare(task_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()

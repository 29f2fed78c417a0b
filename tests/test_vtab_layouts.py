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


def test_test_image_in_training_refused_unless_duplicates_allowed(tmp_path: Path) -> None:
    records = task_arrays(CLASSES, SIZES, grey=True)
    records["test"][1] = records["train800"][7]
    task_dir = write_vtab_tree(tmp_path / "toy", records)
    with pytest.raises(DataError, match=r"test\.txt:2: test image .* same pixels as .*train800\.txt:8"):
        _prepare(task_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    content = _prepare(task_dir, tmp_path / "out", allow_duplicates=True)["content"]
    assert len(content["allowed_overlaps"]) == 1 and "test.txt:2:" in content["allowed_overlaps"][0]


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

"""The dataset-format registry (vpeft.data.formats): every format read from a tree in the layout it
is distributed in, through the one contract (files and labels in the format's order, the image
files or pixels, the inputs a rule depends on); a source block checked by the schema, its errors
naming the config key, the file it came from, the format and its keys; and no format name
compared outside the registry."""
from __future__ import annotations

import ast
import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from test_imagenet_layouts import (IMAGE_IDS, LEAVES, solution_rows, val_name, write_devkit,
                                   write_solution, write_val_folder)
from test_manyshot_formats import CLASSES, TRAIN_LABELS, write_cifar100_python
from vpeft.config import ConfigError, load_study
from vpeft.data import formats
from vpeft.data.formats import FormatConfigError, Source, parse_source
from vpeft.robustness.imagenet import imagenet_label_space
from vtab_trees import task_arrays, write_vtab_tree

SRC = REPO / "src" / "vpeft"
WNIDS = imagenet_label_space().ids


@dataclass
class Layout:
    """A tree as distributed, the block that reads it (paths relative to the tree's parent),
    the class context it is read in, and the (path, label) rows expected, in order."""

    block: dict[str, Any]
    num_classes: int
    classes: list[str] | tuple[str, ...] | None
    expected: list[tuple[str, int]]


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def resisc45(tmp: Path) -> Layout:
    """NWPU-RESISC45 as it ships: <class>/<class>_NNN.jpg; classes are the sorted folder names."""
    for k, name in enumerate(["runway", "airport", "beach"]):
        for i in (2, 1):
            _image(tmp / "NWPU-RESISC45" / name / f"{name}_{i:03d}.jpg", 10 * k + i)
    expected = [(f"{c}/{c}_{i:03d}.jpg", k) for k, c in enumerate(["airport", "beach", "runway"])
                for i in (1, 2)]
    return Layout({"format": "folders", "root": "NWPU-RESISC45"}, 3, None, expected)


def imagenet_r(tmp: Path) -> Layout:
    """ImageNet-A/-R as distributed: a README.txt beside wnid folders, a subset of the 1000."""
    root = tmp / "imagenet-r"
    root.mkdir()
    (root / "README.txt").write_text("ImageNet-R: 200 ImageNet classes; folder = wnid\n")
    for wnid in (WNIDS[7], WNIDS[3]):
        _image(root / wnid / "art_0.jpg", 3)
    expected = [(f"{WNIDS[3]}/art_0.jpg", 3), (f"{WNIDS[7]}/art_0.jpg", 7)]
    return Layout({"format": "wnid_folders", "root": "imagenet-r"}, 1000, WNIDS, expected)


def imagenet_v2(tmp: Path) -> Layout:
    """ImageNetV2 as it unpacks: folders 0 ... 999 named by class index."""
    for label in (10, 2, 999):
        _image(tmp / "imagenetv2-matched-frequency-format-val" / str(label) / "a1b2.jpeg", label % 256)
    expected = [("10/a1b2.jpeg", 10), ("2/a1b2.jpeg", 2), ("999/a1b2.jpeg", 999)]
    return Layout({"format": "index_folders", "root": "imagenetv2-matched-frequency-format-val"},
                  1000, WNIDS, expected)


def vtab_list(tmp: Path) -> Layout:
    """A VTAB-1K task's list file as the public generators write it, read in file order."""
    records = task_arrays(4, {"train800": 6, "val200": 2, "test": 3}, grey=False)
    write_vtab_tree(tmp / "dtd", records)
    expected = [(f"images/train800/{i:06d}.jpg", label)
                for i, (_, label) in enumerate(records["train800"])]
    return Layout({"format": "list", "list": "dtd/train800.txt"}, 4, None, expected)


def cifar100_python(tmp: Path) -> Layout:
    """CIFAR-100's "python version" as the archive unpacks (here 3 classes, 24 rows)."""
    write_cifar100_python(tmp)
    expected = [(f"{row:05d}.png", label) for row, label in enumerate(TRAIN_LABELS)]
    return Layout({"format": "cifar100_python", "root": "cifar-100-python", "part": "train"},
                  len(CLASSES), None, expected)


def imagenet_val(tmp: Path) -> Layout:
    """ImageNet's flat validation folder, labelled by Kaggle's LOC_val_solution.csv."""
    write_val_folder(tmp / "ILSVRC2012_img_val")
    write_solution(tmp / "LOC_val_solution.csv", solution_rows())
    expected = [(val_name(n), WNIDS.index(LEAVES[ident][0]))
                for n, ident in enumerate(IMAGE_IDS, start=1)]
    return Layout({"format": "val_flat", "root": "ILSVRC2012_img_val",
                   "solution_csv": "LOC_val_solution.csv"}, 1000, WNIDS, expected)


def imagenet_val_devkit(tmp: Path) -> Layout:
    """The same folder labelled by the devkit (ILSVRC2012_devkit_t12)."""
    layout = imagenet_val(tmp)
    write_devkit(tmp / "ILSVRC2012_devkit_t12")
    layout.block = {"format": "val_flat", "root": "ILSVRC2012_img_val",
                    "devkit": "ILSVRC2012_devkit_t12"}
    return layout


# One case at least per registered format (test_every_format_has_a_layout_case holds it).
LAYOUTS: dict[str, Callable[[Path], Layout]] = {
    "resisc45": resisc45, "imagenet_r": imagenet_r, "imagenet_v2": imagenet_v2,
    "vtab_list": vtab_list, "cifar100_python": cifar100_python, "imagenet_val": imagenet_val,
    "imagenet_val_devkit": imagenet_val_devkit}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_format_reads_its_distributed_layout(tmp_path, case):
    layout = LAYOUTS[case](tmp_path)
    src = parse_source(layout.block, where=f"test.{case}", base=tmp_path)
    assert type(src) is formats.lookup(layout.block["format"])
    paths = [getattr(src, f.name) for f in dataclasses.fields(src)
             if isinstance(getattr(src, f.name), Path)]
    assert paths and all(p.is_relative_to(tmp_path) for p in paths)  # relative to the base
    part = src.read(layout.num_classes, layout.classes)
    assert [(f.path, f.label) for f in part.files] == layout.expected
    assert all(0 <= f.label < layout.num_classes for f in part.files)
    if src.holds_image_files:
        assert part.pixels is None
        assert all((src.image_root / f.path).is_file() for f in part.files)
    else:
        assert part.pixels.shape[0] == len(part.files) and part.pixels.dtype == np.uint8
    assert src.inputs and all(p.exists() for p in src.inputs)
    assert str(src.inputs[0]) in src.describe()


def test_every_format_has_a_layout_case(tmp_path):
    covered = set()
    for case, build in LAYOUTS.items():
        (tmp_path / case).mkdir()
        covered.add(formats.lookup(build(tmp_path / case).block["format"]))
    assert covered == {formats.lookup(name) for name in formats.names()}


def test_aliases_are_the_same_reader():
    assert formats.lookup("wnid_folders") is formats.lookup("folders")
    assert formats.names().count("folders") == 1 and "wnid_folders" in formats.names()


def test_every_format_is_a_typed_frozen_source():
    for name in formats.names():
        cls = formats.lookup(name)
        assert issubclass(cls, Source) and cls.__dataclass_params__.frozen
        keys = formats.config_keys(cls)
        assert keys["format"] is str and set(keys) - {"format"}, name


# --------------------------------------------------------------------------------------------
# Source blocks checked at composition: the key, its file, the format and its keys
# --------------------------------------------------------------------------------------------

@pytest.fixture
def params(tmp_path, monkeypatch):
    """A copy of params/ to edit; returns a function replacing text in a study file."""
    copy = shutil.copytree(REPO / "params", tmp_path / "params")
    monkeypatch.setenv("VPEFT_PARAMS", str(copy))

    def edit(study: str, old: str, new: str) -> None:
        path = copy / "study" / f"{study}.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    return edit


def test_unknown_format_names_key_file_and_known_formats(params):
    params("demo_manyshot", "{format: folders, root: textures/train}",
           "{format: folder, root: textures/train}")
    with pytest.raises(ConfigError, match=r"^config key 'study\.data\.datasets\.textures\.train\."
                                          r"format' \(from params/study/demo_manyshot\.yaml\): "
                                          r"unknown format 'folder'\. Did you mean 'folders'\? "
                                          r"Known formats: .*folders \(also wnid_folders\)"):
        load_study("demo_manyshot")


def test_key_of_another_format_names_the_format_and_its_keys(params):
    params("demo_manyshot", "{format: list, list: count/train800.txt, root: count}",
           "{format: list, list: count/train800.txt, roots: count}")
    with pytest.raises(ConfigError, match=r"^config key 'study\.data\.datasets\.count\.train\."
                                          r"roots' \(from params/study/demo_manyshot\.yaml\): not "
                                          r"a key of format 'list'\. Did you mean 'root'\? Keys of "
                                          r"format 'list': format, list, root$"):
        load_study("demo_manyshot")


def test_values_are_typed_by_the_format(params):
    params("demo_manyshot", "{format: folders, root: textures/test}",
           "{format: folders, root: [textures, test]}")
    with pytest.raises(ConfigError, match=r"'study\.data\.datasets\.textures\.test\.root' .*: "
                                          r"expected a value of type str"):
        load_study("demo_manyshot")


def test_untagged_many_shot_form_shows_the_new_spelling(params):
    params("demo_manyshot", "{format: list, list: count/train800.txt, root: count}",
           "{list: count/train800.txt, root: count}")
    with pytest.raises(ConfigError, match=r"^config key 'study\.data\.datasets\.count\.train' "
                                          r"\(from params/study/demo_manyshot\.yaml\): the untagged "
                                          r"form \{list: count/train800\.txt, root: count\} is no "
                                          r"longer read; write \{format: list, list: "
                                          r"count/train800\.txt, root: count\}$"):
        load_study("demo_manyshot")


def test_evaluation_set_keys_and_the_old_list_file_key(params):
    params("demo_robustness", "inverted: {root:", "inverted: {expected_subset: null, root:")
    load_study("demo_robustness")  # an evaluation set's own keys beside its format's
    params("demo_robustness", "format: index_folders}", "format: list, list_file: v2.txt}")
    with pytest.raises(ConfigError, match=r"'study\.robustness\.shifts\.inverted\.list_file' "
                                          r"\(from params/study/demo_robustness\.yaml\): not a "
                                          r"key of format 'list'\. Did you mean 'list'\?"):
        load_study("demo_robustness")


@pytest.mark.parametrize("block, key, message", [
    ({"format": "cifar100_python", "root": "c", "part": "val"}, "s.part",
     "'val' is not one of train, test"),
    ({"format": "val_flat", "root": "v"}, "s", "needs exactly one of 'devkit'"),
    ({"format": "folders", "root": "???"}, "s.root", "has no value; format 'folders' needs it"),
    ({"format": "list"}, "s.list", "missing; format 'list' needs it"),
    ("NWPU-RESISC45", "s", "expected a source block {format: FORMAT, ...}"),
])
def test_parse_errors_name_the_key(block, key, message):
    with pytest.raises(FormatConfigError) as err:
        parse_source(block, where="s", base=Path())
    assert err.value.key == key and message in err.value.detail


# --------------------------------------------------------------------------------------------
# No dispatch on format names outside the registry
# --------------------------------------------------------------------------------------------

def format_name_comparisons(root: Path, names: set[str]) -> list[str]:
    """``file:line`` of every comparison (==, !=, in, not in) against a literal format name, or
    a literal tuple/list/set holding one, in the Python files under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Compare):
                continue
            literals = []
            for side in (node.left, *node.comparators):
                elements = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                literals += [e.value for e in elements if isinstance(e, ast.Constant)]
            hits = sorted({v for v in literals if isinstance(v, str) and v in names})
            if hits:
                found.append(f"{path}:{node.lineno}: {', '.join(hits)}")
    return found


def test_no_format_name_is_compared_outside_the_registry():
    names = set(formats.names())
    bad = [hit for hit in format_name_comparisons(SRC, names)
           if not hit.startswith(str(SRC / "data" / "formats"))]
    assert not bad, "dispatch on a format name outside vpeft.data.formats:\n" + "\n".join(bad)


def test_the_scan_finds_comparisons(tmp_path):
    (tmp_path / "probe.py").write_text('if fmt == "val_flat":\n    pass\n'
                                       'ok = kind not in ("folders", "x")\nname = "list"\n')
    assert format_name_comparisons(tmp_path, {"val_flat", "folders", "list"}) == [
        f"{tmp_path / 'probe.py'}:1: val_flat", f"{tmp_path / 'probe.py'}:3: folders"]

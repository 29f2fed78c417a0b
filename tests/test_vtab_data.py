"""VTAB-1K validation, preparation and reading (vpeft.data.vtab, .listfile, .decode, .shards) and
atomic writes (vpeft.io)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vpeft import io as vio
from vpeft.data import shards, vtab
from vpeft.data.errors import DataError
from vpeft.data.shards import read_manifest, read_split, read_test_labels
from vpeft.data.vtab import prepare_task, validate_task

SIZES = {"train800": 8, "val200": 4, "train800val200": 12, "test": 6}
NUM_CLASSES = 3
IMAGE_SIZE = 6


def _pixels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=3)
    grad = np.arange(8)[:, None, None] * 3 + np.arange(8)[None, :, None] * 2
    return np.clip(base[None, None, :] + grad, 0, 255).astype(np.uint8)


def _write_list(task_dir: Path, split: str, rows: list[tuple[str, int]]) -> None:
    (task_dir / f"{split}.txt").write_text("".join(f"{p} {y}\n" for p, y in rows))


def _make_task(root: Path) -> Path:
    """A valid 3-class task with tiny split sizes and 8x8 RGB JPEGs."""
    task_dir = root / "toy"
    rows: dict[str, list[tuple[str, int]]] = {}
    seed = 0
    for split in ("train800", "val200", "test"):
        (task_dir / "images" / split).mkdir(parents=True)
        rows[split] = []
        for i in range(SIZES[split]):
            rel = f"images/{split}/{i:06d}.jpg"
            Image.fromarray(_pixels(seed)).save(task_dir / rel, quality=95)
            rows[split].append((rel, i % NUM_CLASSES))
            seed += 1
    rows["train800val200"] = rows["train800"] + rows["val200"]
    for split, r in rows.items():
        _write_list(task_dir, split, r)
    return task_dir


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    return _make_task(tmp_path / "vtab")


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "prepared" / "toy"


def _prepare(task_dir: Path, out_dir: Path, **kw) -> dict:
    args = dict(task="toy", image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, group="natural",
                split_sizes=SIZES)
    args.update(kw)
    return prepare_task(task_dir, out_dir, **args)


def _lines(task_dir: Path, split: str) -> list[str]:
    return (task_dir / f"{split}.txt").read_text().splitlines()


def _set_lines(task_dir: Path, split: str, lines: list[str]) -> None:
    (task_dir / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _expect_error(task_dir: Path, out_dir: Path, *needles: str) -> DataError:
    with pytest.raises(DataError) as info:
        _prepare(task_dir, out_dir)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not out_dir.exists()
    if out_dir.parent.exists():
        assert [p.name for p in out_dir.parent.iterdir()] == []
    return info.value


# ------------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert len(vtab.VTAB_TASKS) == 19
    groups = [t.group for t in vtab.VTAB_TASKS.values()]
    assert (groups.count("natural"), groups.count("specialized"), groups.count("structured")) == (7, 4, 8)
    assert vtab.VTAB_TASKS["sun397"].num_classes == 397
    assert vtab.task_info("dtd") == vtab.TaskInfo("dtd", 47, "natural")
    assert vtab.task_info("toy", num_classes=3, group="structured").num_classes == 3
    with pytest.raises(DataError, match="known tasks: .*caltech101"):
        vtab.task_info("toy")


# ------------------------------------------------------------------------------- bad inputs


def test_valid_task_validates(task_dir: Path) -> None:
    entries = validate_task(task_dir, "toy", NUM_CLASSES, SIZES)
    assert [len(entries[s]) for s in vtab.SPLITS] == [8, 4, 12, 6]
    first = entries["train800"][0]
    assert (first.path, first.label, first.line) == ("images/train800/000000.jpg", 0, 1)
    assert first.file.is_absolute() and first.file.is_file()


def test_default_split_sizes_reject_tiny_task(task_dir: Path) -> None:
    with pytest.raises(DataError, match="expected 800 entries, found 8"):
        validate_task(task_dir, "toy", NUM_CLASSES)


def test_missing_task_dir(tmp_path: Path, out_dir: Path) -> None:
    _expect_error(tmp_path / "nope", out_dir, "nope", "not found")


def test_missing_list_file(task_dir: Path, out_dir: Path) -> None:
    (task_dir / "val200.txt").unlink()
    err = _expect_error(task_dir, out_dir, "val200.txt")
    assert "train800.txt," not in str(err).split("missing")[1].split(";")[0]


def test_missing_image(task_dir: Path, out_dir: Path) -> None:
    (task_dir / "images/test/000003.jpg").unlink()
    _expect_error(task_dir, out_dir, "test.txt:4:", "images/test/000003.jpg", "not found")


def test_malformed_line(task_dir: Path, out_dir: Path) -> None:
    lines = _lines(task_dir, "test")
    lines[2] = lines[2].replace(" ", "\t")
    lines[4] = lines[4] + " extra"
    _set_lines(task_dir, "test", lines)
    _expect_error(task_dir, out_dir, "test.txt:3: malformed", "test.txt:5: malformed")


@pytest.mark.parametrize("encoding,needle", [
    # Notepad's "UTF-8 with BOM"; PowerShell 5's `Out-File` / `>` (UTF-16 LE with its mark);
    # a tool writing UTF-16 without a mark.
    ("utf-8-sig", "starts with a UTF-8 byte order mark (bytes EF BB BF)"),
    ("utf-16", "starts with a UTF-16 (little-endian) byte order mark (bytes FF FE)"),
    ("utf-16-be", "holds NUL bytes: probably UTF-16"),
])
def test_list_file_in_another_encoding_names_it(task_dir: Path, out_dir: Path, encoding: str,
                                                needle: str) -> None:
    text = "\r\n".join(_lines(task_dir, "val200")) + "\r\n"
    (task_dir / "val200.txt").write_bytes(text.encode(encoding))
    err = _expect_error(task_dir, out_dir, f"val200.txt:1: the file {needle}" if "mark" in needle
                        else f"val200.txt:1: {needle}")
    assert "malformed" not in str(err) and "\\x" not in str(err)


def test_blank_trailing_lines_ok_but_inner_blank_is_error(task_dir: Path, out_dir: Path) -> None:
    lines = _lines(task_dir, "test")
    _set_lines(task_dir, "test", lines + ["", "  ", ""])
    validate_task(task_dir, "toy", NUM_CLASSES, SIZES)
    _set_lines(task_dir, "test", lines[:2] + [""] + lines[2:])
    _expect_error(task_dir, out_dir, "test.txt:3: blank line")


def test_label_out_of_range(task_dir: Path, out_dir: Path) -> None:
    lines = _lines(task_dir, "test")
    lines[1] = lines[1].rsplit(" ", 1)[0] + " 3"
    lines[5] = lines[5].rsplit(" ", 1)[0] + " -1"
    _set_lines(task_dir, "test", lines)
    _expect_error(task_dir, out_dir, "test.txt:2: label 3 outside [0, 3)", "test.txt:6: label -1")


def test_wrong_split_size(task_dir: Path, out_dir: Path) -> None:
    _set_lines(task_dir, "test", _lines(task_dir, "test")[:-1])
    _set_lines(task_dir, "val200", _lines(task_dir, "val200") + ["images/test/000005.jpg 2"])
    _expect_error(task_dir, out_dir, "val200.txt: expected 4 entries, found 5",
                  "test.txt: expected 6 entries, found 5")
    # "test": None accepts any size >= 1, but never an empty split.
    _set_lines(task_dir, "val200", _lines(task_dir, "val200")[:4])
    validate_task(task_dir, "toy", NUM_CLASSES, {**SIZES, "test": None})
    (task_dir / "test.txt").write_text("")
    with pytest.raises(DataError, match=r"test\.txt: split test is empty"):
        validate_task(task_dir, "toy", NUM_CLASSES, {**SIZES, "test": None})


def test_duplicate_path(task_dir: Path, out_dir: Path) -> None:
    lines = _lines(task_dir, "test")
    lines[4] = lines[1]
    _set_lines(task_dir, "test", lines)
    _expect_error(task_dir, out_dir, "test.txt:5: duplicate image path images/test/000001.jpg",
                  "first at line 2")


def test_train800val200_relabelled_is_recorded_not_refused(task_dir: Path, out_dir: Path) -> None:
    lines = _lines(task_dir, "train800val200")
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 2"   # label differs from train800.txt line 4 (label 0)
    _set_lines(task_dir, "train800val200", lines)
    content = _prepare(task_dir, out_dir)["content"]
    assert content["train800val200_union"] == "differs"
    assert (content["missing_from_train800val200"], content["extra_in_train800val200"],
            content["relabelled"]) == (1, 1, 1)
    assert any("train800val200.txt:4:" in m and "with this label" in m for m in content["examples"])
    assert any("train800.txt:4:" in m and "missing from train800val200" in m
               for m in content["examples"])
    assert read_split(out_dir, "train800val200").labels[3] == 2  # trained on what the list says


def test_train_val_overlap(task_dir: Path, out_dir: Path) -> None:
    val = _lines(task_dir, "val200")
    val[0] = _lines(task_dir, "train800")[0]
    _set_lines(task_dir, "val200", val)
    tv = _lines(task_dir, "train800val200")
    tv[8] = val[0]
    tv = tv[:8] + tv[9:] + ["images/val200/000000.jpg 0"]  # keep size, still != union
    _set_lines(task_dir, "train800val200", tv)
    _expect_error(task_dir, out_dir, "train800.txt:1:", "also in val200.txt", "disjoint")


def test_missing_class_coverage(task_dir: Path, out_dir: Path) -> None:
    for split in ("train800", "val200", "train800val200"):
        _set_lines(task_dir, split, [ln.rsplit(" ", 1)[0] + " 0" for ln in _lines(task_dir, split)])
    _expect_error(task_dir, out_dir, "train800val200.txt", "2 of 3 classes", "missing 1, 2")


def test_truncated_jpeg(task_dir: Path, out_dir: Path) -> None:
    image = task_dir / "images/val200/000002.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    # Reported for every list that uses it: val200.txt line 3 and train800val200.txt line 11.
    _expect_error(task_dir, out_dir, "val200.txt:3:", "train800val200.txt:11:",
                  "images/val200/000002.jpg", "cannot decode")


def test_truncated_tail_of_larger_jpeg(task_dir: Path, out_dir: Path) -> None:
    # A cut in the entropy-coded data (not the header): PIL would pad it unless strict.
    image = task_dir / "images/test/000000.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image, quality=95)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) - 400])
    _expect_error(task_dir, out_dir, "test.txt:1:", "images/test/000000.jpg", "cannot decode")


def test_garbage_image(task_dir: Path, out_dir: Path) -> None:
    (task_dir / "images/test/000001.jpg").write_bytes(b"this is not a jpeg" * 10)
    (task_dir / "images/test/000003.jpg").write_bytes(b"<!DOCTYPE html>")  # a failed download
    err = _expect_error(task_dir, out_dir, "test.txt:2:", "images/test/000001.jpg", "test.txt:4:",
                        "not an image file PIL can read")
    assert " at 0x" not in str(err) and "BytesIO" not in str(err)  # never an object's repr


def test_empty_image_file_and_a_directory_in_its_place(task_dir: Path, out_dir: Path) -> None:
    # An interrupted copy leaves 0-byte files; an unpacked archive can leave a folder by that name.
    (task_dir / "images/train800/000005.jpg").write_bytes(b"")
    image = task_dir / "images/test/000002.jpg"
    image.unlink()
    image.mkdir()
    err = _expect_error(task_dir, out_dir, "train800.txt:6:", "images/train800/000005.jpg")
    message = str(err)
    assert "train800.txt:6: image images/train800/000005.jpg: empty file (0 bytes)" in message
    assert "test.txt:3: image images/test/000002.jpg: is a directory, not an image file" in message
    assert "image not found" not in message


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.jpg", "images/../../outside.jpg"])
def test_escaping_path(task_dir: Path, out_dir: Path, bad: str) -> None:
    (task_dir.parent / "outside.jpg").write_bytes((task_dir / "images/test/000000.jpg").read_bytes())
    lines = _lines(task_dir, "test")
    lines[0] = f"{bad} 1"
    _set_lines(task_dir, "test", lines)
    _expect_error(task_dir, out_dir, "test.txt:1:", bad, "relative")


def test_many_errors_collected_into_one(task_dir: Path, out_dir: Path) -> None:
    lines = _lines(task_dir, "test")
    _set_lines(task_dir, "test", [ln.rsplit(" ", 1)[0] + " 9" for ln in lines] * 4)  # 24 bad lines
    err = _expect_error(task_dir, out_dir, "test.txt:1:", "test.txt:6:", "... and")
    assert len(err.errors) > 20
    assert str(err).startswith(f"{task_dir / 'test.txt'}:1: ")
    assert len(str(err).splitlines()) == 21


# ------------------------------------------------------------------------------- preparation


def test_round_trip_matches_pil(task_dir: Path, out_dir: Path) -> None:
    manifest = _prepare(task_dir, out_dir)
    assert manifest == read_manifest(out_dir)
    assert manifest["format"] == "vpeft-prepared-v1"
    assert manifest["conversions"] == {}
    for split in ("train800", "val200", "train800val200"):
        data = read_split(out_dir, split)
        entries = validate_task(task_dir, "toy", NUM_CLASSES, SIZES)[split]
        assert data.images.shape == (len(entries), IMAGE_SIZE, IMAGE_SIZE, 3)
        assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
        np.testing.assert_array_equal(data.index, np.arange(len(entries)))
        np.testing.assert_array_equal(data.labels, [e.label for e in entries])
        assert data.paths == [e.path for e in entries]
        for i, e in enumerate(entries):
            with Image.open(e.file) as img:
                want = np.asarray(img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
            np.testing.assert_array_equal(data.images[i], want)
        counts = manifest["splits"][split]["class_counts"]
        assert counts == {str(c): sum(e.label == c for e in entries) for c in range(NUM_CLASSES)}
    assert manifest["splits"]["test"]["count"] == 6 and "class_counts" not in manifest["splits"]["test"]
    src = manifest["source"]
    assert src["root"] == str(task_dir)
    assert src["checksums"]["train800.txt"] == vio.sha256_file(task_dir / "train800.txt")
    assert len(src["checksums"]["images"]) == 64
    import vpeft
    assert manifest["vpeft_version"] == vpeft.__version__


def test_test_labels_are_separate(task_dir: Path, out_dir: Path) -> None:
    manifest = _prepare(task_dir, out_dir)
    for shard in manifest["splits"]["test"]["shards"]:
        assert "label" not in pq.read_schema(out_dir / shard).names
    index, labels = read_test_labels(out_dir)
    np.testing.assert_array_equal(index, np.arange(6))
    np.testing.assert_array_equal(labels, [i % NUM_CLASSES for i in range(6)])
    # Everything else works without the test labels file.
    (out_dir / "test_labels.parquet").unlink()
    test = read_split(out_dir, "test")
    assert test.labels is None and test.images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3)
    for split in ("train800", "val200", "train800val200"):
        read_split(out_dir, split)
    read_manifest(out_dir)
    with pytest.raises(DataError, match="test_labels.parquet"):
        read_test_labels(out_dir)


def test_sharding(task_dir: Path, out_dir: Path) -> None:
    manifest = _prepare(task_dir, out_dir, shard_rows=5)
    assert manifest["splits"]["train800"]["shards"] == [f"train800/part-0000{i}.parquet" for i in range(2)]
    assert manifest["splits"]["train800val200"]["shards"] == [
        f"train800val200/part-0000{i}.parquet" for i in range(3)]
    rows = [pq.read_metadata(out_dir / s).num_rows for s in manifest["splits"]["train800val200"]["shards"]]
    assert rows == [5, 5, 2]
    assert sorted(p.name for p in (out_dir / "train800val200").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    one = out_dir.parent / "single"
    _prepare(task_dir, one)
    np.testing.assert_array_equal(read_split(out_dir, "train800val200").images,
                                  read_split(one, "train800val200").images)


def test_shards_read_back_in_index_order(task_dir: Path, out_dir: Path) -> None:
    manifest = _prepare(task_dir, out_dir, shard_rows=3)
    expected = read_split(out_dir, "train800")
    shards = manifest["splits"]["train800"]["shards"]
    manifest["splits"]["train800"]["shards"] = list(reversed(shards))
    vio.write_json(out_dir / "manifest.json", manifest)
    got = read_split(out_dir, "train800")
    np.testing.assert_array_equal(got.index, np.arange(8))
    np.testing.assert_array_equal(got.images, expected.images)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_greyscale_and_cmyk_converted(task_dir: Path, out_dir: Path, caplog) -> None:
    grey = task_dir / "images/train800/000001.jpg"
    Image.new("L", (8, 8), 77).save(grey)
    cmyk = task_dir / "images/test/000002.jpg"
    Image.fromarray(np.full((8, 8, 3), (200, 40, 90), np.uint8)).convert("CMYK").save(cmyk, quality=100)
    with Image.open(grey) as g, Image.open(cmyk) as c:
        assert (g.mode, c.mode) == ("L", "CMYK")
    with caplog.at_level(logging.INFO, logger="vpeft.data"):
        manifest = _prepare(task_dir, out_dir)
    # Distinct source images: the grey one is in train800 and train800val200 but counted once.
    assert manifest["conversions"] == {"CMYK": 1, "L": 1}
    logged = [r.getMessage() for r in caplog.records if r.name == "vpeft.data"]
    assert any("toy/train800:" in m and "L" in m for m in logged)
    assert any("toy/train800val200:" in m and "L" in m for m in logged)
    assert any("toy/test:" in m and "CMYK" in m for m in logged)
    g = read_split(out_dir, "train800").images[1]
    assert g.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.abs(g.astype(int) - 77).max() <= 2
    c = read_split(out_dir, "test").images[2].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(c, (200, 40, 90), atol=8)


def test_other_modes_converted(task_dir: Path, out_dir: Path) -> None:
    # Non-JPEG content under a .jpg name still decodes (PIL sniffs the format).
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(task_dir / "images/test/000000.jpg", format="PNG")
    Image.new("P", (8, 8), 5).save(task_dir / "images/test/000001.jpg", format="PNG")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(task_dir / "images/test/000003.jpg", format="PNG")
    manifest = _prepare(task_dir, out_dir)
    assert manifest["conversions"]["RGBA"] == 1 and manifest["conversions"]["P"] == 1
    test = read_split(out_dir, "test")
    np.testing.assert_array_equal(test.images[0, 0, 0], (10, 20, 30))
    high = test.images[3]
    assert np.all(np.abs(high.astype(int) - round(40000 * 255 / 65535)) <= 1)  # rescaled, not clipped


def test_prepare_twice_replaces(task_dir: Path, out_dir: Path) -> None:
    _prepare(task_dir, out_dir, shard_rows=2)
    (out_dir / "stale.txt").write_text("from an older run")
    manifest = _prepare(task_dir, out_dir, image_size=4)
    assert not (out_dir / "stale.txt").exists()
    assert not (out_dir / "train800" / "part-00003.parquet").exists()
    assert read_manifest(out_dir)["image_size"] == 4 == manifest["image_size"]
    assert read_split(out_dir, "train800").images.shape == (8, 4, 4, 3)
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["toy"]


def test_failed_prepare_keeps_previous_output(task_dir: Path, out_dir: Path) -> None:
    _prepare(task_dir, out_dir)
    (task_dir / "images/test/000001.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError):
        _prepare(task_dir, out_dir, image_size=4)
    assert read_manifest(out_dir)["image_size"] == IMAGE_SIZE
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["toy"]


def test_atomic_on_exception_midway(task_dir: Path, out_dir: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = shards.write_parquet

    def flaky(path, table, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        real(path, table, **kw)

    monkeypatch.setattr(shards, "write_parquet", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        _prepare(task_dir, out_dir, shard_rows=3)
    assert calls["n"] == 3
    assert not out_dir.exists()
    assert list(out_dir.parent.iterdir()) == []


def test_atomic_when_manifest_write_fails(task_dir: Path, out_dir: Path, monkeypatch) -> None:
    def boom(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(vtab, "write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        _prepare(task_dir, out_dir)
    assert not out_dir.exists() and list(out_dir.parent.iterdir()) == []


def test_checksums_track_image_bytes(task_dir: Path, tmp_path: Path) -> None:
    a = _prepare(task_dir, tmp_path / "a")["source"]["checksums"]
    image = task_dir / "images/val200/000001.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 0x01  # inside the entropy-coded data, still decodable
    image.write_bytes(bytes(data))
    b = _prepare(task_dir, tmp_path / "b")["source"]["checksums"]
    assert a["images"] != b["images"]
    assert {k: v for k, v in a.items() if k != "images"} == {k: v for k, v in b.items() if k != "images"}


# ------------------------------------------------------------------------------- reading errors


def test_read_errors(task_dir: Path, out_dir: Path) -> None:
    with pytest.raises(DataError, match="manifest.json: manifest not found"):
        read_split(out_dir, "train800")
    manifest = _prepare(task_dir, out_dir)
    with pytest.raises(DataError, match="unknown split"):
        read_split(out_dir, "train")
    shard = out_dir / manifest["splits"]["val200"]["shards"][0]
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(shard).drop_columns(["label"]), shard)  # a shard without labels
    with pytest.raises(DataError, match=r"part-00000\.parquet: .*no column \['label'\]"):
        read_split(out_dir, "val200")
    shard.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="part-00000.parquet"):
        read_split(out_dir, "val200")
    shard.unlink()
    with pytest.raises(DataError, match="shard not found"):
        read_split(out_dir, "val200")
    vio.write_json(out_dir / "manifest.json", {**manifest, "format": "other-v9"})
    with pytest.raises(DataError, match="unknown format 'other-v9'"):
        read_split(out_dir, "train800")
    (out_dir / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json:1: invalid JSON"):
        read_manifest(out_dir)


# ------------------------------------------------------------------------------- vpeft.io


def test_write_json_atomic_and_nan_safe(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    vio.write_json(path, {"b": float("nan"), "a": [1.5, float("inf"), {"c": -math.inf}],
                          "n": np.float32(0.5), "arr": np.arange(2)})
    text = path.read_text()
    assert list(json.loads(text)) == ["b", "a", "n", "arr"]  # key order kept
    assert vio.read_json(path) == {"b": None, "a": [1.5, None, {"c": None}], "n": 0.5, "arr": [0, 1]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_atomic_path_cleans_up_and_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with vio.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    with vio.atomic_path(path) as tmp:
        assert tmp.parent == path.parent and not tmp.exists()
        tmp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_read_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"a": 1,\n oops}')
    with pytest.raises(ValueError, match=r"bad\.json:2: invalid JSON"):
        vio.read_json(path)

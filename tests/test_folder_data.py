"""Generic image-set readers: class-per-folder trees and '<relpath> <label>' list files."""
from __future__ import annotations

from pathlib import Path

import pytest

from vpeft.data.folder import IMAGE_EXTENSIONS, LabelledFile, read_class_folders, read_list_file
from vpeft.data.errors import DataError
from vpeft.errors import UserError


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_class_folders_sorted_labels_and_paths(tmp_path):
    touch(tmp_path, "zebra/b.JPEG", "zebra/a.png", "apple/x.jpg", "README.txt", "apple/.DS_Store")
    files, classes = read_class_folders(tmp_path)
    assert classes == ["apple", "zebra"]
    assert files == [LabelledFile("apple/x.jpg", 0), LabelledFile("zebra/a.png", 1),
                     LabelledFile("zebra/b.JPEG", 1)]


def test_given_class_order_wins_and_missing_folders_are_allowed(tmp_path):
    touch(tmp_path, "n02/a.jpg", "n01/b.jpg")
    files, classes = read_class_folders(tmp_path, ["n03", "n02", "n01"])
    assert classes == ["n03", "n02", "n01"]
    assert files == [LabelledFile("n01/b.jpg", 2), LabelledFile("n02/a.jpg", 1)]


@pytest.mark.parametrize("setup, classes, expected", [
    (lambda r: touch(r, "a/x.jpg", "b/notes.txt"), None, ["b/notes.txt: not an image file", ".jpeg"]),
    (lambda r: touch(r, "a/x.jpg", "rogue/y.jpg"), ["a"], ["rogue: folder 'rogue' is not one of the 1 given"]),
    (lambda r: (touch(r, "a/x.jpg"), (r / "empty").mkdir()), None, ["empty: class folder 'empty' holds no images"]),
    (lambda r: touch(r, "a/x.jpg", "a/deeper/y.jpg"), None, ["a/deeper: unexpected sub-folder"]),
    (lambda r: touch(r, "README.txt"), None, ["no class folders found"]),
])
def test_class_folder_errors_name_the_offending_path(tmp_path, setup, classes, expected):
    setup(tmp_path)
    with pytest.raises(DataError) as err:
        read_class_folders(tmp_path, classes)
    for text in expected:
        assert text in str(err.value)
    assert isinstance(err.value, UserError)


def test_every_bad_entry_is_reported_at_once(tmp_path):
    touch(tmp_path, "a/1.txt", "b/2.csv", "c/ok.png")
    with pytest.raises(DataError) as err:
        read_class_folders(tmp_path)
    assert len(err.value.errors) == 2 and all(e.endswith("(any case)") for e in err.value.errors)
    assert ".webp" in IMAGE_EXTENSIONS


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        read_class_folders(tmp_path / "nope")


def test_list_file_in_file_order(tmp_path):
    touch(tmp_path, "img/b.jpg", "img/a.jpg")
    lst = tmp_path / "train.txt"
    lst.write_text("img/b.jpg 3\r\nimg/a.jpg 0\n\n")
    assert read_list_file(lst, tmp_path, num_classes=4) == [LabelledFile("img/b.jpg", 3),
                                                             LabelledFile("img/a.jpg", 0)]
    assert read_list_file(lst) == read_list_file(lst, tmp_path, 4)  # no root: no existence check


def test_list_file_errors_name_file_and_line(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg")
    lst = tmp_path / "l.txt"
    lst.write_text("a.jpg 0\nb.jpg  1\n../x.jpg 1\na.jpg 0\nb.jpg 5\nmissing.jpg 1\n\nb.jpg 1\n")
    with pytest.raises(DataError) as err:
        read_list_file(lst, tmp_path, num_classes=2)
    msgs = err.value.errors
    assert any(m.startswith(f"{lst}:2: malformed line") for m in msgs)
    assert any(m.startswith(f"{lst}:3:") and "'..'" in m for m in msgs)
    assert any(m.startswith(f"{lst}:4: duplicate image path a.jpg (first at line 1)") for m in msgs)
    assert any(m.startswith(f"{lst}:5: label 5 outside [0, 2)") for m in msgs)
    assert any(m.startswith(f"{lst}:6: image not found: missing.jpg") for m in msgs)
    assert any(m.startswith(f"{lst}:7: blank line before the end") for m in msgs)
    assert len(msgs) == 6


def test_empty_or_missing_list_file(tmp_path):
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(DataError, match="list file is empty"):
        read_list_file(tmp_path / "e.txt")
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(tmp_path / "none.txt")


def test_dataset_list_file_encoding_empty_image_and_folder_are_named(tmp_path):
    # A list saved by PowerShell 5 (`Get-ChildItem ... | Out-File train.txt`: UTF-16 LE with its
    # byte order mark), then as UTF-8 with Notepad's mark, then plain but naming a 0-byte image
    # (an interrupted copy), a folder, and a file in a non-UTF-8 legacy encoding.
    touch(tmp_path, "a.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "sub.jpg").mkdir()
    lst = tmp_path / "train.txt"
    lst.write_bytes("a.jpg 0\r\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"train\.txt:1: the file starts with a UTF-16 \(little-endian\) "
                                        r"byte order mark \(bytes FF FE\)"):
        read_list_file(lst, tmp_path, 2)
    lst.write_bytes("a.jpg 0\r\n".encode("utf-8-sig"))
    with pytest.raises(DataError, match=r"UTF-8 byte order mark \(bytes EF BB BF\)"):
        read_list_file(lst, tmp_path, 2)
    lst.write_bytes("a.jpg 0\nempty.jpg 1\nsub.jpg 1\ncaf\u00e9.jpg 0\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_list_file(lst, tmp_path, 2)
    assert err.value.errors == [f"{lst}:4: not valid UTF-8 (byte 0xE9); list files must be UTF-8"]
    lst.write_text("a.jpg 0\nempty.jpg 1\nsub.jpg 1\n")
    with pytest.raises(DataError) as err:
        read_list_file(lst, tmp_path, 2)
    assert err.value.errors == [
        f"{lst}:2: image empty.jpg: empty file (0 bytes) ({tmp_path / 'empty.jpg'})",
        f"{lst}:3: image sub.jpg: is a directory, not an image file ({tmp_path / 'sub.jpg'})"]

"""``<relpath> <label>`` list files (VTAB-1K's ``train800.txt``, ``val200.txt``, ...): the line
syntax, the rule for image paths, and parsing one file into entries.

A line is a path relative to the directory the list belongs to, one space and an integer label.
:func:`parse_list` reports every bad line (as ``file:line: ...``) into the caller's error list
instead of stopping at the first, so a whole task can be checked in one pass.
"""
from __future__ import annotations

import codecs
import posixpath
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["LIST_LINE_RE", "Entry", "ParsedList", "check_relpath", "file_problem",
           "image_file_problem", "list_lines_of", "parse_list"]

LIST_LINE_RE = re.compile(r"^(\S+) (-?\d+)$")


@dataclass(frozen=True)
class Entry:
    """One list-file line: image ``path`` relative to the task dir, ``label``, 1-based ``line``, absolute ``file``."""

    path: str
    label: int
    line: int
    file: Path


def check_relpath(raw: str) -> str | None:
    """Normalised POSIX relpath, or None when it is absolute or escapes the task dir."""
    if raw.startswith(("/", "\\")) or PureWindowsPath(raw).drive or PurePosixPath(raw).is_absolute():
        return None
    if ".." in re.split(r"[/\\]", raw):
        return None
    return posixpath.normpath(raw)


# Longest first: a UTF-32 LE mark begins with the UTF-16 LE one.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32 (little-endian)"),
                     (codecs.BOM_UTF32_BE, "UTF-32 (big-endian)"),
                     (codecs.BOM_UTF8, "UTF-8"),
                     (codecs.BOM_UTF16_LE, "UTF-16 (little-endian)"),
                     (codecs.BOM_UTF16_BE, "UTF-16 (big-endian)"))


def list_lines_of(list_file: Path) -> tuple[list[str], str | None]:
    """The lines of a list file (blank lines at the end dropped), or ([], the problem) when it is
    not plain UTF-8: a byte order mark (Windows editors and PowerShell's ``Out-File`` write one)
    or UTF-16 text would otherwise show up as invisible characters in a "malformed line"."""
    data = list_file.read_bytes()
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return [], (f"{list_file}:1: the file starts with a {encoding} byte order mark "
                        f"(bytes {mark.hex(' ').upper()}); list files must be UTF-8 without a byte "
                        "order mark: save it again as plain UTF-8"
                        + ("" if encoding == "UTF-8" else f" (e.g. iconv -f {encoding.split()[0]} -t UTF-8)"))
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        return [], (f"{list_file}:{line}: holds NUL bytes: probably UTF-16 or UTF-32 text without "
                    "a byte order mark; list files must be UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return [], (f"{list_file}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02X}); list "
                    "files must be UTF-8")
    lines = text.split("\n")
    while lines and not lines[-1].strip():  # blank lines are allowed only at the end
        lines.pop()
    return lines, None


def image_file_problem(file: Path) -> str | None:
    """What makes ``file`` unusable as an image before decoding it (None when it looks usable):
    missing, a directory, not a regular file, or empty (an interrupted download or copy)."""
    return file_problem(file, "an image file", missing="image not found")


def file_problem(file: Path, what: str, *, missing: str = "file not found") -> str | None:
    """What makes ``file`` unusable as ``what`` ("an image file", "a weights file") before it is
    read: ``missing``, unreadable, a directory, not a regular file, or empty."""
    try:
        st = file.stat()
    except FileNotFoundError:
        return missing
    except OSError as exc:
        return f"cannot read it ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return f"is a directory, not {what}"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


@dataclass
class ParsedList:
    """A parsed list file: its valid entries and what the checks that span files need to know."""

    entries: list[Entry]
    records: int          # non-blank lines, malformed ones included (what the split size counts)
    broken: bool          # a line could not be parsed: cross-file checks on it would be noise


def parse_list(task_dir: Path, list_file: Path, num_classes: int, errors: list[str],
               unwritten: Collection[str] = frozenset()) -> ParsedList:
    """Entries of ``list_file`` (paths relative to ``task_dir``, labels in [0, num_classes)),
    appending a ``file:line:`` message to ``errors`` for every line at fault and every missing image.
    ``unwritten``: relpaths the step that writes the task writes itself, taken as present
    (`vpeft check --no-decode` does not write them)."""
    raw_lines, problem = list_lines_of(list_file)
    if problem is not None:
        errors.append(problem)
        return ParsedList([], 0, True)
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    records = 0
    broken = False
    for lineno, raw in enumerate(raw_lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        where = f"{list_file}:{lineno}"
        if not line.strip():
            errors.append(f"{where}: blank line before the end of the file; expected '<relpath> <label>'")
            broken = True
            continue
        records += 1
        m = LIST_LINE_RE.match(line)
        if m is None:
            errors.append(f"{where}: malformed line {line!r}; expected '<relpath> <label>' "
                          "(one space, integer label)")
            broken = True
            continue
        relpath = check_relpath(m.group(1))
        if relpath is None:
            errors.append(f"{where}: image path {m.group(1)!r} must be relative to {task_dir} "
                          "without '..' components")
            broken = True
            continue
        label = int(m.group(2))
        if not 0 <= label < num_classes:
            errors.append(f"{where}: label {label} outside [0, {num_classes})")
            broken = True
            continue
        if relpath in seen:
            errors.append(f"{where}: duplicate image path {relpath} (first at line {seen[relpath]})")
            continue
        seen[relpath] = lineno
        file = task_dir / relpath
        problem = None if relpath in unwritten else image_file_problem(file)
        if problem == "image not found":
            errors.append(f"{where}: image not found: {relpath} (looked for {file})")
        elif problem is not None:
            errors.append(f"{where}: image {relpath}: {problem} ({file})")
        entries.append(Entry(relpath, label, lineno, file))
    return ParsedList(entries, records, broken)

"""``<relpath> <label>`` list files (VTAB-1K's ``train800.txt``, ``val200.txt``, ...): the line
syntax, the rule for image paths, and parsing one file into entries.

A line is a path relative to the directory the list belongs to, one space and an integer label.
:func:`parse_list` reports every bad line (as ``file:line: ...``) into the caller's error list
instead of stopping at the first, so a whole task can be checked in one pass.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["LIST_LINE_RE", "Entry", "ParsedList", "check_relpath", "parse_list"]

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


@dataclass
class ParsedList:
    """A parsed list file: its valid entries and what the checks that span files need to know."""

    entries: list[Entry]
    records: int          # non-blank lines, malformed ones included (what the split size counts)
    broken: bool          # a line could not be parsed: cross-file checks on it would be noise


def parse_list(task_dir: Path, list_file: Path, num_classes: int, errors: list[str]) -> ParsedList:
    """Entries of ``list_file`` (paths relative to ``task_dir``, labels in [0, num_classes)),
    appending a ``file:line:`` message to ``errors`` for every line at fault and every missing image."""
    raw_lines = list_file.read_bytes().decode("utf-8", errors="replace").split("\n")
    # Blank lines are allowed only at the end of the file.
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
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
        if not file.is_file():
            errors.append(f"{where}: image not found: {relpath} (looked for {file})")
        entries.append(Entry(relpath, label, lineno, file))
    return ParsedList(entries, records, broken)

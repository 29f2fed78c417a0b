"""``list``: a ``<relpath> <label>`` list file (the VTAB-1K list-file format; Clevr-Dist as
``vpeft.data.manyshot.write_clevr_dist`` writes it), read in file order. ``root`` is the folder
the paths are relative to; by default the list file's own folder."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vpeft.data.folder import read_list_file
from vpeft.data.formats.base import Part, Source, register


@register
@dataclass(frozen=True)
class ListFile(Source):
    format = "list"
    untagged = {"list": "list", "root": "root"}

    list: Path
    root: Path | None = None

    def read(self, num_classes: int, classes: Sequence[str] | None) -> Part:
        return Part(read_list_file(self.list, self.image_root, num_classes), None)

    @property
    def image_root(self) -> Path:
        return self.root if self.root is not None else self.list.parent

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.list,)

    def describe(self) -> str:
        return f"list {self.list}"

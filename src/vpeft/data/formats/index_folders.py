"""``index_folders``: class folders named by label index, ``root/0/`` ... ``root/<N-1>/`` (ImageNet-V2
as it ships: ``0`` ... ``999``). Folders may be missing; the names carry no class names."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vpeft.data.folder import read_class_folders
from vpeft.data.formats.base import Part, Source, register


@register
@dataclass(frozen=True)
class IndexFolders(Source):
    format = "index_folders"

    root: Path

    def read(self, num_classes: int, classes: Sequence[str] | None) -> Part:
        files, _ = read_class_folders(self.root, classes=[str(i) for i in range(num_classes)])
        return Part(files, None)

    @property
    def image_root(self) -> Path:
        return self.root

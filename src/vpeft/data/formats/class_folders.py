"""``folders`` (also ``wnid_folders``): a class-per-folder tree, ``root/<class>/<image>``.

The one reader behind several names the study's data goes by: a generic class-folder export,
NWPU-RESISC45 as it ships (``NWPU-RESISC45/<class>/<class>_NNN.jpg``), ImageNet train and val in
wnid folders, ImageNet-Sketch, and ImageNet-A / -R (200 wnid folders beside a README.txt, which
is a file and so ignored; their class subset is checked by the evaluation set's
``expected_subset``, :mod:`vpeft.robustness.imagenet`). Classes are the sorted folder names, or
the ``classes`` the caller gives (a label space's wnids): then folders may be missing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vpeft.data.errors import DataError
from vpeft.data.folder import read_class_folders
from vpeft.data.formats.base import Part, Source, register


@register
@dataclass(frozen=True)
class ClassFolders(Source):
    format = "folders"
    aliases = ("wnid_folders",)  # ImageNet's class folders are named by wnid
    untagged = {"folders": "root"}

    root: Path

    def read(self, num_classes: int, classes: Sequence[str] | None) -> Part:
        files, class_list = read_class_folders(self.root, classes)
        if len(class_list) != num_classes:
            raise DataError(f"{self.root}: {len(class_list)} classes found, but the dataset "
                            f"declares num_classes={num_classes}")
        return Part(files, class_list)

    @property
    def image_root(self) -> Path:
        return self.root

"""``cifar100_python``: one part (``train`` or ``test``) of CIFAR-100's "python version" as it
unpacks, ``root/{train,test,meta}`` (:mod:`vpeft.data.cifar`: a restricted unpickler). The part
holds no image files: :meth:`read` gives its pixels, and a view writes the images it lists."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpeft.data.errors import DataError
from vpeft.data.folder import LabelledFile
from vpeft.data.formats.base import FormatConfigError, Part, Source, register

def image_name(row: int) -> str:
    """The name a CIFAR-100 row gets in a view: its row number (stable, unique, traceable)."""
    return f"{row:05d}.png"


@register
@dataclass(frozen=True)
class Cifar100Python(Source):
    format = "cifar100_python"
    holds_image_files = False
    untagged = {"cifar100_python": "root", "part": "part"}

    root: Path
    part: str

    @classmethod
    def check_values(cls, values: Mapping[str, Any], where: str) -> None:
        from vpeft.data.cifar import CIFAR100_PARTS  # numpy: not at every composition

        if values["part"] not in CIFAR100_PARTS:
            raise FormatConfigError(f"{where}.part", f"{values['part']!r} is not one of "
                                                     f"{', '.join(CIFAR100_PARTS)}")

    def read(self, num_classes: int, classes: Sequence[str] | None) -> Part:
        from vpeft.data.cifar import read_cifar100  # numpy: only when read

        part = read_cifar100(self.root, self.part)
        meta = self.root / "meta"
        if len(part.classes) != num_classes:
            raise DataError(f"{meta}: fine_label_names names {len(part.classes)} classes, but the "
                            f"dataset declares num_classes={num_classes}")
        if classes is not None and list(classes) != part.classes:
            raise DataError(f"{meta}: fine_label_names differ from the classes given "
                            "(study.data.datasets.<name>.classes, or the train part's)")
        files = [LabelledFile(image_name(i), int(label)) for i, label in enumerate(part.labels)]
        return Part(files, part.classes, part.images)

    @property
    def image_root(self) -> Path:
        return self.root

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.root / self.part, self.root / "meta")

    def describe(self) -> str:
        return f"CIFAR-100 {self.root / self.part}"

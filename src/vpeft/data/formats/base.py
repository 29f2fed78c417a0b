"""The dataset-format registry: :class:`Source` (one dataset part as a format holds it), the
registry of formats, and the checks of a source block (``{format: <name>, <that format's keys>}``).

A format is a frozen dataclass subclassing :class:`Source` and decorated with :func:`register`:
its fields are the keys of its config block (``Path`` fields are paths, relative to the study's
data root where the block has one), and it reads its files with :meth:`Source.read`. The schema
check (:mod:`vpeft.config`) and the readers (:mod:`vpeft.data.manyshot`,
:mod:`vpeft.robustness.pipeline`) both go through :func:`check_block`, so a block is judged the
same way at composition and at use.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from vpeft.data.folder import LabelledFile
from vpeft.errors import UserError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Part", "Source", "FormatConfigError", "register", "names", "lookup", "config_keys",
           "check_block", "parse_source", "source", "untagged_spelling"]

MISSING_VALUE = "???"  # omegaconf.MISSING: a value the user has yet to give


@dataclass(frozen=True)
class Part:
    """One dataset part as read: ``files`` (paths relative to the part's image root), the class
    names when the format carries them, and for a format without image files (CIFAR-100's
    pickles) the ``pixels`` (N x H x W x 3 uint8; ``pixels[i]`` is ``files[i]``)."""

    files: list[LabelledFile]
    classes: list[str] | None
    pixels: np.ndarray | None = None


@dataclass(frozen=True)
class Source(ABC):
    """One dataset part (train, test, an evaluation set) in one format; the fields are the keys
    of its config block besides ``format``."""

    format: ClassVar[str]                     # the name a config block selects it by
    aliases: ClassVar[tuple[str, ...]] = ()   # other names for the same reader
    holds_image_files: ClassVar[bool] = True  # False: read() gives the pixels (CIFAR-100)
    # The untagged many-shot spelling this format had (old key -> new key), for the error that
    # shows the new one; the first key marks the form.
    untagged: ClassVar[Mapping[str, str]] = {}

    @abstractmethod
    def read(self, num_classes: int, classes: Sequence[str] | None) -> Part:
        """The part's files in the format's order, labels in ``[0, num_classes)``. ``classes``
        are the class ids in label order when the caller knows them (a study's ``classes``, a
        label space's wnids), else None (the format decides, e.g. sorted folder names)."""

    @property
    @abstractmethod
    def image_root(self) -> Path:
        """The folder ``files`` are relative to (for a format without image files: its folder)."""

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The files or folders the part is read from (what a Snakemake rule depends on)."""
        return (self.image_root,)

    def describe(self) -> str:
        return f"{self.format} {self.image_root}"

    @classmethod
    def check_values(cls, values: Mapping[str, Any], where: str) -> None:
        """Rules on the block's values beyond their types (a closed set, one key of two);
        raise :class:`FormatConfigError`. ``values`` holds only the keys given."""


class FormatConfigError(UserError):
    """A source block at fault: ``key`` is the config key (``study.data.datasets.x.train.part``),
    ``detail`` what is wrong with it."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key, self.detail = key, detail


_REGISTRY: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make a :class:`Source` subclass selectable by its ``format`` (and aliases)."""
    for name in (cls.format, *cls.aliases):
        if name in _REGISTRY:
            raise ValueError(f"dataset format '{name}' registered twice")
        _REGISTRY[name] = cls
    return cls


def names() -> list[str]:
    """Every name a block may give as ``format`` (aliases included), in registration order."""
    return list(_REGISTRY)


def lookup(name: str) -> type[Source] | None:
    return _REGISTRY.get(name)


def _known() -> str:
    shown = []
    for cls in dict.fromkeys(_REGISTRY.values()):
        also = f" (also {', '.join(cls.aliases)})" if cls.aliases else ""
        shown.append(cls.format + also)
    return ", ".join(shown)


@functools.lru_cache(maxsize=None)
def _fields(cls: type[Source]) -> dict[str, tuple[Any, bool]]:
    """key -> (type hint, required) of a format's block, ``format`` excluded."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


def _is_path(hint: Any) -> bool:
    return hint is Path or Path in typing.get_args(hint)


def config_keys(cls: type[Source]) -> dict[str, Any]:
    """The keys of a format's block and the types their config values have (a path is a str)."""
    types: dict[str, Any] = {"format": str}
    for key, (hint, required) in _fields(cls).items():
        value_type = str if _is_path(hint) else hint
        types[key] = value_type if required else Optional[value_type]
    return types


def _unset(value: Any) -> bool:
    return value is None or value == MISSING_VALUE


def _flow(block: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in block.items()) + "}"


def untagged_spelling(block: Mapping[str, Any]) -> str | None:
    """The tagged spelling of an untagged many-shot block (``{folders: DIR}`` ->
    ``{format: folders, root: DIR}``), or None when the block is no such form."""
    for cls in dict.fromkeys(_REGISTRY.values()):
        if cls.untagged and next(iter(cls.untagged)) in block and set(block) <= set(cls.untagged):
            return _flow({"format": cls.format,
                          **{cls.untagged[k]: v for k, v in block.items()}})
    return None


def check_block(block: Any, where: str, extra_keys: Sequence[str] = ()) -> type[Source]:
    """The format a source block selects, after checking its keys: ``format`` names a registered
    format; every other key is one of that format's (or of ``extra_keys``, the keys the block's
    owner adds, e.g. an evaluation set's ``name``); every required key is present. A key left
    unset (null or ``???``) that belongs to another format is ignored: it is what remains of a
    block whose format was switched on the command line. Raises :class:`FormatConfigError`."""
    if not isinstance(block, Mapping):
        raise FormatConfigError(where, f"expected a source block {{format: FORMAT, ...}}, got "
                                       f"{block!r}; formats: {_known()}")
    if "format" not in block:
        new = untagged_spelling(block)
        if new is not None:
            raise FormatConfigError(where, f"the untagged form {_flow(block)} is no longer read; "
                                           f"write {new}")
        raise FormatConfigError(f"{where}.format", f"missing; a source block names its format, "
                                                   f"one of: {_known()}")
    name = block["format"]
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise FormatConfigError(f"{where}.format", f"unknown format {name!r}.{hint} Known "
                                                   f"formats: {_known()}")
    valid = [*config_keys(cls), *extra_keys]
    other_formats = {k for c in _REGISTRY.values() for k in _fields(c)}
    for key, value in block.items():
        if key in valid or (key in other_formats and _unset(value)):
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise FormatConfigError(f"{where}.{key}", f"not a key of format '{name}'.{hint} Keys of "
                                                  f"format '{name}': {', '.join(valid)}")
    for key, (_, required) in _fields(cls).items():
        if required and key not in block:
            raise FormatConfigError(f"{where}.{key}", f"missing; format '{name}' needs it (keys of "
                                                      f"format '{name}': {', '.join(valid)})")
    return cls


def parse_source(block: Any, *, where: str, base: Path,
                 extra_keys: Sequence[str] = ()) -> Source:
    """The typed source of a resolved source block; relative paths are relative to ``base``."""
    cls = check_block(block, where, extra_keys)
    values: dict[str, Any] = {}
    for key, (hint, required) in _fields(cls).items():
        value = block.get(key)
        if _unset(value):
            if required:
                raise FormatConfigError(f"{where}.{key}", f"has no value; format "
                                                          f"'{block['format']}' needs it")
            continue
        values[key] = base / str(value) if _is_path(hint) else value
    cls.check_values(values, where)
    return cls(**values)


def source(format: str, **keys: Any) -> Source:
    """A source from Python: ``source("folders", root=path)`` (paths as given)."""
    return parse_source({"format": format, **keys}, where=f"{format} source", base=Path())

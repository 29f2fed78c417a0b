"""CIFAR-100 read in its distributed "python version": ``cifar-100-python/{train,test,meta}``.

Each of ``train`` / ``test`` is a pickled dict with bytes keys (written by Python 2, so read with
``encoding="bytes"``): ``b'data'`` a uint8 array of N rows of 3072 values (the 1024 R values of a
32x32 image, row-major, then its 1024 G, then its 1024 B), ``b'fine_labels'`` (N ints),
``b'coarse_labels'``, ``b'filenames'``, ``b'batch_label'``. ``meta`` holds ``b'fine_label_names'``
(label index order). Only the fine labels are used.

A pickle can run code on load, so the files are read with :class:`RestrictedUnpickler`, which
builds only built-in containers, bytes, str and numbers (opcodes, no globals) plus the numpy array
reconstruction these files reference; any other global is refused.
"""
from __future__ import annotations

import codecs
import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpeft.data.errors import DataError

__all__ = ["CIFAR100_PARTS", "CifarPart", "RestrictedUnpickler", "load_restricted", "read_cifar100"]

CIFAR100_PARTS = ("train", "test")
SIDE = 32  # CIFAR images are 32 x 32 RGB: 3 * 32 * 32 = 3072 values a row
ROW = 3 * SIDE * SIDE


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1'); any
    # other codec is refused so that the codec registry (an import mechanism) is never reached.
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only 'latin1' is admitted")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The numpy callables an ndarray pickle references, under the module names numpy 1 (and the
    original Python 2 files: ``numpy.core``) and numpy 2 (``numpy._core``) write."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    admitted: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        admitted[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # protocol 5 (pickle.HIGHEST_PROTOCOL) writes arrays through _frombuffer instead
        admitted[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return admitted


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the admitted set."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of numpy uint8 arrays (and ``_codecs.encode`` with
    latin1); everything else raises :class:`RefusedGlobal`."""

    ADMITTED = {**_numpy_globals(), ("_codecs", "encode"): _latin1_encode}

    def find_class(self, module: str, name: str) -> Any:
        found = self.ADMITTED.get((module, name))
        if found is None:
            raise RefusedGlobal(module, name)
        return found


# What a corrupt or truncated pickle (or a misused admitted callable) raises while loading.
_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, struct.error, UnicodeDecodeError, MemoryError, OverflowError)


def load_restricted(path: Path) -> Any:
    """Load one pickle file through :class:`RestrictedUnpickler` (``encoding="bytes"``, as the
    Python 2 originals need); every failure is one :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the CIFAR-100 python version: "
                        f"cifar-100-python/{{train,test,meta}})")
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(fh, encoding="bytes").load()
    except RefusedGlobal as exc:
        raise DataError(f"{path}: refused to load global {exc.qualname}: a CIFAR-100 pickle holds "
                        "only dicts, lists, bytes, ints and numpy uint8 arrays") from None
    except _LOAD_ERRORS as exc:
        raise DataError(f"{path}: not a readable pickle (corrupt or truncated?): "
                        f"{type(exc).__name__}: {exc}") from None
    return obj


def _key(d: Mapping[Any, Any], key: str, path: Path) -> Any:
    # The originals have bytes keys; a re-pickle under Python 3 may have str keys: both are read.
    for k in (key.encode("ascii"), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: key b'{key}' missing; found keys "
                    f"{sorted(repr(k) for k in d)[:10]}")


def _dict(obj: Any, path: Path) -> Mapping[Any, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def read_class_names(meta: Path) -> list[str]:
    """``meta``'s ``fine_label_names`` as str, in label order."""
    names = _key(_dict(load_restricted(meta), meta), "fine_label_names", meta)
    if not isinstance(names, list) or not names or \
            not all(isinstance(n, (bytes, str)) and n for n in names):
        raise DataError(f"{meta}: fine_label_names must be a non-empty list of names")
    try:
        out = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta}: fine_label_names holds a name that is not UTF-8: {exc}") from None
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise DataError(f"{meta}: fine_label_names names {', '.join(dup)} more than once")
    return out


@dataclass(frozen=True)
class CifarPart:
    """One part of CIFAR-100: ``images`` N x 32 x 32 x 3 uint8 (HWC, RGB), ``labels`` (fine, int64),
    ``classes`` (meta's fine_label_names), ``file`` it was read from."""

    file: Path
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


def rows_to_images(data: np.ndarray) -> np.ndarray:
    """N x 3072 rows (R plane, G plane, B plane, each 32 x 32 row-major) -> N x 32 x 32 x 3."""
    return np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def read_cifar100(root: Path, part: str) -> CifarPart:
    """Read ``root/<part>`` (``train`` or ``test``) and ``root/meta`` of an unpacked
    ``cifar-100-python`` archive, checking shapes, dtype, row counts and label range."""
    root = Path(root)
    if part not in CIFAR100_PARTS:
        raise DataError(f"{root}: part {part!r} is not one of {', '.join(CIFAR100_PARTS)}")
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected the unpacked CIFAR-100 python "
                        "version, cifar-100-python/ holding train, test and meta)")
    classes = read_class_names(root / "meta")
    path = root / part
    d = _dict(load_restricted(path), path)
    data = _key(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != ROW:
        what = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DataError(f"{path}: b'data' must be a uint8 array of N x {ROW} (R, G, B planes of "
                        f"{SIDE} x {SIDE}), found {what}")
    raw_labels = _key(d, "fine_labels", path)
    if not isinstance(raw_labels, (list, np.ndarray)) or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw_labels):
        raise DataError(f"{path}: b'fine_labels' must be a list of integers")
    labels = np.asarray(raw_labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise DataError(f"{path}: b'data' has {len(data)} rows but b'fine_labels' has "
                        f"{len(labels)} entries")
    if len(data) == 0:
        raise DataError(f"{path}: holds no images")
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if bad.size:
        raise DataError(f"{path}: fine label {int(labels[bad[0]])} of row {int(bad[0])} outside "
                        f"[0, {len(classes)}) ({bad.size} such rows; "
                        f"{root / 'meta'} names {len(classes)} classes)")
    return CifarPart(path, rows_to_images(data), labels, classes)

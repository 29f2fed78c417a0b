"""Image decoding: strict (a truncated file is an error, not grey padding), full, and with the
conversion to RGB and bicubic resize every prepared image goes through.

:func:`decode_image` also digests the decoded source pixels, so equal images are recognised
whatever their file names or encodings; :func:`digest_files` decodes many files on every core
without keeping pixels (`vpeft check`), and :func:`decode_problem` words a failure.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from vpeft.data.listfile import image_file_problem

__all__ = ["DECODE_ERRORS", "Decoded", "strict_decoding", "content_digest", "decode_image",
           "decode_problem", "read_image", "load_image", "decode_workers",
           "digest_files", "progress_bar", "reporting_to", "advance"]


@contextmanager
def strict_decoding() -> Iterator[None]:
    """Within this block a truncated file fails to load (PIL would otherwise silently pad it with grey)."""
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError,
                  Image.DecompressionBombError)


class ImageFileError(OSError):
    """A file that cannot be an image whatever its bytes (empty, a directory); its text says why."""


def read_image(path: Path) -> bytes:
    """The bytes of an image file; an :class:`ImageFileError` saying plainly why not when the
    path is a directory or the file is empty (PIL would report the latter as "cannot identify
    image file <_io.BytesIO object at 0x…>")."""
    path = Path(path)
    problem = image_file_problem(path)
    if problem is not None and problem != "image not found":
        raise ImageFileError(problem)
    return path.read_bytes()  # a missing file: FileNotFoundError, "image not found"


_OBJECT_REPR = re.compile(r"\s*<[^<>]* (?:object )?at 0x[0-9a-fA-F]+>")


def decode_problem(exc: BaseException) -> str:
    """One line saying why an image did not decode, never a Python object's repr."""
    if isinstance(exc, ImageFileError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read (unknown format, or the start of the file is damaged)"
    if isinstance(exc, FileNotFoundError):
        return "image not found"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read it ({exc.strerror})"
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        # PIL's own I;16 -> RGB clips at 255, turning most of a 16-bit image white; rescale instead.
        arr = np.asarray(img, dtype=np.uint32)
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        # Via RGBA so palette transparency is handled without PIL's transparency warning.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Decoded:
    """One decoded image: the resized HWC uint8 bytes (None when no size was asked for), the
    source mode, and a digest of the decoded source pixels that equal images share whatever
    their file names or encodings (how train800val200's copies are matched to their originals)."""

    pixels: bytes | None
    mode: str
    content: str


def content_digest(img: Image.Image) -> str:
    """Digest of a decoded image's mode, size and pixels."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{img.mode}:{img.width}x{img.height}:".encode("ascii"))
    digest.update(img.tobytes())
    return digest.hexdigest()


def decode_image(data: bytes, size: int | None) -> Decoded:
    """Decode fully; with ``size``, also convert to RGB and bicubic-resize to size x size."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        mode, content = img.mode, content_digest(img)
        if size is None:
            return Decoded(None, mode, content)
        rgb = _to_rgb(img).resize((size, size), Image.BICUBIC)
    arr = np.asarray(rgb, dtype=np.uint8)
    assert arr.shape == (size, size, 3), arr.shape
    return Decoded(arr.tobytes(), mode, content)


# ---------------------------------------------------------------------------------------------
# Checking many files on every core (`vpeft check`)
# ---------------------------------------------------------------------------------------------

SERIAL_BELOW = 256  # fewer files than this are decoded in-process: a pool costs more to start


def decode_workers() -> int:
    """The cores this process may use (its CPU affinity, which a SLURM allocation restricts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _digest_one(path: str) -> tuple[str, str, str]:
    """("ok", mode, content digest) of one file, or ("error", problem, "")."""
    try:
        with strict_decoding():
            decoded = decode_image(read_image(Path(path)), None)
    except (*DECODE_ERRORS, OSError) as exc:
        return "error", decode_problem(exc), ""
    return "ok", decoded.mode, decoded.content


# Where digest_files reports each decoded file: one progress bar over many calls (`vpeft check`
# decodes a study task by task, under one bar and one ETA for the whole study).
_ADVANCE: ContextVar[Callable[[int], object] | None] = ContextVar("vpeft_decode_advance",
                                                                  default=None)


@contextmanager
def reporting_to(report: Callable[[int], object]) -> Iterator[None]:
    """Within this block :func:`digest_files` calls ``report(1)`` for every file it decodes
    (and so does whoever calls :func:`advance`: a view's writer, for each image it writes)."""
    token = _ADVANCE.set(report)
    try:
        yield
    finally:
        _ADVANCE.reset(token)


def advance(n: int = 1) -> None:
    """Report ``n`` images done to the block's :func:`reporting_to` (nothing outside one)."""
    report = _ADVANCE.get()
    if report is not None:
        report(n)


def progress_bar(total: int, desc: str):
    """A tqdm bar with an ETA on stderr, shown only when stderr is a terminal (a log file or a
    pipe gets nothing)."""
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: it would make the next pool spawn, not fork

    # smoothing 0: the ETA from the mean rate so far, not the latest one; a study alternates
    # writing a view's PNGs (~1 ms an image) with decoding them (several times faster)
    return Bar(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, smoothing=0,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)


def digest_files(paths: Sequence[Path], *, workers: int | None = None
                 ) -> list[tuple[str, str, str]]:
    """:func:`_digest_one` of every path, in order, decoded on ``workers`` processes (default:
    every core this process may use); each file reported as decoded (:func:`reporting_to`)."""
    import threading

    workers = decode_workers() if workers is None else max(1, int(workers))
    names = [str(p) for p in paths]
    # fork starts a worker in milliseconds; with other Python threads running (a lock held at
    # the fork would stay held in the child) start clean interpreters instead
    fork = threading.active_count() == 1
    results: list[tuple[str, str, str]] = []
    if workers == 1 or len(names) < SERIAL_BELOW:
        for name in names:
            results.append(_digest_one(name))
            advance(1)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if fork and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        chunk = max(1, min(64, len(names) // (workers * 8)))
        for result in pool.map(_digest_one, names, chunksize=chunk):
            results.append(result)
            advance(1)
    return results


def load_image(data: bytes, size: int) -> tuple[bytes, str]:
    """(HWC uint8 bytes, source mode) of ``data`` resized to size x size."""
    decoded = decode_image(data, size)
    return decoded.pixels, decoded.mode  # type: ignore[return-value]

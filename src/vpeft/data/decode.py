"""Image decoding: strict (a truncated file is an error, not grey padding), full, and with the
conversion to RGB and bicubic resize every prepared image goes through.

:func:`decode_image` also digests the decoded source pixels, so equal images are recognised
whatever their file names or encodings; :func:`undecodable` checks files without keeping pixels.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["DECODE_ERRORS", "Decoded", "strict_decoding", "content_digest", "decode_image",
           "undecodable", "load_image"]


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


def undecodable(images: Iterable[tuple[str, Path]]) -> list[str]:
    """``"<where>: cannot decode <file>: ..."`` for every (where, file) that does not decode fully
    (missing, truncated, not an image); what ``vpeft check`` reports without writing anything."""
    errors: list[str] = []
    with strict_decoding():
        for where, file in images:
            try:
                decode_image(Path(file).read_bytes(), None)
            except (*DECODE_ERRORS, OSError) as exc:
                errors.append(f"{where}: cannot decode {file}: {type(exc).__name__}: {exc}")
    return errors


def load_image(data: bytes, size: int) -> tuple[bytes, str]:
    """(HWC uint8 bytes, source mode) of ``data`` resized to size x size."""
    decoded = decode_image(data, size)
    return decoded.pixels, decoded.mode  # type: ignore[return-value]

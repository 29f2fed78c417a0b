"""Atomic file writes and small file helpers shared across vpeft.

Every output of the study is written through a temp file in the destination's directory and then
``os.replace``-d into place, so a crash or an interrupted job never leaves a half-written file that
a later step (or Snakemake/DVC) would take for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["atomic_path", "write_json", "read_json", "write_parquet", "sha256_file", "json_safe"]

_CHUNK = 1 << 20


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a not-yet-existing temp path next to ``path``; publish it with ``os.replace`` on success.

    Parent directories are created. On an exception the temp file is removed and ``path`` is left
    as it was. With ``fsync=True`` the data is flushed to disk before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target so os.replace is a rename within one filesystem (atomic);
    # pid + random suffix so concurrent writers of the same target never share a temp file.
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer did not create the temp file for {path}")
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path``.

    On an exception the temporary directory is removed and an existing ``path`` is left as it was,
    so a reader (or Snakemake) never sees a half-written directory.
    """
    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the published directory should look ordinary
        yield tmp
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``. os.replace cannot overwrite a non-empty directory, so an existing
    ``dst`` is moved aside first (two renames) and put back if the swap fails."""
    if not dst.exists() and not dst.is_symlink():
        os.replace(src, dst)
        return
    if not dst.is_dir() or dst.is_symlink():
        raise FileExistsError(f"{dst}: exists and is not a directory; refusing to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()  # only the unique name is needed
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """Return ``obj`` with NaN/inf floats replaced by ``None`` and numpy values made plain Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # numpy scalars and arrays, without importing numpy here.
    if hasattr(obj, "tolist") and callable(obj.tolist) and type(obj).__module__ == "numpy":
        return json_safe(obj.tolist())
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/inf become ``null``; key order kept)."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a malformed file raises ``ValueError`` naming the file and position.

    A missing file raises ``FileNotFoundError`` as usual.
    """
    path = Path(path)
    text = path.read_bytes()
    try:
        return json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON at column {exc.colno}: {exc.msg}") from exc


def write_parquet(path: str | os.PathLike[str], table: pa.Table, **kwargs: Any) -> None:
    """Atomically write ``table`` to a Parquet file (``kwargs`` go to ``pyarrow.parquet.write_table``)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""One vector per row as a ``.npy`` file, written atomically.

File names are the SHA-256 of the row's key, never user text, so a key holding
``/``, ``..`` or NUL cannot leave the store directory. Writes go to a temp file in
the same directory and are renamed over the target, so a reader never sees half a
file (the approach of ``django.contrib.sessions.backends.file``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from django_embeddings.exceptions import StoreError
from django_embeddings.typing import Vector

logger = logging.getLogger(__name__)

TEMP_PREFIX = "tmp"
VECTOR_NAME = re.compile(r"\A[0-9a-f]{64}\.npy\Z")
TEMP_NAME = re.compile(r"\Atmp.*\Z")

# Vectors are private data: files are created 0600 by mkstemp and directories 0700.
DIR_MODE = 0o700


def filename_for(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() + ".npy"


def ensure_dir(path: Path) -> None:
    # Every directory we create is private, not only the last: Path.mkdir(parents=True)
    # would create DJANGO_EMBEDDINGS_DIR and the model's directory with the umask's mode.
    missing = []
    parent = path
    while not parent.is_dir() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"Cannot create the embeddings directory {str(path)!r}: {exc}") from exc


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def save_vector(directory: Path, key: str, vector: Vector) -> str:
    """Store ``vector`` for ``key``; returns the file name."""
    tmp = stage_vector(directory, vector)
    try:
        return install_vector(directory, key, tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def stage_vector(directory: Path, vector: Vector) -> str:
    """Write ``vector`` to a new temp file in ``directory``; returns its path.

    :func:`install_vector` renames it into place. Writers stage outside the
    store's lock and install under it, so files change in journal order.
    """
    row = np.ascontiguousarray(vector, dtype="<f4")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_npy_header(len(row)) + row.tobytes())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


@functools.cache
def _npy_header(dimensions: int) -> bytes:
    """The header ``np.save`` writes for a 1-D float32 array of ``dimensions``."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(dimensions, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()[: -4 * dimensions]


# Files in exactly the format we write are read with one read() and np.frombuffer
# (a third of np.load's time, which counts when a compaction reads thousands);
# anything else goes through np.load, never with pickles.
_OWN_FORMAT = re.compile(
    rb"\x93NUMPY\x01\x00..\{'descr': '<f4', 'fortran_order': False, 'shape': \((\d+),\), \} *\n",
    re.DOTALL,
)


def install_vector(directory: Path, key: str, tmp: str) -> str:
    """Rename a staged file to the vector file of ``key``; returns the file name."""
    name = filename_for(key)
    # No fsync: the rename is atomic for every process on the machine, which is
    # what crash safety needs; a power loss can lose the newest files, and those
    # rows then read as missing for embeddings_backfill (see "Reliability").
    os.replace(tmp, directory / name)
    return name


def discard(tmp: str) -> None:
    """Remove a staged file that was not installed (no error if it was)."""
    _unlink_quietly(tmp)


def load_vector(directory: Path, name: str) -> Vector | None:
    """Read one stored vector; a missing or corrupt file gives ``None`` and a warning."""
    path = directory / name
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        own = _OWN_FORMAT.match(data)
        if own and len(data) == own.end() + 4 * int(own.group(1)):
            array = np.frombuffer(data, dtype="<f4", offset=own.end())
        else:
            array = np.load(io.BytesIO(data), allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:
        logger.warning("Skipping unreadable embedding file %s: %s", path, exc)
        return None
    if array.ndim != 1 or array.dtype.kind != "f" or not np.isfinite(array).all():
        logger.warning(
            "Skipping embedding file %s: expected a finite 1-D float array, found %s %s",
            path,
            array.dtype,
            array.shape,
        )
        return None
    vector: Vector = array.astype(np.float32, copy=False)
    return vector


def delete_vector(directory: Path, name: str) -> bool:
    try:
        (directory / name).unlink()
    except FileNotFoundError:
        return False
    return True


def sweep_tempfiles(directory: Path, max_age: float) -> list[str]:
    """Remove ``tmp*`` leftovers of crashed writes older than ``max_age`` seconds."""
    removed = []
    cutoff = time.time() - max_age
    for name in _listdir(directory):
        if not TEMP_NAME.match(name):
            continue
        path = directory / name
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("Could not remove temp file %s: %s", path, exc)
            continue
        removed.append(name)
    return removed


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

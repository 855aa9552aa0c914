"""Files of a store directory: atomic writes, temp-file sweeping, and per-row vectors.

Stores written by 0.1.0 keep one ``.npy`` file per row, named by the SHA-256 of
the row's key (never user text, so a key holding ``/``, ``..`` or NUL cannot leave
the store directory); their journal entries name no log offset, and are read from
here. Newer stores append vectors to the vector log instead (:mod:`.vectorlog`).
Small files (the index, ``_dimensions``, a new journal) go to a temp file in the
same directory and are renamed over the target, so a reader never sees half a file
(the approach of ``django.contrib.sessions.backends.file``), chmod-ed first
(:mod:`.permissions`).
"""

from __future__ import annotations

import contextlib
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
from django_embeddings.store.permissions import DEFAULT, TEMP_PREFIX, Permissions
from django_embeddings.typing import Vector

logger = logging.getLogger(__name__)

VECTOR_NAME = re.compile(r"\A[0-9a-f]{64}\.npy\Z")
TEMP_NAME = re.compile(r"\Atmp.*\Z")


def filename_for(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() + ".npy"


def ensure_dir(path: Path, permissions: Permissions = DEFAULT) -> None:
    # Every directory we create gets the mode, not only the last: Path.mkdir(parents=True)
    # would create DJANGO_EMBEDDINGS_DIR and the model's directory with the umask's mode.
    missing = []
    parent = path
    while not parent.is_dir() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile by another process
                permissions.make_directory(directory)
    except OSError as exc:
        raise StoreError(f"Cannot create the embeddings directory {str(path)!r}: {exc}") from exc


def write_atomic(path: Path, data: bytes, permissions: Permissions = DEFAULT) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never half.

    The new file has its mode before it is renamed into place (mkstemp makes it 0600).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            permissions.chmod_file(fd)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


# Files in exactly the format 0.1.0 wrote are read with one read() and np.frombuffer
# (a third of np.load's time, which counts when a compaction reads thousands);
# anything else goes through np.load, never with pickles.
_OWN_FORMAT = re.compile(
    rb"\x93NUMPY\x01\x00..\{'descr': '<f4', 'fortran_order': False, 'shape': \((\d+),\), \} *\n",
    re.DOTALL,
)


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


def sweep_tempfiles(
    directory: Path, max_age: float, *, keep_prefix: str | None = None
) -> list[str]:
    """Remove ``tmp*`` leftovers of crashed writes older than ``max_age`` seconds (but
    those named ``keep_prefix*``)."""
    removed = []
    cutoff = time.time() - max_age
    for name in _listdir(directory):
        if not TEMP_NAME.match(name) or (keep_prefix and name.startswith(keep_prefix)):
            continue
        path = directory / name
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            remove_temp(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("Could not remove temp file %s: %s", path, exc)
            continue
        removed.append(name)
    return removed


def remove_temp(path: Path) -> None:
    """Remove a temp file, or a staging directory and its files."""
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

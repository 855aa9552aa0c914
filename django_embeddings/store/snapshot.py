"""The packed snapshot: every live row's normalized vector in one matrix.

A snapshot is a directory ``snapshot-<version>/`` of ``.npy`` arrays, sorted by
key, that a cold start memory-maps instead of reading the journal's vectors; all
worker processes on a machine then share its pages. ``_index.json`` names the
current snapshot and its ``_version``; it is replaced atomically, and only after
the snapshot it names is complete.

Beside the normalized matrix that searches use, a snapshot keeps each row's vector
as it was stored (``raw``) and when (``times``, for garbage collection's age
guard). Snapshots written by 0.1.0 have neither: their rows' vectors are still in
per-row files, which the next compaction reads once.

A snapshot of a field whose rows' terms are known also keeps their bags of terms
(:class:`~django_embeddings.keywords.terms.Terms`): ``terms_ptr``, ``terms_ids``,
``terms_counts`` and ``terms_known`` arrays, and the vocabulary in
``terms_vocab.txt``, one token a line. A snapshot without them (written before
keywords, or whose terms files do not fit) has ``terms`` ``None``.

A snapshot of a store that keeps an int8 copy (``DJANGO_EMBEDDINGS_SCAN = "int8"``)
has it beside the matrix: ``int8_codes``, ``int8_scales``, ``int8_errors`` and
``int8_l1``, with the bound on row lengths in ``meta.json``, so every process maps
the same pages instead of quantizing the matrix for itself. Without them (or when
they do not fit), a process quantizes the matrix on its first int8 search.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from django_embeddings.keywords.terms import Terms
from django_embeddings.quantized import Int8Matrix
from django_embeddings.store import keys
from django_embeddings.store.files import write_atomic
from django_embeddings.store.permissions import DEFAULT, TEMP_PREFIX, Permissions
from django_embeddings.typing import Matrix

logger = logging.getLogger(__name__)

INDEX = "_index.json"
SYNC_EVERY = 64 << 20  # bytes of a snapshot file written between two syncs
FORMAT = 1
_ARRAYS = ("vectors", "keys", "hashes", "identities")
_OPTIONAL = ("raw", "times")
# The arrays of a Terms, with the dtype each must have, beside its vocabulary file
# (export files keep them alike).
TERMS_ARRAYS = {
    "ptr": np.dtype(np.int64),
    "ids": np.dtype(np.int32),
    "counts": np.dtype(np.uint32),
    "known": np.dtype(np.bool_),
}
_TERMS_VOCAB = "terms_vocab.txt"
# The postings' stable sort by term (int64): a keyword index loads without sorting.
_TERMS_ORDER = "terms_order.npy"


@dataclass
class Snapshot:
    """Rows sorted by key. ``hashes`` holds a 16-byte content digest per row;
    ``identities`` indexes into ``identity_names``."""

    version: int = 0
    vectors: Matrix = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    keys: keys.Keys = field(default_factory=lambda: np.array([], dtype=np.int64))
    hashes: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros((0, 16), np.uint8))
    identities: npt.NDArray[np.uint16] = field(
        default_factory=lambda: np.array([], dtype=np.uint16)
    )
    identity_names: list[str] = field(default_factory=list)
    name: str | None = None
    raw: Matrix | None = None  # the vectors as stored, not normalized
    times: npt.NDArray[np.uint32] | None = None  # when each row was stored (seconds)
    terms: Terms | None = None  # each row's bag of terms (None: none known)
    int8: Int8Matrix | None = None  # the rows' int8 copy (None: not kept)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dimensions(self) -> int | None:
        return int(self.vectors.shape[1]) if len(self) else None

    def find(self, key: str) -> int | None:
        """Row of ``key`` or ``None``, by binary search over the sorted keys."""
        return keys.find(self.keys, key)


def read_index(directory: Path) -> dict[str, object]:
    """The contents of ``_index.json``; rebuilt from the newest snapshot if damaged."""
    try:
        with open(directory / INDEX, "rb") as handle:
            data = json.load(handle)
        if isinstance(data, dict) and isinstance(data.get("_version"), int):
            return data
        problem = "it has no integer _version"
    except FileNotFoundError:
        return _newest_snapshot(directory)
    except ValueError as exc:
        problem = str(exc)
    if directory not in _warned:
        _warned.add(directory)
        logger.warning(
            "%s in %s is damaged (%s); using the newest snapshot", INDEX, directory, problem
        )
    return _newest_snapshot(directory)


_warned: set[Path] = set()


def _newest_snapshot(directory: Path) -> dict[str, object]:
    """Fall back to the newest complete snapshot directory (or none)."""
    versions = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        names = []
    for name in names:
        prefix, _, number = name.partition("-")
        if prefix == "snapshot" and number.isdigit() and (directory / name / "meta.json").exists():
            versions.append(int(number))
    if not versions:
        return {"_version": 0, "snapshot": None}
    return {"_version": max(versions), "snapshot": f"snapshot-{max(versions)}"}


def rows(directory: Path) -> int:
    """How many rows the current snapshot holds (0: none, or unreadable): its keys'
    array header alone is read."""
    name = _snapshot_name(read_index(directory))
    if name is None:
        return 0
    try:
        return len(np.load(directory / name / "keys.npy", mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError, EOFError):
        return 0


def _snapshot_name(index: dict[str, object]) -> str | None:
    """The index's snapshot directory name, if it names one inside the store."""
    name = index.get("snapshot")
    if isinstance(name, str) and name.startswith("snapshot-") and "/" not in name:
        return name
    return None


def index_version(directory: Path) -> int:
    version = read_index(directory)["_version"]
    return version if isinstance(version, int) else 0


def load(directory: Path) -> Snapshot:
    """Memory-map the current snapshot (an empty one when there is none)."""
    index = read_index(directory)
    name = _snapshot_name(index)
    version = index["_version"]
    assert isinstance(version, int)  # read_index() returns an int _version or none at all
    if name is None:
        return Snapshot(version=version)
    path = directory / name
    with open(path / "meta.json", "rb") as handle:
        meta = json.load(handle)
    arrays = {
        array: np.load(path / f"{array}.npy", mmap_mode="r", allow_pickle=False)
        for array in _ARRAYS
    }
    snap = Snapshot(
        version=version,
        identity_names=[str(item) for item in meta["identities"]],
        name=name,
        **arrays,
    )
    _check(snap)
    snap.raw = _optional(path, "raw", snap.vectors.shape, "f")
    snap.times = _optional(path, "times", (len(snap),), "u")
    snap.terms = _load_terms(path, len(snap))
    snap.int8 = _load_int8(path, meta, snap.vectors.shape)
    return snap


_INT8_ARRAYS = ("scales", "errors", "l1")  # float32, one per row, beside int8_codes


def _load_int8(path: Path, meta: dict[str, Any], shape: tuple[int, ...]) -> Int8Matrix | None:
    """The rows' int8 copy, or ``None`` when there is none or it does not fit (the
    process then quantizes the matrix itself)."""
    norm = meta.get("int8_norm")
    if norm is None:
        return None
    codes = _optional(path, "int8_codes", shape, "i", missing_ok=False)
    scales, errors, l1 = (
        _optional(path, f"int8_{name}", shape[:1], "f", missing_ok=False) for name in _INT8_ARRAYS
    )
    if codes is None or scales is None or errors is None or l1 is None:
        return None  # _optional said which array and why
    sound = (
        isinstance(norm, float)
        and math.isfinite(norm)
        and norm >= 0
        and codes.dtype == np.int8
        and all(a.dtype == np.float32 for a in (scales, errors, l1))
    )
    if not sound:
        logger.warning("Ignoring the int8 copy of %s: it does not fit the snapshot", path)
        return None
    return Int8Matrix.of_arrays(codes, scales, errors, l1, norm)


def _load_terms(path: Path, rows: int) -> Terms | None:
    """The rows' terms, or ``None`` when there are none or they do not fit (searches by
    vector need none: a warning, never an error)."""
    names = [f"terms_{array}.npy" for array in TERMS_ARRAYS] + [_TERMS_VOCAB]
    if not any((path / name).exists() for name in names):
        return None
    try:
        arrays = {
            array: np.load(path / f"terms_{array}.npy", mmap_mode="r", allow_pickle=False)
            for array in TERMS_ARRAYS
        }
        for array, dtype in TERMS_ARRAYS.items():
            if arrays[array].ndim != 1 or arrays[array].dtype != dtype:
                raise ValueError(f"terms_{array}.npy is not a 1-D array of {dtype}")
        text = (path / _TERMS_VOCAB).read_bytes().decode("utf-8")  # no newline translation
        terms = Terms(text.split("\n") if text else [], **arrays)
        terms.check(rows)
        terms.order = _terms_order(path, len(terms.ids))
    # An empty file is an EOFError; bad UTF-8 a UnicodeDecodeError, which is a ValueError.
    except (OSError, ValueError, EOFError) as exc:
        logger.warning("Ignoring the keyword terms of %s: %s", path, exc)
        return None
    return terms


def _terms_order(path: Path, postings: int) -> Any:
    """The postings' order by term, if the snapshot has a sound one (else it is sorted
    again when a keyword index loads)."""
    order = _optional(path, _TERMS_ORDER.removesuffix(".npy"), (postings,), "i")
    if order is not None and postings and not 0 <= int(order.min()) <= int(order.max()) < postings:
        logger.warning("Ignoring %s/%s: it does not fit the snapshot", path, _TERMS_ORDER)
        return None
    return order


def _optional(
    path: Path, array: str, shape: tuple[int, ...], kind: str, *, missing_ok: bool = True
) -> Any:
    """An optional array, or ``None`` when it is absent or does not fit (searches need none);
    a warning says why, unless ``missing_ok`` and the file is simply not there."""
    try:
        loaded = np.load(path / f"{array}.npy", mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        if not missing_ok:
            logger.warning(
                "Ignoring %s/%s.npy and the arrays that go with it: it is missing", path, array
            )
        return None
    except (OSError, ValueError, EOFError) as exc:  # np.load of an empty file: EOFError
        logger.warning("Ignoring %s/%s.npy: %s", path, array, exc)
        return None
    if loaded.shape != shape or loaded.dtype.kind != kind:
        logger.warning("Ignoring %s/%s.npy: it does not fit the snapshot", path, array)
        return None
    return loaded


def _check(snap: Snapshot) -> None:
    """Raise ``ValueError`` unless the arrays fit together (a damaged file may still parse)."""
    rows = len(snap.keys)
    fits = (
        snap.keys.ndim == 1
        and snap.keys.dtype.kind in "iU"
        and snap.vectors.ndim == 2
        and snap.vectors.shape[0] == rows
        and snap.vectors.dtype.kind == "f"
        and snap.hashes.shape == (rows, 16)
        and snap.identities.shape == (rows,)
        and snap.identities.dtype.kind == "u"
        and (not rows or int(snap.identities.max()) < len(snap.identity_names))
    )
    if not fits:
        raise ValueError(f"the arrays of {snap.name} do not fit together")


def write(directory: Path, snapshot: Snapshot, permissions: Permissions = DEFAULT) -> None:
    """Write ``snapshot`` and point ``_index.json`` at it; the caller holds the lock."""
    staged = stage(directory, snapshot, permissions)
    try:
        install(directory, staged, snapshot.version, permissions)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already once installed


def install(
    directory: Path, staged: Path, version: int, permissions: Permissions = DEFAULT
) -> None:
    """Rename a :func:`stage`-d snapshot into place and point ``_index.json`` at it; the
    caller holds the lock (and knows the index names an older snapshot)."""
    name = f"snapshot-{version}"
    target = directory / name
    if target.exists():  # left by a merge killed between this rename and the index
        shutil.rmtree(target)
    os.replace(staged, target)
    write_index(directory, version, name, permissions)


def stage(
    directory: Path,
    snapshot: Snapshot,
    permissions: Permissions = DEFAULT,
    *,
    prefix: str = TEMP_PREFIX,
) -> Path:
    """Write ``snapshot``'s files, synced, into a new staging directory of ``directory``
    (swept as a temp file if a crash leaves it); no lock needed.

    Its directory and files have their modes before it is renamed into place.
    """
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
    try:
        for array in _ARRAYS + _OPTIONAL:
            if getattr(snapshot, array) is not None:
                _save(staging / f"{array}.npy", getattr(snapshot, array), permissions)
        if snapshot.terms is not None:
            for array in TERMS_ARRAYS:
                _save(staging / f"terms_{array}.npy", getattr(snapshot.terms, array), permissions)
            vocab = "\n".join(snapshot.terms.vocab).encode("utf-8")
            _save(staging / _TERMS_VOCAB, vocab, permissions)
            order = snapshot.terms.order
            if order is None:  # sorted once here, rather than by every process that loads it
                order = np.argsort(np.asarray(snapshot.terms.ids), kind="stable")
            _save(staging / _TERMS_ORDER, np.asarray(order, dtype=np.int64), permissions)
        meta: dict[str, Any] = {"version": snapshot.version, "identities": snapshot.identity_names}
        if snapshot.int8 is not None:
            copy = snapshot.int8
            _save(staging / "int8_codes.npy", copy.codes, permissions)
            for array in _INT8_ARRAYS:
                _save(staging / f"int8_{array}.npy", getattr(copy, array), permissions)
            meta["int8_norm"] = float(copy.norm)
        with open(staging / "meta.json", "x", opener=_private) as meta_file:
            permissions.chmod_file(meta_file.fileno())
            meta_file.write(json.dumps(meta))
        permissions.chmod_directory(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _save(path: Path, data: npt.ArrayLike | bytes, permissions: Permissions) -> None:
    """Write a new staging file (an array, or bytes as they are) and sync it to disk."""
    with open(path, "xb", opener=_private) as handle:
        permissions.chmod_file(handle.fileno())
        if isinstance(data, bytes):
            handle.write(data)
        else:
            _write_array(handle, np.asarray(data))
        handle.flush()
        os.fsync(handle.fileno())


def _write_array(handle: BinaryIO, array: npt.NDArray[Any]) -> None:
    """``np.save``'s format, synced every :data:`SYNC_EVERY` bytes: a snapshot of a
    million rows is gigabytes, and left to the kernel to write back at once it makes
    every other ``fsync`` on that disk (a database's commit, a save's) wait behind it."""
    if array.ndim == 0 or array.dtype.hasobject:
        np.save(handle, array, allow_pickle=False)
        return
    header = {
        "descr": np.lib.format.dtype_to_descr(array.dtype),
        "fortran_order": False,
        "shape": array.shape,
    }
    np.lib.format.write_array_header_1_0(handle, header)  # what np.save writes here
    row_bytes = max(1, array.itemsize * (array.size // max(1, len(array))))
    step = max(1, SYNC_EVERY // row_bytes)
    for start in range(0, len(array), step):
        handle.write(np.ascontiguousarray(array[start : start + step]).data)
        if start + step < len(array):
            handle.flush()
            os.fdatasync(handle.fileno())


def write_index(
    directory: Path, version: int, name: str | None, permissions: Permissions = DEFAULT
) -> None:
    """Point ``_index.json`` at snapshot ``name`` (``None``: no snapshot yet)."""
    index = {"_version": version, "snapshot": name, "format": FORMAT}
    write_atomic(directory / INDEX, json.dumps(index).encode("ascii"), permissions)


def _private(path: str, flags: int) -> int:
    """Create a staging file 0600, until it is chmod-ed (the staging directory is 0700)."""
    return os.open(path, flags, 0o600)


def retire_unreferenced(directory: Path, keep: str, *, prefix: str = TEMP_PREFIX) -> list[Path]:
    """Rename the snapshot directories but ``keep`` to temp names (under the lock: a
    rename is quick), for the caller to delete after releasing it (a crash before
    leaves temp directories, which ``embeddings_sweep`` removes)."""
    retired = []
    for entry in os.scandir(directory):
        if entry.name.startswith("snapshot-") and entry.name != keep and entry.is_dir():
            target = Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
            os.replace(entry.path, target)  # a directory replaces an empty one
            retired.append(target)
    return retired


def remove_unreferenced(directory: Path, keep: str | None) -> None:
    """Delete old snapshot directories. Processes that mapped them keep their pages."""
    for entry in os.scandir(directory):
        if entry.name.startswith("snapshot-") and entry.name != keep and entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)

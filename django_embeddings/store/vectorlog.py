"""The vector log: the raw float32 vectors of the puts of one journal generation.

A put appends its batch's vectors to ``_vectors-<base>`` (``base``: the version
the journal's header continues) in one write, then the journal lines that name
each vector's byte offset. The offset is the file's size rounded up to 4 bytes,
taken under the store's lock, so a write torn by a crash or a full disk never
shifts a later record, and no journal line names a vector not written in full.

Compaction folds the log into the snapshot, starts a new journal (hence a new
log) and removes the old log; a reader that mapped it keeps its pages.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

from django_embeddings.store.permissions import DEFAULT, Permissions
from django_embeddings.typing import Matrix, Vector

PREFIX = "_vectors-"
NAME = re.compile(r"\A_vectors-(-?\d+)\Z")
_DTYPE = np.dtype("<f4")


def checksums(matrix: Matrix) -> npt.NDArray[np.uint32]:
    """Per row, the sum of its 32-bit words times odd weights by position, modulo 2**32.

    Exact (integer arithmetic wraps the same in any order) and one vectorized pass,
    so a cold start checks every vector it loads; a shifted, cut or foreign record
    gives another sum.
    """
    words = np.ascontiguousarray(matrix, dtype=_DTYPE).view("<u4")
    if len(words) < 64:  # dot costs least for a save's few rows, einsum for many
        return words.dot(_weights(words.shape[1]))  # type: ignore[no-any-return]
    return np.einsum("ij,j->i", words, _weights(words.shape[1]))  # type: ignore[no-any-return]


@functools.cache
def _weights(dimensions: int) -> npt.NDArray[np.uint32]:
    positions = np.arange(1, dimensions + 1, dtype=np.uint64)
    return ((positions * 0x9E3779B1) % (1 << 32) | 1).astype("<u4")


def name_for(base: int) -> str:
    return f"{PREFIX}{base}"


def base_of(name: str) -> int | None:
    """The generation of a log file name, or ``None`` if ``name`` is not a log."""
    match = NAME.match(name)
    return int(match.group(1)) if match else None


def append(
    directory: str | Path, base: int, matrix: Matrix, permissions: Permissions = DEFAULT
) -> int:
    """Append the rows of ``matrix``; returns the byte offset of the first.

    The caller holds the store's lock. On an error (a full disk) the file is cut
    back to its previous size, best effort: nothing names those bytes anyway.
    """
    return append_to(os.path.join(directory, name_for(base)), matrix, permissions)


def append_to(path: str | Path, matrix: Matrix, permissions: Permissions = DEFAULT) -> int:
    """:func:`append` to the log file ``path`` (a staged one: see ``Store.merge``)."""
    data = np.ascontiguousarray(matrix, dtype=_DTYPE).data.cast("B")
    fd = permissions.open_or_create(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        offset = -(-size // 4) * 4
        view, at = data, offset
        try:
            while view:
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    return offset


def remove_others(directory: Path, keep: int) -> None:
    """Remove the logs of every generation but ``keep``; the caller holds the lock.

    Readers that mapped one keep their pages; one that had yet to open it finds
    the journal replaced too, and reads again.
    """
    for name in os.listdir(directory):
        base = base_of(name)
        if base is not None and base != keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)


def read_one(
    directory: Path, base: int, offset: int, dimensions: int, checksum: int | None
) -> Vector | None:
    """One vector, or ``None`` unless the log holds it whole and sound.

    ``FileNotFoundError`` when there is no such log.
    """
    fd = os.open(directory / name_for(base), os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, 4 * dimensions, offset)
    finally:
        os.close(fd)
    if len(data) != 4 * dimensions:
        return None
    vector: Vector = np.frombuffer(data, dtype=_DTYPE).astype(np.float32)
    if checksum is not None:
        return vector if int(checksums(vector[None])[0]) == checksum else None
    return vector if np.isfinite(vector).all() else None


class Reader:
    """A log mapped read-only: gathers many vectors with numpy, no per-row I/O.

    The mapping outlives the file: a compaction that removes the log afterwards
    does not disturb a reader that opened it before.
    """

    def __init__(self, directory: Path, base: int) -> None:
        fd = os.open(directory / name_for(base), os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.fstat(fd).st_size
            self._flat: npt.NDArray[np.float32] = np.zeros(0, dtype=_DTYPE)
            if self.size >= 4:
                mapped = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
                self._flat = np.frombuffer(mapped, dtype=_DTYPE, count=self.size // 4)
        finally:
            os.close(fd)

    def gather(
        self,
        offsets: npt.NDArray[np.int64],
        dimensions: int,
        expected: npt.NDArray[np.int64],
        *,
        norms: bool = False,
    ) -> tuple[Matrix, npt.NDArray[np.bool_], npt.NDArray[np.float32] | None]:
        """The vectors of ``dimensions`` values at byte ``offsets``, which are sound,
        and (with ``norms``) their lengths, computed in the same pass as the checksums.

        A vector is sound when the log holds all of it, its checksum is the
        ``expected`` one (where that is not -1) and every value is finite.
        """
        found = (offsets >= 0) & (offsets % 4 == 0) & (offsets + 4 * dimensions <= self.size)
        if dimensions <= 0 or not found.any():
            empty = np.zeros((len(offsets), max(dimensions, 0)), np.float32)
            return empty, found & False, np.zeros(len(offsets), np.float32) if norms else None
        starts = offsets // 4
        if found.all() and (np.diff(starts) == dimensions).all():
            # Back to back, as puts write them: a view of the mapping, no copy.
            out = self._flat[starts[0] : starts[0] + len(starts) * dimensions]
            out = out.reshape(len(starts), dimensions)
        else:
            windows = np.lib.stride_tricks.sliding_window_view(self._flat, dimensions)
            out = np.zeros((len(offsets), dimensions), dtype=_DTYPE)
            out[found] = windows[starts[found]]
        if norms:
            sums, lengths = _checked(out)
        else:
            sums, lengths = checksums(out), None
        checked = expected >= 0
        found &= ~checked | (sums == expected)
        if not checked.all():
            # No checksum to trust: at least every value must be finite.
            found[~checked] &= np.isfinite(out[~checked].sum(axis=1))
        return out.astype(np.float32, copy=False), found, lengths


_BLOCK = 1024  # rows at a time: each block is summed and measured while in the CPU cache


def _checked(matrix: Matrix) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    """The checksums and lengths of the rows of ``matrix``, in one pass over it."""
    sums = np.empty(len(matrix), dtype=np.uint32)
    lengths = np.empty(len(matrix), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # a damaged row fails its checksum
        for start in range(0, len(matrix), _BLOCK):
            block = matrix[start : start + _BLOCK]
            sums[start : start + len(block)] = checksums(block)
            lengths[start : start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return sums, lengths

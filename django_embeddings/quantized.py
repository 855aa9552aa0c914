"""An int8 copy of a snapshot's rows, scanned instead of the float32 matrix, and an
exact top ``n`` from it.

Each row ``x`` is stored as ``s * c``: ``c`` int8 codes, ``s = max|x| / 127``. The query
``q`` is coded the same way, ``t * d``. For real numbers,

    q.x = t*s*(d.c) + q.(x - s*c) + (q - t*d).(s*c)

so ``|q.x - t*s*(d.c)| <= e*|q|_1 + e_q*|s*c|_1``, where ``e = max|x - s*c|`` and
``e_q = max|q - t*d|`` are measured exactly (in float64) and rounded up. ``d.c`` is an
integer the scan computes exactly. Adding a bound on float32 rounding (the matrix
product's own, and that of the approximate scores), every row's float32 score lies
within its interval; a row whose upper end cannot reach the ``n``-th best lower end
cannot be among the best, and every other row is scored again in float32 from the
matrix. So the rows, and their order, are the float32 scan's by construction, whatever
the data; each score is the float32 product BLAS gives that row, which may differ in
the last bit from the full scan's (BLAS rounds a row by where it finds it in the
matrix, as the float32 scan's own filtered and unfiltered searches show).

The scan is numkong's int8 dot product (an optional extra): numpy's int8 product does
not use BLAS and is slower than the float32 one.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from django_embeddings.typing import Matrix, Vector

EXTRA = "django-embedding-field[int8]"
_LEVELS = 127
_UNIT = 2.0**-24  # float32's unit roundoff
_CHUNK = 1_024  # rows quantized at once: float64 temporaries that stay in cache (3 MB at 384)
_PART = 32_768  # the fewest rows a thread scans at once
_PARTS_PER_WORKER = 4  # more parts than threads: a thread slowed by other work takes fewer
_BLOCK = 256  # rows per block when bounding the n-th best score from block maxima
_BLAS_ROWS = 4  # BLAS scores rows in blocks of this many (see exact_scores)
# A restricted search over fewer rows than this scores them in float32 directly: it
# reads little, and gives the float32 scan's scores to the last bit.
MIN_ROWS = 16_384

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it belongs to, the pool)
_pool_lock = threading.Lock()


def available() -> bool:
    """Is the library the int8 scan needs installed?"""
    try:
        import numkong  # noqa: F401
    except ImportError:
        return False
    return True


def _round_up(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """float32 values no smaller than ``values``."""
    down = values.astype(np.float32)
    return np.where(down < values, np.nextafter(down, np.float32(np.inf)), down)


@dataclass
class Int8Matrix:
    """Rows as int8 codes with their scale, measured error and L1 norm (each a bound)."""

    codes: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]  # s, exactly as used: the row is s * codes
    errors: npt.NDArray[np.float32]  # max |x - s*c| over the row, rounded up
    l1: npt.NDArray[np.float32]  # |s*c|_1, rounded up
    norm: float  # the largest row length (float32 rounding is relative to it)
    widest_error: float = 0.0  # the largest of ``errors``
    widest_l1: float = 0.0  # the largest of ``l1``

    @classmethod
    def of(cls, matrix: Matrix) -> Int8Matrix:
        rows, dimensions = matrix.shape
        codes = np.empty((rows, dimensions), dtype=np.int8)
        scales = np.empty(rows, dtype=np.float32)
        errors = np.empty(rows, dtype=np.float32)
        l1 = np.empty(rows, dtype=np.float32)
        norm = 0.0
        for start in range(0, rows, _CHUNK):
            part = slice(start, min(start + _CHUNK, rows))
            x = np.asarray(matrix[part], dtype=np.float32)
            scale = (np.abs(x).max(axis=1) / _LEVELS).astype(np.float32)
            c = np.rint(x / np.where(scale > 0, scale, 1)[:, None])
            c = np.clip(c, -_LEVELS, _LEVELS).astype(np.int8)
            exact = x.astype(np.float64)
            # s * c is exact in float64 (24 + 8 significant bits), so is each difference.
            coded = c * scale.astype(np.float64)[:, None]
            codes[part], scales[part] = c, scale
            errors[part] = _round_up(np.abs(exact - coded).max(axis=1))
            l1[part] = _round_up(np.abs(coded).sum(axis=1))
            if len(x):
                norm = max(norm, float(np.sqrt(np.einsum("ij,ij->i", exact, exact)).max()))
        return cls.of_arrays(codes, scales, errors, l1, norm * (1 + 2**-40))

    @classmethod
    def of_arrays(
        cls,
        codes: npt.NDArray[np.int8],
        scales: npt.NDArray[np.float32],
        errors: npt.NDArray[np.float32],
        l1: npt.NDArray[np.float32],
        norm: float,
    ) -> Int8Matrix:
        """A copy from its arrays (a snapshot's, memory-mapped: plain views of them)."""
        errors, l1 = np.asarray(errors), np.asarray(l1)
        widest = (float(errors.max(initial=0)), float(l1.max(initial=0)))
        return cls(np.asarray(codes), np.asarray(scales), errors, l1, norm, *widest)

    def joined(self, other: Int8Matrix, order: npt.NDArray[np.intp] | None) -> Int8Matrix:
        """This copy's rows, then ``other``'s, taken in ``order`` (``None``: as they are).
        Each row's codes and bounds are its own, so they need no new quantizing; the
        largest row length of either is a bound for the rows kept of both."""

        def join(first: npt.NDArray[Any], second: npt.NDArray[Any]) -> npt.NDArray[Any]:
            both = np.concatenate([first, second])
            return both if order is None else both[order]

        return Int8Matrix.of_arrays(
            join(self.codes, other.codes),
            join(self.scales, other.scales),
            join(self.errors, other.errors),
            join(self.l1, other.l1),
            max(self.norm, other.norm),
        )

    def take(self, rows: npt.NDArray[np.intp]) -> Int8Matrix:
        """The copy of ``rows`` only (its bound on row lengths stays a bound)."""
        return Int8Matrix.of_arrays(
            self.codes[rows], self.scales[rows], self.errors[rows], self.l1[rows], self.norm
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.scales, self.errors, self.l1))


@dataclass
class _Query:
    codes: npt.NDArray[np.int8]
    scale: float  # t, a float32 value
    error: float  # max |q - t*d|
    l1: float  # |q|_1
    norm: float  # |q|_2


def _query(unit: Vector) -> _Query:
    q = np.asarray(unit, dtype=np.float32)
    scale = float(np.float32(np.abs(q).max() / _LEVELS)) if len(q) else 0.0
    codes = np.clip(np.rint(q / (scale or 1)), -_LEVELS, _LEVELS).astype(np.int8)
    exact = q.astype(np.float64)
    error = float(np.abs(exact - codes * scale).max()) if len(q) else 0.0
    l1 = float(np.abs(exact).sum())
    norm = float(np.sqrt(exact @ exact))
    # Upward by a relative 2^-40: these float64 sums may have rounded down.
    return _Query(codes, scale, error * (1 + 2**-40), l1 * (1 + 2**-40), norm * (1 + 2**-40))


def _dots(query: npt.NDArray[np.int8], codes: npt.NDArray[np.int8]) -> npt.NDArray[Any]:
    """``codes @ query`` exactly, as floats (float32 holds every integer below 2^24)."""
    import numkong

    count, dimensions = codes.shape
    narrow = _LEVELS * _LEVELS * dimensions < 2**24
    out: npt.NDArray[Any] = np.empty((1, count), dtype=np.float32 if narrow else np.float64)
    dots: npt.NDArray[Any] = out[0]
    if not count:
        return dots
    kind: Literal["float32", "float64"] = "float32" if narrow else "float64"
    left = query[None]

    def scan(part: slice) -> None:
        numkong.cdist(
            left, codes[part], metric="dot", dtype="int8", out=out[:, part], out_dtype=kind
        )

    workers = os.cpu_count() or 1
    count_parts = min(_PARTS_PER_WORKER * workers, count // _PART)
    if count_parts < 2 or workers == 1:
        scan(slice(0, count))
        return dots
    step = -(-count // count_parts)
    parts = [slice(i, min(i + step, count)) for i in range(0, count, step)]
    list(_scan_pool(workers).map(scan, parts))
    return dots


def _scan_pool(workers: int) -> ThreadPoolExecutor:
    """One pool per process for the scan's parts (numkong releases the GIL); a forked
    worker gets its own, since threads do not survive a fork."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            pool = ThreadPoolExecutor(workers, thread_name_prefix="django-embeddings-scan")
            _pool = (os.getpid(), pool)
        return _pool[1]


def exact_scores(matrix: Matrix, rows: npt.NDArray[np.intp], unit: Vector) -> npt.NDArray[Any]:
    """The float32 scores of ``rows``, as a product over the whole matrix gives them.

    BLAS scores rows in blocks of four and any rows left over another way, which may
    round differently; padding the gathered rows to whole blocks scores each the way
    the full product scores nearly all of its rows.
    """
    count = len(rows)
    padding = -count % _BLAS_ROWS
    if padding and count:
        rows = np.concatenate([rows, np.repeat(rows[-1:], padding)])
    return (np.asarray(matrix[rows]) @ unit)[:count]


def _nth_best_at_least(scores: npt.NDArray[Any], n: int) -> float:
    """A value no larger than the ``n``-th best of ``scores`` (``0 < n <= len``): the
    ``n``-th best of block maxima (``n`` blocks each hold a score at least that), far
    cheaper than a partition of all the scores."""
    blocks = len(scores) // _BLOCK
    if blocks >= 4 * n:
        maxima = scores[: blocks * _BLOCK].reshape(blocks, _BLOCK).max(axis=1)
        bound = float(np.partition(maxima, blocks - n)[blocks - n])
        if bound > -np.inf:
            return bound
    return float(np.partition(scores, len(scores) - n)[len(scores) - n])


class Int8Scored:
    """The interface of ``ranking._Scored`` over a snapshot, scanning its int8 copy:
    the rows of ``matrix`` that ``mask`` allows (or ``rows``), and their best."""

    def __init__(
        self,
        copy: Int8Matrix,
        matrix: Matrix,
        mask: npt.NDArray[np.bool_] | None,
        unit: Vector,
        tie: float,
        rows: npt.NDArray[np.intp] | None = None,
    ) -> None:
        self.copy, self.matrix, self.unit, self.tie = copy, matrix, unit, tie
        self.rows = rows
        self.approx: npt.NDArray[Any] = np.empty(0, dtype=np.float32)
        query = self.query = _query(unit)
        if mask is None:
            assert rows is not None
            self.count = len(rows)
        else:
            self.count = int(np.count_nonzero(mask))
            if self.count * 4 < len(mask):
                self.rows = np.flatnonzero(mask)  # few rows: scan only those
        if not self.count:
            return
        if self.rows is None:
            approx = _dots(query.codes, copy.codes)
            approx *= copy.scales
        else:
            approx = _dots(query.codes, copy.codes[self.rows])
            approx *= copy.scales[self.rows]
        approx *= approx.dtype.type(query.scale)
        if mask is not None and self.rows is None and self.count < len(mask):
            approx[~mask] = -np.inf
        self.approx = approx
        # |approximate - exact| <= radius(row) + pad: the quantization bound, plus float32
        # rounding of the exact score (gamma_{d+1} |q| |x|), of the approximate score and
        # of the bounds themselves (2^-20 covers them with room: all are below ~1 + radius).
        dimensions = copy.codes.shape[1]
        gamma = (dimensions + 1) * _UNIT / (1 - (dimensions + 1) * _UNIT)
        self.widest = copy.widest_error * query.l1 + query.error * copy.widest_l1
        self.pad = gamma * query.norm * copy.norm + 2**-20 * (2 + self.widest)

    def _radius(self, positions: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        rows = positions if self.rows is None else self.rows[positions]
        copy, query = self.copy, self.query
        radius = copy.errors[rows].astype(np.float64) * query.l1
        radius += query.error * copy.l1[rows].astype(np.float64)
        radius += self.pad
        return radius

    def best(self, n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """Matrix rows and float32 scores of the ``n`` best, plus any tied with the
        ``n``-th: the rows ``_Scored.best`` returns over the float32 matrix."""
        if not self.count or n <= 0:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float32)
        approx = self.approx
        if n >= self.count:
            # Every row: scored as the float32 scan scores them, to the last bit.
            if self.rows is not None:
                return self.rows, np.asarray(self.matrix[self.rows]) @ self.unit
            picked = np.flatnonzero(approx > -np.inf)
            return picked, (np.asarray(self.matrix @ self.unit))[picked]
        # Every row among the n best (with ties) scores at least the n-th best lower end
        # less the tie margin; the n-th best approximate score less the widest radius is
        # below that, so the rows within twice the widest radius of it hold them all.
        floor = _nth_best_at_least(approx, n) - 2 * (self.widest + self.pad) - self.tie
        near = np.flatnonzero(approx >= floor)
        radius = self._radius(near)
        low = approx[near].astype(np.float64) - radius
        kth_low = float(np.partition(low, len(low) - n)[len(low) - n])
        reach = near[approx[near].astype(np.float64) + radius >= kth_low - self.tie]
        rows, scores = self._rescored(reach)
        kth = np.partition(scores, len(scores) - n)[len(scores) - n]
        top = np.flatnonzero(scores >= kth - self.tie)
        return rows[top], scores[top]

    def _rescored(
        self, positions: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        rows = positions if self.rows is None else self.rows[positions]
        return rows, exact_scores(self.matrix, rows, self.unit)

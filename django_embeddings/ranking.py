"""One query's scores over an index, computed once, and its top ``n`` for any ``n``.

A filtered search may need more candidates than it first asked for (rows the
filter rejects, rows still pending), so the scores are kept: asking for more is a
partition of an array already computed, never a second pass over the matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from django_embeddings import quantized
from django_embeddings.conf import conf
from django_embeddings.quantized import Int8Scored
from django_embeddings.store import keys as row_keys
from django_embeddings.store import normalize
from django_embeddings.typing import Matrix, Vector

if TYPE_CHECKING:
    from django_embeddings.cache import FieldIndex

# Scores equal to this many digits count as tied: BLAS can round equal vectors'
# scores differently by their position in the matrix, and ties go by key.
TIE_DIGITS = 6
_TIE = 10.0**-TIE_DIGITS


@dataclass
class Top:
    """The best rows, best first: keys (``int`` where stored as integers, else ``str``),
    scores (cosine, for a vector search), and the content hash each was stored under."""

    keys: list[Any]
    scores: list[float]
    hashes: list[str | None]
    # More scores per row, by name (a hybrid ranking's similarity and keyword score).
    columns: dict[str, list[float]] = field(default_factory=dict)


class _Scored:
    """The scores of the rows of ``matrix`` that ``mask`` allows (or of ``rows``),
    each multiplied by its ``scale`` if given (rows not stored normalized)."""

    def __init__(
        self,
        matrix: Matrix,
        mask: npt.NDArray[np.bool_] | None,
        unit: Vector,
        rows: npt.NDArray[np.intp] | None = None,
        scale: npt.NDArray[np.float32] | None = None,
    ) -> None:
        self.rows = rows
        self.scores: npt.NDArray[np.float32] = np.empty(0, dtype=np.float32)
        if mask is None:
            assert rows is not None
            self.count = len(rows)
            if self.count:
                self.scores = np.asarray(matrix[rows]) @ unit
                if scale is not None:
                    self.scores *= scale[rows]
            return
        self.count = int(np.count_nonzero(mask))
        if not self.count:
            return
        if self.count * 4 < len(mask):
            self.rows = np.flatnonzero(mask)  # few rows: score only those
            self.scores = np.asarray(matrix[self.rows]) @ unit
            if scale is not None:
                self.scores *= scale[self.rows]
        else:  # most rows: one pass over the matrix, masking the rest
            self.scores = np.asarray(matrix @ unit)
            if scale is not None:
                self.scores *= scale
            if self.count < len(mask):
                self.scores[~mask] = -np.inf

    def best(self, n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """Matrix rows and scores of the ``n`` best, plus any tied with the ``n``-th,
        so that the caller's tie-break by key is exact."""
        scores = self.scores
        if not self.count or n <= 0:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float32)
        if n < self.count:
            kth = np.partition(scores, len(scores) - n)[len(scores) - n]
            top = np.flatnonzero(scores >= kth - _TIE)
        elif self.rows is None:
            top = np.flatnonzero(scores > -np.inf)
        else:
            top = np.arange(len(scores))
        rows = top if self.rows is None else self.rows[top]
        return rows, scores[top]


class Ranking:
    """Live rows made by ``identity`` scored against ``query`` (``candidates`` only,
    when given; never ``exclude``)."""

    def __init__(
        self,
        index: FieldIndex,
        query: Vector,
        *,
        identity: str,
        candidates: Sequence[str] | npt.NDArray[np.int64] | None = None,
        exclude: str | None = None,
    ) -> None:
        unit = normalize(query)
        self.index = index
        with index.lock:
            base_ok, tail_ok = index.valid_rows(identity)
            used = len(index.tail_keys)
            tail, self.tail_keys = index.tail[:used], index.tail_keys[:used]
            scale = index.tail_scale[:used]
        if exclude is not None:
            base_ok, tail_ok = index.without(base_ok, tail_ok, [exclude])
        self.base: _Scored | Int8Scored
        rows = None
        if candidates is not None:
            rows, tail_ok = index.restricted(base_ok, tail_ok, candidates)
        if conf.SCAN == "int8" and _worth_int8(base_ok, rows):
            # The snapshot through its int8 copy; the tail (rows written since) is small
            # and scanned in float32 as it is.
            mask = None if rows is not None else base_ok
            self.base = Int8Scored(index.int8(), index.base, mask, unit, _TIE, rows=rows)
        elif rows is not None:
            self.base = _Scored(index.base, None, unit, rows=rows)
        else:
            self.base = _Scored(index.base, base_ok, unit)
        self.tail = _Scored(tail, tail_ok, unit, scale=scale)
        self.size = self.base.count + self.tail.count

    def top(self, n: int) -> Top:
        """The ``n`` best rows, ties at the ``n``-th broken by key (integers numerically)."""
        index = self.index
        base_rows, base_scores = self.base.best(n)
        if not self.tail.count and index.base_keys.dtype.kind == "i":
            return self._top_of_base(n, base_rows, base_scores)
        tail_rows, tail_scores = self.tail.best(n)
        base_keys: list[Any] = np.asarray(index.base_keys[base_rows]).tolist()
        tail_picked = tail_rows.tolist()
        tail_keys = [self.tail_keys[row] for row in tail_picked]
        scores = np.concatenate([base_scores, tail_scores]).astype(np.float64)
        keys = base_keys + tail_keys
        order = _order(keys, scores, integers=index.base_keys.dtype.kind == "i")[:n]
        with index.lock:
            base_hashes = _hex(np.asarray(index.base_hashes[base_rows]))
        hashes = base_hashes + [index.tail_hash(row) for row in tail_picked]
        picked = order.tolist()
        return Top(
            [keys[i] for i in picked],
            scores[order].tolist(),
            [hashes[i] for i in picked],
        )

    def _top_of_base(
        self, n: int, rows: npt.NDArray[np.intp], scores32: npt.NDArray[np.float32]
    ) -> Top:
        """:meth:`top` when every candidate is a snapshot row with an integer key (the
        usual case): the same order, in a few array operations."""
        index = self.index
        keys = np.asarray(index.base_keys[rows])
        scores = scores32.astype(np.float64)
        order = np.lexsort((keys, -np.round(scores, TIE_DIGITS)))[:n]
        with index.lock:
            hashes = _hex(np.asarray(index.base_hashes[rows[order]]))
        return Top(keys[order].tolist(), scores[order].tolist(), hashes)


def _worth_int8(base_ok: npt.NDArray[np.bool_], rows: npt.NDArray[np.intp] | None) -> bool:
    """Scan the int8 copy, or score so few rows in float32 directly?"""
    if rows is not None:
        return len(rows) >= quantized.MIN_ROWS
    count = int(np.count_nonzero(base_ok))
    # As _Scored chooses: every row, or only those allowed when they are few.
    scanned = len(base_ok) if count * 4 >= len(base_ok) else count
    return scanned >= quantized.MIN_ROWS


def _order(keys: list[Any], scores: npt.NDArray[np.float64], *, integers: bool) -> Any:
    """Positions sorted by score (to ``TIE_DIGITS``, best first), then by key."""
    rounded = -np.round(scores, TIE_DIGITS)
    if integers:
        numbers = [key if isinstance(key, int) else row_keys.as_int(key) for key in keys]
        if None not in numbers:
            return np.lexsort((np.array(numbers, dtype=np.int64), rounded))
    natural = [_natural(key) for key in keys]
    return np.array(
        sorted(range(len(keys)), key=lambda i: (rounded[i], *natural[i])), dtype=np.intp
    )


def _natural(key: Any) -> tuple[int, int, str]:
    """Integer keys in numeric order (9 before 10), then any other key as text."""
    number = key if isinstance(key, int) else row_keys.as_int(key)
    return (0, number, "") if number is not None else (1, 0, str(key))


def _hex(hashes: npt.NDArray[np.uint8]) -> list[str | None]:
    """Each row of a (n, 16) byte array as 32 hex digits, in one conversion."""
    text = hashes.tobytes().hex()
    width = 2 * hashes.shape[1] if hashes.ndim == 2 else 32
    return [text[i : i + width] for i in range(0, len(text), width)]

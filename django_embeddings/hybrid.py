"""Keyword (BM25) and hybrid rankings over one field's index.

Rows are numbered as the index holds them: snapshot row ``r`` is position ``r``,
tail row ``t`` is position ``len(snapshot) + t``; the keyword index uses the same
numbers, so both rankers score the same rows and a filter's candidates select them
once for both.

A hybrid ranking is score fusion over a window: each ranker's best ``window`` rows
among the allowed ones, their union scored by both rankers exactly, each ranker's
scores scaled to [0, 1] over that union (min-max), then ``weight * vector + (1 -
weight) * keyword``. It depends only on the rows allowed, so a filtered search
ranks the filter's rows exactly as if they were the whole table. Ties (to
``TIE_DIGITS`` digits) go by key, as everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from django_embeddings.keywords import fusion
from django_embeddings.ranking import TIE_DIGITS, Top, _hex, _order
from django_embeddings.store import normalize
from django_embeddings.typing import Vector

if TYPE_CHECKING:
    from django_embeddings.cache import FieldIndex

# Each ranker's best rows that a hybrid ranking fuses: what the held-out evaluation
# measured (bench/quality.py); a larger k widens it.
WINDOW = 100
# The vector's share of a fused score; the keyword ranker has the rest. Picked on the
# development queries of bench/quality.py, reported on held-out ones.
DEFAULT_WEIGHT = 0.2

Positions = npt.NDArray[np.int64]


class _Allowed:
    """The positions a ranking may return, as two masks (snapshot rows, tail rows)."""

    def __init__(self, base_ok: npt.NDArray[np.bool_], tail_ok: npt.NDArray[np.bool_]) -> None:
        self.base_ok = base_ok
        self.tail_ok = tail_ok
        self.size = int(np.count_nonzero(base_ok)) + int(np.count_nonzero(tail_ok))

    def positions(self) -> Positions:
        base = np.flatnonzero(self.base_ok)
        tail = np.flatnonzero(self.tail_ok) + len(self.base_ok)
        return np.concatenate([base, tail]).astype(np.int64)

    def mask(self, positions: Positions) -> npt.NDArray[np.bool_]:
        """Which of ``positions`` are allowed."""
        nbase = len(self.base_ok)
        ok = np.zeros(len(positions), dtype=bool)
        base = positions < nbase
        ok[base] = self.base_ok[positions[base]]
        tail = positions[~base] - nbase
        inside = tail < len(self.tail_ok)
        ok[np.flatnonzero(~base)[inside]] = self.tail_ok[tail[inside]]
        return ok


def allowed_rows(
    index: FieldIndex,
    *,
    identity: str | None,
    candidates: Sequence[str] | npt.NDArray[np.int64] | None,
    exclude: Sequence[str] = (),
) -> _Allowed:
    """Live rows (made by ``identity``, when given), among ``candidates`` if given,
    never ``exclude``."""
    with index.lock:
        if identity is None:
            used = len(index.tail_keys)
            base_ok = index.base_alive.copy()
            tail_ok = index.tail_alive[:used].copy()
        else:
            base_ok, tail_ok = index.valid_rows(identity)
    if candidates is not None:
        rows, tail_ok = index.restricted(base_ok, tail_ok, candidates)
        base_ok = np.zeros_like(base_ok)
        base_ok[rows] = True
    if exclude:
        base_ok, tail_ok = index.without(base_ok, tail_ok, exclude)
    return _Allowed(base_ok, tail_ok)


def keyword_scores(
    index: FieldIndex, tokens: Sequence[str], allowed: _Allowed
) -> tuple[Positions, npt.NDArray[np.float32]]:
    """The allowed rows holding a query token, by position, with their BM25 scores."""
    keywords = index.keyword_index()
    # Under the index's lock: a write applied meanwhile may rebuild the postings.
    if allowed.size * 4 < len(allowed.base_ok) + len(allowed.tail_ok):
        with index.lock:
            return keywords.scores(tokens, allowed.positions())
    with index.lock:
        found, scores = keywords.scores(tokens)
    keep = allowed.mask(found)
    return found[keep], scores[keep]


def vector_scores(
    index: FieldIndex, query: Vector, positions: Positions
) -> npt.NDArray[np.float32]:
    """The cosine similarity of ``query`` to the rows at ``positions`` (ascending)."""
    unit = normalize(query)
    nbase = len(index.base_keys)
    split = int(np.searchsorted(positions, nbase))
    base, tail = positions[:split], positions[split:] - nbase
    out = np.zeros(len(positions), dtype=np.float32)
    if len(base) * 4 > nbase:
        out[:split] = (np.asarray(index.base) @ unit)[base]  # one pass beats a gather
    elif len(base):
        out[:split] = np.asarray(index.base[base]) @ unit
    if len(tail):
        with index.lock:
            out[split:] = (np.asarray(index.tail[tail]) @ unit) * index.tail_scale[tail]
    return out


def _at(positions: Positions, values: npt.ArrayLike, wanted: Positions) -> npt.NDArray[np.float64]:
    """``values`` (aligned with the ascending ``positions``) at ``wanted``; 0 where absent."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(wanted), dtype=np.float64)
    if not len(positions):
        return out
    at = np.minimum(np.searchsorted(positions, wanted), len(positions) - 1)
    found = positions[at] == wanted
    out[found] = values[at[found]]
    return out


def best(positions: Positions, scores: npt.ArrayLike, n: int) -> Positions:
    """The positions of the ``n`` highest scores, and any tied with the ``n``-th."""
    values = np.asarray(scores, dtype=np.float64)
    if n >= len(values):
        return positions
    kth = np.partition(values, len(values) - n)[len(values) - n]
    kept: Positions = positions[values >= kth - 10.0**-TIE_DIGITS]
    return kept


def keyword_top(
    index: FieldIndex, tokens: Sequence[str], n: int, allowed: _Allowed
) -> tuple[Top, int]:
    """The ``n`` best rows by BM25 (only rows holding a query token), and how many hold one."""
    found, scores = keyword_scores(index, tokens, allowed)
    picked = best(found, scores, n)
    values = _at(found, scores, picked)
    top = _top(index, picked, values, n, {"keyword_score": values})
    return top, len(found)


def hybrid_top(
    index: FieldIndex,
    query: Vector,
    tokens: Sequence[str],
    n: int,
    allowed: _Allowed,
    *,
    weight: float = DEFAULT_WEIGHT,
    window: int = WINDOW,
) -> Top:
    """The ``n`` best allowed rows by fused score (see the module docstring)."""
    if not allowed.size:
        return Top([], [], [])
    window = max(window, n)
    everyone = allowed.positions()
    vectors = vector_scores(index, query, everyone)
    found, keyword = keyword_scores(index, tokens, allowed)
    union = best(found, keyword, window)
    if np.any(query):  # a query the model cannot read (all zeros) ranks no row by meaning
        union = np.union1d(best(everyone, vectors, window), union)
    similarity = _at(everyone, vectors, union)
    keyword_score = _at(found, keyword, union)
    fused = fusion.min_max([similarity, keyword_score], [weight, 1 - weight])
    columns = {"similarity": similarity, "keyword_score": keyword_score}
    return _top(index, union, fused, n, columns)


def _top(
    index: FieldIndex,
    positions: Positions,
    scores: npt.NDArray[np.float64],
    n: int,
    columns: dict[str, npt.NDArray[np.float64]],
) -> Top:
    """``Top`` of the ``n`` best ``positions``, ties by key, with ``columns`` alongside."""
    nbase = len(index.base_keys)
    keys: list[Any] = []
    hashes: list[str | None] = []
    base = [p for p in positions.tolist() if p < nbase]
    base_keys = np.asarray(index.base_keys[base]).tolist() if base else []
    with index.lock:
        base_hashes = _hex(np.asarray(index.base_hashes[base])) if base else []
        at = 0
        for position in positions.tolist():
            if position < nbase:
                keys.append(base_keys[at])
                hashes.append(base_hashes[at])
                at += 1
            else:
                keys.append(index.tail_keys[position - nbase])
                hashes.append(index.tail_hash(position - nbase))
    order = _order(keys, scores, integers=index.base_keys.dtype.kind == "i")[:n].tolist()
    return Top(
        [keys[i] for i in order],
        [float(scores[i]) for i in order],
        [hashes[i] for i in order],
        {name: [float(values[i]) for i in order] for name, values in columns.items()},
    )

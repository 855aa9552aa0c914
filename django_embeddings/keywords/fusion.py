"""Fusing rankers' scores over one set of candidates.

The candidates are typically the union of each ranker's top N, each with every
ranker's exact score (a cosine similarity or a BM25 score can be computed for any
row). Score fusions normalize each ranker over the candidates, so a weight means
the same whatever the scale of the raw scores; reciprocal rank fusion ignores the
scores and uses ranks in each ranker's own list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

Positions = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float64]
RRF_K = 60  # Cormack et al. (2009); Elasticsearch's and OpenSearch's default too


def reciprocal_rank(
    rankings: Sequence[npt.ArrayLike],
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> tuple[Positions, Scores]:
    """Each candidate's ``sum(weight / (k + rank))`` over the rankings that list it.

    ``rankings`` are arrays of positions, best first (rank 1); returns the union of
    their positions, ascending, with the fused scores.
    """
    lists = [np.asarray(r, dtype=np.int64) for r in rankings]
    weights = _weights(weights, len(lists))
    if not lists or not sum(len(r) for r in lists):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    union, inverse = np.unique(np.concatenate(lists), return_inverse=True)
    fused = np.zeros(len(union), dtype=np.float64)
    offset = 0
    for ranking, weight in zip(lists, weights, strict=True):
        ranks = np.arange(1, len(ranking) + 1, dtype=np.float64)
        np.add.at(fused, inverse[offset : offset + len(ranking)], weight / (k + ranks))
        offset += len(ranking)
    return union, fused


def min_max(scores: Sequence[npt.ArrayLike], weights: Sequence[float] | None = None) -> Scores:
    """``sum(weight * (s - min) / (max - min))``, each ranker's scores aligned on the candidates."""
    return _weighted(scores, weights, _unit_range)


def z_score(scores: Sequence[npt.ArrayLike], weights: Sequence[float] | None = None) -> Scores:
    """``sum(weight * (s - mean) / std)``, each ranker's scores aligned on the candidates."""
    return _weighted(scores, weights, _standard)


def _weighted(
    scores: Sequence[npt.ArrayLike],
    weights: Sequence[float] | None,
    normalize: Callable[[Scores], Scores],
) -> Scores:
    columns = [np.asarray(s, dtype=np.float64) for s in scores]
    if not columns:
        raise ValueError("Fusion needs at least one ranker's scores.")
    if len({len(c) for c in columns}) != 1:
        raise ValueError("Each ranker needs one score per candidate.")
    fused = np.zeros(len(columns[0]), dtype=np.float64)
    for column, weight in zip(columns, _weights(weights, len(columns)), strict=True):
        fused += weight * normalize(column)
    return fused


# Scores closer than this (relative to their size) are equal: similarities are float32 dot
# products, and the same row's can differ in the last bits depending on whether it was
# normalized in a snapshot or is scaled as a journal row. Stretching such a difference to
# the whole unit range would make the ranking depend on when the store was compacted.
_RESOLUTION = 1e-6


def _unit_range(column: Scores) -> Scores:
    if not len(column):
        return column
    low, high = column.min(), column.max()
    # All equal: the ranker cannot tell the candidates apart, so it adds nothing.
    if high - low <= _RESOLUTION * max(1.0, abs(high), abs(low)):
        return np.zeros_like(column)
    return np.asarray((column - low) / (high - low), dtype=np.float64)


def _standard(column: Scores) -> Scores:
    if not len(column):
        return column
    std = column.std()
    if std <= _RESOLUTION * max(1.0, float(np.abs(column).max())):
        return np.zeros_like(column)
    return np.asarray((column - column.mean()) / std, dtype=np.float64)


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} rankers.")
    return [float(w) for w in weights]

"""Deterministic corpora: the same vectors and texts in every run, for every system.

Vectors come in fixed chunks, each from its own seeded generator, so the first
``n`` rows of a corpus are the same whatever its size and however it is read.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

DIMENSIONS = 384
SEED = 20240611
CHUNK = 65_536
IDENTITY = f"bench-vectors-{DIMENSIONS}"  # the provider identity corpora are stored under

Matrix = npt.NDArray[np.float32]


def chunks(n: int, *, start: int = 0, seed: int = SEED) -> Iterator[tuple[int, Matrix]]:
    """``(first row, rows)`` blocks covering rows ``start .. n-1`` of the corpus."""
    first_chunk = start // CHUNK
    for index in range(first_chunk, (n + CHUNK - 1) // CHUNK):
        lo = index * CHUNK
        block = np.random.default_rng([seed, index]).standard_normal(
            (min(CHUNK, n - lo), DIMENSIONS), dtype=np.float32
        )
        skip = max(0, start - lo)
        yield lo + skip, block[skip:]


def vectors(n: int, *, seed: int = SEED) -> Matrix:
    out = np.empty((n, DIMENSIONS), dtype=np.float32)
    for lo, block in chunks(n, seed=seed):
        out[lo : lo + len(block)] = block
    return out


def normalized(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix /= np.where(norms == 0, 1, norms)
    return matrix


def queries(count: int, n: int, *, seed: int = SEED + 1) -> Matrix:
    """Queries near corpus rows (a row plus as much noise), so the top-10 is meaningful."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=count)
    base = np.empty((count, DIMENSIONS), dtype=np.float32)
    # Each chunk is generated once, up to the last row wanted from it (its first rows
    # are the same however many are generated): seconds less per process at 100k rows.
    for index in np.unique(rows // CHUNK).tolist():
        wanted = np.flatnonzero(rows // CHUNK == index)
        lo = index * CHUNK
        block = np.random.default_rng([SEED, index]).standard_normal(
            (int(rows[wanted].max()) - lo + 1, DIMENSIONS), dtype=np.float32
        )
        base[wanted] = block[rows[wanted] - lo]
    noise = rng.standard_normal((count, DIMENSIONS), dtype=np.float32)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    return normalized((unit + noise / 20).astype(np.float32))


@functools.cache
def _chunk(index: int) -> Matrix:
    """Chunk ``index`` of the corpus in full; its first rows are those :func:`chunks` yields."""
    return np.random.default_rng([SEED, index]).standard_normal(
        (CHUNK, DIMENSIONS), dtype=np.float32
    )


def row_vector(row: int) -> Matrix:
    """Row ``row`` of the corpus (raw, not normalized), from a chunk kept once generated."""
    vector: Matrix = _chunk(row // CHUNK)[row % CHUNK]
    return vector


def row_text(row: int) -> str:
    """The source text of corpus row ``row``: the bench's providers embed it as that row."""
    return f"row {row}"


def row_of(text: str) -> int | None:
    """The corpus row a text starting with a :func:`row_text` names (``"row 17"``, or
    ``"row 17 ..."`` as :mod:`bench.articles` writes them), or ``None`` for any other text."""
    prefix, number, *_ = [*text.split(" ", 2), ""]
    return int(number) if prefix == "row" and number.isdigit() else None


def key(row: int) -> str:
    """The store key of corpus row ``row``: the primary key ``row + 1`` as Django spells it."""
    return str(row + 1)


def text_vector(text: str) -> npt.NDArray[np.float32]:
    """A fast deterministic vector for a text: the bench provider, for popoto and for us."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(DIMENSIONS, dtype=np.float32)


_VOCABULARY = (
    "the of and to in is was for on that with as by at from his her an were are which this "
    "be or had not but first one their its new after who they have has been two also time "
    "other into more when some during only over can all most would such where about between "
    "because city river school music history season team album church village county station "
    "company language system water light energy market language research garden island "
    "mountain bridge library museum theatre harbour railway engine planet orbit forest "
    "winter summer festival painting novel poem film series character player club league "
    "match goal coach student teacher doctor hospital patient medicine protein cell gene "
    "species bird fish insect plant flower tree soil rain storm climate ocean coast desert "
    "valley lake canal road highway car "
)
_WORDS = _VOCABULARY.split()


def texts(n: int, *, seed: int = SEED + 2) -> list[str]:
    """``n`` sentence-like texts of 12-40 words, for the backfill with a real model."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 41, size=n)
    words = rng.integers(0, len(_WORDS), size=int(lengths.sum()))
    out, position = [], 0
    for length in lengths:
        out.append(" ".join(_WORDS[int(w)] for w in words[position : position + length]))
        position += int(length)
    return out

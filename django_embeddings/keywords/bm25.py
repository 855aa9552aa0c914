"""An incremental BM25 index over documents at integer positions, in numpy arrays.

Layout: a compacted *base* in CSR form (term id -> a slice of ``doc`` and ``tf``
arrays sorted by position, plus a forward map position -> its postings), and a
small append-only *delta* for documents added since the last compaction. A
removal zeroes the document's term frequencies in place (a zero tf scores
nothing) and takes it out of the statistics at once, so document frequencies,
the live count and the average length always describe the live documents; the
dead postings are dropped at the next compaction, which runs when the delta or
the dead postings grow past a share of the base.

Scores use Lucene's idf, ``log(1 + (N - df + 0.5) / (df + 0.5))``, so they are
always positive and a document scores above zero exactly when it holds a query
term. Ties (scores equal to ``TIE_DIGITS`` digits) go to the lower position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from django_embeddings.keywords.terms import Terms

TIE_DIGITS = 6  # as django_embeddings.ranking: float rounding must not decide an order
_MIN_DELTA = 65_536  # postings the delta may hold before a compaction, at least
_DELTA_SHARE = 8  # ... or one eighth of the base's postings
_DEAD_SHARE = 4  # dead postings past a quarter of the base's also compact
_ABSENT, _BASE, _DELTA = 0, 1, 2  # a position's state
_SELECTIVE = 16  # a filter this many times shorter than a posting list is binary-searched in it

Positions = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


class BM25Index:
    """BM25 over documents given as token lists, each at a caller-chosen position >= 0."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, not k1={k1!r}, b={b!r}.")
        self.k1 = float(k1)
        self.b = float(b)
        self._vocab: dict[str, int] = {}
        self._df = np.zeros(1024, dtype=np.int64)  # by term id, live documents only
        self._length = np.zeros(1024, dtype=np.float32)  # by position, tokens
        self._state = np.zeros(1024, dtype=np.uint8)  # by position: _ABSENT, _BASE, _DELTA
        self._live = 0
        self._total_length = 0
        # Base, CSR by term id (ids >= len(indptr) - 1 have no base postings).
        self._indptr = np.zeros(1, dtype=np.int64)
        self._doc = np.zeros(0, dtype=np.int32)
        self._tf = np.zeros(0, dtype=np.float32)
        self._forward_ptr = np.zeros(1, dtype=np.int64)  # position -> slice of _forward
        # Posting indices, grouped by position; built on first need (see _forward_map).
        self._forward: npt.NDArray[np.int64] | None = np.zeros(0, dtype=np.int64)
        self._order = np.zeros(0, dtype=np.int64)  # the base's postings: their sort by term
        self._by_doc = True
        self._dead = 0  # base postings zeroed by removals
        # Delta, append-only; a document's entries are one contiguous span.
        self._d_doc = np.zeros(1024, dtype=np.int32)
        self._d_term = np.zeros(1024, dtype=np.int32)
        self._d_tf = np.zeros(1024, dtype=np.float32)
        self._d_used = 0
        self._d_span: dict[int, tuple[int, int]] = {}

    # -- statistics -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def __contains__(self, position: object) -> bool:
        return bool(
            isinstance(position, int | np.integer)
            and 0 <= position < len(self._state)
            and self._state[position]
        )

    @property
    def average_length(self) -> float:
        return self._total_length / self._live if self._live else 0.0

    def document_frequency(self, term: str) -> int:
        term_id = self._vocab.get(term)
        return 0 if term_id is None else int(self._df[term_id])

    def postings(self) -> int:
        """Postings held, dead ones included (what compaction would shrink)."""
        return len(self._doc) + self._d_used

    # -- writes -----------------------------------------------------------------------------

    def add(self, position: int, tokens: Sequence[str] | Mapping[str, int]) -> None:
        """Index a new document (its tokens, or ``{token: count}``); ``ValueError`` if
        ``position`` already holds one."""
        if position in self:
            raise ValueError(f"Position {position} already holds a document; use replace().")
        if position < 0:
            raise ValueError(f"Positions are >= 0, not {position}.")
        self._append(int(position), tokens)
        self._maybe_compact()

    @classmethod
    def from_terms(
        cls,
        positions: npt.ArrayLike,
        terms: Terms,
        k1: float = 1.2,
        b: float = 0.75,
        *,
        alive: npt.ArrayLike | None = None,
    ) -> BM25Index:
        """An index of the bags of ``terms`` (rows whose bag is known, and ``alive`` when
        given) at ``positions`` (one per row, distinct): built with array operations, no
        Python loop per row.

        With ascending positions and the postings' order by term (``terms.order``, which
        a snapshot keeps), no sort at all: a few gathers of the postings. The postings of
        rows not ``alive`` stay, scoring nothing, until the next compaction.
        """
        index = cls(k1, b)
        at = np.asarray(positions, dtype=np.int64)
        if len(at) != len(terms):
            raise ValueError(f"{len(at)} positions for {len(terms)} rows.")
        if len(at) and int(at.min()) < 0:
            raise ValueError("Positions are >= 0.")
        # Rows whose bag is not known hold no postings: they are left absent.
        live = np.asarray(terms.known, dtype=bool)
        index._vocab = dict(zip(terms.vocab, range(len(terms.vocab)), strict=True))
        index._df = np.zeros(max(1024, len(terms.vocab)), dtype=np.int64)
        ids = np.asarray(terms.ids, dtype=np.int32)
        tfs = np.asarray(terms.counts, dtype=np.float32)
        lengths = np.diff(np.asarray(terms.ptr, dtype=np.int64)).astype(np.int64)
        if alive is not None and not (dead := ~np.asarray(alive, dtype=bool) & live).any():
            alive = None
        if alive is not None:
            # As _remove() would, for all of them at once: zero term frequencies score
            # nothing, and the statistics leave them out.
            live = live & ~dead
            gone = np.repeat(dead, lengths)
            tfs = np.where(gone, np.float32(0), tfs)
            index._dead = int(np.count_nonzero(gone))
            kept_ids = ids[~gone]
        else:
            kept_ids = ids
        docs = np.repeat(at, lengths).astype(np.int32)
        index._df[: len(terms.vocab)] = np.bincount(kept_ids, minlength=len(terms.vocab))
        index._reserve_position(int(at.max()) if len(at) else 0)
        sizes = np.bincount(docs, weights=tfs, minlength=len(index._state))
        index._length[: len(sizes)] = sizes
        index._state[at[live]] = _BASE
        index._live = int(np.count_nonzero(live))
        index._total_length = int(round(float(sizes.sum())))
        dead_postings = index._dead
        index._build_base(ids, docs, tfs, order=terms.order)
        index._dead = dead_postings
        return index

    def add_many(self, positions: npt.ArrayLike, terms: Terms) -> None:
        """Add the bags of ``terms`` (rows whose bag is known) at ``positions``, none of
        which holds a document yet: one append to the delta, with array operations."""
        at = np.asarray(positions, dtype=np.int64)
        if len(at) != len(terms):
            raise ValueError(f"{len(at)} positions for {len(terms)} rows.")
        if not len(at):
            return
        if int(at.min()) < 0 or any(position in self for position in at.tolist()):
            raise ValueError("Positions are >= 0 and must not hold a document yet.")
        remap = np.fromiter(
            (self._term_id(token) for token in terms.vocab), dtype=np.int32, count=len(terms.vocab)
        )
        ids = remap[np.asarray(terms.ids, dtype=np.intp)]
        tfs = np.asarray(terms.counts, dtype=np.float32)
        ptr = np.asarray(terms.ptr, dtype=np.int64)
        docs = np.repeat(at, np.diff(ptr).astype(np.int64)).astype(np.int32)
        self._reserve_position(int(at.max()))
        start = self._delta_append(docs, ids, tfs)
        known = np.asarray(terms.known, dtype=bool)
        spans = zip(
            at.tolist(), (start + ptr[:-1]).tolist(), (start + ptr[1:]).tolist(), strict=True
        )
        for (position, first, last), ok in zip(spans, known.tolist(), strict=True):
            if ok:
                self._d_span[position] = (first, last)
        self._df[: len(self._vocab)] += np.bincount(ids, minlength=len(self._vocab))
        rows = np.repeat(np.arange(len(at)), np.diff(ptr).astype(np.int64))
        sizes = np.bincount(rows, weights=tfs, minlength=len(at))
        self._length[at] = sizes
        self._state[at[known]] = _DELTA
        self._live += int(np.count_nonzero(known))
        self._total_length += int(round(float(sizes.sum())))
        self._maybe_compact()

    def replace(self, position: int, tokens: Sequence[str] | Mapping[str, int]) -> None:
        """Index ``tokens`` at ``position``, replacing what it held, if anything."""
        if position in self:
            self._remove(int(position))
        self.add(position, tokens)

    def remove(self, position: int) -> None:
        """Drop the document at ``position``; ``KeyError`` if there is none."""
        if position not in self:
            raise KeyError(position)
        self._remove(int(position))
        self._maybe_compact()

    def extend(self, documents: Iterable[tuple[int, Sequence[str]]]) -> None:
        """Add many documents, compacting once at the end (a bulk build)."""
        for position, tokens in documents:
            if position in self:
                self._remove(int(position))
            elif position < 0:
                raise ValueError(f"Positions are >= 0, not {position}.")
            self._append(int(position), tokens)
        self.compact()

    def _append(self, position: int, tokens: Sequence[str] | Mapping[str, int]) -> None:
        counts = tokens if isinstance(tokens, Mapping) else Counter(tokens)
        length = sum(counts.values())
        ids = np.fromiter((self._term_id(t) for t in counts), dtype=np.int32, count=len(counts))
        tfs = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        self._reserve_position(position)
        start = self._delta_append(position, ids, tfs)
        self._d_span[position] = (start, start + len(ids))
        self._df[ids] += 1
        self._state[position] = _DELTA
        self._length[position] = length
        self._live += 1
        self._total_length += length

    def _delta_append(
        self, docs: int | npt.NDArray[np.int32], ids: npt.NDArray[np.int32], tfs: Scores
    ) -> int:
        """Append postings to the delta (growing it by doubling); returns where they start."""
        start, end = self._d_used, self._d_used + len(ids)
        if end > len(self._d_doc):
            size = max(end, 2 * len(self._d_doc))
            self._d_doc = _grown(self._d_doc, size)
            self._d_term = _grown(self._d_term, size)
            self._d_tf = _grown(self._d_tf, size)
        self._d_doc[start:end] = docs
        self._d_term[start:end] = ids
        self._d_tf[start:end] = tfs
        self._d_used = end
        return start

    def _remove(self, position: int) -> None:
        if self._state[position] == _BASE:
            forward = self._forward_map()
            indices = forward[self._forward_ptr[position] : self._forward_ptr[position + 1]]
            indices = indices[self._tf[indices] > 0]
            terms = np.searchsorted(self._indptr, indices, side="right") - 1
            self._df[terms] -= 1
            self._tf[indices] = 0
            self._dead += len(indices)
        else:
            start, end = self._d_span.pop(position)
            self._df[self._d_term[start:end]] -= 1
            self._d_tf[start:end] = 0
        self._live -= 1
        self._total_length -= int(self._length[position])
        self._length[position] = 0
        self._state[position] = _ABSENT

    def _forward_map(self) -> npt.NDArray[np.int64]:
        """Posting indices grouped by document (``_forward_ptr`` slices it)."""
        if self._forward is None:
            if self._by_doc:  # the postings were grouped by document: the inverse permutation
                self._forward = np.empty(len(self._order), dtype=np.int64)
                self._forward[self._order] = np.arange(len(self._order), dtype=np.int64)
            else:
                self._forward = np.argsort(self._doc, kind="stable").astype(np.int64)
        return self._forward

    def _term_id(self, term: str) -> int:
        term_id = self._vocab.get(term)
        if term_id is None:
            term_id = self._vocab[term] = len(self._vocab)
            if term_id >= len(self._df):
                self._df = _grown(self._df, 2 * len(self._df))
        return term_id

    def _reserve_position(self, position: int) -> None:
        if position >= len(self._state):
            size = max(position + 1, 2 * len(self._state))
            self._state = _grown(self._state, size)
            self._length = _grown(self._length, size)

    def _maybe_compact(self) -> None:
        base = len(self._doc)
        if self._d_used > max(_MIN_DELTA, base // _DELTA_SHARE) or (
            self._dead > max(_MIN_DELTA, base // _DEAD_SHARE)
        ):
            self.compact()

    def compact(self) -> None:
        """Fold the delta into the base and drop dead postings (scores do not change)."""
        counts = np.diff(self._indptr)
        base_terms = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        keep = self._tf > 0
        d_keep = self._d_tf[: self._d_used] > 0
        terms = np.concatenate([base_terms[keep], self._d_term[: self._d_used][d_keep]])
        docs = np.concatenate([self._doc[keep], self._d_doc[: self._d_used][d_keep]])
        tfs = np.concatenate([self._tf[keep], self._d_tf[: self._d_used][d_keep]])
        self._state[self._state == _DELTA] = _BASE
        self._build_base(terms, docs, tfs)

    def _build_base(
        self,
        terms: npt.NDArray[np.int32],
        docs: npt.NDArray[np.int32],
        tfs: Scores,
        order: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Make the postings ``(term, doc, tf)`` the base, and empty the delta.

        ``order``: the stable sort of ``terms``, when the caller has it already.
        """
        by_doc = len(docs) < 2 or bool(np.all(docs[1:] >= docs[:-1]))
        # Grouped by document already (a bulk load): a stable sort by term keeps each
        # term's documents in order, and the forward map is the inverse permutation.
        if not by_doc:
            order = np.lexsort((docs, terms))
        elif order is None or len(order) != len(terms):
            order = np.argsort(terms, kind="stable")
        self._doc, self._tf = docs[order], tfs[order]
        # A term's number of postings does not depend on their order: no sorted copy.
        self._indptr = np.zeros(len(self._vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=len(self._vocab)), out=self._indptr[1:])
        # The map from documents to their postings is only needed to remove one: made then.
        self._order, self._by_doc = order, by_doc
        self._forward = None
        self._forward_ptr = np.zeros(len(self._state) + 1, dtype=np.int64)
        np.cumsum(np.bincount(self._doc, minlength=len(self._state)), out=self._forward_ptr[1:])
        self._dead = 0
        self._d_used = 0
        self._d_span.clear()

    # -- reads ------------------------------------------------------------------------------

    def scores(
        self, query: Sequence[str], positions: npt.ArrayLike | None = None
    ) -> tuple[Positions, Scores]:
        """The documents holding a query token, by position ascending, and their scores.

        With ``positions``, only those documents (a filtered queryset's rows) are scored.
        """
        subset = None if positions is None else _sorted_unique(positions)
        if subset is not None:
            subset = subset[(subset >= 0) & (subset < len(self._state))]
        terms = self._query_terms(query)
        acc = np.zeros(len(self._state), dtype=np.float32)
        if terms and self._live:
            self._accumulate(acc, terms, subset)
        found = np.flatnonzero(acc) if subset is None else subset[acc[subset] > 0]
        return found.astype(np.int64), acc[found]

    def top(
        self, query: Sequence[str], k: int, positions: npt.ArrayLike | None = None
    ) -> tuple[Positions, Scores]:
        """The ``k`` best documents, best first, ties to the lower position."""
        found, scores = self.scores(query, positions)
        return top_k(found, scores, k)

    def _query_terms(self, query: Sequence[str]) -> list[tuple[int, int]]:
        # Sorted by the token itself, so a document's score is summed in the same order
        # whatever the history of ids: equal documents score equally.
        counts = Counter(query)
        out = []
        for token in sorted(counts):
            term_id = self._vocab.get(token)
            if term_id is not None and self._df[term_id] > 0:
                out.append((term_id, counts[token]))
        return out

    def _accumulate(
        self, acc: npt.NDArray[np.float32], terms: list[tuple[int, int]], subset: Positions | None
    ) -> None:
        k1, n = self.k1, self._live
        norm_a = k1 * (1 - self.b)
        norm_b = k1 * self.b / self.average_length if self.average_length else 0.0
        length = self._length
        base_terms = len(self._indptr) - 1
        d_used = self._d_used
        d_term = self._d_term[:d_used]
        for term_id, repeats in terms:
            df = int(self._df[term_id])
            weight = repeats * float(np.log1p((n - df + 0.5) / (df + 0.5))) * (k1 + 1)
            if term_id < base_terms:
                start, end = self._indptr[term_id], self._indptr[term_id + 1]
                docs, tfs = self._doc[start:end], self._tf[start:end]
                if subset is not None and len(subset) * _SELECTIVE < len(docs):
                    docs, tfs = _intersect(docs, tfs, subset)
                # Otherwise every posting is scored: cheaper than filtering each list, and
                # scores() keeps only the subset's rows.
                acc[docs] += weight * tfs / (tfs + (norm_a + norm_b * length[docs]))
            if d_used:
                rows = np.flatnonzero(d_term == term_id)
                if len(rows):
                    docs, tfs = self._d_doc[rows], self._d_tf[rows]
                    acc[docs] += weight * tfs / (tfs + (norm_a + norm_b * length[docs]))


def top_k(positions: Positions, scores: Scores, k: int) -> tuple[Positions, Scores]:
    """The ``k`` highest ``scores`` with their positions, best first, ties to the lower position."""
    if k <= 0 or not len(scores):
        return positions[:0], scores[:0]
    if len(scores) > k:
        # The k-th best raw score, less the rounding margin: every score that can round to a
        # tie with it stays, and only those few are rounded and sorted.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth - 10.0**-TIE_DIGITS)
        positions, scores = positions[keep], scores[keep]
    rounded = np.round(scores.astype(np.float64), TIE_DIGITS)
    order = np.lexsort((positions, -rounded))[:k]
    return positions[order], scores[order]


def _sorted_unique(positions: npt.ArrayLike) -> Positions:
    out = np.asarray(positions, dtype=np.int64).ravel()
    if len(out) > 1 and not bool(np.all(out[1:] > out[:-1])):
        out = np.unique(out)  # a sort: skipped for the sorted positions callers usually have
    return out


def _intersect(
    docs: npt.NDArray[np.int32], tfs: Scores, subset: Positions
) -> tuple[npt.NDArray[np.int32], Scores]:
    """The postings of ``docs`` (sorted) at a position in ``subset`` (sorted, unique, short)."""
    at = np.searchsorted(docs, subset)
    found = at < len(docs)
    at, wanted = at[found], subset[found]
    hit = at[docs[at] == wanted]
    return docs[hit], tfs[hit]


_Array = TypeVar("_Array", bound=npt.NDArray[Any])


def _grown(array: _Array, size: int) -> _Array:
    out = np.zeros(size, dtype=array.dtype)
    out[: len(array)] = array
    return cast(_Array, out)

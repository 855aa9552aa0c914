"""A row's terms as a store keeps them: a bag of tokens with counts.

In the journal (and in messages to peers) a bag is one string, its distinct tokens
separated by spaces, each followed by ``:<count>`` when it occurs more
than once (``"handshake tls:2 timeout"``). Tokens never hold a space or a colon
(:mod:`.tokenize` keeps word characters, ``.`` and ``-``), so no escaping is needed.
A snapshot keeps the bags of its rows as :class:`Terms`: compressed sparse rows over
one vocabulary, which a keyword index loads with array operations only.

``None`` stands for "not known": a row stored before its field had a keyword index,
which ``embeddings_backfill`` gives terms without calling the provider. An empty
string is a text with no token at all.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from django_embeddings.keywords.tokenize import MAX_CHARS, Stemmer, english_stemmer, tokens


def analyze(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """The tokens of ``text`` as documents and queries are indexed: stemmed words."""
    return tokens(text, max_chars, stem=_stemmer())


def bag_of(text: str, max_chars: int = MAX_CHARS) -> str:
    """The encoded bag of ``text``'s tokens."""
    return encode(Counter(analyze(text, max_chars)))


def encode(counts: Counter[str] | dict[str, int]) -> str:
    """The bag of ``counts``, its tokens in the order given (a text's: first seen first)."""
    return " ".join(
        [token if count == 1 else f"{token}:{count}" for token, count in counts.items()]
    )


def decode(bag: str) -> dict[str, int]:
    """``{token: count}`` of an encoded bag; ``ValueError`` if it is not one."""
    out: dict[str, int] = {}
    if not bag:
        return out
    for item in bag.split(" "):
        token, colon, count = item.rpartition(":")
        if not colon:
            out[item] = 1
            continue
        number = int(count)
        if not token or number < 1:
            raise ValueError(f"not a bag of terms: {item!r}")
        out[token] = number
    return out


@functools.cache
def _stemmer() -> Stemmer:
    return english_stemmer()


@dataclass
class Terms:
    """The bags of a sequence of rows as compressed sparse rows.

    Row ``n``'s tokens are ``vocab[ids[ptr[n]:ptr[n + 1]]]`` with ``counts`` alongside;
    ``known[n]`` is ``False`` for a row whose bag is not known (it then has no tokens).
    """

    vocab: list[str] = field(default_factory=list)
    ptr: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    ids: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    counts: npt.NDArray[np.uint32] = field(default_factory=lambda: np.zeros(0, np.uint32))
    known: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    # The postings' stable sort by term, when known (a snapshot keeps it): a keyword
    # index loads without sorting. Not carried by take() nor concat().
    order: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.known)

    @classmethod
    def empty(cls, rows: int) -> Terms:
        """``rows`` rows whose bags are not known (a snapshot written before keywords)."""
        return cls(ptr=np.zeros(rows + 1, np.int64), known=np.zeros(rows, bool))

    @classmethod
    def from_bags(cls, bags: Sequence[str | None]) -> Terms:
        """The rows of encoded ``bags``; ``None`` or a damaged bag is not known."""
        numbers: dict[str, int] = {}
        ids: list[int] = []
        counts: list[int] = []
        ptr = np.zeros(len(bags) + 1, np.int64)
        known = np.zeros(len(bags), bool)
        for row, bag in enumerate(bags):
            try:
                pairs = decode(bag).items() if bag is not None else None
            except ValueError:
                pairs = None  # a damaged bag reads as not known, for a backfill to redo
            if pairs is not None:
                known[row] = True
                for token, count in pairs:
                    number = numbers.get(token)
                    if number is None:
                        number = numbers[token] = len(numbers)
                    ids.append(number)
                    counts.append(count)
            ptr[row + 1] = len(ids)
        return cls(
            list(numbers),
            ptr,
            np.array(ids, dtype=np.int32),
            np.array(counts, dtype=np.uint32),
            known,
        )

    def bag(self, row: int) -> str | None:
        """Row ``row``'s encoded bag (``None``: not known)."""
        if not self.known[row]:
            return None
        start, end = int(self.ptr[row]), int(self.ptr[row + 1])
        pairs = zip(self.ids[start:end].tolist(), self.counts[start:end].tolist(), strict=True)
        return encode({self.vocab[number]: count for number, count in pairs})

    def take(self, rows: npt.ArrayLike) -> Terms:
        """The rows at ``rows``, in that order (the vocabulary is shared, not pruned)."""
        rows = np.asarray(rows, dtype=np.intp)
        starts, ends = self.ptr[rows], self.ptr[rows + 1]
        lengths = ends - starts
        ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=ptr[1:])
        # The postings of each kept row, back to back: its start plus 0, 1, ... length-1.
        at = np.repeat(starts - ptr[:-1], lengths) + np.arange(ptr[-1], dtype=np.int64)
        return Terms(self.vocab, ptr, self.ids[at], self.counts[at], self.known[rows])

    def concat(self, other: Terms) -> Terms:
        """These rows, then ``other``'s, over the union of both vocabularies."""
        numbers = {token: n for n, token in enumerate(self.vocab)}
        vocab = list(self.vocab)
        remap = np.empty(len(other.vocab), dtype=np.int32)
        for n, token in enumerate(other.vocab):
            number = numbers.get(token)
            if number is None:
                number = numbers[token] = len(vocab)
                vocab.append(token)
            remap[n] = number
        return Terms(
            vocab,
            np.concatenate([self.ptr, self.ptr[-1] + other.ptr[1:]]),
            np.concatenate([self.ids, remap[other.ids]]).astype(np.int32),
            np.concatenate([self.counts, other.counts]).astype(np.uint32),
            np.concatenate([self.known, other.known]),
        )

    def check(self, rows: int) -> None:
        """``ValueError`` unless the arrays describe ``rows`` rows consistently."""
        fits = (
            len(self.known) == rows
            and self.ptr.shape == (rows + 1,)
            and int(self.ptr[0]) == 0
            and bool(np.all(np.diff(self.ptr) >= 0))
            and int(self.ptr[-1]) == len(self.ids) == len(self.counts)
            and (
                not len(self.ids)
                or 0 <= int(self.ids.min()) <= int(self.ids.max()) < len(self.vocab)
            )
        )
        if not fits:
            raise ValueError("the keyword arrays do not fit together")

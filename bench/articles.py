"""Article texts for the keyword and hybrid search benchmark: the same in every run.

Row ``i``'s text is ``"row i "`` followed by 100-200 words in sentences, drawn
from a Zipf-distributed vocabulary: the most common English words first, then
pseudo-words (``plaimind``, ``crifou``), a few of them identifiers
(``snake_case``, ``CamelCase``, ``SHOUT_CASE``, ``v1.2.3``). The prefix keeps the
``corpus`` provider embedding row ``i`` as corpus vector ``i``
(:func:`bench.corpus.row_of` reads the first two words), so a text and a vector
of the same row go together; a query is a few words of one row's text with a
vector near that row's.

Rows come in fixed chunks, each from its own seeded generator, so row ``i``'s
text does not depend on how many rows a corpus has.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bench import corpus

SEED = corpus.SEED + 3
CHUNK = 4_096  # rows per generator
VOCABULARY = 50_000  # distinct words, common ones included
ZIPF_EXPONENT = 1.05  # word frequency ~ 1 / rank ** exponent, as in English prose
WORDS = (100, 200)  # a text's words, inclusive
SENTENCE_WORDS = 12  # on average
IDENTIFIER_SHARE = 0.05  # of the pseudo-words

# The most frequent English words, in about their order: the head of the distribution,
# whose long posting lists a keyword search has to walk.
_COMMON_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more can who its about out them only than into some could other time these "
    "two may then first do any like now my over such our man me even most made after also "
    "did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three"
)
_COMMON = _COMMON_WORDS.split()
_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fl gr pl pr st tr sk sl sp ch sh th"
_VOWELS = "a e i o u ai ea io ou"
_CODAS = ["", "", "", "n", "r", "s", "l", "t", "m", "nd", "st", "x"]


@functools.cache
def vocabulary() -> npt.NDArray[np.object_]:
    """The words by rank (0 the most frequent)."""
    rng = np.random.default_rng([SEED, 0])
    onsets, vowels = _ONSETS.split(), _VOWELS.split()
    words: list[str] = []
    seen = set(_COMMON)
    while len(_COMMON) + len(words) < VOCABULARY:
        batch = 8_192
        syllables = rng.integers(1, 4, size=batch)
        onset = rng.integers(0, len(onsets), size=(batch, 3))
        vowel = rng.integers(0, len(vowels), size=(batch, 3))
        coda = rng.integers(0, len(_CODAS), size=batch)
        for i in range(batch):
            word = (
                "".join(onsets[onset[i, s]] + vowels[vowel[i, s]] for s in range(syllables[i]))
                + _CODAS[coda[i]]
            )
            if word not in seen:
                seen.add(word)
                words.append(word)
    words = words[: VOCABULARY - len(_COMMON)]
    # Some pseudo-words become identifiers, at ranks spread over the whole tail.
    kinds = rng.integers(0, 4, size=len(words))
    partners = rng.integers(0, len(words), size=len(words))
    versions = rng.integers(0, 20, size=(len(words), 3))
    for i in np.flatnonzero(rng.random(len(words)) < IDENTIFIER_SHARE).tolist():
        word, other = words[i], words[int(partners[i])]
        a, b, c = versions[i].tolist()
        candidate = (
            f"{word}_{other}",
            word.capitalize() + other.capitalize(),
            f"{word}_{other}".upper(),
            f"v{a}.{b}.{c}",
        )[int(kinds[i])]
        if candidate not in seen:
            seen.add(candidate)
            words[i] = candidate
    return np.array(_COMMON + words, dtype=object)


@functools.cache
def _cdf() -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, VOCABULARY + 1, dtype=np.float64) ** ZIPF_EXPONENT
    cdf: npt.NDArray[np.float64] = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


@functools.cache
def _forms() -> npt.NDArray[np.object_]:
    """Each word in its four forms (plain, capitalized, with a full stop, both), by form
    then rank: a row's words are one lookup in it."""
    plain = vocabulary().tolist()
    capital = [word[:1].upper() + word[1:] for word in plain]
    table = np.empty((4, len(plain)), dtype=object)
    table[_PLAIN], table[_CAPITAL] = plain, capital
    table[_STOP] = [word + "." for word in plain]
    table[_CAPITAL | _STOP] = [word + "." for word in capital]
    return table


_PLAIN, _CAPITAL, _STOP = 0, 1, 2  # bits of a word's form


@dataclass(frozen=True)
class Chunk:
    """Rows ``first ..`` of one generator: each row's words as vocabulary ranks."""

    first: int
    offsets: npt.NDArray[np.int64]  # row r's words are at offsets[r]:offsets[r + 1]
    ranks: npt.NDArray[np.int32]
    forms: npt.NDArray[np.int8]  # each word's: capitalized (starts a sentence), full stop

    def span(self, row: int) -> slice:
        at = row - self.first
        return slice(int(self.offsets[at]), int(self.offsets[at + 1]))


@functools.lru_cache(maxsize=4)
def chunk(index: int) -> Chunk:
    rng = np.random.default_rng([SEED, 1, index])
    lengths = rng.integers(WORDS[0], WORDS[1] + 1, size=CHUNK)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    ranks = np.minimum(np.searchsorted(_cdf(), rng.random(total)), VOCABULARY - 1)
    # Sentences of geometric length (SENTENCE_WORDS on average), none across rows.
    starts = rng.random(total) < 1 / SENTENCE_WORDS
    starts[offsets[:-1]] = True
    ends = np.append(starts[1:], True)
    forms = np.where(starts, _CAPITAL, _PLAIN) | np.where(ends, _STOP, _PLAIN)
    return Chunk(index * CHUNK, offsets, ranks.astype(np.int32), forms.astype(np.int8))


def body(row: int) -> str:
    """Row ``row``'s words, in sentences: capitalized, each ending with a full stop."""
    block = chunk(row // CHUNK)
    at = block.span(row)
    words: list[str] = _forms()[block.forms[at], block.ranks[at]].tolist()
    return " ".join(words)


def text(row: int) -> str:
    """The source text of row ``row``: the ``corpus`` provider embeds it as corpus row ``row``."""
    return f"{corpus.row_text(row)} {body(row)}"


@dataclass(frozen=True)
class Query:
    row: int  # the row its words come from
    text: str
    ranks: tuple[int, ...]  # its words' vocabulary ranks


def queries(
    count: int, n: int, *, words: int = 3, buckets: int = 100, seed: int = SEED + 1
) -> list[Query]:
    """``count`` queries of ``words`` distinct words of random rows among the first ``n``,
    rows whose ``row % 100`` (the bench models' ``bucket``) is below ``buckets``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        row = int(rng.integers(0, n))
        row += int(rng.integers(0, buckets)) - row % 100
        row = row if row < n else row - 100
        block = chunk(row // CHUNK)
        distinct = np.unique(block.ranks[block.span(row)])
        picked = rng.choice(distinct, size=words, replace=False).tolist()
        out.append(Query(row, " ".join(vocabulary()[picked].tolist()), tuple(picked)))
    return out


def query_vector(query: Query, *, seed: int = SEED + 2) -> corpus.Matrix:
    """A unit vector near the query's row (its corpus vector plus noise, as
    :func:`bench.corpus.queries`)."""
    base = corpus.row_vector(query.row)
    noise = np.random.default_rng([seed, query.row]).standard_normal(
        corpus.DIMENSIONS, dtype=np.float32
    )
    vector = base / np.linalg.norm(base) + noise / 20
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def rows_holding(queries: list[Query], n: int) -> list[int]:
    """For each query, the rows among the first ``n`` whose text holds one of its words
    (as drawn: before the tokenizer splits identifiers or stems words)."""
    totals = [0] * len(queries)
    masks = []
    for query in queries:
        mask = np.zeros(VOCABULARY, dtype=bool)
        mask[list(query.ranks)] = True
        masks.append(mask)
    for index in range((n + CHUNK - 1) // CHUNK):
        block = chunk(index)
        rows = min(CHUNK, n - block.first)
        ranks = block.ranks[: block.offsets[rows]]
        for position, mask in enumerate(masks):
            hit = mask[ranks]
            held = np.logical_or.reduceat(hit, block.offsets[:rows])
            totals[position] += int(np.count_nonzero(held))
    return totals

"""Tokens of real text for keyword ranking: Unicode words, case folded, compounds whole and split.

``tokens("Fix ERR_CONN_RESET in HTTPServer v1.2.3")`` gives ``fix``,
``err_conn_reset``, ``in``, ``httpserver``, ``v1.2.3``, then the parts ``err``,
``conn``, ``reset``, ``http``, ``server``, ``1.2.3``, ``v1``, ``2``, ``3``: an exact
identifier or version in a query matches the same whole token in a document
(rare, so a high idf), and its parts match prose that spells them apart. No
stop words are dropped: BM25's idf already gives "the" almost no weight, and a
stop list would make "to be or not to be" or the C library "libc" unfindable.
Documents and queries go through the same function, so they always agree.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator

# The default cut, as DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH's default cuts texts before embedding.
MAX_CHARS = 20_000
# A longer run of word characters is no word anyone types (a hash, base64): only its start is kept.
MAX_TOKEN_CHARS = 64

# A compound: word runs joined by "." or "-" (os.path, real-time, v1.2.3, utf-8); "_" is a
# word character, so snake_case and ERR_CONN_RESET are one run. A trailing "." ends a sentence.
_COMPOUND = re.compile(r"\w++(?:[.\-]\w++)*+")  # possessive: no backtracking
_SEPARATORS = re.compile(r"[._\-]+")
# Inside one part: ASCII camel humps (HTTPServer -> HTTP, Server), letter and digit runs (utf8).
_HUMPS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d_A-Za-z]+")
_VERSION = re.compile(r"[vV]\d+(?:\.\d+)+")
# Of the words found, one a line: those that have parts (separators, "_", camel humps, digits).
# The lookahead turns plain ASCII words (most of a text) away before the scan for a part.
_SPLITTABLE = re.compile(
    r"(?m)^(?![a-z]+$|[A-Z][a-z]*$|[A-Z]+$).*?(?:[_.\-\d]|[a-z][A-Z]|[A-Z][A-Z][a-z]).*"
)

Stemmer = Callable[[list[str]], list[str]]


def tokens(text: str, max_chars: int = MAX_CHARS, stem: Stemmer | None = None) -> list[str]:
    """The tokens of ``text`` (cut to ``max_chars``): a bag, repeats kept for term frequencies.

    Every word and compound whole, case folded, then the parts of those that have any.
    """
    text = text[:max_chars]
    if not text.isascii():
        # Full-width letters, ligatures and composed accents become the forms people type.
        text = unicodedata.normalize("NFKC", text)
    # Regular expressions and C string methods do the work, on the words joined one a line:
    # a Python loop per word would be several times slower, and every save pays for this.
    lines = "\n".join(_COMPOUND.findall(text))
    if not lines:
        return []
    out = lines.casefold().split("\n")
    if len(lines) > MAX_TOKEN_CHARS and max(map(len, out)) > MAX_TOKEN_CHARS:
        out = [word[:MAX_TOKEN_CHARS] for word in out]
    for word in _SPLITTABLE.findall(lines):
        out.extend(_parts(word[:MAX_TOKEN_CHARS]))
    return stem(out) if stem is not None else out


def _parts(word: str) -> Iterator[str]:
    """The distinct parts of a compound (its whole is already counted), case folded."""
    whole = word.casefold()
    seen = {whole}
    if _VERSION.fullmatch(word):
        bare = whole[1:]  # v1.2.3 is also found by 1.2.3
        seen.add(bare)
        yield bare
    parts: list[str] = []
    for segment in _SEPARATORS.split(word):
        if not segment:
            continue
        parts.append(segment)
        humps = _HUMPS.findall(segment)
        if len(humps) > 1:
            parts.extend(humps)
    for part in parts:
        folded = part.casefold()
        # One letter alone ("v" of v1, "e" of e.g.) matches too much to help.
        if folded in seen or (len(folded) < 2 and not folded.isdigit()):
            continue
        seen.add(folded)
        yield folded


class _StemCache(dict[str, str]):
    """Stems by word, computed once: a dict lookup in C is several times cheaper than a stem."""

    def __init__(self, stem: Callable[[str], str]) -> None:
        super().__init__()
        self._stem = stem

    def __missing__(self, word: str) -> str:
        if len(self) >= _STEM_CACHE_WORDS:
            self.clear()  # a bound on memory; the common words come back at once
        stemmed = self[word] = self._stem(word)
        return stemmed


_STEM_CACHE_WORDS = 500_000


def english_stemmer() -> Stemmer:
    """PyStemmer's English (Porter 2) stemmer over a token list, with a cache of its own."""
    import Stemmer as pystemmer  # noqa: N813  (the module's own name)

    cache = _StemCache(pystemmer.Stemmer("english").stemWord)
    lookup = cache.__getitem__
    return lambda words: list(map(lookup, words))

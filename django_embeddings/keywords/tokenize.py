"""Tokens of real text for keyword ranking: Unicode words, case folded, compounds whole and split.

``tokens("Fix ERR_CONN_RESET in HTTPServer v1.2.3")`` gives ``fix``,
``err_conn_reset``, ``err``, ``conn``, ``reset``, ``in``, ``httpserver``,
``http``, ``server``, ``v1.2.3``, ``1.2.3``, ``v1``, ``2``, ``3``: an exact
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
_COMPOUND = re.compile(r"\w+(?:[.\-]\w+)*")
_SEPARATORS = re.compile(r"[._\-]+")
# Inside one part: ASCII camel humps (HTTPServer -> HTTP, Server), letter and digit runs (utf8).
_HUMPS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d_A-Za-z]+")
_VERSION = re.compile(r"[vV]\d+(?:\.\d+)+")

Stemmer = Callable[[str], str]


def tokens(text: str, max_chars: int = MAX_CHARS, stem: Stemmer | None = None) -> list[str]:
    """The tokens of ``text`` (cut to ``max_chars``) in order, repeats kept (term frequencies)."""
    text = text[:max_chars]
    if not text.isascii():
        # Full-width letters, ligatures and composed accents become the forms people type.
        text = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    append = out.append
    for word in _COMPOUND.findall(text):
        if len(word) > MAX_TOKEN_CHARS:
            word = word[:MAX_TOKEN_CHARS]
        if word.isdigit():
            append(word)
        elif word.isalpha() and (word.islower() or word.isupper() or word.istitle()):
            # The common case: one plain word.
            folded = word.casefold()
            append(stem(folded) if stem is not None else folded)
        else:
            out.extend(_compound(word, stem))
    return out


def _compound(word: str, stem: Stemmer | None) -> Iterator[str]:
    """A compound whole (never stemmed: identifiers stay exact), then its distinct parts."""
    whole = word.casefold()
    yield whole
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
        if stem is not None and folded.isalpha():
            folded = stem(folded)
        yield folded


def english_stemmer() -> Stemmer:
    """PyStemmer's English (Porter 2) stemmer with its cache, if installed."""
    import Stemmer as pystemmer  # noqa: N813  (the module's own name)

    return pystemmer.Stemmer("english").stemWord  # type: ignore[no-any-return]

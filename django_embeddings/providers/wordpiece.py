"""WordPiece tokenization over a vocabulary kept as plain text next to ``tokenizer.json``.

Building tokenizers' WordPiece model from ``tokenizer.json``, or asking it for its
vocabulary, is one call into Rust that holds the GIL for 50 to 100 ms with a
30,000-token vocabulary; in a worker thread of an ASGI server that stalls the
event loop for as long. This module loads the same vocabulary from ``vocab.txt``
(one token a line, line n is token id n) and ``wordpiece.json`` (the rest of
``tokenizer.json``, and what the provider derives from the vocabulary), each
step a short call, and tokenizes as tokenizers does: the tokenizer's own
normalizer and pre-tokenizer (built without the vocabulary, so in microseconds)
split a text into words, and the greedy longest-match-first WordPiece step runs
here, with a cache of the words seen.

``write(directory)`` makes the two files from a model directory's
``tokenizer.json`` (``scripts/distill_static_model.py`` calls it); ``load()``
returns ``None`` when a directory has no such files, or files made from another
``tokenizer.json``, and the provider then uses tokenizers' own model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

VOCAB_FILE = "vocab.txt"
INDEX_FILE = "wordpiece.json"
TOKENIZER_FILE = "tokenizer.json"
_CHUNK = 4096  # vocabulary lines split, or entries added to the dict, per call: well under 1 ms
_CACHE_WORDS = 200_000  # distinct words whose pieces are kept; the cache starts over past this
_ASCII_WORD = re.compile(r"[a-z]+")


def letter_triples(word: str) -> list[str]:
    """The letter triples of ``word``, with ``^`` and ``$`` marking its ends."""
    marked = f"^{word}$"
    return [marked[i : i + 3] for i in range(len(marked) - 2)]


def vocabulary_trigrams(tokens: Iterable[str]) -> frozenset[str]:
    """The letter triples of the vocabulary's whole words of two or more a-z letters."""
    trigrams: set[str] = set()
    for token in tokens:
        word = token.lower()
        if len(word) >= 2 and _ASCII_WORD.fullmatch(word):
            trigrams.update(letter_triples(word))
    return frozenset(trigrams)


def median_token_length(tokens: Iterable[str]) -> int:
    return int(np.median([len(token) for token in tokens]))


class WordPiece:
    """Encodes texts as tokenizers' WordPiece tokenizer does, without special tokens."""

    def __init__(
        self,
        tokens: list[str],
        vocab: dict[str, int],
        shell: Any,  # tokenizers.Tokenizer: the normalizer and pre-tokenizer, no vocabulary
        added: dict[str, int],
        max_tokens: int,
    ) -> None:
        model = shell.model
        self.tokens = tokens
        self.unk_id = vocab[model.unk_token]
        self.continuation = str(model.continuing_subword_prefix)
        self._vocab = vocab
        self._max_chars = int(model.max_input_chars_per_word)
        self._normalizer = shell.normalizer
        self._pre_tokenizer = shell.pre_tokenizer
        self._added = added
        # Added tokens are matched in the raw text first, longest first (tokenizers
        # uses leftmost-longest matching too).
        self._added_pattern = (
            re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
            if added
            else None
        )
        self._max_tokens = max_tokens
        self._cache: dict[str, tuple[int, ...]] = {}

    def token(self, token_id: int) -> str:
        return self.tokens[token_id]

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for text in texts:
            ids: list[int] = []
            for word in self._words(text):
                ids.extend(word)
            out.append(ids[: self._max_tokens])
        return out

    def words(self, texts: Sequence[str]) -> list[list[tuple[int, ...]]]:
        """Each text's token ids grouped by word, cut to ``max_tokens`` ids."""
        out = []
        for text in texts:
            kept: list[tuple[int, ...]] = []
            room = self._max_tokens
            for word in self._words(text):
                if room <= 0:
                    break
                kept.append(word[:room])
                room -= len(word)
            out.append(kept)
        return out

    def _words(self, text: str) -> list[tuple[int, ...]]:
        words: list[tuple[int, ...]] = []
        start = 0
        if self._added_pattern is not None:
            for match in self._added_pattern.finditer(text):
                self._split_words(text[start : match.start()], words)
                words.append((self._added[match.group()],))
                start = match.end()
        self._split_words(text[start:], words)
        return words

    def _split_words(self, segment: str, words: list[tuple[int, ...]]) -> None:
        if not segment:
            return
        if self._normalizer is not None:
            segment = self._normalizer.normalize_str(segment)
        if self._pre_tokenizer is None:
            pieces = [segment]
        else:
            pieces = [piece for piece, _ in self._pre_tokenizer.pre_tokenize_str(segment)]
        cache = self._cache
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= _CACHE_WORDS:
                    cache.clear()
                ids = cache[piece] = self._word_piece(piece)
            if ids:
                words.append(ids)

    def _word_piece(self, word: str) -> tuple[int, ...]:
        # tokenizers' WordPiece.tokenize: the longest vocabulary entry at each
        # position, "##"-prefixed after the first; a word with no split is unknown.
        if len(word) > self._max_chars:
            return (self.unk_id,)
        vocab, ids, start = self._vocab, [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.continuation + word[start:end]
                token_id = vocab.get(piece)
                if token_id is not None:
                    break
                end -= 1
            else:
                return (self.unk_id,)
            ids.append(token_id)
            start = end
        return tuple(ids)


@dataclass(frozen=True)
class Vocabulary:
    """What ``load()`` returns: the tokenizer and what the provider derives from its vocabulary."""

    wordpiece: WordPiece
    size: int
    median_token_length: int
    trigrams: frozenset[str]


def load(directory: Path, max_tokens: int) -> Vocabulary | None:
    """The vocabulary files of ``directory``, or ``None`` if it has none that fit."""
    vocab_path, index_path = directory / VOCAB_FILE, directory / INDEX_FILE
    if not (vocab_path.is_file() and index_path.is_file()):
        return None
    from tokenizers import Tokenizer

    # File reads and hashing release the GIL; json.loads of a few kilobytes and
    # each chunk below are short calls.
    index = json.loads(index_path.read_bytes())
    vocab_bytes = vocab_path.read_bytes()
    digests = {
        "tokenizer_sha256": hashlib.sha256((directory / TOKENIZER_FILE).read_bytes()).hexdigest(),
        "vocab_sha256": hashlib.sha256(vocab_bytes).hexdigest(),
    }
    if any(index.get(key) != digest for key, digest in digests.items()):
        logger.warning(
            "%s does not match the %s and %s beside it; ignoring both. Re-run "
            "`python -m django_embeddings.providers.wordpiece %s`.",
            index_path,
            TOKENIZER_FILE,
            VOCAB_FILE,
            directory,
        )
        return None
    tokens = _split_lines(vocab_bytes.decode("utf-8"))
    vocab: dict[str, int] = {}
    for first in range(0, len(tokens), _CHUNK):
        chunk = tokens[first : first + _CHUNK]
        vocab.update(zip(chunk, range(first, first + len(chunk)), strict=True))
    shell = Tokenizer.from_str(json.dumps(index["tokenizer"]))
    added = {token["content"]: int(token["id"]) for token in index["tokenizer"]["added_tokens"]}
    return Vocabulary(
        wordpiece=WordPiece(tokens, vocab, shell, added, max_tokens),
        size=len(tokens),
        median_token_length=int(index["median_token_length"]),
        trigrams=frozenset(index["trigrams"]),
    )


def _split_lines(text: str) -> list[str]:
    lines: list[str] = []
    while True:
        part = text.split("\n", _CHUNK)
        if len(part) <= _CHUNK:
            lines.extend(part)
            break
        text = part.pop()
        lines.extend(part)
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    return lines


def write(directory: Path) -> bool:
    """Write ``vocab.txt`` and ``wordpiece.json`` for ``directory/tokenizer.json``.

    Returns ``False`` (and writes nothing) for a tokenizer this module cannot run:
    not WordPiece, a vocabulary whose ids have gaps or whose tokens hold a line
    break, or added tokens that are normalized, stripped or single-word.
    """
    from tokenizers import Tokenizer

    raw = (directory / TOKENIZER_FILE).read_bytes()
    tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    config = json.loads(raw)
    model = config["model"]
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    supported = (
        model.get("type") == "WordPiece"
        and model.get("unk_token") in vocab
        and vocab == tokenizer.get_vocab(with_added_tokens=False)
        and [vocab[token] for token in tokens] == list(range(len(tokens)))
        and all(token and "\n" not in token for token in tokens)
        and all(
            not (added["normalized"] or added["lstrip"] or added["rstrip"] or added["single_word"])
            for added in config["added_tokens"]
        )
    )
    if not supported:
        return False
    unk = model["unk_token"]
    shell = dict(config, model=dict(model, vocab={unk: vocab[unk]}))
    text = "".join(f"{token}\n" for token in tokens)
    index = {
        "tokenizer_sha256": hashlib.sha256(raw).hexdigest(),
        "vocab_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "median_token_length": median_token_length(tokens),
        "trigrams": sorted(vocabulary_trigrams(tokens)),
        "tokenizer": shell,
    }
    (directory / VOCAB_FILE).write_text(text, encoding="utf-8", newline="\n")
    index_text = json.dumps(index, ensure_ascii=False, separators=(",", ":")) + "\n"
    (directory / INDEX_FILE).write_text(index_text, encoding="utf-8", newline="\n")
    return True


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    for name in sys.argv[1:]:
        done = write(Path(name))
        print(f"{name}: {f'wrote {VOCAB_FILE} and {INDEX_FILE}' if done else 'not supported'}")

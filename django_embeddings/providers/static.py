"""The default provider: a static embedding table shipped inside the package.

A static model keeps one vector per token. Embedding a text is a tokenizer
call and the mean of the text's token vectors, so it needs only ``tokenizers``
and numpy, runs offline and embeds thousands of short texts per second on one
core. The shipped model is distilled from all-MiniLM-L6-v2 (see
``static_model/NOTICE`` and ``scripts/distill_static_model.py``); any model in
model2vec's folder format (``model.safetensors``, ``tokenizer.json``,
``config.json``) can be loaded with the ``path`` option.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from django.core.exceptions import ImproperlyConfigured

from django_embeddings.exceptions import ProviderError
from django_embeddings.providers import wordpiece
from django_embeddings.providers.base import BaseProvider
from django_embeddings.typing import InputType, Matrix

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parent / "static_model"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
_CHUNK_TOKENS = 32_768  # token vectors gathered at once: 32 MB at 256 float32 dimensions

# A query word that is not one vocabulary token counts as known when it is spelled
# like the vocabulary's words. Measured on hand-written query lists (English and
# technical queries, library and module names, typos; keyboard mash) and on the
# 3,300 identifiers of Python's standard library: no real query lost, most keyboard
# mash caught. See the README's StaticModelProvider section.
_SHORT_WORD = 4  # letters; too few letter triples to judge, so always known
_PLAUSIBLE = (2, 5)  # at least 2/5 of a word's letter triples occur in vocabulary words
_LETTERS = re.compile(r"[^\W\d_]+")  # letter runs; digits and "_" split them
_ASCII_WORD = re.compile(r"[a-z]+")
# safetensors dtypes numpy reads as they are stored (little-endian).
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}  # fmt: skip


@dataclass(frozen=True)
class _Metadata:
    """What ``dimensions`` and ``identity`` need, read from ``config.json`` alone."""

    name: str
    dimensions: int
    weights_sha256: str
    recorded: bool  # the hash comes from config.json, so the weights can be checked


class _Tokenizer(Protocol):
    """Token ids of texts, cut to ``max_tokens``, without special tokens."""

    def ids(self, texts: Sequence[str]) -> list[list[int]]: ...

    def words(self, texts: Sequence[str]) -> list[list[tuple[int, ...]]]:
        """Each text's ids grouped by the word they come from."""

    def token(self, token_id: int) -> str: ...


class _RustTokenizer:
    """tokenizers' own model, for models shipped without ``vocab.txt`` (see ``wordpiece``)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking (tokenizers >= 0.21).
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [encoding.ids for encoding in encode(list(texts), add_special_tokens=False)]

    def words(self, texts: Sequence[str]) -> list[list[tuple[int, ...]]]:
        out = []
        for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            words: dict[int, list[int]] = {}
            for token_id, word in zip(encoding.ids, encoding.word_ids, strict=True):
                if word is not None:
                    words.setdefault(word, []).append(token_id)
            out.append([tuple(ids) for ids in words.values()])
        return out

    def token(self, token_id: int) -> str:
        return str(self.tokenizer.id_to_token(token_id))


@dataclass(frozen=True)
class _Model:
    tokenizer: _Tokenizer
    embeddings: npt.NDArray[Any]  # (rows, dims); float16/32 or int8
    weights: npt.NDArray[np.float32] | None  # per-token scale, model2vec's "weights"
    mapping: npt.NDArray[np.int64] | None  # token id -> row, model2vec's "mapping"
    unk_id: int | None
    char_limit: int
    # Letter triples (with ^ and $ at the ends) of the vocabulary's whole words, and
    # the continuation prefix ("##"), for a WordPiece tokenizer; None otherwise.
    trigrams: frozenset[str] | None
    continuation: str


class StaticModelProvider(BaseProvider):
    """Embeds with a static (model2vec-format) token table; the default provider.

    Options:

    ``path``
        A directory holding ``model.safetensors``, ``tokenizer.json`` and
        ``config.json``. Defaults to the model shipped in the package.
    ``max_tokens``
        Tokens after this many are ignored (512, like model2vec).

    Constructing the provider reads nothing. ``dimensions`` and ``identity``
    read ``config.json`` on first access; the first :meth:`embed` loads the
    tokenizer and weights, once per provider, under a lock.

    A text is tokenized without special tokens and cut to ``max_tokens``; its
    vector is the mean of its token vectors, L2-normalised, as model2vec's
    ``StaticModel.encode`` computes it. Unknown tokens are left out of the mean.
    A document with no known token (empty, only whitespace or only characters
    the vocabulary lacks, such as emoji) gets the unknown token's own vector:
    the same non-zero vector for every such text, so it can still be stored. A
    model without an unknown token raises :class:`ProviderError` instead.

    A query with no known word gets an all-zero vector instead, which the search
    turns into no results: WordPiece would otherwise split keyboard mash such as
    ``"zzzqqqxxyy"`` into known sub-word pieces whose mean matches documents as
    confidently as a real query. A word is known when it is one vocabulary
    token, has at most four letters, or, with a WordPiece vocabulary, is spelled
    like the vocabulary's words (at least 2 of 5 of its letter triples occur in
    them) and is not one letter repeated four times or more. Words of other scripts than a-z, and
    numbers, are not judged: they count as known. Punctuation is no word.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        max_tokens: int = 512,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ImproperlyConfigured(
                f"StaticModelProvider max_tokens should be a positive int, not {max_tokens!r}."
            )
        self.path = DEFAULT_PATH if path is None else Path(path)
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        self._metadata: _Metadata | None = None
        self._model: _Model | None = None

    @property
    def dimensions(self) -> int:  # type: ignore[override]
        return self._read_metadata().dimensions

    @property
    def identity(self) -> str:  # type: ignore[override]
        meta = self._read_metadata()
        identity = f"static:{meta.name}-{meta.dimensions}d@{meta.weights_sha256[:12]}"
        if self.max_tokens != 512:
            # Truncation changes the vectors of long texts, so it is part of the identity.
            identity += f";max_tokens={self.max_tokens}"
        return identity

    def __repr__(self) -> str:
        # Without reading any file, so a repr never fails or does I/O.
        return f"<StaticModelProvider path={str(self.path)!r} max_tokens={self.max_tokens}>"

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        # Symmetric model: a query is embedded as a document is, unless it has no
        # known word (see the class docstring).
        model = self._load()
        dims = model.embeddings.shape[1]
        if not texts:
            return np.zeros((0, dims), dtype=np.float32)
        clipped = [text[: model.char_limit] for text in texts]
        if input_type == "query":
            # Queries are few and short: group their tokens by word to judge them.
            words = model.tokenizer.words(clipped)
            id_lists = [[i for word in text for i in word] for text in words]
            blank = np.array([not _has_known_word(model, text) for text in words], dtype=bool)
        else:
            id_lists = model.tokenizer.ids(clipped)
            blank = np.zeros(len(clipped), dtype=bool)
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        flat = np.fromiter(
            (i for ids in id_lists for i in ids), dtype=np.int64, count=int(lengths.sum())
        )
        rows = np.repeat(np.arange(len(id_lists)), lengths)
        if model.unk_id is not None:
            known = flat != model.unk_id
            flat, rows = flat[known], rows[known]
        counts = np.bincount(rows, minlength=len(id_lists))

        out = np.zeros((len(id_lists), dims), dtype=np.float32)
        # Each text's tokens are one contiguous run of ``flat``. Texts are summed in
        # chunks of about _CHUNK_TOKENS tokens, so a large batch of long texts
        # never gathers more than that many token vectors at once.
        bounds = np.concatenate(([0], np.cumsum(counts)))
        first = 0
        while first < len(id_lists):
            limit = bounds[first] + _CHUNK_TOKENS
            last = max(first + 1, int(np.searchsorted(bounds, limit, side="right")) - 1)
            chunk_counts = counts[first:last]
            filled = np.flatnonzero(chunk_counts)
            if filled.size:
                vectors = self._lookup(model, flat[bounds[first] : bounds[last]])
                starts = np.concatenate(([0], np.cumsum(chunk_counts[filled])[:-1]))
                sums = np.add.reduceat(vectors, starts, axis=0)
                out[first + filled] = sums / chunk_counts[filled, None]
            first = last

        out[blank] = 0.0
        empty = np.flatnonzero((counts == 0) & ~blank)
        if empty.size:
            if model.unk_id is None:
                raise ProviderError(
                    f"StaticModelProvider {self.identity!r} found no known token in a text of "
                    f"{len(texts[int(empty[0])])} characters, and its model has no unknown "
                    "token to fall back on."
                )
            out[empty] = self._lookup(model, np.array([model.unk_id], dtype=np.int64))

        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not norms[~blank].all():
            raise ProviderError(
                f"StaticModelProvider {self.identity!r} produced an all-zero vector; "
                f"the weights in {str(self.path)!r} look damaged."
            )
        norms[blank] = 1.0
        out /= norms
        return out

    @staticmethod
    def _lookup(model: _Model, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        rows = ids if model.mapping is None else model.mapping[ids]
        vectors = model.embeddings[rows].astype(np.float32)
        if model.weights is not None:
            vectors *= model.weights[ids, None]
        return vectors

    def _read_metadata(self) -> _Metadata:
        if self._metadata is None:
            with self._lock:
                if self._metadata is None:
                    self._metadata = self._metadata_from_config()
        return self._metadata

    def _metadata_from_config(self) -> _Metadata:
        config = self._config()
        dimensions = config.get("hidden_dim")
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise ImproperlyConfigured(
                f"StaticModelProvider config {str(self.path / CONFIG_FILE)!r} should have a "
                f"positive int 'hidden_dim', not {dimensions!r}."
            )
        name = config.get("model_name") or self.path.name
        digest = config.get("weights_sha256")
        recorded = isinstance(digest, str)
        if not isinstance(digest, str):
            # Not one of our models: hash the weights file (no parsing), once.
            digest = _sha256(self.path / WEIGHTS_FILE)
        return _Metadata(
            name=str(name), dimensions=dimensions, weights_sha256=digest, recorded=recorded
        )

    def _config(self) -> dict[str, Any]:
        config_path = self.path / CONFIG_FILE
        missing = [
            name
            for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
            if not (self.path / name).is_file()
        ]
        if missing:
            raise ImproperlyConfigured(
                f"StaticModelProvider path {str(self.path)!r} should be a directory with "
                f"{CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE}; missing {missing!r}."
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProviderError(
                f"StaticModelProvider could not read {str(config_path)!r}: {exc}"
            ) from exc
        if not isinstance(config, dict):
            raise ProviderError(
                f"StaticModelProvider config {str(config_path)!r} should hold a JSON object."
            )
        return config

    def _load(self) -> _Model:
        if self._model is None:
            meta = self._read_metadata()
            with self._lock:
                if self._model is None:
                    self._model = self._load_model(meta)
        return self._model

    def _load_model(self, meta: _Metadata) -> _Model:
        # Every step is a file read or hash (these release the GIL) or a short call:
        # in an async server's worker thread, one long call holding the GIL stalls
        # the event loop. Only a model without vocab.txt needs tokenizers' own
        # model, whose construction is such a call (see the wordpiece module).
        weights_path = self.path / WEIGHTS_FILE
        try:
            raw = weights_path.read_bytes()
            tensors = _read_tensors(raw)
            vocabulary = wordpiece.load(self.path, self.max_tokens)
            tokenizer: Any = None if vocabulary is not None else self._rust_tokenizer()
        except Exception as exc:  # safetensors, tokenizers and json raise their own types
            raise ProviderError(
                f"StaticModelProvider could not load the model in {str(self.path)!r}: {exc}"
            ) from exc
        if meta.recorded and hashlib.sha256(raw).hexdigest() != meta.weights_sha256:
            raise ProviderError(
                f"StaticModelProvider weights {str(weights_path)!r} do not match the "
                f"weights_sha256 {meta.weights_sha256!r} in {CONFIG_FILE}; reinstall the "
                "package or re-run the distillation."
            )

        embeddings = tensors.get("embeddings")
        if embeddings is None or embeddings.ndim != 2 or embeddings.shape[1] != meta.dimensions:
            raise ProviderError(
                f"StaticModelProvider weights {str(weights_path)!r} should hold an "
                f"'embeddings' matrix of {meta.dimensions} columns, not "
                f"{None if embeddings is None else embeddings.shape!r}."
            )
        mapping = tensors.get("mapping")
        weights = tensors.get("weights")
        tokens: _Tokenizer
        if vocabulary is not None:
            tokens = vocabulary.wordpiece
            vocab_size = vocabulary.size
            median = vocabulary.median_token_length
            trigrams: frozenset[str] | None = vocabulary.trigrams
            continuation = vocabulary.wordpiece.continuation
            unk_id: int | None = vocabulary.wordpiece.unk_id
        else:
            tokens = _RustTokenizer(tokenizer)
            vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
            vocab = tokenizer.get_vocab(with_added_tokens=True)
            median = wordpiece.median_token_length(vocab)
            trigrams, continuation = _spelling(tokenizer, vocab)
            unk_id = _unk_id(tokenizer)
        rows_needed = vocab_size if mapping is None else len(mapping)
        if (mapping is None and len(embeddings) != vocab_size) or (
            weights is not None and len(weights) != rows_needed
        ):
            raise ProviderError(
                f"StaticModelProvider model {str(self.path)!r} has {len(embeddings)} rows "
                f"for a vocabulary of {vocab_size} tokens."
            )

        model = _Model(
            tokenizer=tokens,
            embeddings=embeddings,
            weights=None if weights is None else weights.astype(np.float32),
            mapping=None if mapping is None else mapping.astype(np.int64),
            unk_id=unk_id,
            # model2vec cuts texts to max_tokens * the median token length before
            # tokenizing: the result is the same, and a huge text is not tokenized whole.
            char_limit=self.max_tokens * max(median, 1),
            trigrams=trigrams,
            continuation=continuation,
        )
        logger.debug(
            "Loaded static model %s (%d tokens, %d dimensions, %s) from %s",
            meta.name,
            vocab_size,
            meta.dimensions,
            embeddings.dtype,
            self.path,
        )
        return model

    def _rust_tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_tokens)
        return tokenizer


def _read_tensors(raw: bytes) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a safetensors file, as read-only views of ``raw``.

    The format is an 8-byte little-endian header length, a JSON header, then the
    data: numpy views each tensor without a copy, where safetensors' own loader
    copies them all in one call that holds the GIL. Other dtypes (bfloat16...)
    go to that loader.
    """
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    if any(entry.get("dtype") not in _DTYPES for entry in header.values()):
        from safetensors.numpy import load as load_tensors

        return dict(load_tensors(raw))
    tensors = {}
    for name, entry in header.items():
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or 8 + size + end > len(raw):
            raise ValueError(f"tensor {name!r} does not fit its data offsets")
        tensors[name] = np.frombuffer(raw, dtype, count, 8 + size + begin).reshape(shape)
    return tensors


def _spelling(tokenizer: Any, vocab: dict[str, int]) -> tuple[frozenset[str] | None, str]:
    """The letter triples of a WordPiece vocabulary's whole words, and its "##" prefix."""
    from tokenizers.models import WordPiece

    if not isinstance(tokenizer.model, WordPiece):
        return None, ""
    return wordpiece.vocabulary_trigrams(vocab), str(tokenizer.model.continuing_subword_prefix)


def _has_known_word(model: _Model, words: list[tuple[int, ...]]) -> bool:
    """Does a query (its token ids by word) hold a word the model knows? See the class docstring."""
    for ids in words:
        pieces = [model.tokenizer.token(token_id) for token_id in ids]
        text = "".join(piece.removeprefix(model.continuation) for piece in pieces)
        if not any(char.isalnum() for char in text):
            continue  # punctuation
        if len(ids) == 1:
            if ids[0] != model.unk_id:
                return True
            continue
        if model.trigrams is None:
            return True  # not WordPiece: only unknown tokens count as unknown
        runs = _LETTERS.findall(text.lower())
        if not runs or any(_spelled_like_a_word(run, model.trigrams) for run in runs):
            return True
    return False


def _spelled_like_a_word(run: str, trigrams: frozenset[str]) -> bool:
    if not _ASCII_WORD.fullmatch(run):
        return True  # another script: the vocabulary says too little to judge
    if len(run) > 3 and len(set(run)) == 1:
        return False  # one key held down: "aaaaaaa" (but "uu" and "www" are names)
    if len(run) <= _SHORT_WORD:
        return True
    triples = wordpiece.letter_triples(run)
    seen = sum(triple in trigrams for triple in triples)
    return seen * _PLAUSIBLE[1] >= len(triples) * _PLAUSIBLE[0]


def _unk_id(tokenizer: Any) -> int | None:
    """The unknown token's id, found as model2vec finds it."""
    unk_token = getattr(tokenizer.model, "unk_token", None)
    if unk_token is not None:
        token_id = tokenizer.token_to_id(unk_token)
        return None if token_id is None else int(token_id)
    unk_id = json.loads(tokenizer.to_str())["model"].get("unk_id")  # Unigram models
    return None if unk_id is None else int(unk_id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ProviderError(f"StaticModelProvider could not read {str(path)!r}: {exc}") from exc
    return digest.hexdigest()

"""The WordPiece tokenizer over vocab.txt: the same ids as tokenizers, and its files.

The shipped model loads through it, so these tests hold it to tokenizers' own
output on texts chosen to reach every rule: added tokens in the raw text, the
normalizer's cleaning, accents and Chinese characters, punctuation, words past
``max_input_chars_per_word``, words with no split, and truncation.
"""

from __future__ import annotations

import json
import logging
import pydoc
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from django_embeddings.providers import wordpiece
from django_embeddings.providers.static import (
    DEFAULT_PATH,
    StaticModelProvider,
    _RustTokenizer,
)
from tests.utils import copy_static_model

ALPHABET = (
    "abcdeéÉßﬁ中文字日本語한국어привет  \t\n\r\x00\x7f\u200b\u0301!?.,-_##[UNK][PAD]01239🙂Ωσς"
)


def _texts() -> list[str]:
    texts = pydoc.render_doc("json", renderer=pydoc.plaintext).split("\n\n")
    texts += (DEFAULT_PATH / wordpiece.VOCAB_FILE).read_text(encoding="utf-8").split("\n")
    rng = random.Random(0)
    texts += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    texts += [
        "x" * 100, "x" * 101, "[UNK]", "[unk]", "[PAD][UNK]x[PAD]", " [UNK] ", "##ing",
        "ﬁle naïve CAFÉ", "zzzqqqxxyy", "Straße", "word " * 600,
    ]  # fmt: skip
    return texts


@pytest.fixture(scope="module")
def tokenizers_model() -> _RustTokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(DEFAULT_PATH / wordpiece.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(512)
    return _RustTokenizer(tokenizer)


@pytest.fixture(scope="module")
def vocabulary() -> wordpiece.Vocabulary:
    loaded = wordpiece.load(DEFAULT_PATH, 512)
    assert loaded is not None
    return loaded


def test_ids_and_words_match_tokenizers(
    tokenizers_model: _RustTokenizer, vocabulary: wordpiece.Vocabulary
) -> None:
    texts = _texts()
    ours = vocabulary.wordpiece
    assert ours.ids(texts) == tokenizers_model.ids(texts)
    assert ours.words(texts) == tokenizers_model.words(texts)
    # Again from the cache of words seen, and past its size.
    assert ours.ids(texts[:50]) == tokenizers_model.ids(texts[:50])
    assert ours.token(1) == tokenizers_model.token(1) == "[UNK]"


def test_truncation_keeps_the_first_ids(tokenizers_model: _RustTokenizer) -> None:
    from tokenizers import Tokenizer

    loaded = wordpiece.load(DEFAULT_PATH, 5)
    assert loaded is not None
    tokenizer = Tokenizer.from_file(str(DEFAULT_PATH / wordpiece.TOKENIZER_FILE))
    tokenizer.enable_truncation(5)
    texts = ["unbelievably tokenized words here and more", "a b", "[PAD] " * 9]
    reference = _RustTokenizer(tokenizer)
    assert loaded.wordpiece.ids(texts) == reference.ids(texts)
    assert loaded.wordpiece.words(texts) == reference.words(texts)
    assert [len(ids) for ids in loaded.wordpiece.ids(texts)] == [5, 2, 5]


def test_cache_starts_over_when_full(
    vocabulary: wordpiece.Vocabulary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wordpiece, "_CACHE_WORDS", 3)
    ours = vocabulary.wordpiece
    text = "cacheone cachetwo cachethree cachefour cachefive"  # words no other test saw
    before = ours.ids([text])
    assert len(ours._cache) <= 3
    assert ours.ids([text]) == before


def test_shipped_files_are_what_write_makes(tmp_path: Path) -> None:
    """``scripts/distill_static_model.py`` calls ``write()``: the shipped files are its output."""
    shutil.copy(DEFAULT_PATH / wordpiece.TOKENIZER_FILE, tmp_path)
    assert wordpiece.write(tmp_path)
    for name in (wordpiece.VOCAB_FILE, wordpiece.INDEX_FILE):
        assert (tmp_path / name).read_bytes() == (DEFAULT_PATH / name).read_bytes()


def test_derived_values_match_the_vocabulary(vocabulary: wordpiece.Vocabulary) -> None:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(DEFAULT_PATH / wordpiece.TOKENIZER_FILE)).get_vocab(True)
    assert vocabulary.size == len(vocab)
    assert vocabulary.wordpiece.tokens == sorted(vocab, key=vocab.__getitem__)
    assert vocabulary.median_token_length == int(np.median([len(t) for t in vocab]))
    assert vocabulary.trigrams == wordpiece.vocabulary_trigrams(vocab)
    assert "^py" in vocabulary.trigrams and "zzq" not in vocabulary.trigrams


def _tokenizer_json(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        (DEFAULT_PATH / wordpiece.TOKENIZER_FILE).read_text(encoding="utf-8")
    )
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "change",
    [
        "normalized added token",
        "gap in the ids",
        "not WordPiece",
    ],
)
def test_write_refuses_tokenizers_it_cannot_run(tmp_path: Path, change: str) -> None:
    config = _tokenizer_json()
    if change == "normalized added token":
        config["added_tokens"][0]["normalized"] = True
    elif change == "gap in the ids":
        config["model"]["vocab"]["[PAD]"] = len(config["model"]["vocab"]) + 5
        config["added_tokens"] = config["added_tokens"][1:]
    else:
        config["model"] = {
            "type": "WordLevel", "vocab": {"[UNK]": 0, "[PAD]": 1, "a": 2}, "unk_token": "[UNK]"
        }  # fmt: skip
        config["added_tokens"] = []
    (tmp_path / wordpiece.TOKENIZER_FILE).write_text(json.dumps(config), encoding="utf-8")
    assert not wordpiece.write(tmp_path)
    assert not (tmp_path / wordpiece.VOCAB_FILE).exists()
    assert wordpiece.load(tmp_path, 512) is None


def test_a_tokenizer_without_normalizer_or_pre_tokenizer(tmp_path: Path) -> None:
    """Each is optional in tokenizer.json; without them a segment is one word as it is."""
    from tokenizers import Tokenizer

    config = _tokenizer_json(normalizer=None, pre_tokenizer=None)
    (tmp_path / wordpiece.TOKENIZER_FILE).write_text(json.dumps(config), encoding="utf-8")
    assert wordpiece.write(tmp_path)
    loaded = wordpiece.load(tmp_path, 512)
    assert loaded is not None
    tokenizer = Tokenizer.from_file(str(tmp_path / wordpiece.TOKENIZER_FILE))
    texts = ["hello", "Hello world", "unaffable[UNK]x", ""]
    assert loaded.wordpiece.ids(texts) == _RustTokenizer(tokenizer).ids(texts)


def test_provider_without_the_files_embeds_bit_identically(tmp_path: Path) -> None:
    """A model folder without vocab.txt loads tokenizers' own model: same vectors."""
    model = copy_static_model(tmp_path)
    (model / wordpiece.VOCAB_FILE).unlink()
    (model / wordpiece.INDEX_FILE).unlink()
    texts = _texts()[:400] + ["zzzqqqxxyy", "asdfghjkl json", "[PAD]", "?!", "🙂"]
    bare, shipped = StaticModelProvider(path=model), StaticModelProvider()
    for input_type in ("document", "query"):
        assert np.array_equal(bare.embed(texts, input_type), shipped.embed(texts, input_type))
    assert isinstance(bare._load().tokenizer, _RustTokenizer)
    assert isinstance(shipped._load().tokenizer, wordpiece.WordPiece)
    assert bare._load().char_limit == shipped._load().char_limit


def test_shipped_model_never_builds_tokenizers_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: StaticModelProvider) -> Any:
        raise AssertionError("tokenizers' WordPiece model was built")

    monkeypatch.setattr(StaticModelProvider, "_rust_tokenizer", refuse)
    assert StaticModelProvider().embed(["read a csv file"], "query").any()


def test_files_of_another_tokenizer_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = copy_static_model(tmp_path)
    config = _tokenizer_json()
    config["model"]["vocab"]["[UNK]"], config["model"]["vocab"]["the"] = (
        config["model"]["vocab"]["the"],
        config["model"]["vocab"]["[UNK]"],
    )
    config["added_tokens"] = [t for t in config["added_tokens"] if t["content"] != "[UNK]"]
    (model / wordpiece.TOKENIZER_FILE).write_text(json.dumps(config), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="django_embeddings.providers.wordpiece"):
        assert wordpiece.load(model, 512) is None
    assert "does not match the tokenizer.json and vocab.txt beside it" in caplog.text
    provider = StaticModelProvider(path=model)
    assert isinstance(provider._load().tokenizer, _RustTokenizer)


def test_an_edited_vocabulary_is_ignored(tmp_path: Path) -> None:
    model = copy_static_model(tmp_path)
    vocab = model / wordpiece.VOCAB_FILE
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("\nthe\n", "\nteh\n"), "utf-8")
    assert wordpiece.load(model, 512) is None

"""Hostile primary keys and texts: never a path outside the store, never a crash.

Keys become file names only through SHA-256, so ``../``, ``/``, NUL or unicode in
a key can never name a path. A NUL in a key is refused with a ``StoreError``
naming the field (numpy's fixed-width strings would drop a trailing NUL, so such
a key could not be found again), logged and sent as ``embedding_failed`` after
commit; the row stays pending. Databases that accept NUL in keys are rare.
Source texts are cut to ``DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH`` characters; a blank query
text is refused with a ``ValueError``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_embeddings import cache
from django_embeddings.exceptions import StoreError
from django_embeddings.fields import content_hash
from django_embeddings.providers import get_provider
from tests.testapp.models import Article, SlugDoc
from tests.utils import failures, is_embedded, pending_count

pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED = re.compile(
    r"\A(?:_vectors-\d+|_journal|_lock|_index\.json|_dimensions"
    r"|snapshot-\d+|(?:vectors|keys|hashes|identities|raw|times)\.npy|meta\.json"
    r"|testapp\.\w+|embedding|@test-[0-9a-f]{12})\Z"
)
NASTY_KEYS = [
    "../../../etc/passwd",
    "..",
    ".",
    "/",
    "a/../../b",
    "\\..\\x",
    "~root",
    "$HOME",
    "*",
    "-rf",
    " ",
    "CON",
    "nul",
    "x" * 200,
    "😀" * 50,
    "ﬁ",
    "e\u0301",
    "\u202e",
    "\r\n",
    "\x00",
    "a\x00b",
    "\x00" * 3,
    "",
]
HYPOTHESIS = settings(
    max_examples=int(os.environ.get("DJANGO_EMBEDDINGS_ABUSE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def allows_nul() -> bool:
    return connection.vendor != "postgresql"  # PostgreSQL refuses NUL in any text


def keys() -> st.SearchStrategy[str]:
    alphabet = st.characters(codec="utf-8", exclude_characters=None if allows_nul() else "\x00")
    return st.sampled_from(NASTY_KEYS).filter(lambda k: allows_nul() or "\x00" not in k) | (
        st.text(alphabet, max_size=60)
    )


def texts() -> st.SearchStrategy[str]:
    alphabet = st.characters(codec="utf-8", exclude_characters=None if allows_nul() else "\x00")
    return st.sampled_from(["", "   ", "\n\t", "😀", "../../x"]) | st.text(alphabet, max_size=400)


def search(queryset, text: str, k: int) -> list[Any]:  # type: ignore[no-untyped-def]
    """A search by any text: the hits, or for a blank text the documented refusal."""
    if not text.strip():
        with pytest.raises(ValueError, match="needs a query text"):
            queryset.semantic_search(text, k=k)
        return []
    return list(queryset.semantic_search(text, k=k))


def assert_only_store_files(root: Path) -> None:
    """Everything under the store directory has a name the store chose."""
    for directory, subdirs, names in os.walk(root):
        for name in [*subdirs, *names]:
            assert ALLOWED.match(name), f"unexpected {name!r} in {directory}"
        assert Path(directory).resolve().is_relative_to(root.resolve())


@HYPOTHESIS
@given(key=keys(), text=texts())
def test_any_key_and_text_on_slugdoc(store_dir: Path, key: str, text: str) -> None:
    before = set(os.listdir(store_dir.parent))
    field = SlugDoc._meta.get_field("embedding")
    try:
        if "\x00" in key:
            with failures() as seen:
                SlugDoc.objects.create(slug=key, text=text if text.strip() else "some text")
            (failure,) = seen
            assert isinstance(failure["exception"], StoreError)
            assert "testapp.SlugDoc.embedding" in str(failure["exception"])
            assert "NUL" in str(failure["exception"])
            assert not is_embedded(SlugDoc.objects.get(slug=key))
        else:
            doc = SlugDoc.objects.create(slug=key, text=text)
            doc.refresh_from_db()
            index = cache.get(field.store)  # type: ignore[union-attr]
            if text.strip():
                assert doc.embedding == content_hash(text) and is_embedded(doc)
                assert index.keys() == [key]
                assert [d.slug for d in SlugDoc.objects.semantic_search(text, k=1)] == [key]
            else:
                assert doc.embedding is None and index.keys() == []
            doc.delete()
            assert cache.get(field.store).keys() == []  # type: ignore[union-attr]
        # Searching with the hostile text as the query never fails either.
        search(SlugDoc.objects.all(), key or "empty", k=3)
    finally:
        SlugDoc.objects.all().delete()
    assert set(os.listdir(store_dir.parent)) - before <= {store_dir.name}
    if store_dir.exists():
        assert_only_store_files(store_dir)


@HYPOTHESIS
@given(text=texts())
def test_any_text_on_article_and_as_a_query(text: str) -> None:
    article = Article.objects.create(title="t", body=text)
    try:
        article.refresh_from_db()
        assert article.embedding == (content_hash(text) if text.strip() else None)
        assert is_embedded(article) == bool(text.strip())
        found = search(Article.objects.all(), text, k=3)
        assert found == ([article] if text.strip() else [])
        assert list(Article.objects.filter(title="t").semantic_search(text + "!", k=1)) in (
            [article],
            [],
        )
    finally:
        Article.objects.all().delete()


def test_nul_in_a_key_at_the_field_level_is_a_clear_error_and_the_cache_survives(
    settings,  # type: ignore[no-untyped-def]
) -> None:
    """The refused key leaves the row missing; the index and other rows are unaffected."""
    if not allows_nul():
        pytest.skip("PostgreSQL refuses NUL in keys before the field sees them")
    good = SlugDoc.objects.create(slug="good", text="a row about csv")
    with failures() as seen:
        SlugDoc.objects.create(slug="bad\x00key", text="a row about json")
        SlugDoc.objects.create(slug="\x00", text="logged, not raised")
    assert [f["keys"] for f in seen] == [["bad\x00key"], ["\x00"]]
    for failure in seen:
        assert isinstance(failure["exception"], StoreError)
        assert re.search(r"testapp\.SlugDoc\.embedding.*NUL", str(failure["exception"]))
    assert pending_count(SlugDoc) == 2
    assert list(SlugDoc.objects.semantic_search("csv", k=5)) == [good]
    good.text = "a row about yaml"
    good.save()
    assert list(SlugDoc.objects.semantic_search("yaml", k=1)) == [good]


class TestLongTexts:
    def test_a_one_megabyte_text_is_cut_to_the_default_20000_characters(self) -> None:
        provider = get_provider()
        body = ("0123456789abcdef" * 65536)[:1_000_000]
        article = Article.objects.create(title="big", body=body)
        assert provider.calls[-1] == [body[:20_000]]  # type: ignore[attr-defined]
        # A change past the cut changes nothing that is embedded: no provider call.
        calls = len(provider.calls)  # type: ignore[attr-defined]
        article.body = body[:-1] + "!"
        article.save()
        assert len(provider.calls) == calls  # type: ignore[attr-defined]
        assert list(Article.objects.semantic_search(body, k=1)) == [article]

    def test_the_limit_is_a_setting(self, settings) -> None:  # type: ignore[no-untyped-def]
        settings.DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH = 100
        provider = get_provider()
        Article.objects.create(title="t", body="é" * 1000)
        assert provider.calls[-1] == ["é" * 100]  # type: ignore[attr-defined]

    def test_a_one_megabyte_query_does_not_fail(self) -> None:
        article = Article.objects.create(title="t", body="a row about csv")
        assert list(Article.objects.semantic_search("csv " * 250_000, k=1)) == [article]

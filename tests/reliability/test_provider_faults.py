"""Providers that raise, hang or answer nonsense: clear errors naming the field, no partial state.

After commit nothing raises: a failed embedding is logged (one error naming the
field) and sent as ``embedding_failed``. The committed row is pending: its column
records its new text, the store has no vector of that text (the vector of its
previous text may remain, but a search never serves it), and ``embeddings_backfill
--missing`` embeds it. A direct call (the backfill) raises.
"""

from __future__ import annotations

import logging
import os
import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from django_embeddings import cache
from django_embeddings.exceptions import ProviderError
from django_embeddings.fields import content_hash
from tests.reliability.providers import HangingProvider
from tests.testapp.models import Article
from tests.utils import failures, is_embedded, pending_count, stored_hash

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "testapp.Article.embedding"
FAULTS = {
    "RaisingProvider": "connection reset by peer",
    "WrongDimensionsProvider": "65 dimensions",
    "NaNProvider": "NaN",
    "EmptyProvider": "shape (0, 64)",
    "ShortProvider": "shape",
    "ZeroProvider": "all-zero",
}


def use(settings, name: str) -> None:  # type: ignore[no-untyped-def]
    settings.DJANGO_EMBEDDINGS_PROVIDERS = {
        "default": {
            "BACKEND": f"tests.reliability.providers.{name}",
            "OPTIONS": {"dimensions": 64},
        }
    }


def stored_keys() -> list[str]:
    return sorted(cache.reload(Article._meta.get_field("embedding").store).keys())  # type: ignore[union-attr]


def no_temp_files() -> bool:
    path = Article._meta.get_field("embedding").store.path  # type: ignore[union-attr]
    return not [n for n in os.listdir(path) if n.startswith("tmp")]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_failed_create_is_reported_naming_the_field_and_left_pending(settings, name: str) -> None:  # type: ignore[no-untyped-def]
    use(settings, name)
    good = Article.objects.create(title="good", body="a row about csv files")
    with failures() as seen:
        bad = Article.objects.create(title="bad", body="FAULT a row about json files")
    (failure,) = seen
    assert isinstance(failure["exception"], ProviderError)
    message = str(failure["exception"])
    assert LABEL in message and FAULTS[name] in message
    assert failure["keys"] == [str(bad.pk)] and failure["sender"] is Article
    bad.refresh_from_db()  # committed, with the hash of its text: pending
    assert bad.embedding == content_hash("FAULT a row about json files")
    assert stored_hash(bad) is None and pending_count(Article) == 1
    assert stored_keys() == [str(good.pk)]
    assert no_temp_files()
    assert list(Article.objects.semantic_search("json files", k=5)) == [good]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_failed_update_never_serves_the_old_vector(settings, name: str) -> None:  # type: ignore[no-untyped-def]
    use(settings, name)
    article = Article.objects.create(title="a", body="first text about yaml")
    Article.objects.create(title="b", body="another text about toml")
    article.body = "FAULT second text about yaml"
    with failures() as seen:
        article.save()
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ProviderError)
    article.refresh_from_db()
    assert article.embedding == content_hash("FAULT second text about yaml")
    # The vector of the first text may remain in the store, but is never served.
    assert stored_hash(article) in (None, content_hash("first text about yaml"))
    assert not is_embedded(article)
    assert [a.title for a in Article.objects.semantic_search("first text about yaml", k=5)] == ["b"]
    # Once the provider answers again, the backfill embeds the text the row holds.
    use(settings, "HashingProvider")
    call_command("embeddings_backfill", LABEL, "--missing", stdout=StringIO())
    assert is_embedded(article)
    hits = Article.objects.semantic_search("FAULT second text about yaml", k=1)
    assert [a.title for a in hits] == ["a"]


@pytest.mark.parametrize("on_error", ["raise", "log"])
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_failed_save_logs_one_error_and_returns_whatever_on_error_says(
    settings,  # type: ignore[no-untyped-def]
    name: str,
    on_error: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use(settings, name)
    settings.DJANGO_EMBEDDINGS_ON_ERROR = on_error
    with caplog.at_level(logging.WARNING, logger="django_embeddings"):
        article = Article.objects.create(title="bad", body="FAULT text")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and LABEL in errors[0].getMessage()
    assert errors[0].name == "django_embeddings.writer"
    assert "embeddings_backfill testapp.Article" in errors[0].getMessage()
    assert not is_embedded(article) and pending_count(Article) == 1


def test_backfill_with_a_failing_provider_fails_clearly_then_catches_up(settings) -> None:  # type: ignore[no-untyped-def]
    use(settings, "RaisingProvider")
    with failures() as seen:
        Article.objects.create(title="a", body="FAULT text about csv")
        Article.objects.create(title="b", body="FAULT text about json")
    assert len(seen) == 2
    assert pending_count(Article) == 2
    with pytest.raises(CommandError) as raised:
        call_command("embeddings_backfill", LABEL, stdout=StringIO())
    assert LABEL in str(raised.value)
    assert pending_count(Article) == 2
    use(settings, "WrongDimensionsProvider")  # the provider is fixed: only FAULT texts fail
    Article.objects.filter(title="a").update(body="text about csv")
    Article.objects.filter(title="b").update(body="text about json")
    call_command("embeddings_backfill", LABEL, stdout=StringIO())
    assert pending_count(Article) == 0
    assert all(is_embedded(a) for a in Article.objects.all())
    assert len(stored_keys()) == 2


def test_hanging_provider_blocks_only_its_own_save(settings) -> None:  # type: ignore[no-untyped-def]
    """While one save waits on its provider, its row is committed and reported missing,
    and searches and other saves go on: no lock is held during a provider call."""
    use(settings, "HangingProvider")
    HangingProvider.entered.clear()
    HangingProvider.release.clear()
    Article.objects.create(title="good", body="a row about csv files")
    errors: list[BaseException] = []

    def slow_save() -> None:
        try:
            Article.objects.create(title="slow", body="FAULT a row about json files")
        except BaseException as exc:
            errors.append(exc)
        finally:
            if connection.vendor == "sqlite" and connection.is_in_memory_db():
                # Django never closes an in-memory database's connection; Python 3.13
                # warns when this thread's is collected unclosed.
                if connection.connection is not None:
                    connection.connection.close()
            else:
                connection.close()

    with failures() as seen:
        thread = threading.Thread(target=slow_save)
        thread.start()
        try:
            assert HangingProvider.entered.wait(10)
            slow = Article.objects.get(title="slow")
            assert slow.embedding == content_hash(slow.body) and not is_embedded(slow)
            other = Article.objects.create(title="other", body="another row about yaml")
            assert is_embedded(other)
            assert [a.title for a in Article.objects.semantic_search("yaml", k=1)] == ["other"]
        finally:
            HangingProvider.release.set()
            thread.join(10)
    assert not thread.is_alive()
    assert errors == []  # after commit, the save returns
    (failure,) = seen
    assert isinstance(failure["exception"], ProviderError)
    assert LABEL in str(failure["exception"])
    assert "did not answer in time" in str(failure["exception"])
    assert not is_embedded(Article.objects.get(title="slow"))
    assert pending_count(Article) == 1
    assert len(stored_keys()) == 2
    assert no_temp_files()

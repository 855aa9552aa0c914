"""Providers that raise, hang or answer nonsense: clear errors naming the field, no partial state.

A failed embedding leaves the committed row with a NULL column (``embeddings_backfill
--missing`` finds it) and no vector in the store, not even the one of its previous
text: a search never returns a row for a text it no longer has.
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
from tests.reliability.providers import HangingProvider
from tests.testapp.models import Article

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
def test_create_raises_a_provider_error_naming_the_field(settings, name: str) -> None:  # type: ignore[no-untyped-def]
    use(settings, name)
    good = Article.objects.create(title="good", body="a row about csv files")
    with pytest.raises(ProviderError) as raised:
        Article.objects.create(title="bad", body="FAULT a row about json files")
    message = str(raised.value)
    assert LABEL in message and FAULTS[name] in message
    bad = Article.objects.get(title="bad")  # committed
    assert bad.embedding is None
    assert stored_keys() == [str(good.pk)]
    assert no_temp_files()
    assert list(Article.objects.semantic_search("json files", k=5)) == [good]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_failed_update_drops_the_old_vector(settings, name: str) -> None:  # type: ignore[no-untyped-def]
    use(settings, name)
    article = Article.objects.create(title="a", body="first text about yaml")
    other = Article.objects.create(title="b", body="another text about toml")
    article.body = "FAULT second text about yaml"
    with pytest.raises(ProviderError):
        article.save()
    article.refresh_from_db()
    assert article.embedding is None
    assert stored_keys() == [str(other.pk)]
    assert [a.title for a in Article.objects.semantic_search("first text about yaml", k=5)] == ["b"]


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_on_error_log_logs_one_error_and_the_save_returns(settings, name, caplog) -> None:  # type: ignore[no-untyped-def]
    use(settings, name)
    settings.DJANGO_EMBEDDINGS_ON_ERROR = "log"
    with caplog.at_level(logging.WARNING, logger="django_embeddings"):
        article = Article.objects.create(title="bad", body="FAULT text")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and LABEL in errors[0].getMessage()
    article.refresh_from_db()
    assert article.embedding is None


def test_backfill_with_a_failing_provider_fails_clearly_then_catches_up(settings) -> None:  # type: ignore[no-untyped-def]
    use(settings, "RaisingProvider")
    settings.DJANGO_EMBEDDINGS_ON_ERROR = "log"
    Article.objects.create(title="a", body="FAULT text about csv")
    Article.objects.create(title="b", body="FAULT text about json")
    assert Article.objects.filter(embedding__isnull=True).count() == 2
    settings.DJANGO_EMBEDDINGS_ON_ERROR = "raise"
    with pytest.raises(CommandError) as raised:
        call_command("embeddings_backfill", LABEL, stdout=StringIO())
    assert LABEL in str(raised.value)
    assert Article.objects.filter(embedding__isnull=True).count() == 2
    use(settings, "WrongDimensionsProvider")  # the provider is fixed: only FAULT texts fail
    Article.objects.filter(title="a").update(body="text about csv")
    Article.objects.filter(title="b").update(body="text about json")
    call_command("embeddings_backfill", LABEL, stdout=StringIO())
    assert Article.objects.filter(embedding__isnull=True).count() == 0
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
            connection.close()

    thread = threading.Thread(target=slow_save)
    thread.start()
    try:
        assert HangingProvider.entered.wait(10)
        assert Article.objects.get(title="slow").embedding is None
        other = Article.objects.create(title="other", body="another row about yaml")
        assert other.embedding == 64
        assert [a.title for a in Article.objects.semantic_search("yaml", k=1)] == ["other"]
    finally:
        HangingProvider.release.set()
        thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ProviderError)
    assert LABEL in str(errors[0]) and "did not answer in time" in str(errors[0])
    assert Article.objects.get(title="slow").embedding is None
    assert len(stored_keys()) == 2
    assert no_temp_files()

"""A read-only or full store directory: clear errors, committed rows, no half-written state.

The database commits first; the store write after commit fails. With
``DJANGO_EMBEDDINGS_ON_ERROR = "raise"`` the save raises a ``StoreError`` naming
the field; with ``"log"`` it logs one error. Either way the row is committed with
a NULL column (``embeddings_backfill --missing`` finds it), searches keep
answering from what was stored, and once the disk is writable again saves work
and a backfill catches up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from django_embeddings import cache
from django_embeddings.exceptions import EmbeddingsError, StoreError
from django_embeddings.fields import content_hash
from django_embeddings.providers import get_provider
from tests.conftest import skip_or_fail
from tests.reliability.disks import Tmpfs, mount_problem
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "testapp.Article.embedding"


@pytest.fixture
def disk(tmp_path: Path, settings) -> Iterator[Tmpfs]:  # type: ignore[no-untyped-def]
    """The store directory on a 512 KiB tmpfs of its own."""
    problem = mount_problem()
    if problem is not None:
        skip_or_fail(problem)
    mount = Tmpfs(tmp_path / "disk", size_kb=512).mount()
    settings.DJANGO_EMBEDDINGS_DIR = mount.path / "embeddings"
    try:
        yield mount
    finally:
        cache.clear()
        mount.unmount()


def store_dir() -> Path:
    return Article._meta.get_field("embedding").store.path  # type: ignore[union-attr, no-any-return]


def assert_store_matches_database() -> None:
    """Every row embedded, with its own text's exact vector; nothing else stored."""
    field = Article._meta.get_field("embedding")
    store = field.store  # type: ignore[union-attr]
    provider = get_provider()
    index = cache.reload(store)
    rows = {str(a.pk): a for a in Article.objects.all()}
    assert sorted(index.keys()) == sorted(rows)
    for key, article in rows.items():
        assert article.embedding == 64
        assert index.meta(key) == (content_hash(article.body), provider.identity)
        np.testing.assert_array_equal(store.load_vector(key), provider.embed([article.body])[0])
    names = os.listdir(store.path)
    assert not [n for n in names if n.startswith("tmp")]


def backfill() -> str:
    out = StringIO()
    call_command("embeddings_backfill", LABEL, "--missing", stdout=out)
    return out.getvalue()


class TestReadOnly:
    def test_save_raises_a_store_error_naming_the_field(self, disk: Tmpfs) -> None:
        kept = Article.objects.create(title="kept", body="stored before the disk went read-only")
        disk.readonly()
        with pytest.raises(StoreError) as raised:
            Article.objects.create(title="new", body="written while read-only")
        assert LABEL in str(raised.value)
        assert "Read-only file system" in str(raised.value)
        new = Article.objects.get(title="new")  # committed
        assert new.embedding is None  # reported missing
        # Searches still answer from what was stored.
        assert list(Article.objects.semantic_search("stored before", k=5)) == [kept]
        # An update of an embedded row fails the same way and leaves its column NULL.
        kept.body = "changed while read-only"
        with pytest.raises(StoreError):
            kept.save()
        kept.refresh_from_db()
        assert kept.embedding is None
        disk.writable()
        assert "2" in backfill() or Article.objects.filter(embedding__isnull=True).count() == 0
        assert_store_matches_database()

    def test_with_on_error_log_the_save_logs_one_error(
        self,
        disk: Tmpfs,
        settings,
        caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
    ) -> None:
        settings.DJANGO_EMBEDDINGS_ON_ERROR = "log"
        Article.objects.create(title="kept", body="stored first")
        disk.readonly()
        with caplog.at_level(logging.WARNING):
            article = Article.objects.create(title="new", body="written while read-only")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert LABEL in errors[0].getMessage()
        article.refresh_from_db()
        assert article.embedding is None
        disk.writable()
        Article.objects.create(title="later", body="written once writable again")
        backfill()
        assert_store_matches_database()

    def test_delete_on_a_read_only_disk_leaves_an_orphan_for_gc(self, disk: Tmpfs) -> None:
        article = Article.objects.create(title="a", body="to be deleted")
        Article.objects.create(title="b", body="to be kept")
        disk.readonly()
        with pytest.raises(EmbeddingsError) as raised:
            article.delete()
        assert LABEL in str(raised.value)
        assert not Article.objects.filter(title="a").exists()
        # The stale entry is never returned: searches skip rows that do not exist.
        assert [a.title for a in Article.objects.semantic_search("to be deleted", k=5)] == ["b"]
        disk.writable()
        out = StringIO()
        call_command("embeddings_gc", LABEL, "--min-age=0", stdout=out)
        assert "Removed 1 " in out.getvalue()
        assert_store_matches_database()

    def test_first_write_into_a_read_only_directory(self, disk: Tmpfs) -> None:
        disk.readonly()
        with pytest.raises(StoreError) as raised:
            Article.objects.create(title="first", body="the very first row")
        assert LABEL in str(raised.value)
        assert Article.objects.get().embedding is None
        assert list(Article.objects.semantic_search("first row", k=3)) == []
        disk.writable()
        backfill()
        assert_store_matches_database()


class TestFull:
    def test_full_disk_fails_saves_clearly_and_recovers(self, disk: Tmpfs) -> None:
        for n in range(5):
            Article.objects.create(title=f"r{n}", body=f"row number {n} about csv files")
        disk.fill()
        failures = 0
        for n in range(5, 40):
            try:
                Article.objects.create(title=f"r{n}", body=f"row number {n} about json files")
            except StoreError as exc:
                assert LABEL in str(exc)
                assert "No space left on device" in str(exc)
                failures += 1
        assert failures > 0
        missing = Article.objects.filter(embedding__isnull=True).count()
        assert missing == failures
        # Nothing half-written is loaded: a fresh load sees only complete entries.
        index = cache.reload(Article._meta.get_field("embedding").store)  # type: ignore[union-attr]
        assert len(index) == Article.objects.exclude(embedding__isnull=True).count()
        assert not [n for n in os.listdir(store_dir()) if n.startswith("tmp")]
        disk.free()
        Article.objects.create(title="after", body="space is back")
        backfill()
        assert_store_matches_database()

    def test_deletes_and_compaction_on_a_full_disk(self, disk: Tmpfs, settings) -> None:  # type: ignore[no-untyped-def]
        settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 6
        articles = [
            Article.objects.create(title=f"r{n}", body=f"row {n} about yaml") for n in range(5)
        ]
        disk.fill()
        for article in articles[:4]:
            try:
                article.delete()
            except EmbeddingsError as exc:
                assert LABEL in str(exc)
        disk.free()
        out = StringIO()
        call_command("embeddings_gc", LABEL, "--min-age=0", stdout=out)
        call_command("embeddings_sweep", LABEL, "--max-age=0", stdout=out)
        Article.objects.create(title="after", body="space is back")
        backfill()
        assert_store_matches_database()

"""A read-only or full store directory: clear errors, committed rows, no half-written state.

The database commits first; the store write after commit fails. The save
returns and logs one error naming the field (a ``StoreError``, also sent as
``embedding_failed``), whatever ``DJANGO_EMBEDDINGS_ON_ERROR`` says. The row is
committed and pending (``embeddings_backfill --missing`` finds it), searches keep
answering from what was stored without ever serving a vector of an older text,
and once the disk is writable again saves work and a backfill catches up.
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
from tests.utils import failures, is_embedded, pending_count, stored_hash

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
        assert article.embedding == content_hash(article.body)
        assert index.meta(key) == (content_hash(article.body), provider.identity)
        np.testing.assert_array_equal(store.load_vector(key), provider.embed([article.body])[0])
    names = os.listdir(store.path)
    assert not [n for n in names if n.startswith("tmp")]


def backfill() -> str:
    out = StringIO()
    call_command("embeddings_backfill", LABEL, "--missing", stdout=out)
    return out.getvalue()


class TestReadOnly:
    def test_save_reports_a_store_error_naming_the_field(self, disk: Tmpfs) -> None:
        kept = Article.objects.create(title="kept", body="stored before the disk went read-only")
        disk.readonly()
        with failures() as seen:
            new = Article.objects.create(title="new", body="written while read-only")
        (failure,) = seen
        assert isinstance(failure["exception"], StoreError)
        assert LABEL in str(failure["exception"])
        assert "Read-only file system" in str(failure["exception"])
        assert failure["keys"] == [str(new.pk)]
        new.refresh_from_db()  # committed, and pending
        assert new.embedding == content_hash("written while read-only")
        assert not is_embedded(new)
        # Searches still answer from what was stored.
        assert list(Article.objects.semantic_search("stored before", k=5)) == [kept]
        # An update of an embedded row fails the same way: its old vector stays in the
        # store, but it is of another text, so no search serves it.
        kept.body = "changed while read-only"
        with failures() as seen:
            kept.save()
        assert len(seen) == 1 and isinstance(seen[0]["exception"], StoreError)
        assert stored_hash(kept) == content_hash("stored before the disk went read-only")
        assert not is_embedded(kept)
        assert list(Article.objects.semantic_search("stored before", k=5)) == []
        assert pending_count(Article) == 2
        disk.writable()
        assert backfill() == f"Embedded 2 of 2 rows of {LABEL} (--missing).\n"
        assert_store_matches_database()

    @pytest.mark.parametrize("on_error", ["raise", "log"])
    def test_the_save_logs_one_error_whatever_on_error_says(
        self,
        disk: Tmpfs,
        settings,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture,
        on_error: str,
    ) -> None:
        settings.DJANGO_EMBEDDINGS_ON_ERROR = on_error
        Article.objects.create(title="kept", body="stored first")
        disk.readonly()
        with caplog.at_level(logging.WARNING):
            article = Article.objects.create(title="new", body="written while read-only")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert LABEL in errors[0].getMessage()
        assert not is_embedded(article) and pending_count(Article) == 1
        disk.writable()
        Article.objects.create(title="later", body="written once writable again")
        backfill()
        assert_store_matches_database()

    def test_delete_on_a_read_only_disk_leaves_an_orphan_for_gc(self, disk: Tmpfs) -> None:
        article = Article.objects.create(title="a", body="to be deleted")
        Article.objects.create(title="b", body="to be kept")
        disk.readonly()
        with failures() as seen:
            article.delete()
        (failure,) = seen
        assert isinstance(failure["exception"], EmbeddingsError)
        assert LABEL in str(failure["exception"])
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
        with failures() as seen:
            Article.objects.create(title="first", body="the very first row")
        (failure,) = seen
        assert isinstance(failure["exception"], StoreError)
        assert LABEL in str(failure["exception"])
        assert not is_embedded(Article.objects.get()) and pending_count(Article) == 1
        assert list(Article.objects.semantic_search("first row", k=3)) == []
        disk.writable()
        backfill()
        assert_store_matches_database()


class TestFull:
    def test_full_disk_fails_saves_clearly_and_recovers(self, disk: Tmpfs) -> None:
        for n in range(5):
            Article.objects.create(title=f"r{n}", body=f"row number {n} about csv files")
        disk.fill()
        with failures() as seen:
            for n in range(5, 40):
                Article.objects.create(title=f"r{n}", body=f"row number {n} about json files")
        assert seen
        for failure in seen:
            assert isinstance(failure["exception"], StoreError)
            assert LABEL in str(failure["exception"])
            assert "No space left on device" in str(failure["exception"])
        assert pending_count(Article) == len(seen)
        # Nothing half-written is loaded: a fresh load sees only complete entries.
        index = cache.reload(Article._meta.get_field("embedding").store)  # type: ignore[union-attr]
        embedded = [a for a in Article.objects.all() if is_embedded(a)]
        assert len(index) == len(embedded) == Article.objects.count() - len(seen)
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
        with failures() as seen:
            for article in articles[:4]:
                article.delete()
        for failure in seen:
            assert isinstance(failure["exception"], EmbeddingsError)
            assert LABEL in str(failure["exception"])
        disk.free()
        out = StringIO()
        call_command("embeddings_gc", LABEL, "--min-age=0", stdout=out)
        call_command("embeddings_sweep", LABEL, "--max-age=0", stdout=out)
        Article.objects.create(title="after", body="space is back")
        backfill()
        assert_store_matches_database()

"""Each database has its own store; a test database's store is never the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django.db import connections

from django_embeddings import cache, databases
from django_embeddings.fields import content_hash
from django_embeddings.store import Store
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


def field():  # type: ignore[no-untyped-def]
    return Article._meta.get_field("embedding")


def test_the_test_database_has_a_store_of_its_own(store_dir: Path) -> None:
    assert databases.is_test_database("default")
    path = field().store.path
    assert path.is_relative_to(store_dir)
    assert path.parent.parent.name.startswith("@test-")
    assert path != store_dir / "testapp.Article" / "embedding"


def test_tests_never_touch_the_development_vectors(store_dir: Path) -> None:
    # The store a development server wrote, at the place the default database uses.
    development = Store(store_dir / "testapp.Article" / "embedding", label="dev")
    vector = np.ones(64, dtype=np.float32)
    development.put("1", vector, content_hash=content_hash("baking bread"), identity="x")
    before = sorted(path.name for path in development.path.iterdir())

    article = Article.objects.create(title="CSV", body="Read and write comma separated files")
    assert [a.pk for a in Article.objects.semantic_search("comma separated", k=1)] == [article.pk]

    assert sorted(path.name for path in development.path.iterdir()) == before
    assert cache.get(development, keep=False).keys() == ["1"]


def test_migrating_or_flushing_the_test_database_empties_its_store() -> None:
    Article.objects.create(title="a", body="something to forget")
    assert cache.get(field().store).keys()
    Article.objects.all()._raw_delete("default")  # rows gone behind the ORM's back
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert not field().store.path.exists()
    assert cache.get(field().store).keys() == []


def test_each_database_has_its_own_store() -> None:
    here = Article.objects.create(title="default", body="apples and pears")
    there = Article.objects.using("other").create(title="other", body="apples and pears")
    assert field().store_for("default").path != field().store_for("other").path
    assert [a.pk for a in Article.objects.semantic_search("apples", k=5)] == [here.pk]
    found = Article.objects.using("other").semantic_search("apples", k=5)
    assert [(a.pk, a.title) for a in found] == [(there.pk, "other")]
    assert Article.objects.using("other").get().embedding == content_hash("apples and pears")
    call_command("embeddings_status", "testapp.Article", "--database", "other", verbosity=0)


def test_outside_tests_the_default_database_keeps_the_layout_of_0_1(store_dir: Path) -> None:
    real_name = connections["default"].settings_dict["NAME"]
    saved = dict(databases._configured)
    try:
        databases._configured["default"] = real_name
        databases._configured["other"] = connections["other"].settings_dict["NAME"]
        assert databases.store_root(store_dir, "default") == store_dir
        assert databases.store_root(store_dir, "other") == store_dir / "@other"
    finally:
        databases._configured.clear()
        databases._configured.update(saved)

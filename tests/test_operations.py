from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.state import ProjectState

from django_embeddings.fields import content_hash
from django_embeddings.operations import AlterEmbeddingColumnToHash
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)


def column_type() -> str:
    with connection.cursor() as cursor:
        description = connection.introspection.get_table_description(cursor, Article._meta.db_table)
    return {column.name: column for column in description}["embedding"].type_code


def test_a_0_1_integer_column_becomes_a_hash_column_and_back() -> None:
    state = ProjectState.from_apps(__import__("django.apps").apps.apps)
    operation = AlterEmbeddingColumnToHash("article", "embedding")
    hash_type = column_type()
    with connection.schema_editor() as editor:
        operation.database_backwards("testapp", editor, state, state)
    integer_type = column_type()
    assert integer_type != hash_type
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Article._meta.db_table} (title, body, published, embedding) "
            "VALUES ('a', 'some text', %s, 64)",
            [True],
        )
    with connection.schema_editor() as editor:
        operation.database_forwards("testapp", editor, state, state)
    assert column_type() == hash_type
    article = Article.objects.get()
    assert article.embedding == "64"  # pending until embeddings_backfill records the hash
    from django.core.management import call_command

    call_command("embeddings_backfill", "testapp.Article", verbosity=0)
    article.refresh_from_db()
    assert article.embedding == content_hash("some text")
    assert [a.pk for a in Article.objects.semantic_search("some text", k=1)] == [article.pk]

"""``embeddings_move``: a field's vectors copied between the files and database stores."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_embeddings import cache
from django_embeddings.providers import get_provider
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

QUERIES = ["comma separated", "bread", "handshake"]
TEXTS = ["Read and write comma separated files", "baking bread at home", "TLS 1.3 handshake"]


def ranked(query: str) -> list[tuple[int, float, float | None]]:
    rows = Article.objects.hybrid_search(query, k=3)
    return [(row.pk, round(row.similarity, 5), row.keyword_score) for row in rows]


@pytest.mark.parametrize(("source", "target"), [("files", "database"), ("database", "files")])
def test_move_copies_every_vector_without_the_provider(source, target, settings):
    settings.DJANGO_EMBEDDINGS_STORE = source
    for text in TEXTS:
        Article.objects.create(title=text[:10], body=text)
    before = [ranked(query) for query in QUERIES]
    assert all(len(rows) == 3 for rows in before)

    settings.DJANGO_EMBEDDINGS_STORE = target
    cache.clear()
    assert list(Article.objects.semantic_search("bread", k=3)) == []  # the new store is empty
    out = StringIO()
    call_command("embeddings_move", "testapp.Article", "--from", source, stdout=out)

    assert "Copied 3 embeddings of testapp.Article.embedding" in out.getvalue()
    assert [ranked(query) for query in QUERIES] == before  # same vectors, same terms
    embedded = [text for call in get_provider("default").calls for text in call]
    assert not set(TEXTS) & set(embedded)  # no row embedded again, only the queries
    assert Article._meta.get_field("embedding").store_for("default", source).stats().vectors == 3


def test_move_from_the_configured_store_is_refused(settings):
    settings.DJANGO_EMBEDDINGS_STORE = "files"
    with pytest.raises(CommandError, match="already"):
        call_command("embeddings_move", "--from", "files")

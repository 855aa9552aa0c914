from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from django_embeddings import cache
from django_embeddings.backfill import BackfillResult, embed_queryset, existing_keys
from django_embeddings.fields import content_hash
from django_embeddings.providers import get_provider
from tests.testapp.models import Article, ManualDoc, Note, Product, SlugDoc, UUIDDoc
from tests.utils import column, is_embedded, stored_hash

pytestmark = pytest.mark.django_db(transaction=True)


def calls() -> list[list[str]]:
    return get_provider("default").calls  # type: ignore[attr-defined, no-any-return]


def field_of(model, name="embedding"):  # type: ignore[no-untyped-def]
    return model._meta.get_field(name)


def stored(model, name="embedding") -> set[str]:  # type: ignore[no-untyped-def]
    return set(cache.get(field_of(model, name).store).keys())


def bulk_articles(count: int, start: int = 0) -> list[Article]:
    return Article.objects.bulk_create(
        Article(title=f"t{n}", body=f"article number {n}") for n in range(start, start + count)
    )


class TestMissing:
    def test_embeds_rows_that_bulk_create_skipped(self):
        articles = bulk_articles(5)
        # bulk_create records each text's hash but embeds nothing: the rows are pending.
        assert [column(a) for a in articles] == [content_hash(a.body) for a in articles]
        assert not any(is_embedded(a) for a in articles)
        (result,) = embed_queryset(Article.objects.all(), batch_size=2)
        assert (result.scanned, result.selected, result.embedded) == (5, 5, 5)
        assert stored(Article) == {str(a.pk) for a in articles}
        assert all(is_embedded(a) for a in articles)
        # One provider call per batch: 2 + 2 + 1.
        assert [len(batch) for batch in calls()] == [2, 2, 1]

    def test_is_idempotent(self):
        bulk_articles(3)
        embed_queryset(Article.objects.all())
        before = len(calls())
        (result,) = embed_queryset(Article.objects.all())
        assert (result.scanned, result.selected, result.embedded) == (3, 0, 0)
        assert len(calls()) == before

    def test_resumes_after_a_crash_mid_run(self):
        bulk_articles(6)

        class Crash(Exception):
            pass

        def stop_after_first_batch(result: BackfillResult) -> None:
            if result.scanned >= 2:
                raise Crash

        with pytest.raises(Crash):
            embed_queryset(Article.objects.all(), batch_size=2, progress=stop_after_first_batch)
        assert sum(is_embedded(a) for a in Article.objects.all()) == 2
        (result,) = embed_queryset(Article.objects.all(), batch_size=2)
        assert result.embedded == 4
        assert all(is_embedded(a) for a in Article.objects.all())

    def test_row_with_a_column_but_no_vector_is_missing(self):
        article = Article.objects.create(title="a", body="lost vector")
        field_of(Article).store.delete_many([str(article.pk)])
        (result,) = embed_queryset(Article.objects.all())
        assert result.embedded == 1
        assert stored(Article) == {str(article.pk)}

    def test_row_whose_save_failed_keeps_its_old_vector_unserved_until_backfill(
        self, settings, caplog
    ):
        article = Article.objects.create(title="a", body="the old text")
        providers = settings.DJANGO_EMBEDDINGS_PROVIDERS
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            "default": {"BACKEND": "tests.utils.FailingProvider"}
        }
        article.body = "the new text"
        article.save()  # logged, not raised: the row is pending
        (record,) = [r for r in caplog.records if r.name == "django_embeddings.writer"]
        assert record.getMessage().startswith("Could not embed 1 rows of testapp.Article.embedding")
        assert column(article) == content_hash("the new text")
        assert stored_hash(article) == content_hash("the old text")
        settings.DJANGO_EMBEDDINGS_PROVIDERS = providers
        assert list(Article.objects.semantic_search("the old text", k=5)) == []
        (result,) = embed_queryset(Article.objects.all())
        assert (result.selected, result.embedded) == (1, 1)
        assert calls()[-1] == ["the new text"]
        assert is_embedded(article)
        assert list(Article.objects.semantic_search("the new text", k=5)) == [article]

    def test_null_column_with_a_current_vector_costs_no_provider_call(self):
        article = Article.objects.create(title="a", body="kept vector")
        Article.objects.update(embedding=None)  # raw SQL or a restore cleared the column
        before = len(calls())
        (result,) = embed_queryset(Article.objects.all())
        assert result.selected == 1 and result.embedded == 0
        assert len(calls()) == before
        article.refresh_from_db()
        assert article.embedding == content_hash("kept vector")  # recorded again
        assert is_embedded(article)

    def test_empty_texts_are_not_work(self):
        Article.objects.bulk_create([Article(title="a", body=""), Article(title="b", body="  ")])
        (result,) = embed_queryset(Article.objects.all())
        assert (result.scanned, result.selected, result.embedded) == (2, 0, 0)
        assert calls() == []

    def test_queryset_filters_are_respected(self):
        bulk_articles(2)
        Article.objects.bulk_create([Article(title="draft", body="unpublished", published=False)])
        (result,) = embed_queryset(Article.objects.filter(published=True))
        assert result.total == 2 and result.embedded == 2
        draft = Article.objects.get(title="draft")
        assert stored_hash(draft) is None and not is_embedded(draft)

    def test_dry_run_counts_and_changes_nothing(self):
        bulk_articles(3)
        (result,) = embed_queryset(Article.objects.all(), dry_run=True)
        assert (result.selected, result.embedded, result.dry_run) == (3, 0, True)
        assert calls() == []
        assert stored(Article) == set()

    def test_auto_embed_false_rows_are_embedded_only_by_backfill(self):
        ManualDoc.objects.create(text="manual text")
        (result,) = embed_queryset(ManualDoc.objects.all())
        assert result.embedded == 1

    def test_progress_is_called_after_every_batch(self):
        bulk_articles(5)
        seen: list[tuple[int, int]] = []
        embed_queryset(
            Article.objects.all(),
            batch_size=2,
            progress=lambda r: seen.append((r.scanned, r.total)),
        )
        assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]


class TestStaleAndAll:
    def test_stale_finds_texts_changed_by_queryset_update(self):
        articles = bulk_articles(3)
        embed_queryset(Article.objects.all())
        Article.objects.filter(pk=articles[0].pk).update(body="a brand new text")
        (missing,) = embed_queryset(Article.objects.all(), mode="missing")
        assert missing.embedded == 0
        (stale,) = embed_queryset(Article.objects.all(), mode="stale")
        assert (stale.selected, stale.embedded) == (1, 1)
        assert calls()[-1] == ["a brand new text"]
        meta = cache.get(field_of(Article).store).meta(str(articles[0].pk))
        assert meta is not None and meta[0] == content_hash("a brand new text")

    def test_stale_finds_vectors_of_another_provider(self, settings):
        bulk_articles(2)
        embed_queryset(Article.objects.all())
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.CountingProvider", "OPTIONS": {"dimensions": 64}},
        }
        # Same dimensions, other identity: a new model version.
        provider = get_provider()
        provider.identity = "hashing-v2-64"
        (result,) = embed_queryset(Article.objects.all(), mode="stale")
        assert result.embedded == 2
        identities = {cache.get(field_of(Article).store).meta(k)[1] for k in stored(Article)}  # type: ignore[index]
        assert identities == {"hashing-v2-64"}

    def test_stale_includes_missing_rows(self):
        bulk_articles(2)
        (result,) = embed_queryset(Article.objects.all(), mode="stale")
        assert result.embedded == 2

    def test_all_re_embeds_unchanged_rows(self):
        bulk_articles(3)
        embed_queryset(Article.objects.all())
        (result,) = embed_queryset(Article.objects.all(), mode="all", batch_size=10)
        assert result.embedded == 3
        assert len(calls()[-1]) == 3


class TestKeysAndFields:
    def test_uuid_and_string_keys(self):
        docs = UUIDDoc.objects.bulk_create([UUIDDoc(text=f"uuid text {n}") for n in range(3)])
        slugs = SlugDoc.objects.bulk_create(
            [SlugDoc(slug=s, text=f"slug text {s}") for s in ("a/b", "../x", "ünï", "z")]
        )
        embed_queryset(UUIDDoc.objects.all(), batch_size=2)
        embed_queryset(SlugDoc.objects.all(), batch_size=3)
        assert stored(UUIDDoc) == {str(d.pk) for d in docs}
        assert stored(SlugDoc) == {s.pk for s in slugs}

    def test_every_field_of_the_model_by_default(self):
        Product.objects.bulk_create([Product(name="lamp", description="a desk lamp")])
        results = embed_queryset(Product.objects.all())
        assert [r.label for r in results] == [
            "testapp.Product.name_embedding",
            "testapp.Product.full_embedding",
        ]
        assert all(r.embedded == 1 for r in results)

    def test_one_field_by_name(self):
        Product.objects.bulk_create([Product(name="lamp", description="a desk lamp")])
        (result,) = embed_queryset(Product.objects.all(), field="name_embedding")
        assert result.label == "testapp.Product.name_embedding"
        product = Product.objects.get()
        assert is_embedded(product, "name_embedding")
        assert stored_hash(product, "full_embedding") is None
        assert not is_embedded(product, "full_embedding")

    def test_callable_source_and_uncached_field(self):
        Note.objects.bulk_create([Note(heading=f"h{n}", content="c") for n in range(3)])
        (result,) = embed_queryset(Note.objects.all(), batch_size=2)
        assert result.embedded == 3
        assert sorted(calls()[0] + calls()[1]) == ["h0: c", "h1: c", "h2: c"]

    def test_loads_only_the_columns_it_needs(self, django_assert_max_num_queries):
        bulk_articles(4)
        # count, then per batch: keys, rows, then sync's update and re-read; and the end.
        with django_assert_max_num_queries(12):
            embed_queryset(Article.objects.all(), batch_size=2)

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"mode": "some"}, "mode should be one of ['missing', 'stale', 'all'], not 'some'."),
            ({"batch_size": 0}, "batch_size should be a positive int, not 0."),
            (
                {"field": "nope"},
                "testapp.Article has no EmbeddingField named 'nope'; it has ['embedding'].",
            ),
        ],
    )
    def test_bad_arguments(self, kwargs, error):
        with pytest.raises(ValueError) as excinfo:
            embed_queryset(Article.objects.all(), **kwargs)
        assert str(excinfo.value) == error

    def test_sliced_queryset_is_refused(self):
        with pytest.raises(TypeError, match="sliced"):
            embed_queryset(Article.objects.all()[:3])


def test_existing_keys_tolerates_keys_of_another_type():
    article = Article.objects.create(title="a", body="text")
    field = field_of(Article)
    keys = [str(article.pk), "not-an-int", str(article.pk + 1000)]
    assert existing_keys(field, keys) == {str(article.pk)}


def test_raw_sql_rows_are_found():
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Article._meta.db_table} (title, body, published) VALUES (%s, %s, %s)",
            ["raw", "inserted by raw SQL", True],
        )
    # The column is NULL (no save recorded the text), yet the row has a text: pending.
    article = Article.objects.get()
    assert article.embedding is None
    (result,) = embed_queryset(Article.objects.all())
    assert result.embedded == 1
    vector = field_of(Article).store.load_vector(str(article.pk))
    np.testing.assert_array_equal(vector, get_provider().embed(["inserted by raw SQL"])[0])
    assert column(article) == content_hash("inserted by raw SQL")
    assert is_embedded(article)

from __future__ import annotations

import threading

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from django.core.paginator import Paginator
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_embeddings import EmbeddingManager, EmbeddingQuerySet, selectivity
from django_embeddings.exceptions import EmbeddingsError, ProviderError
from django_embeddings.fields import content_hash
from django_embeddings.providers import get_provider
from django_embeddings.querysets import EmbeddingQuerySetMixin
from tests.otherapp.models import Doc as OtherDoc
from tests.testapp.models import Article, ArticleProxy, ManualDoc

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = ["apple", "banana", "cherry", "delta", "echo", "fox", "golf"]
WORDS += ["hotel", "india", "juliet", "kilo", "lima", "mango"]


@pytest.fixture
def corpus() -> list[Article]:
    rng = np.random.default_rng(7)
    articles = []
    for n in range(120):
        words = rng.choice(WORDS, size=4)
        articles.append(
            Article.objects.create(title=f"t{n}", body=" ".join(words), published=bool(n % 3))
        )
    return articles


def brute_force(query: str, rows: list[Article], k: int) -> list[tuple[int, float]]:
    provider = get_provider()
    q = provider.embed([query], "query")[0].astype(np.float64)
    q /= np.linalg.norm(q)
    scored = []
    for row in rows:
        v = provider.embed([row.body])[0].astype(np.float64)
        scored.append((row.pk, float(v @ q / np.linalg.norm(v))))
    scored.sort(key=lambda item: -item[1])
    return scored[:k]


def assert_ranking(hits: list[Article], expected: list[tuple[int, float]]) -> None:
    """Same scores in the same order; rows with equal scores may come in any order
    (the tie-break order is tested on its own)."""
    assert [h.similarity for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)
    cut = expected[-1][1] if expected else 0.0
    above = {pk for pk, score in expected if score > cut + 1e-5}
    assert above <= {h.pk for h in hits}


class TestSemanticSearch:
    def test_returns_the_exact_top_k(self, corpus):
        hits = list(Article.objects.semantic_search("apple mango fox", k=10))
        assert_ranking(hits, brute_force("apple mango fox", corpus, 10))
        assert all(-1 <= h.similarity <= 1 for h in hits)
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)

    @pytest.mark.parametrize("k", [1, 5, 30, 80])
    def test_filtered_search_is_exact_for_any_selectivity(self, corpus, k):
        rows = [a for a in corpus if a.published]
        hits = list(Article.objects.filter(published=True).semantic_search("cherry golf", k=k))
        assert_ranking(hits, brute_force("cherry golf", rows, k))
        assert len(hits) == min(k, len(rows))
        assert all(h.published for h in hits)

    @pytest.mark.parametrize(
        ("read_first", "share", "keys_per_hit"),
        [
            (1_000, 0.15, 20),  # the first short read holds every selected key
            (10, 0.9, 20),  # past it, counted, then read up to the narrow limit
            (10, 0.05, 1),  # past that limit too: broad
            (50, 0.05, 1),  # broad after the first read (its limit is no higher)
        ],
    )
    @pytest.mark.parametrize("k", [1, 5, 30])
    def test_filtered_search_takes_each_path_exactly(
        self, corpus, monkeypatch, read_first, share, keys_per_hit, k
    ):
        monkeypatch.setattr("django_embeddings.querysets._READ_FIRST", read_first)
        monkeypatch.setattr("django_embeddings.querysets.NARROW_SHARE", share)
        monkeypatch.setattr("django_embeddings.querysets._KEYS_PER_HIT", keys_per_hit)
        rows = [a for a in corpus if a.published]
        with CaptureQueriesContext(connection) as queries:
            hits = list(Article.objects.filter(published=True).semantic_search("fox kilo", k=k))
        assert_ranking(hits, brute_force("fox kilo", rows, k))
        assert all(h.published for h in hits)
        # Counted only when the first short read did not hold every selected key.
        assert any("COUNT(" in query["sql"].upper() for query in queries) == (read_first < 80)

    @pytest.mark.parametrize(("share", "broad"), [(0.9, False), (0.05, True)])
    def test_a_filter_searched_again_goes_straight_to_its_path(
        self, corpus, monkeypatch, share, broad
    ):
        monkeypatch.setattr("django_embeddings.querysets._READ_FIRST", 10)
        monkeypatch.setattr("django_embeddings.querysets.NARROW_SHARE", share)
        monkeypatch.setattr("django_embeddings.querysets._KEYS_PER_HIT", 1)
        rows = [a for a in corpus if a.published]
        published = Article.objects.filter(published=True)
        list(published.semantic_search("india", k=5))
        with CaptureQueriesContext(connection) as queries:
            hits = list(published.semantic_search("fox kilo", k=5))
        assert_ranking(hits, brute_force("fox kilo", rows, 5))
        # Narrow: its keys, read once; broad: no query before the candidates' rows.
        assert len(queries) == (1 if broad else 2)
        assert not any("COUNT(" in query["sql"].upper() for query in queries)

    @pytest.mark.parametrize("remembered", [0, 1, 10_000])
    def test_a_count_out_of_date_changes_no_result(self, corpus, monkeypatch, remembered):
        # Whatever count a filter is remembered with (rows came and went since it was
        # taken), the search finds the exact top k: only its path and speed change.
        monkeypatch.setattr("django_embeddings.querysets._READ_FIRST", 10)
        monkeypatch.setattr("django_embeddings.querysets._KEYS_PER_HIT", 1)
        for query, rows in [
            (Article.objects.filter(published=True), [a for a in corpus if a.published]),
            (Article.objects.filter(pk__in=[a.pk for a in corpus[:3]]), corpus[:3]),
        ]:
            search = query.semantic_search("cherry golf", k=8)
            list(search)  # remembers the filter's count, which is then replaced
            (key,) = list(selectivity._counts)
            selectivity.remember(key, remembered)
            assert_ranking(list(search.all()), brute_force("cherry golf", rows, 8))
            selectivity.clear()

    def test_very_selective_filter_still_returns_k(self, corpus):
        chosen = corpus[::40]
        qs = Article.objects.filter(pk__in=[a.pk for a in chosen])
        hits = list(qs.semantic_search("delta", k=3))
        assert sorted(h.pk for h in hits) == sorted(a.pk for a in chosen)

    def test_result_is_a_chainable_queryset(self, corpus):
        hits = Article.objects.semantic_search("echo hotel", k=10)
        assert isinstance(hits, EmbeddingQuerySet)
        titles = list(hits.values_list("title", flat=True))
        assert len(titles) == 10
        assert hits.count() == 10
        assert hits.exists()
        assert hits.filter(similarity__gte=hits[4].similarity).count() == 5
        page = Paginator(hits, 4).page(3)
        assert [h.pk for h in page] == [h.pk for h in list(hits)[8:10]]
        assert list(hits.order_by("pk").values_list("pk", flat=True)) == sorted(
            hits.values_list("pk", flat=True)
        )

    def test_search_with_a_vector(self, corpus):
        vector = get_provider().embed(["india juliet"], "query")[0]
        by_vector = [a.pk for a in Article.objects.semantic_search(vector, k=5)]
        by_text = [a.pk for a in Article.objects.semantic_search("india juliet", k=5)]
        assert by_vector == by_text
        assert [a.pk for a in Article.objects.semantic_search(list(map(float, vector)), k=5)] == (
            by_text
        )

    def test_ties_are_ordered_deterministically(self):
        twins = [Article.objects.create(title=str(n), body="identical words") for n in range(5)]
        first = [a.pk for a in Article.objects.semantic_search("identical words", k=3)]
        again = [a.pk for a in Article.objects.semantic_search("identical words", k=3)]
        assert first == again
        assert first == sorted(a.pk for a in twins)[:3]

    def test_deleted_rows_never_appear(self, corpus):
        top = Article.objects.semantic_search("banana kilo", k=5)[0]
        top.delete()
        hits = list(Article.objects.semantic_search("banana kilo", k=5))
        assert top.pk not in [h.pk for h in hits]
        assert len(hits) == 5

    def test_rows_removed_by_raw_sql_do_not_shrink_results(self, corpus):
        best = [a.pk for a in Article.objects.semantic_search("lima", k=5)]
        with connection.cursor() as cursor:
            table = Article._meta.db_table
            cursor.execute(f"DELETE FROM {table} WHERE id IN ({best[0]}, {best[1]})")
        hits = [a.pk for a in Article.objects.semantic_search("lima", k=5)]
        assert len(hits) == 5
        assert best[0] not in hits and best[1] not in hits

    def test_k_larger_than_the_table(self, corpus):
        assert Article.objects.semantic_search("apple", k=1000).count() == len(corpus)

    def test_the_largest_k_fits_in_one_query(self):
        Article.objects.bulk_create(
            Article(title=str(n), body=f"word{n % 50} word{n % 7}") for n in range(1100)
        )
        from django_embeddings.backfill import embed_queryset

        embed_queryset(Article.objects.all(), batch_size=500)
        hits = Article.objects.semantic_search("word3", k=1000)
        assert len(list(hits)) == 1000

    def test_empty_store(self):
        assert list(Article.objects.semantic_search("nothing here")) == []

    def test_rows_never_embedded_are_not_returned(self):
        ManualDoc.objects.create(text="manual text")
        assert list(ManualDoc.objects.semantic_search("manual text")) == []

    @pytest.mark.parametrize("k", [0, -1, 1_001, "3", 2.0, True])
    def test_bad_k(self, k):
        with pytest.raises(ValueError, match="k should be an int"):
            Article.objects.semantic_search("x", k=k)

    def test_bad_vector(self):
        with pytest.raises(ValueError, match="finite 1-D vector"):
            Article.objects.semantic_search([[1.0, 2.0]])
        with pytest.raises(ValueError, match="finite 1-D vector"):
            Article.objects.semantic_search([float("nan")] * 64)

    def test_sliced_queryset_is_refused(self, corpus):
        with pytest.raises(TypeError, match="sliced"):
            Article.objects.all()[:5].semantic_search("x")

    def test_unknown_field(self):
        with pytest.raises(ValueError, match="no EmbeddingField named 'nope'"):
            Article.objects.semantic_search("x", field="nope")

    def test_rows_of_another_provider_are_left_out(self, corpus, settings, caplog):
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.RetrainedProvider"},
        }
        fresh = Article.objects.create(title="new", body="apple banana")
        hits = list(Article.objects.semantic_search("apple banana", k=10))
        assert [h.pk for h in hits] == [fresh.pk]
        assert "embedded by another provider" in caplog.text


def test_a_failing_provider_is_a_provider_error(corpus, settings):
    settings.DJANGO_EMBEDDINGS_PROVIDERS = {
        **settings.DJANGO_EMBEDDINGS_PROVIDERS,
        "default": {"BACKEND": "tests.utils.FailingProvider"},
    }
    with pytest.raises(ProviderError, match=r"a search of testapp\.Article\.embedding"):
        Article.objects.semantic_search("anything")


class TestSimilarTo:
    def test_never_returns_the_row_itself(self, corpus):
        article = corpus[3]
        hits = list(Article.objects.similar_to(article, k=5))
        assert article.pk not in [h.pk for h in hits]
        assert len(hits) == 5
        others = [a for a in corpus if a.pk != article.pk]
        assert_ranking(hits, brute_force(article.body, others, 5))

    def test_filtered(self, corpus):
        article = corpus[0]
        hits = list(Article.objects.filter(published=False).similar_to(article, k=4))
        assert all(not h.published for h in hits)
        assert article.pk not in [h.pk for h in hits]

    def test_row_without_embedding(self):
        doc = ManualDoc.objects.create(text="not embedded")
        with pytest.raises(EmbeddingsError, match=r"testapp\.ManualDoc\.embedding.*no embedding"):
            ManualDoc.objects.similar_to(doc)


def test_manager_is_the_queryset_as_manager():
    assert isinstance(Article.objects, EmbeddingManager)
    assert isinstance(Article.objects.all(), EmbeddingQuerySet)


class TestLazySearch:
    def test_a_filter_after_the_search_applies_before_the_top_k(self, corpus):
        rows = [a for a in corpus if a.published]
        hits = list(Article.objects.semantic_search("cherry golf", k=7).filter(published=True))
        assert len(hits) == 7 and all(h.published for h in hits)
        assert_ranking(hits, brute_force("cherry golf", rows, 7))

    def test_exclude_and_chained_filters_select_rows_first(self, corpus):
        hits = Article.objects.semantic_search("apple", k=5).exclude(published=True)
        assert [h.pk for h in hits] == [
            h.pk for h in Article.objects.filter(published=False).semantic_search("apple", k=5)
        ]

    def test_plain_search_is_one_query(self, corpus):
        with CaptureQueriesContext(connection) as queries:
            hits = list(Article.objects.semantic_search("echo hotel", k=10))
        assert len(hits) == 10
        assert len(queries) == 1
        # Model rows are ranked in Python; values() ranks in SQL, with one compact CASE
        # per expression, never one When object per hit.
        assert queries[0]["sql"].count("CASE") == 0
        with CaptureQueriesContext(connection) as queries:
            rows = list(Article.objects.semantic_search("echo hotel", k=10).values("pk"))
        assert [row["pk"] for row in rows] == [hit.pk for hit in hits]
        assert len(queries) == 1 and 2 <= queries[0]["sql"].count("CASE") <= 3

    def test_values_and_ordering_by_another_column(self, corpus):
        search = Article.objects.semantic_search("kilo lima", k=6)
        top = [h.pk for h in search]
        assert sorted(search.order_by("pk").values_list("pk", flat=True)) == sorted(top)
        rows = list(search.values("pk", "similarity"))
        assert [r["pk"] for r in rows] == top

    def test_update_and_delete_touch_only_the_hits(self, corpus):
        search = Article.objects.semantic_search("mango", k=3)
        top = {h.pk for h in search}
        assert search.update(title="top") == 3
        assert set(Article.objects.filter(title="top").values_list("pk", flat=True)) == top
        search.delete()
        assert not Article.objects.filter(pk__in=top).exists()

    def test_a_search_inside_another_query_is_a_clear_error(self, corpus):
        inner = Article.objects.semantic_search("fox", k=3).values("pk")
        with pytest.raises(TypeError, match="cannot be compiled inside another query"):
            list(Article.objects.filter(pk__in=inner))

    def test_searching_twice_is_refused(self, corpus):
        with pytest.raises(TypeError, match="search only once"):
            Article.objects.semantic_search("fox").semantic_search("golf")


class TestFirstHour:
    def test_empty_query_is_a_clear_error(self):
        for query in ("", "   \n"):
            with pytest.raises(ValueError, match="needs a query text"):
                Article.objects.semantic_search(query)

    def test_an_all_zero_query_vector_finds_nothing(self, corpus):
        assert list(Article.objects.semantic_search(np.zeros(64, np.float32))) == []

    def test_similar_to_refuses_an_instance_of_another_model(self, corpus):
        other = OtherDoc.objects.create(text="apple banana")
        with pytest.raises(TypeError, match="needs a testapp.Article instance"):
            Article.objects.similar_to(other)

    def test_similar_to_accepts_a_proxy_instance(self, corpus):
        proxy = ArticleProxy.objects.get(pk=corpus[0].pk)
        assert corpus[0].pk not in [a.pk for a in Article.objects.similar_to(proxy, k=3)]

    def test_rows_with_no_embedding_warn_once(self, caplog):
        from django_embeddings import querysets

        querysets._warned_empty.discard("testapp.Article.embedding")
        Article.objects.bulk_create([Article(title="x", body="bulk created")])
        assert list(Article.objects.semantic_search("bulk created")) == []
        assert list(Article.objects.semantic_search("bulk created")) == []
        warnings = [r for r in caplog.records if "embeddings_backfill" in r.getMessage()]
        assert len(warnings) == 1
        assert "testapp.Article" in warnings[0].getMessage()


class TestNeverAnOldText:
    def test_similar_to_a_pending_row_is_refused(self, corpus):
        row = corpus[0]
        Article.objects.filter(pk=row.pk).update(
            body="entirely new words", embedding=content_hash("entirely new words")
        )
        row.refresh_from_db()
        with pytest.raises(EmbeddingsError, match="has no embedding yet"):
            Article.objects.similar_to(row)

    def test_a_row_whose_store_lags_its_text_is_not_served(self, corpus):
        """A crash between commit and the store write leaves the store with the
        vector of the row's previous text: the row must not be served."""
        row = corpus[0]
        old_vector = Article._meta.get_field("embedding").store.load_vector(str(row.pk))
        # What the crash leaves: the new text and its hash committed, the store not written.
        Article.objects.filter(pk=row.pk).update(
            body="entirely new words", embedding=content_hash("entirely new words")
        )
        hits = list(Article.objects.semantic_search(old_vector, k=len(corpus)))
        assert row.pk not in [h.pk for h in hits]
        assert len(hits) == len(corpus) - 1
        from django.core.management import call_command

        call_command("embeddings_backfill", "testapp.Article", "--missing", verbosity=0)
        assert row.pk in [h.pk for h in Article.objects.semantic_search("entirely new words", k=1)]


class TestAsync:
    """``asemantic_search()`` and ``asimilar_to()``, run on an event loop as a view would."""

    def test_asemantic_search_ranks_like_semantic_search(self, corpus):
        async def search():
            hits = await Article.objects.filter(published=True).asemantic_search("apple fox", k=7)
            return [(h.pk, h.similarity) async for h in hits]

        expected = Article.objects.filter(published=True).semantic_search("apple fox", k=7)
        assert async_to_sync(search)() == [(h.pk, h.similarity) for h in expected]
        assert_ranking(
            list(expected), brute_force("apple fox", [a for a in corpus if a.published], 7)
        )

    def test_the_query_is_embedded_once_off_the_loop_and_never_at_evaluation(self, corpus):
        provider = get_provider()

        async def search():
            loop_thread = threading.get_ident()
            hits = await Article.objects.asemantic_search("cherry delta", k=5)
            embedded = len(provider.calls)
            # Still lazy and chainable; evaluating it in every way asks nothing more.
            narrowed = hits.filter(published=False)
            rows = [h async for h in narrowed]
            count = await hits.acount()
            first = await hits.afirst()
            exists = await hits.aexists()
            streamed = [h.pk async for h in hits.aiterator(chunk_size=2)]
            assert len(provider.calls) == embedded
            return loop_thread, rows, count, first, exists, streamed

        provider.calls.clear()
        provider.threads.clear()
        loop_thread, rows, count, first, exists, streamed = async_to_sync(search)()
        assert provider.calls == [["cherry delta"]]
        assert provider.threads[0] != loop_thread  # the default aembed() runs embed() in a thread
        expected = list(Article.objects.semantic_search("cherry delta", k=5))
        narrowed = Article.objects.semantic_search("cherry delta", k=5).filter(published=False)
        assert [h.pk for h in rows] == [h.pk for h in narrowed]
        assert rows and not any(h.published for h in rows)
        assert count == 5 and exists
        assert first.pk == expected[0].pk
        assert first.similarity == pytest.approx(expected[0].similarity)
        assert streamed == [h.pk for h in expected]

    def test_asemantic_search_with_a_vector_embeds_nothing(self, corpus):
        provider = get_provider()
        vector = provider.embed(["golf hotel"], "query")[0]
        provider.calls.clear()

        async def search():
            return [h.pk async for h in await Article.objects.asemantic_search(vector, k=4)]

        assert async_to_sync(search)() == [
            h.pk for h in Article.objects.semantic_search("golf hotel", k=4)
        ]
        assert provider.calls == [["golf hotel"]]  # by the sync search, not the async one

    def test_asemantic_search_errors_match_semantic_search(self, corpus, settings):
        run = async_to_sync(Article.objects.all().asemantic_search)
        provider = get_provider()
        provider.calls.clear()
        with pytest.raises(ValueError, match="k should be an int"):
            run("apple", k=0)
        with pytest.raises(ValueError, match=r"semantic_search\(\) on .* needs a query text"):
            run("  ")
        with pytest.raises(ValueError, match="has no EmbeddingField named 'nope'"):
            run("apple", field="nope")
        with pytest.raises(ValueError, match="finite 1-D vector"):
            run(np.zeros((2, 64)))
        assert provider.calls == []  # nothing was embedded for a search that cannot run
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.FailingProvider"},
        }
        with pytest.raises(ProviderError, match=r"a search of testapp\.Article\.embedding"):
            run("anything")

    def test_asimilar_to_reads_the_index_off_the_loop(self, corpus, monkeypatch):
        threads = []
        similar_to = EmbeddingQuerySetMixin.similar_to

        def recording(self, *args, **kwargs):
            threads.append(threading.get_ident())
            return similar_to(self, *args, **kwargs)

        monkeypatch.setattr(EmbeddingQuerySetMixin, "similar_to", recording)

        async def similar():
            hits = await Article.objects.filter(published=True).asimilar_to(corpus[3], k=5)
            return threading.get_ident(), [(h.pk, h.similarity) async for h in hits]

        loop_thread, hits = async_to_sync(similar)()
        assert threads and loop_thread not in threads
        expected = Article.objects.filter(published=True).similar_to(corpus[3], k=5)
        assert hits == [(h.pk, h.similarity) for h in expected]
        assert corpus[3].pk not in [pk for pk, _ in hits]

    def test_asimilar_to_a_row_without_embedding(self):
        doc = ManualDoc.objects.create(text="not embedded")
        with pytest.raises(EmbeddingsError, match="no embedding"):
            async_to_sync(ManualDoc.objects.all().asimilar_to)(doc)

    def test_aiterator_without_a_search(self, corpus):
        async def titles():
            return [a.title async for a in Article.objects.order_by("pk").aiterator(chunk_size=50)]

        assert async_to_sync(titles)() == [a.title for a in corpus]

"""keyword_search() and hybrid_search(): exact against a brute-force reference written
here from the textbook formulas, on every filter, through writes, compaction and reloads."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from django.core.paginator import Paginator
from django.db import connection

from django_embeddings import cache
from django_embeddings.keywords.terms import analyze
from django_embeddings.providers import get_provider
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = ["apple", "banana", "cherry", "delta", "echo", "fox", "golf"]
WORDS += ["hotel", "india", "juliet", "kilo", "lima", "mango", "ERR_CONN_RESET", "v1.2.3"]


@pytest.fixture
def corpus() -> list[Article]:
    rng = np.random.default_rng(11)
    articles = []
    for n in range(150):
        words = rng.choice(WORDS, size=int(rng.integers(2, 9)))
        articles.append(
            Article.objects.create(title=f"t{n}", body=" ".join(words), published=bool(n % 3))
        )
    return articles


def bm25(query: str, rows: list[Article], everyone: list[Article]) -> dict[int, float]:
    """BM25 (Lucene's idf, k1=1.2, b=0.75) of ``rows``, statistics over ``everyone``."""
    docs = {row.pk: Counter(analyze(row.body)) for row in everyone}
    n = len(docs)
    average = sum(sum(c.values()) for c in docs.values()) / n
    scores = {}
    for row in rows:
        counts, length, total = docs[row.pk], sum(docs[row.pk].values()), 0.0
        for term, repeats in Counter(analyze(query)).items():
            df = sum(1 for c in docs.values() if term in c)
            tf = counts.get(term, 0)
            if df and tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                total += repeats * idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / average))
        if total > 0:
            scores[row.pk] = total
    return scores


def cosine(query: str, rows: list[Article]) -> dict[int, float]:
    provider = get_provider()
    q = provider.embed([query], "query")[0].astype(np.float64)
    q /= np.linalg.norm(q)
    out = {}
    for row in rows:
        v = provider.embed([row.body])[0].astype(np.float64)
        out[row.pk] = float(v @ q / np.linalg.norm(v))
    return out


def top(scores: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(scores.items(), key=lambda item: (-round(item[1], 6), item[0]))[:k]


def fused(query: str, rows: list[Article], everyone: list[Article], k: int, weight: float):
    vector, keyword = cosine(query, rows), bm25(query, rows, everyone)
    window = max(100, k)
    union = {pk for pk, _ in top(vector, window)} | {pk for pk, _ in top(keyword, window)}

    def scaled(values: dict[int, float]) -> dict[int, float]:
        column = [values.get(pk, 0.0) for pk in union]
        low, high = min(column), max(column)
        return {
            pk: 0.0 if high <= low else (values.get(pk, 0.0) - low) / (high - low) for pk in union
        }

    v, w = scaled(vector), scaled(keyword)
    return top({pk: weight * v[pk] + (1 - weight) * w[pk] for pk in union}, k)


def assert_same(hits, expected, score: str) -> None:
    """The same scores in the same order; rows tied with the k-th may differ."""
    assert [getattr(h, score) for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)
    cut = expected[-1][1] if expected else 0.0
    assert {pk for pk, s in expected if s > cut + 1e-5} <= {h.pk for h in hits}


QUERIES = ["apple banana", "ERR_CONN_RESET", "conn reset", "v1.2.3 kilo kilo", "1.2.3", "zulu"]


class TestKeywordSearch:
    @pytest.mark.parametrize("query", QUERIES)
    @pytest.mark.parametrize("k", [1, 5, 40])
    def test_exact_top_k(self, corpus, query, k):
        hits = list(Article.objects.keyword_search(query, k=k))
        assert_same(hits, top(bm25(query, corpus, corpus), k), "keyword_score")

    @pytest.mark.parametrize("query", QUERIES[:4])
    def test_filtered_is_exact(self, corpus, query):
        chosen = [a for a in corpus if a.published]
        hits = list(Article.objects.filter(published=True).keyword_search(query, k=10))
        assert_same(hits, top(bm25(query, chosen, corpus), 10), "keyword_score")
        assert all(h.published for h in hits)

    def test_only_rows_holding_a_term(self, corpus):
        Article.objects.create(title="x", body="zulu quebec")
        hits = list(Article.objects.keyword_search("zulu", k=10))
        assert [h.body for h in hits] == ["zulu quebec"]
        assert list(Article.objects.keyword_search("nothing-here", k=10)) == []

    def test_follows_updates_and_deletes(self, corpus):
        row = corpus[0]
        row.body = "xylophone quartet"
        row.save()
        assert [h.pk for h in Article.objects.keyword_search("xylophone", k=3)] == [row.pk]
        row.delete()
        assert list(Article.objects.keyword_search("xylophone", k=3)) == []

    def test_same_after_compaction_and_reload(self, corpus):
        field = Article._meta.get_field("embedding")
        before = [(h.pk, h.keyword_score) for h in Article.objects.keyword_search("kilo fox", 20)]
        Article.objects.create(title="new", body="kilo fox fox")
        Article.objects.filter(pk=corpus[1].pk).delete()
        expected = [(h.pk, h.keyword_score) for h in Article.objects.keyword_search("kilo fox", 20)]
        assert expected != before
        field.store.compact()
        cache.clear()
        after = [(h.pk, h.keyword_score) for h in Article.objects.keyword_search("kilo fox", 20)]
        assert [pk for pk, _ in after] == [pk for pk, _ in expected]
        assert [s for _, s in after] == pytest.approx([s for _, s in expected], abs=1e-5)

    def test_a_row_whose_column_names_another_text_is_not_served(self, corpus):
        expected = top(bm25("kilo", corpus, corpus), 5)
        stale = expected[0][0]
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE testapp_article SET embedding = %s WHERE id = %s", ["0" * 32, stale]
            )
        hits = list(Article.objects.keyword_search("kilo", k=5))
        assert stale not in {h.pk for h in hits}
        assert len(hits) == 5

    def test_chainable(self, corpus):
        qs = Article.objects.keyword_search("apple", k=20)
        values = list(qs.values("pk", "keyword_score"))
        assert [v["pk"] for v in values] == [h.pk for h in qs]
        best = values[0]["keyword_score"]
        assert qs.filter(keyword_score__gte=best).count() >= 1
        page = Paginator(qs, 5).page(2)
        assert [h.pk for h in page] == [v["pk"] for v in values[5:10]]

    def test_keywords_off(self, corpus, monkeypatch):
        monkeypatch.setattr(Article._meta.get_field("embedding"), "keywords", False)
        with pytest.raises(ValueError, match="keywords=False"):
            Article.objects.keyword_search("apple")
        with pytest.raises(ValueError, match="keywords=False"):
            Article.objects.hybrid_search("apple")

    def test_a_text_without_a_token_is_indexed_as_an_empty_bag(self, corpus):
        Article.objects.create(title="x", body="!!! ???")  # embedded, and no token at all
        cache.clear()  # the next search builds the keyword index from the store
        hits = list(Article.objects.keyword_search("apple", k=200))
        assert hits == list(Article.objects.keyword_search("apple", k=200))
        assert "!!! ???" not in {h.body for h in hits}
        assert len(hits) == len(bm25("apple", corpus, corpus))

    def test_blank_query(self):
        with pytest.raises(ValueError, match="needs a query text"):
            Article.objects.keyword_search("  ")


class TestHybridSearch:
    @pytest.mark.parametrize("query", QUERIES[:4])
    @pytest.mark.parametrize("weight", [0.2, 0.5, 1.0, 0.0])
    def test_exact_top_k(self, corpus, query, weight):
        hits = list(Article.objects.hybrid_search(query, k=10, weight=weight))
        assert_same(hits, fused(query, corpus, corpus, 10, weight), "score")
        vector, keyword = cosine(query, corpus), bm25(query, corpus, corpus)
        for hit in hits:
            assert hit.similarity == pytest.approx(vector[hit.pk], abs=1e-5)
            assert hit.keyword_score == pytest.approx(keyword.get(hit.pk, 0.0), abs=1e-5)

    def test_filtered_is_exact(self, corpus):
        chosen = [a for a in corpus if not a.published]
        hits = list(Article.objects.filter(published=False).hybrid_search("apple delta", k=7))
        assert_same(hits, fused("apple delta", chosen, corpus, 7, 0.2), "score")

    def test_k_larger_than_the_window(self, corpus):
        hits = list(Article.objects.hybrid_search("apple", k=140))
        assert_same(hits, fused("apple", corpus, corpus, 140, 0.2), "score")

    def test_async(self, corpus):
        async def search():
            qs = await Article.objects.ahybrid_search("golf hotel", k=5)
            return [hit async for hit in qs]

        hits = async_to_sync(search)()
        assert_same(hits, fused("golf hotel", corpus, corpus, 5, 0.2), "score")

    def test_a_query_the_model_cannot_read_ranks_by_words_only(self, settings):
        # The built-in model zeroes a text with no word it knows.
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"},
        }
        for body in ("read a csv file", "compress a file", "zzzqqqxxyy"):
            Article.objects.create(title="x", body=body)
        hits = list(Article.objects.hybrid_search("zzzqqqxxyy", k=10))
        assert [h.body for h in hits] == ["zzzqqqxxyy"]
        assert list(Article.objects.hybrid_search("qqqzzzyyxx", k=10)) == []
        assert len(Article.objects.hybrid_search("file", k=10)) == 3  # by meaning as well

    @pytest.mark.parametrize("weight", [-0.1, 1.5, "half", True])
    def test_bad_weight(self, weight):
        with pytest.raises(ValueError, match="weight"):
            Article.objects.hybrid_search("apple", weight=weight)


class TestStoresFromBeforeKeywords:
    """Rows stored without terms get them from embeddings_backfill, with no provider call."""

    @pytest.fixture
    def termless(self, monkeypatch) -> list[Article]:
        field = Article._meta.get_field("embedding")
        monkeypatch.setattr(field, "keywords", False)
        rows = [Article.objects.create(title=f"t{n}", body=f"lamp number {n}") for n in range(5)]
        monkeypatch.setattr(field, "keywords", True)
        return rows

    def test_status_counts_them_and_backfill_adds_them(self, termless):
        from django_embeddings.backfill import embed_queryset
        from django_embeddings.management.commands.embeddings_status import field_status

        field = Article._meta.get_field("embedding")
        assert list(Article.objects.keyword_search("lamp", k=10)) == []
        assert field_status(field)["keywords_missing"] == 5
        provider = get_provider()
        before = len(provider.calls)  # type: ignore[attr-defined]
        (result,) = embed_queryset(Article.objects.all())
        assert (result.embedded, result.terms) == (0, 5)
        assert len(provider.calls) == before  # type: ignore[attr-defined]
        assert field_status(field)["keywords_missing"] == 0
        hits = list(Article.objects.keyword_search("lamp", k=10))
        assert sorted(h.pk for h in hits) == sorted(a.pk for a in termless)
        # Vectors are untouched: the semantic ranking is the same as before.
        assert [h.pk for h in Article.objects.semantic_search("lamp number 3", k=1)] == [
            termless[3].pk
        ]
        (again,) = embed_queryset(Article.objects.all())
        assert (again.selected, again.embedded, again.terms) == (0, 0, 0)

    def test_a_row_whose_text_changed_is_embedded_not_given_terms(self, termless):
        from django_embeddings.backfill import embed_queryset

        Article.objects.filter(pk=termless[0].pk).update(body="a new text")  # behind the ORM
        (result,) = embed_queryset(Article.objects.all(), mode="stale")
        assert result.embedded == 1 and result.terms == 4
        assert [h.pk for h in Article.objects.keyword_search("new", k=10)] == [termless[0].pk]

"""SemanticSearchFilter and SimilarityField, through real DRF requests (tests/rest_api.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.test import override_settings
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.schemas.openapi import AutoSchema
from rest_framework.test import APIClient, APIRequestFactory

from django_embeddings.rest_framework import SemanticSearchFilter, SimilarityField
from tests import rest_api
from tests.testapp.models import Article, Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.rest_api")]

WORDS = ["apple", "banana", "cherry", "delta", "echo", "fox", "golf", "hotel", "india"]
QUERY = "apple banana cherry"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def corpus() -> list[Article]:
    rng = np.random.default_rng(11)
    articles = [
        Article.objects.create(
            title=f"t{n}", body=" ".join(rng.choice(WORDS, size=4)), published=bool(n % 2)
        )
        for n in range(40)
    ]
    articles.append(Article.objects.create(title="exact", body=QUERY, published=True))
    return articles


def get(api: APIClient, url: str, **params: Any) -> Any:
    response = api.get(url, params)
    assert response.status_code == 200, response.content
    return response.json()


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def orm_top(k: int, **filters: Any) -> list[int]:
    """What the filter returns by default: a hybrid search (the field keeps keywords)."""
    return [a.pk for a in Article.objects.filter(**filters).hybrid_search(QUERY, k=k)]


class TestSearch:
    def test_ranks_by_meaning_and_words(self, api, corpus):
        rows = get(api, "/articles/", search=QUERY, k=5)
        assert ids(rows) == orm_top(5)
        assert rows[0]["title"] == "exact"
        assert rows[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
        expected = Article.objects.hybrid_search(QUERY, k=5)
        for row, hit in zip(rows, expected, strict=True):
            assert (row["score"], row["similarity"], row["keyword_score"]) == pytest.approx(
                (hit.score, hit.similarity, hit.keyword_score), abs=1e-5
            )
        scores = [row["score"] for row in rows]
        assert scores == sorted(scores, reverse=True)
        assert all(isinstance(score, float) for score in scores)

    def test_the_view_chooses_the_ranking(self, api, corpus):
        rows = get(api, "/semantic-only/", search=QUERY, k=5)
        assert ids(rows) == [a.pk for a in Article.objects.semantic_search(QUERY, k=5)]
        assert rows[0]["score"] is None and rows[0]["keyword_score"] is None
        rows = get(api, "/keyword-only/", search="cherry", k=50)
        assert ids(rows) == [a.pk for a in Article.objects.keyword_search("cherry", k=50)]
        assert all("cherry" in Article.objects.get(pk=pk).body for pk in ids(rows))

    def test_a_bad_ranking_is_improperly_configured(self, api, corpus):
        with pytest.raises(ImproperlyConfigured, match="search_ranking .*'fuzzy'"):
            api.get("/bad-ranking/")

    def test_default_k(self, api, corpus):
        assert len(get(api, "/articles/", search=QUERY)) == 10
        assert ids(get(api, "/small-k/", search=QUERY)) == orm_top(2)

    def test_no_or_blank_search_leaves_the_queryset_unchanged(self, api, corpus):
        everything = [a.pk for a in corpus]
        for params in ({}, {"search": ""}, {"search": "   "}, {"k": "nonsense"}):
            rows = get(api, "/articles/", **params)
            assert ids(rows) == everything
            assert {row["similarity"] for row in rows} == {None}

    def test_search_text_is_stripped(self, api, corpus):
        assert ids(get(api, "/articles/", search=f"  {QUERY}\n", k=3)) == orm_top(3)

    @pytest.mark.parametrize(
        ("k", "message"),
        [
            ("0", "Ensure this value is greater than or equal to 1."),
            ("-3", "Ensure this value is greater than or equal to 1."),
            ("101", "Ensure this value is less than or equal to 100."),
            ("ten", "A valid integer is required."),
            ("2.5", "A valid integer is required."),
            ("9" * 2000, "String value too large."),
        ],
    )
    def test_a_bad_k_is_a_400(self, api, corpus, k, message):
        response = api.get("/articles/", {"search": QUERY, "k": k})
        assert response.status_code == 400
        assert response.json() == {"k": [message]}

    def test_k_bounds(self, api, corpus):
        assert len(get(api, "/articles/", search=QUERY, k=1)) == 1
        assert len(get(api, "/articles/", search=QUERY, k=100)) == len(corpus)  # all, ranked
        assert len(get(api, "/small-k/", search=QUERY, k=5)) == 5
        response = api.get("/small-k/", {"search": QUERY, "k": 6})
        assert response.status_code == 400
        assert response.json() == {"k": ["Ensure this value is less than or equal to 5."]}

    def test_a_null_character_is_a_400(self, api, corpus):
        response = api.get("/articles/", {"search": "apple\x00"})
        assert response.status_code == 400
        assert response.json() == {"search": ["Null characters are not allowed."]}

    def test_parameter_names(self, api, corpus):
        assert ids(get(api, "/custom-params/", q=QUERY, n=3)) == orm_top(3)
        assert api.get("/custom-params/", {"q": QUERY, "n": 0}).json() == {
            "n": ["Ensure this value is greater than or equal to 1."]
        }
        assert len(get(api, "/custom-params/", search=QUERY)) == len(corpus)  # not searched
        with override_settings(REST_FRAMEWORK={"SEARCH_PARAM": "query"}):
            assert ids(get(api, "/articles/", query=QUERY, k=3)) == orm_top(3)

    def test_similarity_field_under_another_name(self, api, corpus):
        rows = get(api, "/scored/", search=QUERY, k=2)
        assert list(rows[0]) == ["id", "score"]
        assert rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert get(api, "/scored/")[0]["score"] is None

    def test_similarity_field_outside_a_view(self, corpus):
        article = Article.objects.get(title="exact")
        assert rest_api.ArticleSerializer(article).data["similarity"] is None
        hit = Article.objects.semantic_search(QUERY, k=1).get()
        assert rest_api.ArticleSerializer(hit).data["similarity"] == pytest.approx(1.0, abs=1e-5)
        field = rest_api.ArticleSerializer().fields["similarity"]
        assert field.read_only and field.allow_null

    def test_similarity_field_with_a_source(self, corpus):
        class Scores(serializers.Serializer):
            score = SimilarityField(source="relevance")

        hit = Article.objects.semantic_search(QUERY, k=1).get()
        hit.relevance = 0.25
        assert Scores(hit).data == {"score": 0.25}


class TestPagination:
    def test_page_numbers(self, api, corpus):
        expected = orm_top(7)
        first = get(api, "/paged/", search=QUERY, k=7)
        assert first["count"] == 7
        assert "search=" in first["next"] and "k=7" in first["next"]
        seen = ids(first["results"])
        seen += ids(get(api, "/paged/", search=QUERY, k=7, page=2)["results"])
        last = get(api, "/paged/", search=QUERY, k=7, page=3)
        assert last["next"] is None
        assert seen + ids(last["results"]) == expected
        assert api.get("/paged/", {"search": QUERY, "k": 7, "page": 4}).status_code == 404

    def test_limit_offset(self, api, corpus):
        page = get(api, "/offset/", search=QUERY, k=6, limit=2, offset=3)
        assert page["count"] == 6
        assert ids(page["results"]) == orm_top(6)[3:5]
        assert (
            ids(get(api, "/offset/", search=QUERY, k=6, limit=10, offset=5)["results"])
            == (orm_top(6)[5:])
        )

    def test_without_a_search(self, api, corpus):
        page = get(api, "/paged/")
        assert page["count"] == len(corpus)
        assert ids(page["results"]) == [a.pk for a in corpus[:3]]


class TestOtherBackends:
    def test_a_filter_before_selects_the_rows_searched(self, api, corpus):
        rows = get(api, "/filtered/", search=QUERY, k=8, published="0")
        assert len(rows) == 8
        assert ids(rows) == orm_top(8, published=False)
        assert not Article.objects.filter(pk__in=ids(rows), published=True).exists()
        assert get(api, "/filtered/", search=QUERY, k=1, published="1")[0]["title"] == "exact"

    def test_drf_search_filter_on_another_parameter(self, api, corpus):
        rows = get(api, "/keyword/", q="t1", search=QUERY, k=4)
        assert ids(rows) == orm_top(4, title__icontains="t1")
        assert all("t1" in row["title"] for row in rows)

    def test_ordering_after_reorders_the_hits(self, api, corpus):
        hits = orm_top(5)
        rows = get(api, "/ordered-after/", search=QUERY, k=5, ordering="title")
        assert sorted(ids(rows)) == sorted(hits)
        assert [row["title"] for row in rows] == sorted(row["title"] for row in rows)
        assert ids(get(api, "/ordered-after/", search=QUERY, k=5, ordering="-score")) == hits
        # Without a search there is no score column to order by (as the README says).
        with pytest.raises(FieldError, match="similarity"):
            api.get("/ordered-after/", {"ordering": "similarity"})

    def test_ordering_before_is_replaced_by_the_rank(self, api, corpus):
        assert ids(get(api, "/ordered-before/", search=QUERY, k=5, ordering="-title")) == (
            orm_top(5)
        )
        titles = [row["title"] for row in get(api, "/ordered-before/", ordering="-title")]
        assert titles == sorted(titles, reverse=True)


class TestSeveralFields:
    @pytest.fixture
    def products(self) -> list[Product]:
        return [
            Product.objects.create(name=name, description=description)
            for name, description in [
                ("desk lamp", "a reading light"),
                ("office chair", "lamp lamp lamp lamp"),
                ("floor lamp", "tall"),
                ("bookshelf", "oak"),
            ]
        ]

    def test_the_view_chooses_the_field(self, api, products):
        for url, field in [
            ("/products/name/", "name_embedding"),
            ("/products/text/", "full_embedding"),
        ]:
            rows = get(api, url, search="lamp", k=2)
            expected = Product.objects.hybrid_search("lamp", k=2, field=field)
            assert ids(rows) == [p.pk for p in expected]
            assert [row["similarity"] for row in rows] == pytest.approx(
                [p.similarity for p in expected], abs=1e-6
            )

    def test_an_unchosen_field_is_improperly_configured(self, api, products):
        with pytest.raises(ImproperlyConfigured, match="several EmbeddingFields .*embedding_field"):
            api.get("/products/unchosen/")

    def test_a_misnamed_field_is_improperly_configured(self, api, products):
        with pytest.raises(
            ImproperlyConfigured, match="embedding_field = 'name'.*'name_embedding'"
        ):
            api.get("/products/misnamed/", {"search": "lamp"})


class TestConfiguration:
    def test_a_queryset_without_semantic_search(self, api):
        with pytest.raises(ImproperlyConfigured, match="EmbeddingManager"):
            api.get("/without-manager/")

    @pytest.mark.parametrize(
        ("url", "match"),
        [("/bad-max-k/", "search_max_k <= 1000"), ("/bad-default-k/", "should be ints")],
    )
    def test_bad_k_settings(self, api, url, match):
        with pytest.raises(ImproperlyConfigured, match=match):
            api.get(url)

    def test_a_model_without_an_embedding_field(self):
        from django.contrib.auth.models import User

        view = rest_api.ArticleList()
        with pytest.raises(ImproperlyConfigured, match="auth.User has no EmbeddingField"):
            SemanticSearchFilter().get_embedding_field(_searchable(User), view)


def _searchable(model: Any) -> Any:
    """A queryset of ``model`` with a semantic_search() method, for the field checks."""
    from django_embeddings import EmbeddingQuerySet

    return EmbeddingQuerySet(model)


class TestSchemaAndHtml:
    def test_schema_parameters(self):
        view = rest_api.SmallK()
        parameters = view.schema.get_filter_parameters("/small-k/", "GET")
        assert [(p["name"], p["in"], p["required"]) for p in parameters] == [
            ("search", "query", False),
            ("k", "query", False),
        ]
        assert parameters[0]["schema"] == {"type": "string"}
        assert parameters[1]["schema"] == {
            "type": "integer",
            "minimum": 1,
            "maximum": 5,
            "default": 2,
        }
        assert all(isinstance(p["description"], str) and p["description"] for p in parameters)
        renamed = rest_api.CustomParams().schema.get_filter_parameters("/custom-params/", "GET")
        assert [p["name"] for p in renamed] == ["q", "n"]

    def test_similarity_in_the_response_schema(self):
        schema = AutoSchema()
        field = rest_api.ArticleSerializer().fields["similarity"]
        assert schema.map_field(field) == {"type": "number"}
        component = schema.map_serializer(rest_api.ArticleSerializer())
        assert component["properties"]["similarity"] == {
            "type": "number",
            "readOnly": True,
            "nullable": True,
        }

    def test_browsable_api_form(self):
        request = Request(APIRequestFactory().get("/small-k/", {"search": "a <b>", "k": "3"}))
        html = SemanticSearchFilter().to_html(request, Article.objects.all(), rest_api.SmallK())
        assert 'name="search" value="a &lt;b&gt;"' in html
        assert 'name="k" value="3" min="1" max="5"' in html
        request = Request(APIRequestFactory().get("/small-k/"))
        html = SemanticSearchFilter().to_html(request, Article.objects.all(), rest_api.SmallK())
        assert 'name="k" value="2"' in html

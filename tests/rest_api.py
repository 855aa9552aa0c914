"""A small REST API over the test app, for tests/test_rest_framework.py (``urls`` marker)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import path
from rest_framework import filters, generics, serializers
from rest_framework.pagination import LimitOffsetPagination, PageNumberPagination
from rest_framework.request import Request

from django_embeddings.rest_framework import ScoreField, SemanticSearchFilter, SimilarityField
from tests.testapp.models import Article, Doc, Product


class WithSimilarity(serializers.ModelSerializer):
    """A model's rows with the scores of a search (``None`` outside one or, for those of
    a hybrid search, a semantic one)."""

    score = ScoreField()
    similarity = SimilarityField()
    keyword_score = ScoreField("keyword_score")


class SearchList(generics.ListAPIView):
    """A list view searched by meaning; each subclass names its rows and serializer."""

    filter_backends = [SemanticSearchFilter]


class ArticleSerializer(WithSimilarity):
    class Meta:
        model = Article
        fields = ["id", "title", "score", "similarity", "keyword_score"]


class ArticleList(SearchList):
    queryset = Article.objects.order_by("pk")
    serializer_class = ArticleSerializer


class SmallK(ArticleList):
    search_default_k = 2
    search_max_k = 5


class Pages(PageNumberPagination):
    page_size = 3


class PagedArticles(ArticleList):
    pagination_class = Pages


class OffsetArticles(ArticleList):
    pagination_class = LimitOffsetPagination


class PublishedFilter(filters.BaseFilterBackend):
    """``?published=1`` or ``0``: a filter backend of the kind django-filter provides."""

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> Any:
        value = request.query_params.get("published")
        return queryset if value is None else queryset.filter(published=value == "1")


class FilteredArticles(ArticleList):
    filter_backends = [PublishedFilter, SemanticSearchFilter]


class KeywordFilter(filters.SearchFilter):
    search_param = "q"


class KeywordThenMeaning(ArticleList):
    """DRF's own SearchFilter (on another parameter) narrows the rows first."""

    filter_backends = [KeywordFilter, SemanticSearchFilter]
    search_fields = ["title"]


class OrderedAfter(ArticleList):
    filter_backends = [SemanticSearchFilter, filters.OrderingFilter]
    ordering_fields = ["title", "score", "similarity"]


class OrderedBefore(ArticleList):
    filter_backends = [filters.OrderingFilter, SemanticSearchFilter]
    ordering_fields = ["title"]


class ScoredArticleSerializer(serializers.ModelSerializer):
    score = SimilarityField()

    class Meta:
        model = Article
        fields = ["id", "score"]


class ScoredArticles(ArticleList):
    serializer_class = ScoredArticleSerializer


class ProductSerializer(WithSimilarity):
    class Meta:
        model = Product
        fields = ["id", "name", "similarity"]


class ProductsByName(SearchList):
    queryset = Product.objects.order_by("pk")
    serializer_class = ProductSerializer
    embedding_field = "name_embedding"


class ProductsByText(ProductsByName):
    embedding_field = "full_embedding"


class ProductsUnchosen(ProductsByName):
    embedding_field = None


class ProductsMisnamed(ProductsByName):
    embedding_field = "name"


class DocSerializer(serializers.ModelSerializer):
    class Meta:
        model = Doc
        fields = ["id"]


class WithoutManager(SearchList):
    """A queryset without semantic_search(): a plain manager over a searchable model."""

    queryset = Doc._base_manager.order_by("pk")
    serializer_class = DocSerializer


class RenamedParams(SemanticSearchFilter):
    search_param = "q"
    k_param = "n"


class CustomParams(ArticleList):
    filter_backends = [RenamedParams]


class SemanticOnly(ArticleList):
    search_ranking = "semantic"


class KeywordOnly(ArticleList):
    search_ranking = "keyword"


class BadRanking(ArticleList):
    search_ranking = "fuzzy"


class BadMaxK(ArticleList):
    search_max_k = 5000


class BadDefaultK(ArticleList):
    search_default_k = "10"


urlpatterns = [
    path("articles/", ArticleList.as_view()),
    path("small-k/", SmallK.as_view()),
    path("paged/", PagedArticles.as_view()),
    path("offset/", OffsetArticles.as_view()),
    path("filtered/", FilteredArticles.as_view()),
    path("keyword/", KeywordThenMeaning.as_view()),
    path("ordered-after/", OrderedAfter.as_view()),
    path("ordered-before/", OrderedBefore.as_view()),
    path("scored/", ScoredArticles.as_view()),
    path("products/name/", ProductsByName.as_view()),
    path("products/text/", ProductsByText.as_view()),
    path("products/unchosen/", ProductsUnchosen.as_view()),
    path("products/misnamed/", ProductsMisnamed.as_view()),
    path("without-manager/", WithoutManager.as_view()),
    path("custom-params/", CustomParams.as_view()),
    path("semantic-only/", SemanticOnly.as_view()),
    path("keyword-only/", KeywordOnly.as_view()),
    path("bad-ranking/", BadRanking.as_view()),
    path("bad-max-k/", BadMaxK.as_view()),
    path("bad-default-k/", BadDefaultK.as_view()),
]

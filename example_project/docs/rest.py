"""The REST API, with Django REST framework: ``/api/documents/?search=...&k=...``.

``SemanticSearchFilter`` ranks by meaning and words (hybrid search) after
``KindModuleFilter`` has selected the rows, so ``?kind=function&search=...``
returns the best functions. Without ``search`` the list is every document, page by
page, in the model's order.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.urls import path
from rest_framework import filters, generics, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from django_embeddings.rest_framework import ScoreField, SemanticSearchFilter, SimilarityField
from example_project.docs.forms import DEFAULT_K, MAX_K
from example_project.docs.models import Document


class DocumentSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    url = serializers.HyperlinkedIdentityField(view_name="docs:document")
    # Each null when the list is not a search.
    score = ScoreField()
    similarity = SimilarityField()
    keyword_score = ScoreField("keyword_score")

    class Meta:
        model = Document
        fields = [
            "id",
            "title",
            "kind",
            "module",
            "snippet",
            "score",
            "similarity",
            "keyword_score",
            "url",
        ]


class KindModuleFilter(filters.BaseFilterBackend):
    """``?kind=`` (one of Document.Kind) and ``?module=`` (a module and its submodules)."""

    def filter_queryset(
        self, request: Request, queryset: QuerySet[Any], view: Any
    ) -> QuerySet[Any]:
        params = request.query_params
        if params.get("kind"):
            kind = serializers.ChoiceField(choices=Document.Kind.choices)
            try:
                queryset = queryset.filter(kind=kind.run_validation(params["kind"]))
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"kind": exc.detail}) from None
        if params.get("module"):
            module = params["module"]
            queryset = queryset.filter(Q(module=module) | Q(module__startswith=f"{module}."))
        return queryset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {"name": "kind", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "module", "in": "query", "required": False, "schema": {"type": "string"}},
        ]


class Pages(PageNumberPagination):
    page_size = MAX_K  # a search's hits fit on one page


class DocumentList(generics.ListAPIView):  # type: ignore[type-arg]
    queryset = Document.objects.all()
    serializer_class = DocumentSerializer
    filter_backends = [KindModuleFilter, SemanticSearchFilter]
    pagination_class = Pages
    search_default_k = DEFAULT_K
    search_max_k = MAX_K


urlpatterns = [path("documents/", DocumentList.as_view(), name="api-documents")]

"""``SemanticSearchFilter``: a DRF filter backend that ranks rows by meaning and words.

``?search=<text>`` keeps the ``k`` rows that rank best for the text, best first: by
``hybrid_search()`` (rows annotated with ``score``, ``similarity`` and
``keyword_score``) when the field keeps a keyword index, else by
``semantic_search()`` (``similarity``); ``?k=<n>`` sets ``k``. Without a search text the
queryset is returned unchanged. Backends listed before this one (and the view's own
queryset filters) select the rows the top ``k`` is taken from, because the search
is lazy and takes its top ``k`` among the rows the final queryset selects.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.template import loader
from django.utils.encoding import force_str
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request
from rest_framework.settings import api_settings

from django_embeddings.fields import EmbeddingField, embedding_field_named
from django_embeddings.querysets import MAX_K

__all__ = ["SemanticSearchFilter"]


class SemanticSearchFilter(BaseFilterBackend):
    """Exact semantic search for list views: ``?search=<text>&k=<n>``.

    A view chooses with attributes of its own, else this class's:

    - ``embedding_field``: the name of the EmbeddingField to search, needed when the
      model has several;
    - ``search_default_k`` and ``search_max_k``: ``k`` when ``?k=`` is not given, and
      the largest ``k`` a client may ask for (at most ``querysets.MAX_K``);
    - ``search_ranking``: ``"hybrid"``, ``"semantic"`` or ``"keyword"``; by default
      hybrid when the field keeps a keyword index, else semantic.
    """

    # The query parameters; None takes DRF's SEARCH_PARAM setting ("search").
    search_param: str | None = None
    k_param = "k"
    default_k = 10
    max_k = 100
    embedding_field: str | None = None
    ranking: str | None = None  # None: hybrid when the field has keywords, else semantic
    template = "django_embeddings/rest_framework/search.html"
    search_title = _("Semantic search")
    search_description = _("A text to rank the results by meaning, best first.")
    k_description = _("How many of the best matches to return (with a search text).")

    # -- the request's parameters -----------------------------------------------------

    def get_search_param(self) -> str:
        return self.search_param or str(api_settings.SEARCH_PARAM)

    def get_search_text(self, request: Request) -> str:
        """The search text, stripped; empty when there is none."""
        value = request.query_params.get(self.get_search_param(), "")
        field = serializers.CharField(allow_blank=True, trim_whitespace=True)
        try:
            return str(field.run_validation(value))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({self.get_search_param(): exc.detail}) from None

    def get_k(self, request: Request, view: Any) -> int:
        """``?k=`` as an int between 1 and the view's max k, else a 400."""
        default, maximum = self.get_k_bounds(view)
        value = request.query_params.get(self.k_param, "")
        if not value.strip():
            return default
        field = serializers.IntegerField(min_value=1, max_value=maximum)
        try:
            return int(field.run_validation(value))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({self.k_param: exc.detail}) from None

    # -- the view's configuration ------------------------------------------------------

    def get_k_bounds(self, view: Any) -> tuple[int, int]:
        """The view's default and max ``k``; a wrong value is the developer's to fix."""
        default = getattr(view, "search_default_k", self.default_k)
        maximum = getattr(view, "search_max_k", self.max_k)
        for value in (default, maximum):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ImproperlyConfigured(
                    f"{_name(view)}: search_default_k and search_max_k should be ints, "
                    f"not {value!r}."
                )
        if not 1 <= default <= maximum <= MAX_K:
            raise ImproperlyConfigured(
                f"{_name(view)}: search_default_k ({default}) and search_max_k ({maximum}) "
                f"should satisfy 1 <= search_default_k <= search_max_k <= {MAX_K}."
            )
        return default, maximum

    def get_embedding_field(self, queryset: models.QuerySet[Any], view: Any) -> EmbeddingField:
        """The field to search: the view's ``embedding_field``, else the model's only one."""
        model = queryset.model
        if not callable(getattr(queryset, "semantic_search", None)):
            raise ImproperlyConfigured(
                f"{_name(view)}: the queryset of {model._meta.label} has no semantic_search(); "
                "give the model `objects = EmbeddingManager()` (or a QuerySet with "
                "EmbeddingQuerySetMixin)."
            )
        name = getattr(view, "embedding_field", self.embedding_field)
        try:
            return embedding_field_named(
                model, name, how_to_choose="set embedding_field on the view to choose one"
            )
        except ValueError as exc:
            chosen = f"embedding_field = {name!r}: " if name is not None else ""
            raise ImproperlyConfigured(f"{_name(view)}: {chosen}{exc}") from exc

    # -- filtering ---------------------------------------------------------------------

    def filter_queryset(
        self, request: Request, queryset: models.QuerySet[Any], view: Any
    ) -> models.QuerySet[Any]:
        # The configuration is checked on every request, so a wrong one fails at once,
        # not on the first search.
        field = self.get_embedding_field(queryset, view)
        self.get_k_bounds(view)
        self.get_ranking(field, view)
        text = self.get_search_text(request)
        if not text:
            return queryset
        self.view = view  # for search(), whose signature overrides rely on
        return self.search(queryset, text, self.get_k(request, view), field)

    def get_ranking(self, field: EmbeddingField, view: Any) -> str:
        """How rows are ranked: the view's ``search_ranking``, else this class's ``ranking``,
        else hybrid when the field keeps a keyword index."""
        ranking = getattr(view, "search_ranking", self.ranking)
        if ranking is None:
            return "hybrid" if field.keywords else "semantic"
        if ranking not in _RANKINGS:
            raise ImproperlyConfigured(
                f"{_name(view)}: search_ranking should be one of {list(_RANKINGS)!r}, "
                f"not {ranking!r}."
            )
        if ranking != "semantic" and not field.keywords:
            raise ImproperlyConfigured(
                f"{_name(view)}: search_ranking is {ranking!r}, but {field.label} keeps no "
                "keyword index (keywords=False)."
            )
        return str(ranking)

    def search(
        self, queryset: models.QuerySet[Any], text: str, k: int, field: EmbeddingField
    ) -> models.QuerySet[Any]:
        """The search call itself: the one place that chooses how rows are ranked."""
        method = _RANKINGS[self.get_ranking(field, getattr(self, "view", None))]
        result: models.QuerySet[Any] = getattr(queryset, method)(text, k=k, field=field.name)
        return result

    # -- the browsable API and OpenAPI -------------------------------------------------

    def to_html(self, request: Request, queryset: models.QuerySet[Any], view: Any) -> str:
        default, maximum = self.get_k_bounds(view)
        context = {
            "title": self.search_title,
            "search_param": self.get_search_param(),
            "search_text": request.query_params.get(self.get_search_param(), ""),
            "k_param": self.k_param,
            "k": request.query_params.get(self.k_param, "") or default,
            "max_k": maximum,
        }
        return loader.get_template(self.template).render(context)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        default, maximum = self.get_k_bounds(view)
        return [
            {
                "name": self.get_search_param(),
                "required": False,
                "in": "query",
                "description": force_str(self.search_description),
                "schema": {"type": "string"},
            },
            {
                "name": self.k_param,
                "required": False,
                "in": "query",
                "description": force_str(self.k_description),
                "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
            },
        ]


_RANKINGS = {
    "hybrid": "hybrid_search",
    "semantic": "semantic_search",
    "keyword": "keyword_search",
}


def _name(view: Any) -> str:
    return type(view).__qualname__

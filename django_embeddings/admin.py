"""``SemanticSearchAdminMixin``: search the Django admin by meaning.

Mix it into a ``ModelAdmin`` of a model with an EmbeddingField::

    @admin.register(Article)
    class ArticleAdmin(SemanticSearchAdminMixin, admin.ModelAdmin):
        search_fields = ["title", "body"]

- The changelist's search box ranks rows by meaning and words (the
  ``semantic_search_k`` best by ``hybrid_search()``, best first, with columns for
  the fused score, the similarity and the keyword score), or by meaning alone
  (``semantic_search()``, a similarity column) when the field keeps no keyword index.
  A link under the box switches to Django's usual word search (``?semantic=0``)
  and back; provider failures fall back to word search with a warning.
- The change page gets a "Similar items" link (``?similar_to=<pk>`` on the
  changelist), and the changelist a "Show similar items" action.
- The EmbeddingField column is shown read-only, never as an input, as the row's
  state: "embedded" (searches find it), "pending" (saved but not embedded yet),
  "stale" (embedded by another provider) or "-" (no text to embed).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ORDER_VAR, SEARCH_VAR, ChangeList
from django.core import checks
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext, gettext_lazy

from django_embeddings import cache, invalidation
from django_embeddings.backfill import is_pending
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import EmbeddingField, embedding_fields
from django_embeddings.querysets import EmbeddingQuerySetMixin

__all__ = ["SEMANTIC_VAR", "SIMILAR_VAR", "EmbeddingColumn", "SemanticSearchAdminMixin"]

logger = logging.getLogger(__name__)

SEMANTIC_VAR = "semantic"  # "0": search by words, as Django does
SIMILAR_VAR = "similar_to"  # a quoted primary key: rank rows by similarity to it

EMBEDDED, PENDING, STALE = "embedded", "pending", "stale"
_STATE_LABELS = {
    EMBEDDED: gettext_lazy("embedded"),
    PENDING: gettext_lazy("pending"),
    STALE: gettext_lazy("stale"),
}

if TYPE_CHECKING:
    _Base = admin.ModelAdmin[Any]
else:
    _Base = object


class EmbeddingColumn:
    """How the admin shows an EmbeddingField: the row's state, not the hash the
    column holds. The mixin puts one in place of the field's name in
    ``list_display``, ``list_display_links``, fieldsets and ``readonly_fields``.

    One is made per request, and reads the field's index once.
    """

    def __init__(self, field: EmbeddingField, empty_value_display: str) -> None:
        self.field = field
        self.__name__ = field.name  # the admin's CSS classes: field-<name>, column-<name>
        self.short_description = field.verbose_name
        self.empty_value_display = empty_value_display
        self._indexes: dict[str, cache.FieldIndex] = {}
        self._identity: tuple[str | None] | None = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EmbeddingColumn):
            return other.field is self.field
        return NotImplemented

    def __hash__(self) -> int:
        return hash((EmbeddingColumn, id(self.field)))

    def __repr__(self) -> str:
        return f"<EmbeddingColumn {self.field.label}>"

    def __call__(self, obj: models.Model) -> str:
        state = self.state(obj)
        return self.empty_value_display if state is None else str(_STATE_LABELS[state])

    def state(self, obj: models.Model) -> str | None:
        """``"embedded"``, ``"pending"``, ``"stale"``, or ``None``: no text to embed."""
        field = self.field
        column = obj.__dict__.get(field.attname)
        meta = self._index(obj._state.db or "default").meta(field.key(obj.pk))
        if column is None and meta is None:
            # No save recorded a text (raw SQL, rows from before the field existed) or
            # the text is empty: only the text tells.
            return PENDING if field.source_text(obj).strip() else None
        if is_pending(column, meta):
            return PENDING
        identity = self._provider_identity()
        if meta is not None and identity is not None and meta[1] != identity:
            return STALE
        return EMBEDDED

    def _index(self, using: str) -> cache.FieldIndex:
        if using not in self._indexes:
            store = self.field.store_for(using)
            check = invalidation.needs_check()
            self._indexes[using] = cache.get(store, check=check, keep=self.field.cache)
        return self._indexes[using]

    def _provider_identity(self) -> str | None:
        if self._identity is None:
            try:
                self._identity = (str(self.field.get_provider().identity),)
            except Exception:  # a misconfigured provider must not break the admin
                logger.warning("%s: cannot build its provider", self.field.label, exc_info=True)
                self._identity = (None,)
        return self._identity[0]


class SemanticChangeList(ChangeList):
    """A ChangeList that keeps our query parameters out of its field lookups.

    They stay in ``self.params``, so pagination, sorting and filter links keep them.
    """

    def get_filters_params(self, params: Any = None) -> Any:
        lookup_params = super().get_filters_params(params)
        for name in (SEMANTIC_VAR, SIMILAR_VAR):
            lookup_params.pop(name, None)
        return lookup_params

    def get_ordering_field_columns(self) -> Any:
        # Ranked results are in no column's order: mark no header as sorted.
        if ORDER_VAR not in self.params and _ranked(self.params):
            return {}
        return super().get_ordering_field_columns()


class SemanticSearchAdminMixin(_Base):
    """Adds search by meaning, "similar items" and a read-only embedding column."""

    semantic_search_field: str | None = None
    """The EmbeddingField to search; needed only when the model has several."""

    semantic_search_k: int = 100
    """How many of the most similar rows a search by meaning lists."""

    actions: Any = ["show_similar_items"]
    """Keep ``"show_similar_items"`` in the list when you set ``actions`` yourself."""

    change_list_template = "admin/django_embeddings/change_list.html"
    change_form_template = "admin/django_embeddings/change_form.html"

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = list(super().check(**kwargs))
        fields = embedding_fields(self.model)
        names = [field.name for field in fields]
        name = self.semantic_search_field
        problem = None
        if not fields:
            problem = f"{self.model._meta.label} has no EmbeddingField"
        elif name is None and len(fields) > 1:
            problem = f"{self.model._meta.label} has several EmbeddingFields {names!r}"
        elif name is not None and name not in names:
            problem = (
                f"semantic_search_field is {name!r}, but {self.model._meta.label} has "
                f"EmbeddingFields {names!r}"
            )
        if problem:
            errors.append(
                checks.Error(
                    f"{type(self).__name__} searches by meaning, but {problem}.",
                    hint="Set semantic_search_field to the name of one EmbeddingField.",
                    obj=type(self),
                    id="django_embeddings.E101",
                )
            )
        return errors

    # -- changelist --------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SemanticChangeList

    def get_search_fields(self, request: HttpRequest) -> Any:
        fields = super().get_search_fields(request)
        if fields:
            return fields
        # Without search fields Django shows no search box: offer the source column,
        # or the model's text columns when the source is computed.
        source = self._embedding_field().source
        if isinstance(source, str) and self._is_column(source):
            return [source]
        return [
            field.name
            for field in self.model._meta.concrete_fields
            if isinstance(field, models.CharField | models.TextField) and not field.choices
        ]

    def get_search_results(
        self, request: HttpRequest, queryset: models.QuerySet[Any], search_term: str
    ) -> tuple[models.QuerySet[Any], bool]:
        if not self._is_changelist(request):
            return super().get_search_results(request, queryset, search_term)
        similar = request.GET.get(SIMILAR_VAR)
        if similar:
            ranked = self._similar(request, queryset, similar)
            if ranked is not None:
                # A search term then narrows the similar rows by words.
                narrowed, duplicates = super().get_search_results(request, ranked, search_term)
                return self._keep_sort(request, queryset, narrowed), duplicates
        if not search_term.strip() or not self._semantic_enabled(request):
            return super().get_search_results(request, queryset, search_term)
        try:
            searchable = _searchable(queryset)
            search = (
                searchable.hybrid_search
                if self._embedding_field().keywords
                else searchable.semantic_search
            )
            ranked = search(search_term, k=self.semantic_search_k, field=self.semantic_search_field)
        except Exception as exc:  # any provider failure: the admin must stay usable
            logger.warning(
                "Search by meaning failed in the admin of %s: %s",
                self.opts.label,
                exc,
                exc_info=exc,
            )
            messages.warning(
                request,
                gettext("Search by meaning failed (%(error)s); showing word search results.")
                % {"error": exc},
            )
            return super().get_search_results(request, queryset, search_term)
        return self._keep_sort(request, queryset, ranked), False

    def get_list_display(self, request: HttpRequest) -> Any:
        display = self._columns(super().get_list_display(request))
        if not self._is_ranked(request):
            return display
        scores = ["semantic_similarity"]
        if not request.GET.get(SIMILAR_VAR) and self._embedding_field().keywords:
            scores = ["semantic_score", "semantic_similarity", "semantic_keyword_score"]
        return [*display, *(name for name in scores if name not in display)]

    def get_list_display_links(self, request: HttpRequest, list_display: Any) -> Any:
        links = super().get_list_display_links(request, list_display)
        return None if links is None else self._columns(links)

    @admin.display(description=gettext_lazy("similarity"))
    def semantic_similarity(self, obj: models.Model) -> str:
        score = getattr(obj, "similarity", None)
        return "" if score is None else f"{score:.3f}"

    @admin.display(description=gettext_lazy("score"))
    def semantic_score(self, obj: models.Model) -> str:
        score = getattr(obj, "score", None)
        return "" if score is None else f"{score:.3f}"

    @admin.display(description=gettext_lazy("keyword score"))
    def semantic_keyword_score(self, obj: models.Model) -> str:
        score = getattr(obj, "keyword_score", None)
        return "" if score is None else f"{score:.2f}"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        enabled = self._semantic_enabled(request)
        params = request.GET.copy()
        params.pop("p", None)  # the page number means nothing in the other mode
        if enabled:
            params[SEMANTIC_VAR] = "0"
        else:
            params.pop(SEMANTIC_VAR, None)
        similar = request.GET.copy()
        similar.pop(SIMILAR_VAR, None)
        similar.pop("p", None)
        context = {
            "semantic_search": {
                "enabled": enabled,
                "hybrid": self._embedding_field().keywords,
                "toggle_url": "?" + params.urlencode(),
                "similar_to": request.GET.get(SIMILAR_VAR) or None,
                "clear_similar_url": "?" + similar.urlencode(),
            },
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    # -- change page -------------------------------------------------------------------

    def get_readonly_fields(self, request: HttpRequest, obj: models.Model | None = None) -> Any:
        readonly = self._columns(super().get_readonly_fields(request, obj))
        for field in embedding_fields(self.model):
            column = self._column(field.name)
            if column not in readonly:
                readonly.append(column)
        return readonly

    def get_fieldsets(self, request: HttpRequest, obj: models.Model | None = None) -> Any:
        return [
            (name, {**options, "fields": [self._line(line) for line in options["fields"]]})
            for name, options in super().get_fieldsets(request, obj)
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: models.Model | None = None,
    ) -> HttpResponse:
        if change and obj is not None:
            column = EmbeddingColumn(self._embedding_field(), "")
            if column.state(obj) == EMBEDDED:
                context["similar_items_url"] = self._similar_url(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # -- actions -----------------------------------------------------------------------

    @admin.action(description=gettext_lazy("Show items similar to the selected one"))
    def show_similar_items(
        self, request: HttpRequest, queryset: models.QuerySet[Any]
    ) -> HttpResponse | None:
        selected = list(queryset[:2])
        if len(selected) != 1:
            messages.warning(request, gettext("Select exactly one item to see similar ones."))
            return None
        return HttpResponseRedirect(self._similar_url(selected[0]))

    # -- internals ---------------------------------------------------------------------

    def _embedding_field(self) -> EmbeddingField:
        fields = embedding_fields(self.model)
        for field in fields:
            if self.semantic_search_field in (None, field.name):
                return field
        raise EmbeddingsError(
            f"{type(self).__name__}.semantic_search_field is {self.semantic_search_field!r}, "
            f"but {self.model._meta.label} has EmbeddingFields {[f.name for f in fields]!r}."
        )

    def _column(self, name: Any) -> Any:
        """An :class:`EmbeddingColumn` in place of an EmbeddingField's name."""
        if isinstance(name, str):
            for field in embedding_fields(self.model):
                if name == field.name:
                    return EmbeddingColumn(field, self.get_empty_value_display())
        return name

    def _columns(self, names: Any) -> list[Any]:
        return [self._column(name) for name in names]

    def _line(self, line: Any) -> Any:
        """A fieldset line: a name, or a tuple of names shown side by side."""
        if isinstance(line, list | tuple):
            return tuple(self._column(name) for name in line)
        return self._column(line)

    def _is_column(self, name: str) -> bool:
        try:
            self.model._meta.get_field(name)
        except Exception:
            return False
        return True

    def _is_changelist(self, request: HttpRequest) -> bool:
        """Rank only on the changelist (autocomplete searches stay word searches)."""
        match = getattr(request, "resolver_match", None)
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return match is not None and match.url_name == name

    def _semantic_enabled(self, request: HttpRequest) -> bool:
        return request.GET.get(SEMANTIC_VAR, "1") != "0"

    def _is_ranked(self, request: HttpRequest) -> bool:
        return _ranked(request.GET)

    def _similar_url(self, obj: models.Model) -> str:
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
        url = reverse(name, current_app=self.admin_site.name)
        return f"{url}?{SIMILAR_VAR}={quote(obj.pk)}"

    def _similar(
        self, request: HttpRequest, queryset: models.QuerySet[Any], value: str
    ) -> models.QuerySet[Any] | None:
        obj = self.get_object(request, unquote(value))
        if obj is None:
            messages.warning(request, gettext("The item to compare with does not exist."))
            return None
        try:
            return _searchable(queryset).similar_to(
                obj, k=self.semantic_search_k, field=self.semantic_search_field
            )
        except EmbeddingsError as exc:
            messages.warning(request, str(exc))
            return None

    def _keep_sort(
        self,
        request: HttpRequest,
        original: models.QuerySet[Any],
        ranked: models.QuerySet[Any],
    ) -> models.QuerySet[Any]:
        """Best first, unless the user sorted by a column header."""
        if request.GET.get(ORDER_VAR):
            return ranked.order_by(*original.query.order_by)
        return ranked


def _ranked(params: Any) -> bool:
    """Do these changelist parameters list rows by similarity?"""
    if params.get(SIMILAR_VAR):
        return True
    return bool(params.get(SEARCH_VAR, "").strip()) and params.get(SEMANTIC_VAR, "1") != "0"


_mixed: dict[type[models.QuerySet[Any]], type[EmbeddingQuerySetMixin]] = {}


def _searchable(queryset: models.QuerySet[Any]) -> EmbeddingQuerySetMixin:
    """``queryset`` with ``semantic_search()``, even if its manager does not provide it."""
    if isinstance(queryset, EmbeddingQuerySetMixin):
        return queryset
    cls = type(queryset)
    if cls not in _mixed:
        _mixed[cls] = type(f"Embedding{cls.__name__}", (EmbeddingQuerySetMixin, cls), {})
    clone = queryset._chain()  # type: ignore[attr-defined]
    clone.__class__ = _mixed[cls]
    return clone  # type: ignore[no-any-return]

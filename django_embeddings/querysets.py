"""``semantic_search`` and ``similar_to`` on querysets.

A search is lazy, like the rest of a QuerySet. ``semantic_search()`` embeds the
query text at once (so a provider error shows where the search is written) and
adds three expressions that stand for the hits: a filter, the ``similarity``
annotation and the ordering. When the queryset is evaluated, with every filter
it has by then, the exact top ``k`` among the rows it selects are found in this
process's index, and each expression becomes one compact piece of SQL over those
rows (never one ``When`` per hit). A hit is served only if the hash its vector
was stored under equals the row's column, the hash of the text last saved: no
crash or race ever serves a vector of a text the database no longer holds.

Filters added after the search select rows before the top ``k`` is taken, except
filters on ``similarity``, which apply to the hits.

``asemantic_search()`` and ``asimilar_to()`` are the same methods for async code:
the first embeds the query text through the provider's async path, the second
reads the object's vector in a thread, and both return the same lazy queryset,
whose evaluation (``async for``, ``acount()``...) Django runs in its own thread.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Self

import numpy as np
from asgiref.sync import sync_to_async
from django.core.exceptions import EmptyResultSet
from django.db import models, router
from django.db.models import F
from django.db.models.expressions import Col
from django.db.models.functions import Cast
from django.db.models.lookups import Lookup
from django.db.models.query import ModelIterable
from django.db.models.sql.constants import MULTI
from django.db.models.sql.where import AND

from django_embeddings import cache, hybrid, invalidation, selectivity
from django_embeddings.conf import conf
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import EmbeddingField, embedding_field_named
from django_embeddings.keywords.terms import analyze
from django_embeddings.providers import aembed_checked, embed_checked
from django_embeddings.ranking import Top
from django_embeddings.typing import Vector

__all__ = ["MAX_K", "EmbeddingManager", "EmbeddingQuerySet", "EmbeddingQuerySetMixin"]

logger = logging.getLogger(__name__)

MAX_K = 1_000
MISSING = object()
# A filter selecting at most this share of the stored rows is narrow: the keys it
# selects are read and only their rows scored. Past it, scoring every row and checking
# the best against the filter costs less (measured at 100k rows of 384 dimensions on
# SQLite: reading a selected key costs about as much as scoring 7 rows).
NARROW_SHARE = 0.15
# A filter selecting at most this many rows is narrow whatever the store's size; up
# to this many keys are read first (with a LIMIT), which settles most small searches.
_READ_FIRST = 1_000
# ... or this many rows per hit asked for: checking a candidate against the filter in
# the database costs more than reading a selected row's key.
_KEYS_PER_HIT = 20
_KEY_CHUNK = 2_000


SEMANTIC, KEYWORD, HYBRID = "semantic", "keyword", "hybrid"
# The scores each kind of search annotates its rows with; the first is what it ranks by.
_COLUMNS = {
    SEMANTIC: ("similarity",),
    KEYWORD: ("keyword_score",),
    HYBRID: ("score", "similarity", "keyword_score"),
}
# Hybrid and keyword searches check their best rows against the database and rank
# again without the pending ones; rows are rarely pending, so this is a bound only.
_MAX_ROUNDS = 8


@dataclass(eq=False)
class Search:
    """One ``semantic_search()``, ``similar_to()``, ``keyword_search()`` or
    ``hybrid_search()`` call; resolved at evaluation."""

    field: EmbeddingField
    vector: Vector | None
    k: int
    exclude: str | None = None
    kind: str = SEMANTIC
    tokens: list[str] | None = None  # the query's terms (keyword and hybrid searches)
    weight: float = hybrid.DEFAULT_WEIGHT  # the vector's share of a hybrid score

    @property
    def columns(self) -> tuple[str, ...]:
        return _COLUMNS[self.kind]


@dataclass
class Ranked:
    """What the search expressions compile to: rows in rank order, with their scores,
    (when the rows are candidates still to be checked) the hashes to check, and any
    other scores by name."""

    pks: list[Any]
    scores: list[float]
    hashes: list[str] | None = None
    columns: dict[str, list[float]] = dataclass_field(default_factory=dict)

    def column(self, name: str) -> list[float]:
        """The scores called ``name``: ``scores``, unless another column has the name."""
        return self.columns.get(name, self.scores)

    def picked(self, positions: Sequence[int], pks: list[Any]) -> Ranked:
        """The rows at ``positions`` of this list, checked (no hashes)."""
        return Ranked(
            pks,
            [self.scores[n] for n in positions],
            columns={name: [v[n] for n in positions] for name, v in self.columns.items()},
        )


_bound: ContextVar[dict[int, Ranked] | None] = ContextVar("django_embeddings_bound", default=None)

# Query texts embedded ahead by an async method, by (field label, text): the sync
# method it then calls finds its vector here instead of calling the provider.
_embedded: ContextVar[dict[tuple[str, str], Vector] | None] = ContextVar(
    "django_embeddings_embedded", default=None
)


@contextlib.contextmanager
def _binding(search: Search, ranked: Ranked) -> Iterator[None]:
    current = dict(_bound.get() or {})
    current[id(search)] = ranked
    token = _bound.set(current)
    try:
        yield
    finally:
        _bound.reset(token)


def _ranked(search: Search) -> Ranked:
    bound = _bound.get()
    if bound is None or id(search) not in bound:
        raise TypeError(
            f"A semantic search of {search.field.label} cannot be compiled inside another "
            "query (a subquery, a union); evaluate it first, e.g. "
            "list(qs.values_list('pk', flat=True))."
        )
    return bound[id(search)]


_INTEGER_FIELDS = frozenset(
    (
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
    )
)


def _integer_pk(field: EmbeddingField) -> bool:
    return field.model._meta.pk.get_internal_type() in _INTEGER_FIELDS


class _Literals:
    """Primary keys as SQL: integers inline (no parameters, however many hits), any
    other key as a parameter."""

    def __init__(self, field: EmbeddingField, connection: Any) -> None:
        self.inline = _integer_pk(field)
        self.pk = field.model._meta.pk
        self.connection = connection

    def sql(self, value: Any, params: list[Any]) -> str:
        if self.inline:
            return str(int(value))
        params.append(self.pk.get_db_prep_value(value, self.connection, prepared=False))
        return "%s"


def _case(
    search: Search, pk_sql: str, pk_params: Sequence[Any], values: Sequence[str], connection: Any
) -> tuple[str, list[Any]]:
    """``CASE pk WHEN <pk> THEN <value> ... END`` in one pass; ``values`` are SQL literals."""
    ranked = _ranked(search)
    if not ranked.pks:
        return "NULL", []
    literals = _Literals(search.field, connection)
    params = list(pk_params)
    parts = [f"CASE {pk_sql}"]
    for pk, value in zip(ranked.pks, values, strict=True):
        parts.append(f" WHEN {literals.sql(pk, params)} THEN {value}")
    parts.append(" END")
    return "".join(parts), params


# Output fields shared by every search's expressions: a field instance costs more to
# make than the rest of an expression.
_FLOAT: models.FloatField[Any, Any] = models.FloatField()
_INTEGER: models.IntegerField[Any, Any] = models.IntegerField()
_BOOLEAN: models.BooleanField[Any, Any] = models.BooleanField()


class _SearchExpression(models.Expression):
    """An expression over the hits of ``search``, keyed by the row's primary key
    (``pk``: ``F("pk")``, or its column when the caller has resolved it already)."""

    def __init__(self, search: Search, output_field: models.Field[Any, Any], pk: Any) -> None:
        super().__init__(output_field=output_field)
        self.search = search
        self.pk: Any = F("pk") if pk is None else pk

    def get_source_expressions(self) -> list[Any]:
        return [self.pk]

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        (self.pk,) = exprs

    def get_group_by_cols(self) -> list[Any]:
        return [self]

    def resolve_expression(
        self,
        query: Any = None,
        allow_joins: bool = True,
        reuse: Any = None,
        summarize: bool = False,
        for_save: bool = False,
    ) -> Any:
        if _over_column(self) and not summarize:
            return self  # built by _searching() over the resolved column: nothing to resolve
        return super().resolve_expression(query, allow_joins, reuse, summarize, for_save)

    def values(self) -> list[str]:
        raise NotImplementedError

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        pk_sql, pk_params = compiler.compile(self.pk)
        return _case(self.search, pk_sql, pk_params, self.values(), connection)


def _over_column(expression: _SearchExpression) -> bool:
    return isinstance(expression.pk, Col)


class _Score(Cast):
    """``similarity``: :class:`Similarity` cast to a float; like it, resolved already
    when built over the primary key's column."""

    def resolve_expression(
        self,
        query: Any = None,
        allow_joins: bool = True,
        reuse: Any = None,
        summarize: bool = False,
        for_save: bool = False,
    ) -> Any:
        (source,) = self.get_source_expressions()
        if isinstance(source, _SearchExpression) and _over_column(source) and not summarize:
            return self
        return super().resolve_expression(query, allow_joins, reuse, summarize, for_save)


class Similarity(_SearchExpression):
    """A score of each hit, the cosine similarity unless ``name`` says which (wrapped
    in a ``Cast`` to a float)."""

    def __init__(self, search: Search, pk: Any = None, name: str = "similarity") -> None:
        super().__init__(search, _FLOAT, pk)
        self.name = name

    def values(self) -> list[str]:
        return [repr(float(score)) for score in _ranked(self.search).column(self.name)]


class Rank(_SearchExpression):
    """Each hit's position, best first: what a search orders by."""

    def __init__(self, search: Search, pk: Any = None) -> None:
        super().__init__(search, _INTEGER, pk)

    def values(self) -> list[str]:
        return [str(position) for position in range(len(_ranked(self.search).pks))]


class Matches(Lookup):
    """``pk IN (<hits>)``, and, for candidates not checked yet, ``AND <column> =
    CASE pk WHEN <pk> THEN '<hash>' ... END``: rows whose vector is of their text."""

    lookup_name = "semantic_search_hit"
    prepare_rhs = False
    output_field = _BOOLEAN

    def __init__(self, search: Search, pk: Any = None) -> None:
        super().__init__(F("pk") if pk is None else pk, search)

    @property
    def search(self) -> Search:
        return self.rhs  # type: ignore[no-any-return]

    def get_prep_lookup(self) -> Any:
        return self.rhs

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        ranked = _ranked(self.search)
        if not ranked.pks:
            raise EmptyResultSet
        pk_sql, pk_params = self.process_lhs(compiler, connection)
        literals = _Literals(self.search.field, connection)
        params = list(pk_params)
        members = ", ".join(literals.sql(pk, params) for pk in ranked.pks)
        sql = f"{pk_sql} IN ({members})"
        if ranked.hashes is not None:
            column = compiler.compile(
                F(self.search.field.attname).resolve_expression(compiler.query)
            )
            case_sql, case_params = _case(
                self.search,
                pk_sql,
                pk_params,
                [f"'{value}'" for value in ranked.hashes],
                connection,
            )
            sql = f"{sql} AND {column[0]} = {case_sql}"
            params += [*column[1], *case_params]
        return sql, params


def _references(node: Any, search: Search) -> bool:
    """Does a where-clause child use one of ``search``'s expressions?"""
    return any(
        isinstance(part, (_SearchExpression, Matches)) and part.search is search
        for part in _walk(node)
    )


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = getattr(node, "children", None)
    parts = children if children is not None else node.get_source_expressions()
    for part in parts:
        if part is not None and hasattr(part, "get_source_expressions"):
            yield from _walk(part)


class EmbeddingQuerySetMixin(models.QuerySet):  # type: ignore[type-arg]
    """Adds semantic search to a QuerySet class of your own."""

    _search: Search | None = None

    def semantic_search(
        self, query: str | Sequence[float] | Vector, k: int = 10, field: str | None = None
    ) -> Self:
        """The ``k`` rows of this queryset most similar to ``query`` (text or a vector).

        Rows are ordered best first and carry ``similarity`` (cosine, in [-1, 1]).
        Only rows this queryset selects are considered, filters added afterwards
        included, so a filtered search gets exactly ``k`` rows whenever ``k`` of the
        selected rows are embedded.
        """
        embedding_field = self._embedding_field(field)
        _check_k(k)
        vector = self._query_vector(embedding_field, query, "semantic_search")
        return self._searching(Search(embedding_field, vector, k))

    async def asemantic_search(
        self, query: str | Sequence[float] | Vector, k: int = 10, field: str | None = None
    ) -> Self:
        """:meth:`semantic_search` for async code.

        The query text is embedded through the provider's ``aembed()`` before this
        returns; the queryset returned is as lazy as ``semantic_search()``'s, and
        Django evaluates it off the event loop (``async for``, ``await qs.acount()``).
        """
        _check_k(k)
        async with self._query_embedded(query, field, "semantic_search"):
            return self.semantic_search(query, k, field)

    def similar_to(self, obj: models.Model, k: int = 10, field: str | None = None) -> Self:
        """The ``k`` rows most similar to ``obj``, never ``obj`` itself."""
        embedding_field = self._embedding_field(field)
        _check_k(k)
        if not isinstance(obj, models.Model) or (
            obj._meta.concrete_model is not self.model._meta.concrete_model
            and not issubclass(self.model, type(obj))
        ):
            raise TypeError(
                f"similar_to() on {self.model._meta.label} needs a {self.model._meta.label} "
                f"instance (or one of a parent or proxy model), not {obj!r} "
                f"of {type(obj).__module__}.{type(obj).__qualname__}."
            )
        key = embedding_field.key(obj.pk)
        index = self._index(embedding_field)
        vector = index.vector(key)
        column = obj.__dict__.get(embedding_field.attname, MISSING)
        if column is not MISSING and index.hashes([key])[0] != column:
            vector = None  # pending: the stored vector is of another text than the row's
        if vector is None:
            raise EmbeddingsError(
                f"{embedding_field.label}: row pk={obj.pk!r} has no embedding yet; "
                "save it or run embeddings_backfill."
            )
        return self._searching(Search(embedding_field, vector, k, exclude=key))

    async def asimilar_to(self, obj: models.Model, k: int = 10, field: str | None = None) -> Self:
        """:meth:`similar_to` for async code: the vector of ``obj`` is read from the
        index (loaded from the store on first use) in Django's thread for the ORM."""
        return await sync_to_async(self.similar_to)(obj, k, field)

    def keyword_search(self, query: str, k: int = 10, field: str | None = None) -> Self:
        """The ``k`` rows of this queryset that rank best for ``query`` by BM25.

        Only rows holding at least one of the query's terms are returned (fewer than
        ``k`` when fewer do); rows carry ``keyword_score``. Needs no provider call.
        """
        embedding_field = self._keyword_field(field, "keyword_search")
        _check_k(k)
        tokens = analyze(_query_text(embedding_field, query, "keyword_search"))
        return self._searching(Search(embedding_field, None, k, kind=KEYWORD, tokens=tokens))

    def hybrid_search(
        self,
        query: str,
        k: int = 10,
        field: str | None = None,
        *,
        weight: float = hybrid.DEFAULT_WEIGHT,
    ) -> Self:
        """The ``k`` rows of this queryset that rank best for ``query`` by meaning and
        by the words it uses: vector and keyword (BM25) scores fused.

        Each ranker's best rows are fused (``weight`` is the vector's share, the
        keyword ranker has the rest, both scaled to [0, 1] over those rows). Rows are
        ordered best first and carry ``score`` (fused), ``similarity`` (cosine) and
        ``keyword_score`` (BM25; 0 for a row holding none of the query's terms).
        """
        embedding_field = self._keyword_field(field, "hybrid_search")
        _check_k(k)
        _check_weight(weight)
        if not isinstance(query, str):
            raise TypeError(f"hybrid_search() on {embedding_field.label} needs a query text.")
        vector = self._query_vector(embedding_field, query, "hybrid_search")
        tokens = analyze(_query_text(embedding_field, query, "hybrid_search"))
        search = Search(embedding_field, vector, k, kind=HYBRID, tokens=tokens, weight=weight)
        return self._searching(search)

    async def ahybrid_search(
        self,
        query: str,
        k: int = 10,
        field: str | None = None,
        *,
        weight: float = hybrid.DEFAULT_WEIGHT,
    ) -> Self:
        """:meth:`hybrid_search` for async code: the query text is embedded through the
        provider's ``aembed()``; the queryset returned is as lazy as the sync one's."""
        _check_k(k)
        _check_weight(weight)
        async with self._query_embedded(query, field, "hybrid_search"):
            return self.hybrid_search(query, k, field, weight=weight)

    # -- evaluation: every path that runs SQL resolves the search first ----------------

    def _clone(self) -> Self:
        clone: Self = super()._clone()  # type: ignore[misc]
        clone._search = self._search
        return clone

    def _fetch_all(self) -> None:
        search = self._search
        if search is None or self._result_cache is not None:
            super()._fetch_all()
            return
        if self._ordered_by_rank():
            self._fetch_top(search)
            return
        with _binding(search, self._exact(search)):
            super()._fetch_all()

    def _iterator(self, use_chunked_fetch: bool, chunk_size: int | None) -> Iterator[Any]:
        search = self._search
        if search is None:
            yield from super()._iterator(use_chunked_fetch, chunk_size)  # type: ignore[misc]
            return
        with _binding(search, self._exact(search)):
            yield from super()._iterator(use_chunked_fetch, chunk_size)  # type: ignore[misc]

    async def aiterator(self, chunk_size: int = 2000) -> AsyncIterator[Any]:
        if self._search is None:
            async for row in super().aiterator(chunk_size):
                yield row
            return
        # Django's aiterator() bypasses _iterator(); a search has at most MAX_K rows,
        # so they are fetched through iterator() in one trip to the thread.
        rows = await sync_to_async(lambda: list(self.iterator(chunk_size)))()
        for row in rows:
            yield row

    def count(self) -> int:
        if self._search is None or self._result_cache is not None:
            return super().count()
        with _binding(self._search, self._exact(self._search)):
            return super().count()

    def exists(self) -> bool:
        if self._search is None or self._result_cache is not None:
            return super().exists()
        with _binding(self._search, self._exact(self._search)):
            return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._search is None:
            return super().aggregate(*args, **kwargs)
        with _binding(self._search, self._exact(self._search)):
            return super().aggregate(*args, **kwargs)

    def explain(self, *, format: str | None = None, **options: Any) -> str:
        if self._search is None:
            return super().explain(format=format, **options)
        with _binding(self._search, self._exact(self._search)):
            return super().explain(format=format, **options)

    def update(self, **kwargs: Any) -> int:
        if self._search is None:
            return super().update(**kwargs)
        return self._plain_hits().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        if self._search is None:
            return super().delete()
        return self._plain_hits().delete()

    # -- internals ---------------------------------------------------------------------------

    def _query_vector(
        self, field: EmbeddingField, query: str | Sequence[float] | Vector, method: str
    ) -> Vector:
        """The vector to search with: ``query`` itself, or the embedding of its text."""
        if isinstance(query, str):
            text = _query_text(field, query, method)
            embedded = (_embedded.get() or {}).get((field.label, text))
            if embedded is not None:
                return embedded
            provider = field.get_provider()
            vectors = embed_checked(provider, [text], input_type="query", target=_target(field))
            vector: Vector = vectors[0]
            return vector
        vector = np.asarray(query, dtype=np.float32)
        if vector.ndim != 1 or not np.isfinite(vector).all():
            raise ValueError(
                f"{method}() on {field.label} needs a text or a finite "
                f"1-D vector, not an array of shape {vector.shape!r}."
            )
        return vector

    @contextlib.asynccontextmanager
    async def _query_embedded(
        self, query: str | Sequence[float] | Vector, field: str | None, method: str
    ) -> AsyncIterator[None]:
        """Embeds a query text through the provider's async path, for the sync
        ``method`` called inside to find (an ``a``-method is its sync twin after this)."""
        if not isinstance(query, str):
            yield
            return
        embedding_field = self._embedding_field(field)
        text = _query_text(embedding_field, query, method)
        # Building a provider may import a library: not on the event loop either.
        provider = await sync_to_async(embedding_field.get_provider, thread_sensitive=False)()
        vectors = await aembed_checked(
            provider, [text], input_type="query", target=_target(embedding_field)
        )
        token = _embedded.set(
            {**(_embedded.get() or {}), (embedding_field.label, text): vectors[0]}
        )
        try:
            yield
        finally:
            _embedded.reset(token)

    def _searching(self, search: Search) -> Self:
        if self._search is not None:
            raise TypeError("This queryset is a semantic search already; search only once.")
        if self.query.is_sliced:
            raise TypeError("Cannot run a semantic search on a sliced queryset.")
        model: Any = self.model
        for name in search.columns:
            if self._fields is None and name in _field_names(model):  # type: ignore[attr-defined]
                raise ValueError(
                    f"{self.model._meta.label} has a field named {name!r}, the name of a "
                    f"score a {search.kind} search annotates its rows with."
                )
        # What annotate(), filter() and order_by() would do, on one clone instead of
        # three, with the primary key's column resolved once for the three expressions.
        clone = self._chain()  # type: ignore[attr-defined]
        query = clone.query
        pk = query.resolve_ref("pk")
        for name in search.columns:
            query.add_annotation(_Score(Similarity(search, pk, name), output_field=_FLOAT), name)
        query.where.add(Matches(search, pk), AND)
        query.clear_ordering(force=True, clear_default=False)
        query.add_ordering(Rank(search, pk))
        clone._search = search
        return clone  # type: ignore[no-any-return]

    def _embedding_field(self, name: str | None) -> EmbeddingField:
        return embedding_field_named(self.model, name, how_to_choose="pass field= to choose one")

    def _store_alias(self) -> str:
        # Vectors are written by the database rows are written to; a read replica
        # chosen by a router reads the same store.
        return self._db or router.db_for_write(self.model)  # type: ignore[attr-defined]

    def _index(self, field: EmbeddingField) -> cache.FieldIndex:
        store = field.store_for(self._store_alias())
        return cache.get(store, check=invalidation.needs_check(), keep=field.cache)

    def _ordered_by_rank(self) -> bool:
        order = self.query.order_by
        return len(order) == 1 and isinstance(order[0], Rank) and order[0].search is self._search

    def _candidates_base(self, search: Search) -> models.QuerySet[Any]:
        """This queryset's own filters, without the search's (nor filters on its scores)."""
        base: models.QuerySet[Any] = models.QuerySet(
            self.model,
            query=self.query.chain(),
            using=self._db,  # type: ignore[attr-defined]
        )
        where = base.query.where
        where.children = [child for child in where.children if not _references(child, search)]
        # Nor its scores: a count or a read of keys would wrap them in a subquery.
        removed = {
            alias
            for alias, annotation in base.query.annotations.items()
            if _references(annotation, search)
        }
        if removed:
            for alias in removed:
                del base.query.annotations[alias]
            mask = base.query.annotation_select_mask
            if mask is not None:
                base.query.set_annotation_mask([alias for alias in mask if alias not in removed])
        base.query.clear_ordering(force=True)
        base.query.clear_limits()
        return base

    def _fetch_top(self, search: Search) -> None:
        """Evaluate in one query where possible: the candidates are checked (hash and
        filters) and limited to ``k``, in rank order."""
        low, high = self.query.low_mark, self.query.high_mark
        stop = search.k if high is None else min(high, search.k)
        wanted = max(0, stop - low)
        plain = self._plain_rows_possible(search)
        for ranked, complete in self._candidates(search):
            if plain:
                rows = self._ranked_in_python(self._plain_rows_query(search), search, ranked)[
                    low:stop
                ]
            else:
                clone = self._chain()  # type: ignore[attr-defined]
                clone.query.clear_limits()
                clone.query.set_limits(low, stop)
                with _binding(search, ranked):
                    super(EmbeddingQuerySetMixin, clone)._fetch_all()
                rows = clone._result_cache or []
            if len(rows) >= wanted or complete:
                self._result_cache = rows
                if plain and self._prefetch_related_lookups:  # type: ignore[attr-defined]
                    self._prefetch_related_objects()  # type: ignore[attr-defined]
                self._prefetch_done = True
                return

    def _plain_rows_possible(self, search: Search) -> bool:
        """Can model instances be read without the search's ``CASE`` expressions? Their
        cost grows with ``k`` for every row, while ranking ``k`` rows in Python does
        not. Not where the SQL itself needs the scores (``values()``, a filter on
        ``similarity``, other annotations, ``distinct()``) or lacks the column."""
        query = self.query
        if (
            self._iterable_class is not ModelIterable
            or query.distinct
            or set(query.annotations) != set(search.columns)
            or query.deferred_loading[0]
            and (search.field.attname in query.deferred_loading[0])
            != (not query.deferred_loading[1])
        ):
            return False
        return not any(
            not isinstance(child, Matches) and _references(child, search)
            for child in query.where.children
        )

    def _plain_rows_query(self, search: Search) -> models.QuerySet[Any]:
        """A fresh copy of this queryset without the search's scores nor ordering."""
        plain: models.QuerySet[Any] = self._chain()  # type: ignore[attr-defined]
        plain.__class__ = models.QuerySet
        for name in search.columns:
            del plain.query.annotations[name]
        plain.query.set_annotation_mask(())
        plain.query.clear_ordering(force=True)
        plain.query.clear_limits()
        plain._prefetch_related_lookups = ()  # type: ignore[attr-defined]
        return plain

    def _ranked_in_python(
        self, plain: models.QuerySet[Any], search: Search, ranked: Ranked
    ) -> list[models.Model]:
        """The candidates' rows, checked against their hashes and sorted by rank."""
        unchecked = Ranked(ranked.pks, ranked.scores)  # the hashes are checked here
        with _binding(search, unchecked):
            rows = list(plain)
        position = {pk: n for n, pk in enumerate(ranked.pks)}
        attname = search.field.attname
        columns = [(name, ranked.column(name)) for name in search.columns]
        kept = []
        for row in rows:
            n = position.get(row.pk)
            if n is None or (
                ranked.hashes is not None and row.__dict__[attname] != ranked.hashes[n]
            ):
                continue
            for name, values in columns:
                setattr(row, name, values[n])
            kept.append((n, row))
        kept.sort(key=lambda item: item[0])
        return [row for _, row in kept]

    def _exact(self, search: Search) -> Ranked:
        """The exact hits, checked, in rank order: what every other path binds."""
        for ranked, complete in self._candidates(search):
            if ranked.hashes is None:
                return ranked
            top = self._candidates_base(search).filter(Matches(search)).order_by(Rank(search))
            with _binding(search, ranked):
                pks = list(top.values_list("pk", flat=True)[: search.k])
            if len(pks) >= search.k or complete:
                position = {pk: n for n, pk in enumerate(ranked.pks)}
                return ranked.picked([position[pk] for pk in pks], pks)
        raise AssertionError("unreachable")  # pragma: no cover

    def _plain_hits(self) -> models.QuerySet[Any]:
        assert self._search is not None
        ranked = self._exact(self._search)
        if self.query.is_sliced:
            low, high = self.query.low_mark, self.query.high_mark
            ranked = Ranked(ranked.pks[low:high], ranked.scores[low:high])
        hits: models.QuerySet[Any] = self.model._base_manager.using(self.db).filter(
            pk__in=ranked.pks
        )
        return hits

    def _candidates(self, search: Search) -> Iterator[tuple[Ranked, bool]]:
        """Growing lists of hits for the database to check; ``complete`` when no row
        outside the list could qualify. The scores are computed once: asking for more
        hits (rows a broad filter rejects, rows still pending) re-reads them only."""
        if search.kind != SEMANTIC:
            yield self._text_candidates(search), True
            return
        assert search.vector is not None
        field = search.field
        index = self._index(field)
        stored = len(index)
        ranking, fetch = None, search.k
        if stored and np.any(search.vector):
            candidates = None
            if self._filtered(search):
                candidates, selected = self._selection(search, stored)
                if candidates is None:
                    # A broad filter rejects some of the best rows: ask at once for as
                    # many as should hold k of its rows, and a margin.
                    fetch = math.ceil(1.25 * search.k * stored / selected) + search.k
            ranking = index.ranking(
                search.vector,
                identity=field.get_provider().identity,
                candidates=candidates,
                exclude=search.exclude,
            )
        if ranking is None or not ranking.size:
            self._warn_if_never_embedded(field, stored)
            yield Ranked([], []), True
            return
        while True:
            fetch = min(fetch, ranking.size)
            yield _checkable(field, ranking.top(fetch)), fetch >= ranking.size
            fetch *= 4

    def _text_candidates(self, search: Search) -> Ranked:
        """The exact hits of a keyword or hybrid search, checked against the database.

        A filter's rows are read as keys, so both rankers rank exactly the rows it
        selects. The best rows are then checked (their column must name the text
        their terms and vector were made from); pending ones are left out and the
        rest ranked again, which changes nothing when none is pending.
        """
        field = search.field
        index = self._index(field)
        candidates = None
        if self._filtered(search):
            candidates = _selected_keys(self._candidates_base(search), field)
        identity = field.get_provider().identity if search.kind == HYBRID else None
        tokens = search.tokens or []
        pending: list[str] = []
        ranked = Ranked([], [])
        for _ in range(_MAX_ROUNDS):
            allowed = hybrid.allowed_rows(
                index, identity=identity, candidates=candidates, exclude=pending
            )
            if search.kind == KEYWORD:
                top, _ = hybrid.keyword_top(index, tokens, search.k, allowed)
            else:
                assert search.vector is not None
                top = hybrid.hybrid_top(
                    index, search.vector, tokens, search.k, allowed, weight=search.weight
                )
            ranked = _checkable(field, top)
            stale = self._unmatched(search, ranked)
            if not stale:
                break
            pending += stale
        if not ranked.pks:
            self._warn_if_never_embedded(field, len(index))
        return ranked

    def _unmatched(self, search: Search, ranked: Ranked) -> list[str]:
        """Keys of hits whose row is gone or whose column names another text."""
        if not ranked.pks or ranked.hashes is None:
            return []
        field = search.field
        rows = self._candidates_base(search).filter(pk__in=ranked.pks)
        columns = dict(rows.values_list("pk", field.attname))
        return [
            field.key(pk)
            for pk, value in zip(ranked.pks, ranked.hashes, strict=True)
            if columns.get(pk) != value
        ]

    def _keyword_field(self, name: str | None, method: str) -> EmbeddingField:
        field = self._embedding_field(name)
        if not field.keywords:
            raise ValueError(
                f"{method}() needs a keyword index, and {field.label} was declared with "
                "keywords=False."
            )
        return field

    def _filtered(self, search: Search) -> bool:
        """Does this queryset filter its rows, besides the search itself?"""
        return any(not _references(child, search) for child in self.query.where.children)

    def _selection(
        self, search: Search, stored: int
    ) -> tuple[Sequence[str] | np.ndarray[Any, Any] | None, int]:
        """How many rows the filters select, with their keys when they are few enough
        that reading the keys and scoring only those rows costs less than scoring every
        row and checking the best against the filters in the database.

        Knowing costs a query that visits every selected row (a COUNT, or reading the
        keys). What it found is kept a while (:mod:`~django_embeddings.selectivity`), so
        a filter searched again goes straight to its path: reading its keys, or (broad)
        no query at all before scoring.
        """
        base = self._candidates_base(search)
        field = search.field
        limit = max(_READ_FIRST, math.ceil(stored * NARROW_SHARE), _KEYS_PER_HIT * search.k)
        memo = _filter_key(base)
        known = selectivity.recall(memo) if memo is not None else None
        if known is None:
            # A short read first: it settles most filters of a small search, and
            # costs little more than the COUNT that follows it otherwise.
            keys = _selected_keys(base, field, _READ_FIRST + 1)
            known = len(keys) if len(keys) <= _READ_FIRST else base.count()
            if memo is not None:
                selectivity.remember(memo, known)
            if len(keys) <= _READ_FIRST:
                return keys, known
        if known > limit:
            return None, known
        keys = _selected_keys(base, field, limit + 1)
        selected = len(keys) if len(keys) <= limit else base.count()  # grown meanwhile
        if memo is not None:
            selectivity.remember(memo, selected)
        return (keys if len(keys) <= limit else None), selected

    def _warn_if_never_embedded(self, field: EmbeddingField, stored: int) -> None:
        if stored or field.label in _warned_empty:
            return
        if field.model._base_manager.using(self._store_alias()).exists():
            _warned_empty.add(field.label)
            logger.warning(
                "%s: the table has rows but none is embedded, so searches find nothing. "
                "Rows created by bulk_create(), update() or raw SQL, or before the field "
                "existed, are embedded by `manage.py embeddings_backfill %s`.",
                field.label,
                field.model._meta.label,
            )


_warned_empty: set[str] = set()


@functools.cache
def _field_names(model: type[models.Model]) -> frozenset[str]:
    return frozenset(
        name
        for field in model._meta.get_fields()
        for name in (field.name, getattr(field, "attname", field.name))
    )


def _checkable(field: EmbeddingField, top: Top) -> Ranked:
    """Hits as primary keys, with the hash each vector was stored under (for the
    database to check against the rows' columns)."""
    integer = _integer_pk(field)
    pks, scores, hashes, kept = [], [], [], []
    for n, (key, score, value) in enumerate(zip(top.keys, top.scores, top.hashes, strict=True)):
        if value is None:
            continue  # deleted while we ranked
        pks.append(int(key) if integer else field.pk_from_key(str(key)))
        scores.append(score)
        hashes.append(value)
        kept.append(n)
    columns = {name: [values[n] for n in kept] for name, values in top.columns.items()}
    return Ranked(pks, scores, hashes, columns)


def _filter_key(base: models.QuerySet[Any]) -> tuple[Any, ...] | None:
    """What identifies a filter's rows: its database, model and WHERE clause as text
    (the lookups with their values; compiling the SQL would cost as much as a small
    search), hashed so that a long ``pk__in`` list is not kept. Two filters taken for
    one would cost speed, never a wrong result."""
    try:
        text = str(base.query.where).encode("utf-8", "surrogatepass")
    except Exception:  # a value whose repr fails: nothing to remember
        return None
    return (base.db, base.model, hashlib.blake2b(text, digest_size=16).digest())


def _selected_keys(
    base: models.QuerySet[Any], field: EmbeddingField, limit: int | None = None
) -> list[str] | np.ndarray[Any, Any]:
    """The keys of the rows ``base`` selects (the first ``limit``), read as the database
    driver returns them: an int64 array for integer primary keys (no Python object per
    row)."""
    # values_list("pk")[:limit] on one copy of the query instead of two.
    query = base.query.chain()
    query.set_values(["pk"])
    if limit is not None:
        query.set_limits(high=limit)
    compiler = query.get_compiler(using=base.db)
    chunks = compiler.execute_sql(MULTI, chunk_size=_KEY_CHUNK) or ()
    converters = compiler.get_converters([compiler.select[0][0]])
    if _integer_pk(field) and not converters:
        parts = [np.fromiter((row[0] for row in chunk), np.int64, len(chunk)) for chunk in chunks]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    keys: list[str] = []
    for chunk in chunks:
        rows = compiler.apply_converters(chunk, converters) if converters else chunk
        keys.extend(field.key(pk) for (pk,) in rows)
    return keys


class EmbeddingQuerySet(EmbeddingQuerySetMixin):
    """A QuerySet with ``semantic_search()`` and ``similar_to()``."""


class EmbeddingManager(models.Manager.from_queryset(EmbeddingQuerySet)):  # type: ignore[misc]
    """``objects = EmbeddingManager()`` gives a model semantic search."""


def _query_text(field: EmbeddingField, query: str, method: str) -> str:
    text = query[: conf.MAX_TEXT_LENGTH]
    if not text.strip():
        raise ValueError(f"{method}() on {field.label} needs a query text; got {query!r}.")
    return text


def _target(field: EmbeddingField) -> str:
    return f"a search of {field.label}"


def _check_weight(weight: Any) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise ValueError(
            f"weight (the vector's share of a hybrid score) should be between 0 and 1, "
            f"not {weight!r}."
        )


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k should be an int between 1 and {MAX_K}, not {k!r}.")

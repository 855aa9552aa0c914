"""``semantic_search`` and ``similar_to`` on querysets.

The vector search runs eagerly, when the method is called: the query text is
embedded and the top rows are found in this process's cached matrix. What comes
back is an ordinary lazy QuerySet over those rows (``pk__in`` the hits, ordered
by rank, annotated with ``similarity``), so it chains like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from django.db import models

from django_embeddings import cache, invalidation
from django_embeddings.cache import Hit
from django_embeddings.conf import conf
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import EmbeddingField, embedding_fields
from django_embeddings.providers import embed_checked
from django_embeddings.typing import Vector

__all__ = ["EmbeddingManager", "EmbeddingQuerySet", "EmbeddingQuerySetMixin"]

# The hits travel to the database as parameters (pk__in plus two CASE expressions),
# which stays well inside every backend's limit (SQLite: 32,766) up to this k.
MAX_K = 1_000
# A filter selecting at least 1/DENSE_FILTER of the stored rows is verified after an
# over-fetched search; a narrower one sends its primary keys to the vector search.
DENSE_FILTER = 20


class EmbeddingQuerySetMixin(models.QuerySet):  # type: ignore[type-arg]
    """Adds semantic search to a QuerySet class of your own."""

    def semantic_search(
        self, query: str | Sequence[float] | Vector, k: int = 10, field: str | None = None
    ) -> Self:
        """The ``k`` rows of this queryset most similar to ``query`` (text or a vector).

        Rows are ordered best first and carry ``similarity`` (cosine, in [-1, 1]).
        Only rows this queryset selects are considered, so a filtered queryset
        still gets exactly ``k`` rows whenever ``k`` of them are embedded.
        """
        embedding_field = self._embedding_field(field)
        _check_k(k)
        if isinstance(query, str):
            provider = embedding_field.get_provider()
            target = f"a search of {embedding_field.label}"
            text = query[: conf.MAX_TEXT_LENGTH]
            vector = embed_checked(provider, [text], input_type="query", target=target)[0]
        else:
            vector = np.asarray(query, dtype=np.float32)
            if vector.ndim != 1 or not np.isfinite(vector).all():
                raise ValueError(
                    f"semantic_search() on {embedding_field.label} needs a text or a finite "
                    f"1-D vector, not an array of shape {vector.shape!r}."
                )
        return self._search(embedding_field, vector, k, exclude=None)

    def similar_to(self, obj: models.Model, k: int = 10, field: str | None = None) -> Self:
        """The ``k`` rows most similar to ``obj``, never ``obj`` itself."""
        embedding_field = self._embedding_field(field)
        _check_k(k)
        key = embedding_field.key(obj.pk)
        index = self._index(embedding_field)
        vector = index.vector(key)
        if vector is None:
            raise EmbeddingsError(
                f"{embedding_field.label}: row pk={obj.pk!r} has no embedding yet; "
                "save it or run embeddings_backfill."
            )
        return self._search(embedding_field, vector, k, exclude=key, index=index)

    # -- internals -------------------------------------------------------------------

    def _embedding_field(self, name: str | None) -> EmbeddingField:
        fields = embedding_fields(self.model)
        if name is not None:
            for candidate in fields:
                if candidate.name == name:
                    return candidate
            raise ValueError(
                f"{self.model._meta.label} has no EmbeddingField named {name!r}; "
                f"it has {[f.name for f in fields]!r}."
            )
        if len(fields) == 1:
            return fields[0]
        if not fields:
            raise ValueError(f"{self.model._meta.label} has no EmbeddingField.")
        raise ValueError(
            f"{self.model._meta.label} has several EmbeddingFields "
            f"{[f.name for f in fields]!r}; pass field= to choose one."
        )

    def _index(self, field: EmbeddingField) -> cache.FieldIndex:
        return cache.get(field.store, check=invalidation.needs_check(), keep=field.cache)

    def _search(
        self,
        field: EmbeddingField,
        vector: Vector,
        k: int,
        exclude: str | None,
        index: cache.FieldIndex | None = None,
    ) -> Self:
        if self.query.is_sliced:
            raise TypeError("Cannot run a semantic search on a sliced queryset.")
        if index is None:
            index = self._index(field)
        identity = field.get_provider().identity
        if not self.query.where:
            hits = self._verified_top(field, index, vector, k, identity, exclude, fetch=k)
            return self._ranked(field, hits)
        matching = self.count()
        stored = max(len(index), 1)
        if matching * DENSE_FILTER >= stored:
            # A broad filter: search everything, over-fetching by the filter's
            # selectivity, and keep the hits the filter accepts.
            fetch = min(stored, math.ceil(k * stored / max(matching, 1) * 2) + k)
            hits = self._verified_top(field, index, vector, k, identity, exclude, fetch=fetch)
        else:
            # A narrow filter: score only the rows it selects.
            candidates = [str(pk) for pk in self.values_list("pk", flat=True)]
            hits = index.search(
                vector, k, identity=identity, candidates=candidates, exclude=exclude
            )
        return self._ranked(field, hits)

    def _verified_top(
        self,
        field: EmbeddingField,
        index: cache.FieldIndex,
        vector: Vector,
        k: int,
        identity: str,
        exclude: str | None,
        *,
        fetch: int,
    ) -> list[Hit]:
        """The best ``k`` hits whose rows this queryset selects, fetching more until found.

        Exact: any selected row outside the best ``fetch`` scores no higher than
        every row inside it. Also drops rows deleted behind the store's back (raw
        SQL), so that an unfiltered search still returns ``k`` rows.
        """
        while True:
            hits = index.search(vector, fetch, identity=identity, exclude=exclude)
            pks = [field.pk_from_key(hit.key) for hit in hits]
            selected = {str(pk) for pk in self.filter(pk__in=pks).values_list("pk", flat=True)}
            kept = [hit for hit in hits if hit.key in selected]
            if len(kept) >= k or len(hits) < fetch:
                return kept[:k]
            fetch *= 4

    def _ranked(self, field: EmbeddingField, hits: list[Hit]) -> Self:
        pks = [field.pk_from_key(hit.key) for hit in hits]
        if not pks:
            return self.none()
        similarity = models.Case(
            *[
                models.When(pk=pk, then=models.Value(hit.score))
                for pk, hit in zip(pks, hits, strict=True)
            ],
            output_field=models.FloatField(),
        )
        rank = models.Case(
            *[models.When(pk=pk, then=models.Value(position)) for position, pk in enumerate(pks)],
            output_field=models.IntegerField(),
        )
        return self.filter(pk__in=pks).annotate(similarity=similarity).order_by(rank)


class EmbeddingQuerySet(EmbeddingQuerySetMixin):
    """A QuerySet with ``semantic_search()`` and ``similar_to()``."""


class EmbeddingManager(models.Manager.from_queryset(EmbeddingQuerySet)):  # type: ignore[misc]
    """``objects = EmbeddingManager()`` gives a model semantic search."""


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k should be an int between 1 and {MAX_K}, not {k!r}.")

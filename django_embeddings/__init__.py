"""Semantic search for Django models, without a vector database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers see the real classes; at run time they load lazily
    from django_embeddings.fields import EmbeddingField
    from django_embeddings.querysets import (
        EmbeddingManager,
        EmbeddingQuerySet,
        EmbeddingQuerySetMixin,
    )

__version__ = "0.1.0"

__all__ = ["EmbeddingField", "EmbeddingManager", "EmbeddingQuerySet", "EmbeddingQuerySetMixin"]


def __getattr__(name: str) -> Any:
    # Lazy so that importing the package (e.g. for __version__) needs no settings.
    if name == "EmbeddingField":
        from django_embeddings.fields import EmbeddingField

        return EmbeddingField
    if name in ("EmbeddingManager", "EmbeddingQuerySet", "EmbeddingQuerySetMixin"):
        from django_embeddings import querysets

        return getattr(querysets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

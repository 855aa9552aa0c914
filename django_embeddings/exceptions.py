"""Exceptions raised by django_embeddings at run time.

Configuration found wrong at run time raises Django's ``ImproperlyConfigured``
instead; everything else derives from :class:`EmbeddingsError`.
"""

from __future__ import annotations


class EmbeddingsError(Exception):
    """Base class for every runtime error of this app."""


class ProviderError(EmbeddingsError):
    """A provider failed or returned vectors that cannot be stored."""


class StoreError(EmbeddingsError):
    """The vector store could not be read or written."""

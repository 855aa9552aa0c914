"""Misbehaving providers, configured through ``DJANGO_EMBEDDINGS_PROVIDERS``.

Each one embeds like :class:`~django_embeddings.providers.HashingProvider`
unless a text contains its trigger word, so one test can mix good and bad rows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from django_embeddings.providers import HashingProvider
from django_embeddings.typing import InputType, Matrix

TRIGGER = "FAULT"


def _faulty(texts: Sequence[str]) -> bool:
    return any(TRIGGER in text for text in texts)


class RaisingProvider(HashingProvider):
    """An outage: the client library raises."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        if _faulty(texts):
            raise ConnectionResetError("connection reset by peer")
        return super().embed(texts, input_type)


class WrongDimensionsProvider(HashingProvider):
    """A model swapped behind the alias: one dimension too many."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        if _faulty(texts):
            return np.ones((len(texts), self.dimensions + 1), dtype=np.float32)
        return super().embed(texts, input_type)


class NaNProvider(HashingProvider):
    """A numerically broken model: NaN in one row."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        out = super().embed(texts, input_type)
        for row, text in enumerate(texts):
            if TRIGGER in text:
                out[row, 3] = np.nan
        return out


class EmptyProvider(HashingProvider):
    """A provider answering with no rows at all."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        if _faulty(texts):
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return super().embed(texts, input_type)


class ShortProvider(HashingProvider):
    """A provider answering with fewer rows than texts (a truncated batch)."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        out = super().embed(texts, input_type)
        return out[:-1] if _faulty(texts) else out


class ZeroProvider(HashingProvider):
    """A provider answering with an all-zero vector, which has no direction."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        out = super().embed(texts, input_type)
        for row, text in enumerate(texts):
            if TRIGGER in text:
                out[row] = 0
        return out


class HangingProvider(HashingProvider):
    """Blocks on a faulty text until released, then gives up like a client timeout.

    ``entered`` is set when a call starts hanging; ``release`` ends the hang. The
    wait is bounded so a broken test cannot hang the suite.
    """

    entered = threading.Event()
    release = threading.Event()
    max_wait = 30.0

    def __init__(self, dimensions: int = 64, **options: Any) -> None:
        super().__init__(dimensions=dimensions, **options)

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        if _faulty(texts):
            type(self).entered.set()
            type(self).release.wait(self.max_wait)
            raise TimeoutError("the embedding service did not answer in time")
        return super().embed(texts, input_type)

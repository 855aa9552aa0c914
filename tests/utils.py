from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django_embeddings.providers import HashingProvider
from django_embeddings.typing import InputType, Matrix


class CountingProvider(HashingProvider):
    """The hashing provider, counting the texts it is asked to embed."""

    def __init__(self, dimensions: int = 64, **options: Any) -> None:
        super().__init__(dimensions=dimensions, **options)
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        self.calls.append(list(texts))
        return super().embed(texts, input_type)


class FailingProvider(HashingProvider):
    """Raises on every call: a provider outage."""

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        raise ConnectionError("the provider is down")


class RetrainedProvider(HashingProvider):
    """Same vectors, new identity: what a provider upgrade looks like to the store."""

    def __init__(self, dimensions: int = 64, **options: Any) -> None:
        super().__init__(dimensions=dimensions, **options)
        self.identity = f"retrained-{dimensions}"

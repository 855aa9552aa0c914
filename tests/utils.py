from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from django.db.models import Model

from django_embeddings import cache
from django_embeddings.providers import HashingProvider
from django_embeddings.providers.static import DEFAULT_PATH
from django_embeddings.typing import InputType, Matrix


class CountingProvider(HashingProvider):
    """The hashing provider, counting the texts it is asked to embed."""

    def __init__(self, dimensions: int = 64, **options: Any) -> None:
        super().__init__(dimensions=dimensions, **options)
        self.calls: list[list[str]] = []
        self.threads: list[int] = []  # the thread of each call

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        self.calls.append(list(texts))
        self.threads.append(threading.get_ident())
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


def stored_hash(obj: Model, name: str = "embedding") -> str | None:
    """The content hash of the text the store's vector of ``obj`` was made from."""
    field = obj._meta.get_field(name)
    store = field.store_for(obj._state.db or "default")  # type: ignore[union-attr]
    meta = cache.get(store, keep=False).meta(field.key(obj.pk))  # type: ignore[union-attr]
    return None if meta is None else meta[0]


def column(obj: Model, name: str = "embedding") -> str | None:
    """The row's committed column: the hash of its text as last saved (None: no text)."""
    manager = type(obj)._base_manager.using(obj._state.db or "default")
    return manager.values_list(name, flat=True).get(pk=obj.pk)  # type: ignore[no-any-return]


def is_embedded(obj: Model, name: str = "embedding") -> bool:
    """Is ``obj`` served by searches: does the store hold a vector of its saved text?"""
    value = column(obj, name)
    return value is not None and stored_hash(obj, name) == value


def pending_count(model: type[Model], name: str = "embedding") -> int:
    """How many rows ``embeddings_backfill --missing`` would embed."""
    from django_embeddings.backfill import embed_queryset

    (result,) = embed_queryset(model._base_manager.all(), field=name, dry_run=True)
    return result.selected


@contextlib.contextmanager
def failures() -> Iterator[list[dict[str, Any]]]:
    """The ``embedding_failed`` signals sent inside the block, as their keyword arguments."""
    from django_embeddings.signals import embedding_failed

    seen: list[dict[str, Any]] = []

    def receiver(sender: type[Model], **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    embedding_failed.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        embedding_failed.disconnect(receiver)


def copy_static_model(directory: Path) -> Path:
    """A copy of the shipped static model in ``directory``/model, free to be altered."""
    target = directory / "model"
    shutil.copytree(DEFAULT_PATH, target)
    return target

"""The provider interface: texts in, one float32 row per text out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from asgiref.sync import sync_to_async

from django_embeddings.exceptions import ProviderError
from django_embeddings.typing import InputType, Matrix


class BaseProvider:
    """Turns texts into vectors.

    Subclasses set :attr:`dimensions` and :attr:`identity` and implement
    :meth:`embed`; providers that call a server also implement :meth:`aembed`
    with an async client. Options come from the alias's ``OPTIONS`` in
    ``DJANGO_EMBEDDINGS_PROVIDERS`` as keyword arguments.

    ``identity`` names the model and its version. It is stored with every vector,
    so vectors made by another model are found (``embeddings_backfill --stale``)
    instead of being compared with vectors they have nothing in common with.
    """

    dimensions: int
    identity: str

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} got unexpected OPTIONS {sorted(options)!r}.")

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        """Return a float32 array of shape ``(len(texts), self.dimensions)``.

        A query (``input_type="query"``) may get an all-zero row, meaning the
        provider has no confident vector for it (the search then finds nothing);
        a document may not.
        """
        raise NotImplementedError

    async def aembed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        """:meth:`embed` for async code.

        By default :meth:`embed` runs in a worker thread: a local model computes
        in numpy, which would hold the event loop for as long as it takes. Not
        thread-sensitive, so searches embed concurrently instead of queueing behind
        the thread Django keeps for the ORM.
        """
        return await sync_to_async(self.embed, thread_sensitive=False)(texts, input_type)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.identity!r}>"


def embed_checked(
    provider: BaseProvider, texts: Sequence[str], *, input_type: InputType, target: str
) -> Matrix:
    """``provider.embed(texts)``, with any failure raised as a ``ProviderError`` naming
    ``target`` and the output checked by :func:`validate_vectors`.

    An all-zero vector is accepted for a query (the provider has no confident
    vector for it) and refused for a document, which would be stored."""
    with _named_failures(provider, target):
        raw = provider.embed(texts, input_type=input_type)
    return _checked(raw, provider, texts, input_type=input_type, target=target)


async def aembed_checked(
    provider: BaseProvider, texts: Sequence[str], *, input_type: InputType, target: str
) -> Matrix:
    """:func:`embed_checked` through ``provider.aembed``: the same errors and checks."""
    with _named_failures(provider, target):
        raw = await provider.aembed(texts, input_type=input_type)
    return _checked(raw, provider, texts, input_type=input_type, target=target)


@contextlib.contextmanager
def _named_failures(provider: BaseProvider, target: str) -> Iterator[None]:
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise ProviderError(
            f"Provider {provider.identity!r} failed to embed {target}: {exc}"
        ) from exc


def _checked(
    raw: Any, provider: BaseProvider, texts: Sequence[str], *, input_type: InputType, target: str
) -> Matrix:
    return validate_vectors(
        raw,
        expected_rows=len(texts),
        provider=provider,
        target=target,
        allow_zero=input_type == "query",
    )


def validate_vectors(
    vectors: Any,
    *,
    expected_rows: int,
    provider: BaseProvider,
    target: str,
    allow_zero: bool = False,
) -> Matrix:
    """Check a provider's output before anything is stored.

    ``target`` names what is being embedded (``"testapp.Article.embedding"``) so
    the error says which field and which model failed. ``allow_zero`` accepts
    all-zero rows (queries the provider has no confident vector for).
    """
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ProviderError(
            f"Provider {provider.identity!r} returned something that is not a numeric "
            f"array for {target}."
        ) from exc
    if matrix.ndim != 2 or matrix.shape[0] != expected_rows:
        raise ProviderError(
            f"Provider {provider.identity!r} returned shape {matrix.shape!r} for "
            f"{target}; expected ({expected_rows}, {provider.dimensions})."
        )
    if matrix.shape[1] != provider.dimensions:
        raise ProviderError(
            f"Provider {provider.identity!r} returned {matrix.shape[1]} dimensions for "
            f"{target}; expected {provider.dimensions}."
        )
    if not np.isfinite(matrix).all():
        raise ProviderError(
            f"Provider {provider.identity!r} returned NaN or infinite values for {target}."
        )
    if expected_rows and not allow_zero and not np.any(matrix, axis=1).all():
        raise ProviderError(
            f"Provider {provider.identity!r} returned an all-zero vector for {target}."
        )
    return matrix

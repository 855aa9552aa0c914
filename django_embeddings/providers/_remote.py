"""Helpers shared by the providers that call a server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured

Client = TypeVar("Client")


def check_positive_int(provider: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(f"{provider} {option} should be a positive int, not {value!r}.")
    return value


def resolve_dimensions(
    provider: str, model: str, dimensions: Any, known: Mapping[str, int], family: str
) -> int:
    """``dimensions`` as given, else the known size of ``family``; clear error otherwise."""
    if dimensions is None:
        dimensions = known.get(family)
        if dimensions is None:
            raise ImproperlyConfigured(
                f"{provider} needs the 'dimensions' option for model {model!r}; the known "
                f"models are {sorted(known)!r}."
            )
    return check_positive_int(provider, "dimensions", dimensions)


def check_retries(provider: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(
            f"{provider} max_retries should be an int of 0 or more, not {value!r}."
        )
    return value


def check_seconds(provider: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ImproperlyConfigured(
            f"{provider} {option} should be a positive number of seconds, not {value!r}."
        )
    return float(value)


def batches(
    texts: Sequence[str], batch_size: int, max_chars: int
) -> Iterator[tuple[int, list[str]]]:
    """Consecutive ``(start, texts)`` slices of at most ``batch_size`` texts.

    A slice also stops before it passes ``max_chars`` characters (a single
    longer text goes alone), since servers cap the tokens of one request.
    """
    start = 0
    while start < len(texts):
        end, chars = start, 0
        while end < len(texts) and end - start < batch_size:
            chars += len(texts[end])
            if chars > max_chars and end > start:
                break
            end += 1
        yield start, list(texts[start:end])
        start = end


def public_url(url: str) -> str:
    """``url`` without a ``user:password@`` part or query, fit for messages and logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def short(values: list[int]) -> str:
    return repr(values) if len(values) <= 10 else f"{values[:10]!r}..."


class LoopClients(Generic[Client]):
    """One async HTTP client per event loop.

    A client's pooled connections belong to the loop that opened them, so a
    client is kept for the running loop and reused by every request on it (one
    connection pool per process under an ASGI server). Clients of loops that have
    closed (``async_to_sync`` runs each call on a new loop) are dropped, as their
    connections can never be used again.
    """

    def __init__(
        self, make: Callable[[], Client], close: Callable[[Client], Awaitable[Any]]
    ) -> None:
        self._make = make
        self._close = close
        self._clients: dict[asyncio.AbstractEventLoop, Client] = {}
        self._lock = threading.Lock()

    async def get(self) -> Client:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is not None:
            return client
        # Building a client imports the SDK and loads TLS certificates: not on the loop.
        made = await sync_to_async(self._make, thread_sensitive=False)()
        with self._lock:
            for other in [other for other in self._clients if other.is_closed()]:
                del self._clients[other]
            client = self._clients.setdefault(loop, made)
        if client is not made:  # another request on this loop made one meanwhile
            await self._close(made)
        return client

    async def aclose(self) -> None:
        """Close the running loop's client; the next request makes a new one."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await self._close(client)

    def forget(self) -> None:
        """Drop every client (from sync code, which cannot close them)."""
        with self._lock:
            self._clients.clear()

"""Helpers shared by the providers that call a server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
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
    """One async HTTP client per event loop, closed on that loop before it closes.

    A client's pooled connections belong to the loop that opened them, so a
    client is kept for the running loop and reused by every request on it (one
    connection pool per process under an ASGI server). Each client is held by an
    async generator started on its loop: the loop's ``shutdown_asyncgens()``,
    which ``asyncio.run`` (so asgiref's ``async_to_sync``, which runs each call on
    a new loop) and ASGI servers call before closing it, closes the client there.
    A loop closed without that leaves nothing to close its connections with: its
    client is only dropped.
    """

    def __init__(
        self, make: Callable[[], Client], close: Callable[[Client], Awaitable[Any]]
    ) -> None:
        self._make = make
        self._close = close
        self._clients: dict[
            asyncio.AbstractEventLoop, tuple[Client, AsyncGenerator[None, None]]
        ] = {}
        self._lock = threading.Lock()

    async def get(self) -> Client:
        loop = asyncio.get_running_loop()
        held = self._clients.get(loop)
        if held is not None:
            return held[0]
        # Building a client imports the SDK and loads TLS certificates: not on the loop.
        made = await sync_to_async(self._make, thread_sensitive=False)()
        keeper = self._hold(made)
        with self._lock:
            for other in [other for other in self._clients if other.is_closed()]:
                del self._clients[other]
            held = self._clients.setdefault(loop, (made, keeper))
        if held[0] is not made:  # another request on this loop made one meanwhile
            await self._close(made)
        else:
            await anext(keeper)  # started on this loop: known to its shutdown_asyncgens()
        return held[0]

    async def _hold(self, client: Client) -> AsyncGenerator[None, None]:
        """Suspended while ``client`` is in use; closed (by aclose() or the loop's
        shutdown), it closes the client on the loop."""
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            with self._lock:
                if self._clients.get(loop, (None,))[0] is client:
                    del self._clients[loop]
            await self._close(client)

    async def aclose(self) -> None:
        """Close the running loop's client; the next request makes a new one."""
        with self._lock:
            held = self._clients.pop(asyncio.get_running_loop(), None)
        if held is not None:
            await held[1].aclose()

    def forget(self) -> None:
        """Drop every client (from sync code, which cannot await): each is closed on its
        loop as the loop gets to it, or with the loop's shutdown."""
        with self._lock:
            self._clients.clear()

"""A provider for a local (or remote) Ollama server's ``/api/embed`` endpoint.

HTTP goes through the standard library's ``urllib``: one JSON POST per batch
needs no client library, so this provider adds no dependency (the ``openai``
extra's HTTP client is not installed for Ollama users, and is not the same
package as ``httpx`` in recent SDK versions anyway). :meth:`OllamaProvider.aembed`,
for async code, uses ``httpx.AsyncClient`` (the ``django-embedding-field[ollama]``
extra). Retries, backoff and the timeout are implemented here, once for both.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from email.message import Message
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from django_embeddings.exceptions import ProviderError
from django_embeddings.providers._remote import (
    LoopClients,
    batches,
    check_positive_int,
    check_retries,
    check_seconds,
    public_url,
    resolve_dimensions,
)
from django_embeddings.providers.base import BaseProvider, validate_vectors
from django_embeddings.typing import InputType, Matrix

logger = logging.getLogger(__name__)

EXTRA = "django-embedding-field[ollama]"

# Native sizes of common embedding models in Ollama's library, by name without
# the ":tag". Any other model needs the ``dimensions`` option.
KNOWN_DIMENSIONS = {
    "nomic-embed-text": 768,
    "mxbai-embed-large": 1024,
    "all-minilm": 384,
    "bge-m3": 1024,
}
# nomic-embed-text expects task prefixes (see its model card).
KNOWN_PROMPTS = {
    "nomic-embed-text": {"query": "search_query: ", "document": "search_document: "},
}
# A server's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# One attempt's answer: status, headers (read with .get(), any case) and body.
Reply = tuple[int, Any, bytes]


class OllamaProvider(BaseProvider):
    """Embeds with Ollama's ``POST {base_url}/api/embed``.

    Options:

    ``model``
        An Ollama model ("nomic-embed-text").
    ``base_url``
        The server ("http://127.0.0.1:11434").
    ``dimensions``
        The vector size. Optional for the models in :data:`KNOWN_DIMENSIONS`;
        required for any other.
    ``timeout``
        Seconds to connect and to wait for each read of the answer, and at most
        for the whole answer of one attempt (60; a cold model takes a while to load).
    ``max_retries``
        Retries after a 408/429/5xx answer, a timeout or a connection error (5).
    ``retry_backoff`` / ``max_backoff``
        The wait before retry *n* is ``retry_backoff * 2**n`` seconds, at most
        ``max_backoff``, with jitter (the upper half of that range, at random);
        a ``Retry-After`` answer header wins (up to 60 s). Defaults 0.5 and 8.
    ``batch_size`` / ``max_batch_chars``
        Texts (64) and characters (200 000) per request.
    ``query_prompt`` / ``document_prompt``
        Text put before queries / documents. Default: the prefixes the model
        expects, for the models in :data:`KNOWN_PROMPTS`; none otherwise.
    ``keep_alive``
        How long Ollama keeps the model loaded ("5m", -1); the server's default
        when unset.
    ``truncate``
        Let Ollama cut texts longer than the model's context (True).
    ``api_key``
        Sent as ``Authorization: Bearer`` for a server behind an authenticating
        proxy; kept out of ``repr()``, logs and errors.

    The request can last at most about ``(max_retries + 1) * timeout`` plus the
    waits between attempts.
    """

    def __init__(
        self,
        model: str = "nomic-embed-text",
        base_url: str = "http://127.0.0.1:11434",
        dimensions: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff: float = 0.5,
        max_backoff: float = 8.0,
        batch_size: int = 64,
        max_batch_chars: int = 200_000,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        keep_alive: str | int | None = None,
        truncate: bool = True,
        api_key: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        name = type(self).__name__
        if not isinstance(model, str) or not model:
            raise ImproperlyConfigured(f"{name} model should be a model name, not {model!r}.")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ImproperlyConfigured(
                f"{name} base_url should be an http:// or https:// URL, not {base_url!r}."
            )
        family = model.split(":", 1)[0]
        self.dimensions = resolve_dimensions(name, model, dimensions, KNOWN_DIMENSIONS, family)
        self.timeout = check_seconds(name, "timeout", timeout)
        self.max_retries = check_retries(name, max_retries)
        self.retry_backoff = check_seconds(name, "retry_backoff", retry_backoff)
        self.max_backoff = check_seconds(name, "max_backoff", max_backoff)
        self.batch_size = check_positive_int(name, "batch_size", batch_size)
        self.max_batch_chars = check_positive_int(name, "max_batch_chars", max_batch_chars)
        prompts = KNOWN_PROMPTS.get(family, {})
        self.query_prompt = prompts.get("query") if query_prompt is None else query_prompt
        self.document_prompt = (
            prompts.get("document") if document_prompt is None else document_prompt
        )
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.where = public_url(self.base_url)
        self.keep_alive = keep_alive
        self.truncate = truncate
        self._api_key = api_key or None
        self._async_clients: LoopClients[Any] = LoopClients(
            self._make_async_client, lambda client: client.aclose()
        )

        identity = f"ollama:{model}-{self.dimensions}d"
        if self.document_prompt:
            # The prompt changes every stored vector, so it is part of the identity.
            digest = hashlib.sha256(self.document_prompt.encode()).hexdigest()[:8]
            identity += f";document_prompt={digest}"
        self.identity = identity

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start, batch in self._batches(texts, input_type):
            out[start : start + len(batch)] = self._rows(batch, self._post(self._body(batch)))
        return out

    async def aembed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        """:meth:`embed` through ``httpx.AsyncClient``: the same retries, timeout and errors."""
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start, batch in self._batches(texts, input_type):
            answer = await self._apost(self._body(batch))
            out[start : start + len(batch)] = self._rows(batch, answer)
        return out

    async def aclose(self) -> None:
        """Close the running event loop's connections; the next :meth:`aembed` opens new ones."""
        await self._async_clients.aclose()

    def close(self) -> None:
        self._async_clients.forget()

    def _batches(
        self, texts: Sequence[str], input_type: InputType
    ) -> Iterator[tuple[int, list[str]]]:
        prompt = (self.query_prompt if input_type == "query" else self.document_prompt) or ""
        for start, batch in batches(texts, self.batch_size, self.max_batch_chars):
            yield start, [prompt + text for text in batch]

    def _body(self, batch: list[str]) -> bytes:
        body: dict[str, Any] = {"model": self.model, "input": batch, "truncate": self.truncate}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return json.dumps(body).encode("utf-8")

    def _rows(self, batch: list[str], answer: Any) -> Matrix:
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != len(batch):
            got = len(embeddings) if isinstance(embeddings, list) else None
            raise ProviderError(
                f"Ollama at {self.where!r} returned {got} embeddings for {len(batch)} texts "
                f"for model {self.model!r}."
            )
        for index, row in enumerate(embeddings):
            if not isinstance(row, list) or len(row) != self.dimensions:
                got = len(row) if isinstance(row, list) else None
                raise ProviderError(
                    f"Ollama at {self.where!r} returned {got} dimensions for input {index} of "
                    f"model {self.model!r}; expected {self.dimensions}."
                )
        return validate_vectors(
            embeddings,
            expected_rows=len(batch),
            provider=self,
            target=f"a batch of {len(batch)} texts from {self.where!r}",
        )

    @property
    def _url(self) -> str:
        return self.base_url + "/api/embed"

    @property
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _post(self, payload: bytes) -> Any:
        """POST JSON and return the decoded answer, retrying what may pass."""
        attempts = self._attempts()
        wait = next(attempts)
        while True:
            time.sleep(wait)
            try:
                reply: Reply | str = self._request(self._url, payload, self._headers)
            except (OSError, http.client.HTTPException) as exc:
                # URLError, timeouts and refused or reset connections are OSErrors.
                reply = _describe(exc)
            try:
                wait = attempts.send(reply)
            except StopIteration as done:
                return done.value

    async def _apost(self, payload: bytes) -> Any:
        """:meth:`_post` with ``httpx``: the retry loop is the same generator."""
        client = await self._async_clients.get()  # names the extra if httpx is missing
        import httpx

        attempts = self._attempts()
        wait = next(attempts)
        while True:
            await asyncio.sleep(wait)
            try:
                # httpx's timeout bounds each network operation; this one the whole answer.
                async with asyncio.timeout(self.timeout):
                    response = await client.post(self._url, content=payload, headers=self._headers)
                reply: Reply | str = (response.status_code, response.headers, response.content)
            except (httpx.TimeoutException, TimeoutError):
                reply = "timed out"
            except httpx.TransportError as exc:
                reply = _describe(_root_cause(exc))
            try:
                wait = attempts.send(reply)
            except StopIteration as done:
                return done.value

    def _attempts(self) -> Generator[float, Reply | str, Any]:
        """The retry policy without the I/O: receives each attempt's reply (or what went
        wrong), yields the seconds to wait before the next attempt, returns the answer."""
        wait = 0.0
        for attempt in range(self.max_retries + 1):
            reply = yield wait
            retry_after: float | None = None
            if isinstance(reply, str):
                problem = reply
            else:
                status, answer_headers, raw = reply
                if 200 <= status < 300:
                    return self._decode(raw)
                problem = f"HTTP {status}{self._server_message(raw)}"
                if status not in RETRY_STATUSES:
                    raise ProviderError(
                        f"Ollama at {self.where!r} answered {problem} for model {self.model!r}."
                    )
                retry_after = _retry_after(answer_headers.get("Retry-After"))
            if attempt == self.max_retries:
                raise ProviderError(
                    f"Ollama at {self.where!r} failed for model {self.model!r} after "
                    f"{attempt + 1} attempts (timeout {self.timeout:g}s): {problem}"
                )
            wait = self._backoff(attempt, retry_after)
            logger.warning(
                "Ollama at %s: %s for model %s; retry %d of %d in %.2fs",
                self.where,
                problem,
                self.model,
                attempt + 1,
                self.max_retries,
                wait,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(
        self, url: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[int, Message[str, str], bytes]:
        request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
        deadline = time.monotonic() + self.timeout
        try:
            # urllib's timeout bounds each socket operation; _read bounds the whole body.
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers, _read(response, deadline)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, _read(exc, deadline)

    def _make_async_client(self) -> Any:
        try:
            import httpx
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"{type(self).__name__}.aembed() needs httpx ({exc}); install it with: "
                f"pip install '{EXTRA}'"
            ) from exc
        return httpx.AsyncClient(timeout=self.timeout)

    def _decode(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ProviderError(
                f"Ollama at {self.where!r} returned a body that is not JSON for model "
                f"{self.model!r}: {raw[:200]!r}"
            ) from exc

    def _server_message(self, raw: bytes) -> str:
        """Ollama's ``{"error": "..."}`` text, for the exception message."""
        try:
            message = str(json.loads(raw).get("error", ""))
        except (ValueError, AttributeError):
            message = raw[:200].decode("utf-8", "replace")
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return f": {message.strip()[:300]}" if message.strip() else ""

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        ceiling = min(self.max_backoff, self.retry_backoff * 2**attempt)
        # Jitter keeps the workers that failed together from retrying together.
        return random.uniform(ceiling / 2, ceiling)


def _read(response: Any, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer took longer than the timeout")
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # URLError wraps the socket error
    if isinstance(reason, BaseException):
        exc = reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _root_cause(exc: BaseException) -> BaseException:
    """The socket error under httpx's wrappers (``ConnectionRefusedError``, ...)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)

"""A provider for OpenAI's embeddings API and servers that speak it.

Requests go through the ``openai`` SDK (the ``django-embedding-field[openai]``
extra), imported on first use: its ``OpenAI`` client for :meth:`embed`, its
``AsyncOpenAI`` client for :meth:`aembed`, with the same options. The SDK
already retries 408/409/429/5xx and connection errors with exponential backoff
and jitter, honours ``Retry-After`` (``retry-after-ms`` too) and applies the
timeout; this module adds batching, checks on what comes back, and errors that
name the model but never the key.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
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
    short,
)
from django_embeddings.providers.base import BaseProvider, validate_vectors
from django_embeddings.typing import InputType, Matrix

logger = logging.getLogger(__name__)

EXTRA = "django-embedding-field[openai]"
DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Native sizes, so ``dimensions`` is known without a request. Other models (and
# other servers) need the ``dimensions`` option.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIProvider(BaseProvider):
    """Embeds with ``POST {base_url}/embeddings``.

    Options:

    ``model``
        The model name ("text-embedding-3-small").
    ``dimensions``
        The vector size. Optional for the models in :data:`KNOWN_DIMENSIONS`;
        required for any other model. For ``text-embedding-3-*`` models a
        smaller value is sent to the API, which shortens the vectors.
    ``base_url``
        An OpenAI-compatible server (``http://127.0.0.1:8000/v1``). Defaults to
        the SDK's (``OPENAI_BASE_URL`` or OpenAI's API).
    ``api_key``
        Defaults to the ``OPENAI_API_KEY`` environment variable. Required for
        OpenAI's API; a server given by ``base_url`` may need none.
    ``timeout``
        Seconds per request attempt (30).
    ``max_retries``
        Retries after a 408/409/429/5xx answer, a timeout or a connection
        error (5), with the SDK's backoff: 0.5 s doubling to 8 s, with jitter,
        or what the server's ``Retry-After`` asks (up to 2 minutes).
    ``batch_size``
        Texts per request (256; OpenAI accepts up to 2048).
    ``max_batch_chars``
        Characters per request (400 000, about 100 000 tokens; OpenAI caps a
        request at 300 000 tokens).
    ``send_dimensions``
        Send ``dimensions`` in the request. Default: only for
        ``text-embedding-3-*`` models, as other servers may reject the field.
    ``encoding_format``
        ``"float"`` (default, understood by every compatible server) or
        ``"base64"`` (a quarter of the bytes on the wire).
    ``organization``, ``project``, ``default_headers``
        Passed to the SDK client.

    The key is kept out of ``repr()``, log records and exception messages.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        batch_size: int = 256,
        max_batch_chars: int = 400_000,
        send_dimensions: bool | None = None,
        encoding_format: str = "float",
        organization: str | None = None,
        project: str | None = None,
        default_headers: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        name = type(self).__name__
        if not isinstance(model, str) or not model:
            raise ImproperlyConfigured(f"{name} model should be a model name, not {model!r}.")
        self.dimensions = resolve_dimensions(name, model, dimensions, KNOWN_DIMENSIONS, model)
        self.batch_size = check_positive_int(name, "batch_size", batch_size)
        self.max_batch_chars = check_positive_int(name, "max_batch_chars", max_batch_chars)
        self.max_retries = check_retries(name, max_retries)
        self.timeout = check_seconds(name, "timeout", timeout)
        if encoding_format not in ("float", "base64"):
            raise ImproperlyConfigured(
                f"{name} encoding_format should be 'float' or 'base64', not {encoding_format!r}."
            )
        if importlib.util.find_spec("openai") is None:
            raise ImproperlyConfigured(
                f"{name} needs the openai package; install it with: pip install '{EXTRA}'"
            )
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None and base_url is None and not os.environ.get("OPENAI_BASE_URL"):
            raise ImproperlyConfigured(
                f"{name} needs an API key for OpenAI's API: set OPTIONS['api_key'] or the "
                "OPENAI_API_KEY environment variable."
            )
        self.model = model
        self.identity = f"openai:{model}-{self.dimensions}d"
        self.base_url = base_url
        self.send_dimensions = (
            model.startswith("text-embedding-3") if send_dimensions is None else send_dimensions
        )
        self.encoding_format = encoding_format
        self._api_key = api_key
        self._client_options: dict[str, Any] = {
            "organization": organization,
            "project": project,
            "default_headers": default_headers,
        }
        self._client: Any = None
        self._lock = threading.Lock()
        self._async_clients: LoopClients[Any] = LoopClients(
            lambda: self._make_client(asynchronous=True), lambda client: client.close()
        )

    @property
    def where(self) -> str:
        """The server, for messages: the base URL without any user:password part."""
        return public_url(self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        # OpenAI's models are symmetric: input_type does not change the request.
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        client = self._get_client()
        for start, batch in batches(texts, self.batch_size, self.max_batch_chars):
            with self._failures():
                response = client.embeddings.create(input=batch, **self._request())
            out[start : start + len(batch)] = self._rows(response, batch)
        return out

    async def aembed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        """:meth:`embed` through the SDK's ``AsyncOpenAI``: the same retries and errors."""
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        client = await self._async_clients.get()
        for start, batch in batches(texts, self.batch_size, self.max_batch_chars):
            with self._failures():
                response = await client.embeddings.create(input=batch, **self._request())
            out[start : start + len(batch)] = self._rows(response, batch)
        return out

    def _request(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "encoding_format": self.encoding_format}
        if self.send_dimensions:
            kwargs["dimensions"] = self.dimensions
        return kwargs

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """The SDK's errors, once its retries are spent, as ``ProviderError``."""
        import openai

        try:
            yield
        except openai.APITimeoutError as exc:
            raise self._error(
                f"timed out after {self.timeout:g}s ({self.max_retries} retries)", exc
            ) from exc
        except openai.APIConnectionError as exc:
            raise self._error(f"could not be reached ({self.max_retries} retries)", exc) from exc
        except openai.APIStatusError as exc:
            raise self._error(f"answered HTTP {exc.status_code}", exc) from exc
        except (openai.OpenAIError, ValueError, TypeError) as exc:  # e.g. an unparsable body
            raise self._error("failed", exc) from exc

    def _rows(self, response: Any, batch: list[str]) -> Matrix:
        data = sorted(getattr(response, "data", None) or [], key=lambda item: item.index)
        indexes = [item.index for item in data]
        if indexes != list(range(len(batch))):
            raise ProviderError(
                f"OpenAI-compatible API at {self.where!r} returned embeddings for indexes "
                f"{short(indexes)} for model {self.model!r}; expected 0..{len(batch) - 1}."
            )
        rows = [self._row(item.embedding, item.index) for item in data]
        return validate_vectors(
            rows,
            expected_rows=len(batch),
            provider=self,
            target=f"a batch of {len(batch)} texts from {self.where!r}",
        )

    def _row(self, embedding: Any, index: int) -> Any:
        if isinstance(embedding, str):  # encoding_format="base64": little-endian float32
            try:
                embedding = np.frombuffer(base64.b64decode(embedding), dtype="<f4")
            except ValueError as exc:
                raise ProviderError(
                    f"OpenAI-compatible API at {self.where!r} returned invalid base64 for "
                    f"input {index} of model {self.model!r}."
                ) from exc
        if embedding is None or len(embedding) != self.dimensions:
            got = None if embedding is None else len(embedding)
            raise ProviderError(
                f"OpenAI-compatible API at {self.where!r} returned {got} dimensions for input "
                f"{index} of model {self.model!r}; expected {self.dimensions}."
            )
        return embedding

    def _error(self, what: str, exc: Exception) -> ProviderError:
        detail = str(exc)
        if self._api_key:
            # A server may echo the credentials it was sent; never pass them on.
            detail = detail.replace(self._api_key, "***")
        return ProviderError(
            f"OpenAI-compatible API at {self.where!r} {what} for model {self.model!r}: {detail}"
        )

    def close(self) -> None:
        """Close the HTTP connections; the next :meth:`embed` opens new ones."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self._async_clients.forget()

    async def aclose(self) -> None:
        """Close the running event loop's connections; the next :meth:`aembed` opens new ones."""
        await self._async_clients.aclose()

    def _get_client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self, *, asynchronous: bool = False) -> Any:
        try:
            import openai
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"{type(self).__name__} could not import openai ({exc}); install it with: "
                f"pip install '{EXTRA}'"
            ) from exc
        client_class = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return client_class(
            # The SDK insists on a key; a local server that needs none ignores it.
            api_key=self._api_key or "unused",
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            **{key: value for key, value in self._client_options.items() if value is not None},
        )

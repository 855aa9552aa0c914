"""Embedding providers, configured like ``CACHES`` in ``DJANGO_EMBEDDINGS_PROVIDERS``.

The heavy providers import their libraries only when instantiated, so importing
this package stays cheap.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_embeddings.conf import conf
from django_embeddings.providers.base import (
    BaseProvider,
    aembed_checked,
    embed_checked,
    validate_vectors,
)
from django_embeddings.providers.hashing import HashingProvider

if TYPE_CHECKING:
    from django_embeddings.providers.ollama import OllamaProvider
    from django_embeddings.providers.openai import OpenAIProvider
    from django_embeddings.providers.sentence_transformers import (
        SentenceTransformerProvider,
    )
    from django_embeddings.providers.static import StaticModelProvider

__all__ = [
    "BaseProvider",
    "HashingProvider",
    "OllamaProvider",
    "OpenAIProvider",
    "SentenceTransformerProvider",
    "StaticModelProvider",
    "aembed_checked",
    "clear_providers",
    "embed_checked",
    "get_provider",
    "validate_vectors",
]

_LAZY = {
    "StaticModelProvider": "django_embeddings.providers.static",
    "SentenceTransformerProvider": "django_embeddings.providers.sentence_transformers",
    "OpenAIProvider": "django_embeddings.providers.openai",
    "OllamaProvider": "django_embeddings.providers.ollama",
}

_providers: dict[str, BaseProvider] = {}
_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(__import__(_LAZY[name], fromlist=[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_provider(alias: str = "default") -> BaseProvider:
    """Return the provider configured under ``alias``, built once per process."""
    try:
        return _providers[alias]
    except KeyError:
        pass
    with _lock:
        if alias not in _providers:
            _providers[alias] = _build(alias)
        return _providers[alias]


def clear_providers() -> None:
    """Forget built providers (``setting_changed`` calls this)."""
    with _lock:
        for provider in _providers.values():
            close = getattr(provider, "close", None)
            if callable(close):
                close()  # release HTTP connections instead of leaving them to the GC
        _providers.clear()


def _build(alias: str) -> BaseProvider:
    config = conf.PROVIDERS.get(alias)
    if config is None:
        raise ImproperlyConfigured(
            f"DJANGO_EMBEDDINGS_PROVIDERS has no alias {alias!r}; "
            f"configured aliases are {sorted(conf.PROVIDERS)!r}."
        )
    backend = config.get("BACKEND")
    if not isinstance(backend, str):
        raise ImproperlyConfigured(
            f"DJANGO_EMBEDDINGS_PROVIDERS[{alias!r}]['BACKEND'] should be a dotted "
            f"path string, not {backend!r}."
        )
    try:
        provider_class = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"DJANGO_EMBEDDINGS_PROVIDERS[{alias!r}]['BACKEND'] {backend!r} "
            f"could not be imported: {exc}"
        ) from exc
    provider = provider_class(**config.get("OPTIONS", {}))
    if not isinstance(provider, BaseProvider):
        raise ImproperlyConfigured(
            f"DJANGO_EMBEDDINGS_PROVIDERS[{alias!r}]['BACKEND'] {backend!r} "
            "is not a django_embeddings.providers.BaseProvider subclass."
        )
    return provider

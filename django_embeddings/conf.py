"""The app's settings, read from ``django.conf.settings`` at access time.

This module is the only reader of Django settings in the package. Reading on each
access (instead of caching at import) keeps ``override_settings`` working in tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings

INVALIDATION_MODES = ("pubsub", "mtime", "none")
ON_ERROR_CHOICES = ("raise", "log")

DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"},
}


class Settings:
    """Typed access to every ``DJANGO_EMBEDDINGS_*`` setting, with its default."""

    @property
    def PROVIDERS(self) -> dict[str, dict[str, Any]]:
        return getattr(settings, "DJANGO_EMBEDDINGS_PROVIDERS", DEFAULT_PROVIDERS)

    @property
    def DIR(self) -> Path | None:
        value = getattr(settings, "DJANGO_EMBEDDINGS_DIR", None)
        return None if value is None else Path(value)

    @property
    def INVALIDATION(self) -> str:
        # The environment wins over settings, as popoto's POPOTO_EMBEDDING_INVALIDATION
        # does, so an operator can switch modes without a code change.
        from_env = os.environ.get("DJANGO_EMBEDDINGS_INVALIDATION")
        if from_env:
            return from_env.strip().lower()
        return str(getattr(settings, "DJANGO_EMBEDDINGS_INVALIDATION", "pubsub"))

    @property
    def REDIS(self) -> str:
        """A ``CACHES`` alias served by django-redis, or a ``redis://`` URL."""
        return str(getattr(settings, "DJANGO_EMBEDDINGS_REDIS", "default"))

    @property
    def CHANNEL(self) -> str:
        return str(getattr(settings, "DJANGO_EMBEDDINGS_CHANNEL", "django_embeddings"))

    @property
    def SIGNING_KEYS(self) -> list[str]:
        """``SECRET_KEY`` then its fallbacks: pub/sub messages are signed with the first."""
        return [str(settings.SECRET_KEY), *map(str, settings.SECRET_KEY_FALLBACKS)]

    @property
    def ON_ERROR(self) -> str:
        """What a failed provider call does after commit: ``raise`` or ``log``."""
        return str(getattr(settings, "DJANGO_EMBEDDINGS_ON_ERROR", "raise"))

    @property
    def MAX_TEXT_LENGTH(self) -> int:
        """Source texts are cut to this many characters before they are embedded."""
        return int(getattr(settings, "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH", 20_000))

    @property
    def COMPACT_THRESHOLD(self) -> int:
        """Journal entries past the snapshot that make a writer compact the store."""
        return int(getattr(settings, "DJANGO_EMBEDDINGS_COMPACT_THRESHOLD", 10_000))

    @property
    def DEFER(self) -> bool:
        """Embed after commit in a task (Django's tasks framework) instead of in the request.

        ``EmbeddingField(defer=...)`` wins over this default.
        """
        return bool(getattr(settings, "DJANGO_EMBEDDINGS_DEFER", False))


conf = Settings()

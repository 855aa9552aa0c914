"""The app's settings, read from ``django.conf.settings`` at access time.

This module is the only reader of Django settings in the package. Reading on each
access (instead of caching at import) keeps ``override_settings`` working in tests.
Values are returned as given, never coerced (``bool("False")`` is True): the
system checks in :mod:`django_embeddings.checks` report a wrong type at start-up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.utils.functional import empty

from django_embeddings.store.permissions import DIRECTORY_PERMISSIONS, FILE_PERMISSIONS

_T = TypeVar("_T")

INVALIDATION_MODES = ("pubsub", "mtime", "none")
ON_ERROR_CHOICES = ("raise", "log")
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
SCANS = ("float32", "int8")

DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"},
}


class Settings:
    """Typed access to every ``DJANGO_EMBEDDINGS_*`` setting, with its default."""

    @property
    def PROVIDERS(self) -> dict[str, dict[str, Any]]:
        return _setting("DJANGO_EMBEDDINGS_PROVIDERS", DEFAULT_PROVIDERS)

    @property
    def DIR(self) -> Path | None:
        value = _setting("DJANGO_EMBEDDINGS_DIR", None)
        if value is None and self.STORE == "database":
            # Only this machine's copy lives there, rebuilt from the table when missing.
            return Path(tempfile.gettempdir()) / f"django-embeddings-{os.geteuid()}"
        # Anything but a str or path is returned as given, for the check (E017) to name.
        return Path(value) if isinstance(value, (str, os.PathLike)) else value

    @property
    def STORE(self) -> str:
        """Where vectors live: ``"files"`` (the directory) or ``"database"`` (tables of the
        project's database, with a local copy per machine in the directory)."""
        return _setting("DJANGO_EMBEDDINGS_STORE", "files")

    @property
    def INVALIDATION(self) -> str:
        """The mode in force: the environment variable, else the setting, else the
        default, which is ``pubsub`` when Redis is configured and ``mtime`` when not."""
        given = self.INVALIDATION_GIVEN
        if given is not None:
            return given
        return "pubsub" if self.REDIS_CONFIGURED else "mtime"

    @property
    def INVALIDATION_GIVEN(self) -> str | None:
        """The mode as the environment variable or the setting gives it; ``None`` if neither
        (a setting of ``None`` counts as not given)."""
        # The environment wins over settings, so an operator can switch modes
        # without a code change.
        from_env = os.environ.get("DJANGO_EMBEDDINGS_INVALIDATION")
        if from_env:
            return from_env.strip().lower()
        return _setting("DJANGO_EMBEDDINGS_INVALIDATION", None)

    @property
    def REDIS(self) -> str:
        """A ``CACHES`` alias served by django-redis, or a ``redis://`` URL."""
        return _setting("DJANGO_EMBEDDINGS_REDIS", "default")

    @property
    def REDIS_CONFIGURED(self) -> bool:
        """Does ``REDIS`` name a django-redis cache of ``CACHES``, or is it a Redis URL?"""
        target = self.REDIS
        if not isinstance(target, str):
            return False
        if target.startswith(REDIS_URL_SCHEMES):
            return True
        caches: Any = _setting("CACHES", {})
        config = caches.get(target) if isinstance(caches, dict) else None
        return isinstance(config, dict) and str(config.get("BACKEND", "")).startswith(
            "django_redis."
        )

    @property
    def CHANNEL(self) -> str:
        return _setting("DJANGO_EMBEDDINGS_CHANNEL", "django_embeddings")

    @property
    def SIGNING_KEYS(self) -> list[str]:
        """``SECRET_KEY`` then its fallbacks: pub/sub messages are signed with the first."""
        return [str(settings.SECRET_KEY), *map(str, settings.SECRET_KEY_FALLBACKS)]

    @property
    def ON_ERROR(self) -> str:
        """What a failed provider call does after commit: ``raise`` or ``log``."""
        return _setting("DJANGO_EMBEDDINGS_ON_ERROR", "raise")

    @property
    def MAX_TEXT_LENGTH(self) -> int:
        """Source texts are cut to this many characters before they are embedded."""
        return _setting("DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH", 20_000)

    @property
    def COMPACT_THRESHOLD(self) -> int:
        """Journal entries past the snapshot that make a writer compact the store."""
        return _setting("DJANGO_EMBEDDINGS_COMPACT_THRESHOLD", 10_000)

    @property
    def MERGE_IN_BACKGROUND(self) -> bool:
        """Compact a files store in a background thread of the process whose save made it
        due, rather than inside that save (which then waits for a rewrite of every row)."""
        return _setting("DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND", True)

    @property
    def DEFER(self) -> bool:
        """Embed after commit in a task (Django's tasks framework) instead of in the request.

        ``EmbeddingField(defer=...)`` wins over this default.
        """
        return _setting("DJANGO_EMBEDDINGS_DEFER", False)

    @property
    def SCAN(self) -> str:
        """What a similarity search scans: ``"float32"`` (the vectors) or ``"int8"`` (a copy
        a quarter of the size, its best candidates scored again in float32: the same results)."""
        return _setting("DJANGO_EMBEDDINGS_SCAN", "float32")

    @property
    def FILE_PERMISSIONS(self) -> int:
        """The mode of each file a store creates (an int such as ``0o640``)."""
        return _setting("DJANGO_EMBEDDINGS_FILE_PERMISSIONS", FILE_PERMISSIONS)

    @property
    def DIRECTORY_PERMISSIONS(self) -> int:
        """The mode of each directory a store creates (an int such as ``0o750``)."""
        return _setting("DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS", DIRECTORY_PERMISSIONS)


def _setting(name: str, default: _T) -> Any | _T:
    """``getattr(settings, name, default)`` without the AttributeError Django raises and
    catches for each setting a project leaves out: most of ours are, and a save reads
    several."""
    wrapped = settings._wrapped
    if wrapped is empty:
        settings._setup()
        wrapped = settings._wrapped
    return getattr(wrapped, name, default)


conf = Settings()

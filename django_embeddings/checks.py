"""System checks for the app's settings; field checks live in ``EmbeddingField.check()``.

Every id is listed in the README's "System checks" section, which the hints link to.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from django_embeddings.conf import INVALIDATION_MODES, ON_ERROR_CHOICES, conf

DOCS = "https://pypi.org/project/django-embedding-field/#system-checks"


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    return [
        *_check_providers(),
        *_check_dir(),
        *_check_invalidation(),
        *_check_on_error(),
        *_check_redis(),
    ]


def _check_providers() -> list[CheckMessage]:
    providers = conf.PROVIDERS
    if not isinstance(providers, dict):
        return [
            Error(
                f"DJANGO_EMBEDDINGS_PROVIDERS should be a dict of aliases, not {providers!r}.",
                hint=DOCS,
                id="django_embeddings.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for alias, config in providers.items():
        backend = config.get("BACKEND") if isinstance(config, dict) else None
        options = config.get("OPTIONS", {}) if isinstance(config, dict) else None
        problem = None
        if not isinstance(backend, str):
            problem = f"should be a dict with a dotted-path 'BACKEND', not {config!r}"
        elif not isinstance(options, dict):
            problem = f"has OPTIONS {options!r}; they should be a dict"
        else:
            try:
                import_string(backend)
            except ImportError as exc:
                problem = f"has BACKEND {backend!r}, which cannot be imported ({exc})"
        if problem:
            errors.append(
                Error(
                    f"DJANGO_EMBEDDINGS_PROVIDERS[{alias!r}] {problem}.",
                    hint=DOCS,
                    id="django_embeddings.E001",
                )
            )
    return errors


def _check_dir() -> list[CheckMessage]:
    directory = conf.DIR
    if directory is None:
        return [
            Error(
                "DJANGO_EMBEDDINGS_DIR is not set.",
                hint='Set it to a directory for the vectors, e.g. BASE_DIR / "embeddings".',
                id="django_embeddings.E002",
            )
        ]
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return [
            Error(
                f"DJANGO_EMBEDDINGS_DIR {str(directory)!r} is not writable by this process.",
                hint=f"Make {str(existing)!r} writable, or point the setting elsewhere.",
                id="django_embeddings.E003",
            )
        ]
    return []


def _check_invalidation() -> list[CheckMessage]:
    if conf.INVALIDATION not in INVALIDATION_MODES:
        return [
            Error(
                f"DJANGO_EMBEDDINGS_INVALIDATION should be one of {list(INVALIDATION_MODES)!r}, "
                f"not {conf.INVALIDATION!r}.",
                hint="The environment variable DJANGO_EMBEDDINGS_INVALIDATION wins over settings.",
                id="django_embeddings.E004",
            )
        ]
    return []


def _check_on_error() -> list[CheckMessage]:
    if conf.ON_ERROR not in ON_ERROR_CHOICES:
        return [
            Error(
                f"DJANGO_EMBEDDINGS_ON_ERROR should be one of {list(ON_ERROR_CHOICES)!r}, "
                f"not {conf.ON_ERROR!r}.",
                hint=DOCS,
                id="django_embeddings.E008",
            )
        ]
    return []


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _check_redis() -> list[CheckMessage]:
    """``pubsub`` needs DJANGO_EMBEDDINGS_REDIS to be a redis URL or a django-redis cache."""
    if conf.INVALIDATION != "pubsub":
        return []
    target = conf.REDIS
    if target.startswith(REDIS_URL_SCHEMES):
        return []
    caches = getattr(settings, "CACHES", {})
    config = caches.get(target) if isinstance(caches, dict) else None
    if not isinstance(config, dict):
        problem = "is neither a redis://, rediss:// or unix:// URL nor an alias in CACHES"
    elif not str(config.get("BACKEND", "")).startswith("django_redis."):
        problem = f"names a cache with BACKEND {config.get('BACKEND')!r}, not django-redis"
    else:
        options = config.get("OPTIONS") or {}
        if isinstance(options, dict) and options.get("SOCKET_TIMEOUT") is None:
            return [
                Warning(
                    f"DJANGO_EMBEDDINGS_REDIS names the cache {target!r}, which has no "
                    "SOCKET_TIMEOUT: a Redis that stops answering would block every write "
                    "while it publishes the change.",
                    hint="Set CACHES[...]['OPTIONS']['SOCKET_TIMEOUT'] (and "
                    f"SOCKET_CONNECT_TIMEOUT), e.g. to 5 seconds. See {DOCS}",
                    id="django_embeddings.W001",
                )
            ]
        return []
    return [
        Error(
            f"DJANGO_EMBEDDINGS_REDIS {target!r} {problem}.",
            hint="Point it at a CACHES alias served by django_redis.cache.RedisCache, or at a "
            "redis:// URL; or set DJANGO_EMBEDDINGS_INVALIDATION to 'mtime' or 'none'.",
            id="django_embeddings.E011",
        )
    ]

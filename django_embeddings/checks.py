"""System checks for the app's settings; field checks live in ``EmbeddingField.check()``.

Every id is listed in the README's "System checks" section, which the hints link to.
Settings are read as given (see :mod:`django_embeddings.conf`), so each one's type
and value is checked here, at start-up, rather than failing in a request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, registry
from django.utils.module_loading import import_string

from django_embeddings.conf import INVALIDATION_MODES, ON_ERROR_CHOICES, REDIS_URL_SCHEMES, conf

DOCS = 'See the "System checks" section of the README (README.md#system-checks).'

# check_settings runs under TAG; the store directory's writability (E003) under a tag
# of its own, so commands that only read a store can skip just that check.
TAG = "django_embeddings"
STORE_WRITABLE_TAG = "django_embeddings_store_writable"


def register_checks() -> None:
    """Register the app's checks (``AppConfig.ready()`` calls this)."""
    registry.register(check_settings, TAG)
    registry.register(check_store_writable, STORE_WRITABLE_TAG)
    registry.register(check_deployment, TAG, deploy=True)


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    return [
        *_check_providers(),
        *_check_dir(),
        *_check_invalidation(),
        *_check_on_error(),
        *_check_redis(),
        *_check_channel(),
        *_check_positive_int("DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH", conf.MAX_TEXT_LENGTH, "E014"),
        *_check_positive_int("DJANGO_EMBEDDINGS_COMPACT_THRESHOLD", conf.COMPACT_THRESHOLD, "E015"),
        *_check_defer(),
    ]


def check_store_writable(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E003: the store directory (or the nearest existing parent) must be writable."""
    directory = conf.DIR
    if not isinstance(directory, Path):
        return []  # E002 or E017
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


def check_deployment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """``manage.py check --deploy`` only."""
    if conf.INVALIDATION_GIVEN is None and conf.INVALIDATION == "mtime":
        return [
            Warning(
                "DJANGO_EMBEDDINGS_INVALIDATION is not set and DJANGO_EMBEDDINGS_REDIS "
                f"{conf.REDIS!r} names no django-redis cache or Redis URL, so the mode is "
                "'mtime': each search checks the store's journal on disk for other "
                "processes' writes.",
                hint="With several processes or machines, point DJANGO_EMBEDDINGS_REDIS at a "
                "django-redis cache or a redis:// URL for 'pubsub'. To keep 'mtime' (or "
                "'none' for a single process), set DJANGO_EMBEDDINGS_INVALIDATION to say "
                f"so. {DOCS}",
                id="django_embeddings.W002",
            )
        ]
    return []


def read_only_check_tags() -> list[str]:
    """The check tags a command that only reads stores runs: all but E003's.

    Django's database checks are left out too, as a plain run leaves them out;
    checks registered without a tag cannot be selected by tag, so they do not run.
    """
    return sorted(registry.registry.tags_available() - {Tags.database, STORE_WRITABLE_TAG})


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
    if not isinstance(directory, Path):
        return [
            Error(
                f"DJANGO_EMBEDDINGS_DIR should be a str or a Path, not {directory!r}.",
                hint='Set it to a directory for the vectors, e.g. BASE_DIR / "embeddings".',
                id="django_embeddings.E017",
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


def _check_redis() -> list[CheckMessage]:
    """A string always; in ``pubsub`` mode, a redis URL or a django-redis cache."""
    target: object = conf.REDIS
    if not isinstance(target, str):
        return [
            Error(
                "DJANGO_EMBEDDINGS_REDIS should be a str (a CACHES alias or a redis:// URL), "
                f"not {target!r}.",
                hint=DOCS,
                id="django_embeddings.E012",
            )
        ]
    if conf.INVALIDATION != "pubsub" or target.startswith(REDIS_URL_SCHEMES):
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
                    f"SOCKET_CONNECT_TIMEOUT), e.g. to 5 seconds. {DOCS}",
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


def _check_channel() -> list[CheckMessage]:
    channel: object = conf.CHANNEL
    if not isinstance(channel, str) or not channel:
        return [
            Error(
                f"DJANGO_EMBEDDINGS_CHANNEL should be a non-empty str, not {channel!r}.",
                hint=DOCS,
                id="django_embeddings.E013",
            )
        ]
    return []


def _check_positive_int(name: str, value: object, code: str) -> list[CheckMessage]:
    # bool is an int subclass, but True as a length is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [
            Error(
                f"{name} should be a positive int, not {value!r}.",
                hint=DOCS,
                id=f"django_embeddings.{code}",
            )
        ]
    return []


def _check_defer() -> list[CheckMessage]:
    defer: object = conf.DEFER
    if not isinstance(defer, bool):
        return [
            Error(
                f"DJANGO_EMBEDDINGS_DEFER should be True or False, not {defer!r}.",
                hint=DOCS,
                id="django_embeddings.E016",
            )
        ]
    return []

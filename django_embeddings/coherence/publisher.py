"""Sending: a committed write told to peers, and told again after a failure.

One PUBLISH per call, written before the call returns; its reply is read later
(:mod:`~django_embeddings.coherence.outbox`), so a save does not wait for Redis'
round trip. A failure never fails the write: it is logged (once per outage) and
the store is remembered; the listener resends a hint for it, so peers read its
journal, and peers whose listeners lost Redis too are checking versions meanwhile.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection

from django_embeddings.coherence import LOGGER_NAME, messages, process
from django_embeddings.coherence.outbox import Outbox
from django_embeddings.conf import conf
from django_embeddings.store import Entry, Store
from django_embeddings.typing import Vector

__all__ = ["client", "collect", "is_own", "message", "resend", "resend_quietly", "send"]

logger = logging.getLogger(LOGGER_NAME)

# Signatures of sent messages remembered for is_own(); past this many (the listener is
# down, or lagging far behind) the oldest are forgotten and their echo is decoded instead.
SENT_REMEMBERED = 1024
EXIT_SECONDS = 1.0  # at exit, how long to wait for the unread PUBLISH replies


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
    """PUBLISH ``payload`` without waiting for the reply (see :mod:`.outbox`); on
    failure, now or when the reply is read, remember ``store`` for :func:`resend`."""
    state = process.state
    signature = _remember(state, payload)  # before PUBLISH: the echo can beat its reply
    try:
        outbox(state).send(client(), conf.CHANNEL, payload, store)
    except Exception as exc:  # redis errors, bad configuration: never fail a committed write
        _forget(state, signature)
        _report(store, exc)


def collect(timeout: float | None = 0) -> None:
    """Read the replies of PUBLISHes sent so far (the listener's loop, and exit)."""
    state = process.state
    if state.outbox is not None:
        state.outbox.collect(timeout)


def outbox(state: process.State) -> Outbox:
    box = state.outbox
    if box is None:
        with state.sent_lock:  # not state.lock: a stop holds it while the listener resends
            if state.outbox is None:
                state.outbox = Outbox(_report)
            box = state.outbox
    return box


def _report(store: Store, error: Exception | None) -> None:
    """The outcome of one PUBLISH of a change of ``store``."""
    state = process.state
    if error is not None:
        state.unsent[str(store.path)] = store
        if not state.publish_warned:
            state.publish_warned = True
            logger.warning(
                "Could not publish a change of %s to DJANGO_EMBEDDINGS_REDIS %r (%s); "
                "retrying. Peers whose listener lost Redis too check versions meanwhile.",
                store.label,
                conf.REDIS,
                error,
            )
        return
    if state.publish_warned:
        state.publish_warned = False
        logger.info("Publishing changes to DJANGO_EMBEDDINGS_REDIS %r again", conf.REDIS)
    state.unsent.pop(str(store.path), None)


def is_own(data: object) -> bool:
    """Is ``data`` the echo of a message this process sent? Then the listener drops it
    unread: the write was applied here when it was made.

    It is recognised by its signature alone, which is a MAC over the whole message:
    a payload that carries one of ours is ours, or a forgery that must not be applied
    either. Each signature is recognised once, so a forged copy arriving first leaves
    the real echo to be decoded and skipped by its sender id, as any other would be.
    """
    if not isinstance(data, bytes):
        return False
    state = process.state
    with state.sent_lock:
        return state.sent.pop(data[: messages.MAC_BYTES], False)


def _remember(state: process.State, payload: bytes) -> bytes:
    signature = payload[: messages.MAC_BYTES]
    with state.sent_lock:
        sent = state.sent
        sent[signature] = True
        while len(sent) > SENT_REMEMBERED:
            del sent[next(iter(sent))]
    return signature


def _forget(state: process.State, signature: bytes) -> None:
    with state.sent_lock:
        state.sent.pop(signature, None)


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


def _collect_at_exit() -> None:
    # Read what is owed before the socket closes: closing with unread data resets the
    # connection, which can drop a PUBLISH still in flight.
    try:
        collect(EXIT_SECONDS)
    except Exception:
        logger.debug("Could not read the last PUBLISH replies", exc_info=True)


atexit.register(_collect_at_exit)

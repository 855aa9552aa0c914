"""The listener: one daemon thread per process that receives peers' writes.

It subscribes on one Redis connection, hands each message to
:func:`~django_embeddings.coherence.handling.handle_message`, PINGs to notice a
dead connection, and reconnects with backoff. Its state lives in
:mod:`~django_embeddings.coherence.process`, so a forked child never uses it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from django_embeddings.coherence import LOGGER_NAME, handling, process, publisher
from django_embeddings.conf import conf
from django_embeddings.store import Store

__all__ = ["Listener", "stop_invalidation_listeners"]

logger = logging.getLogger(LOGGER_NAME)

POLL_SECONDS = 0.25  # get_message() timeout: how fast the thread notices stop() and due work
GRACE_SECONDS = 0.5  # after (re)subscribing, searches keep checking this long (see Listener)
PING_SECONDS = 1.0  # a PING on the listener connection this often...
DEAD_SECONDS = 3.0  # ...and no reply for this long means the connection is dead
BACKOFF_SECONDS = (0.1, 10.0)  # reconnect delay: first, then doubling up to the last
# Even while healthy, every loaded index is checked (a stat each) this often: a write
# whose PUBLISH failed (ACL, or the writer alone losing Redis) is seen within it.
SWEEP_SECONDS = 5.0
_JOIN_SECONDS = 2 * POLL_SECONDS + 1


class Listener(threading.Thread):
    """Subscribes, applies peers' messages, and reconnects with backoff.

    ``healthy`` turns True only a grace period after the subscription is
    confirmed, and after every loaded index has read its journal: an index whose
    load began before we were subscribed may have missed a message, so searches
    keep checking versions a little longer, then one pass catches everyone up.

    ``announce`` sends the hints for stores whose publish failed (the current
    mode's, so it sends nothing once the mode is no longer ``pubsub``).
    """

    def __init__(self, announce: Callable[[Store], None]) -> None:
        super().__init__(name="django_embeddings.invalidation", daemon=True)
        self.healthy = False
        self._announce = announce
        self._stop_event = threading.Event()
        self._warned = False

    def stop(self) -> None:
        self._stop_event.set()
        self.healthy = False

    def run(self) -> None:
        try:
            self._run()
        finally:
            # Catching up a database store reads its table from this thread: its
            # connection ends with it (Django closes only request threads' connections).
            connections.close_all()

    def _run(self) -> None:
        delay = BACKOFF_SECONDS[0]
        while not self._stop_event.is_set():
            pubsub = None
            try:
                pubsub = publisher.client().pubsub(ignore_subscribe_messages=False)
                pubsub.subscribe(conf.CHANNEL)
                self._listen(pubsub)
                delay = BACKOFF_SECONDS[0]
            except Exception as exc:
                self.healthy = False
                self._warn(exc)
                _collect_quietly()
                publisher.resend_quietly(self._announce)
                self._stop_event.wait(delay)
                delay = min(delay * 2, BACKOFF_SECONDS[1])
            finally:
                if pubsub is not None:
                    _close(pubsub)
        self.healthy = False

    def _listen(self, pubsub: Any) -> None:
        ready_at: float | None = None  # when to turn healthy
        last_ping = last_heard = last_sweep = time.monotonic()
        while not self._stop_event.is_set():
            message = pubsub.get_message(timeout=POLL_SECONDS)
            if message is not None:
                kind = message.get("type")
                if kind == "subscribe":
                    # The first confirmation, or redis-py silently reconnected and
                    # re-subscribed: either way we may have missed messages.
                    self.healthy = False
                    ready_at = time.monotonic() + GRACE_SECONDS
                elif kind == "message":
                    try:
                        handling.handle_message(message.get("data"))
                    except Exception:  # a broken store, not a broken connection
                        logger.exception("Could not apply a change published by a peer")
                elif kind == "unsubscribe":
                    raise ConnectionError("unsubscribed by the server")
                # Measured after handling, so a slow catch-up is not taken for silence.
                last_heard = time.monotonic()
            publisher.collect()  # our PUBLISHes' replies: an echo means they are in
            now = time.monotonic()
            if ready_at is not None and now >= ready_at:
                ready_at = None
                handling.catch_up_everything()
                self.healthy = True
                if self._warned:
                    self._warned = False
                    logger.info("Listening to DJANGO_EMBEDDINGS_REDIS %r again", conf.REDIS)
            handling.reconcile()
            if self.healthy and now - last_sweep >= SWEEP_SECONDS:
                last_sweep = now
                handling.catch_up_everything(force=False)
            if process.state.unsent:
                publisher.resend(self._announce)
            if now - last_ping >= PING_SECONDS:
                last_ping = now
                pubsub.ping()
            if now - last_heard > DEAD_SECONDS:
                raise ConnectionError(f"no reply from Redis for {DEAD_SECONDS} seconds")

    def _warn(self, exc: Exception) -> None:
        if self._stop_event.is_set():
            return
        if self._warned:
            logger.debug("Still cannot listen to DJANGO_EMBEDDINGS_REDIS: %s", exc)
            return
        self._warned = True
        logger.warning(
            "Cannot listen to DJANGO_EMBEDDINGS_REDIS %r for changes made by other processes "
            "(%s); searches check the store's version instead until it is back.",
            conf.REDIS,
            exc,
        )


def stop_invalidation_listeners(timeout: float = _JOIN_SECONDS) -> None:
    """Stop this process's listener and close its connection.

    Searches go back to checking versions (in ``pubsub`` mode) until
    :func:`~django_embeddings.invalidation.start`.
    """
    with process.state.lock:
        process.check_pid()
        state = process.state
        state.wanted = False
        running, state.listener = state.listener, None
    if running is not None:
        running.stop()
        if running is not threading.current_thread():
            running.join(timeout)


def _collect_quietly() -> None:
    try:
        publisher.collect()
    except Exception:
        logger.debug("Could not read PUBLISH replies", exc_info=True)


def _close(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:
        logger.debug("Error while closing the pub/sub connection", exc_info=True)


atexit.register(stop_invalidation_listeners, POLL_SECONDS)

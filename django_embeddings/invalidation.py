"""Keeping every process's cached indexes in step with the store.

Modes (``DJANGO_EMBEDDINGS_INVALIDATION``; the environment variable wins):

- ``pubsub`` (default): after each committed write a process PUBLISHes the journal
  entries and vectors (:mod:`django_embeddings.messages`); one daemon thread per
  process, on one Redis connection, applies its peers' writes to the cached
  indexes in place. While that listener is healthy a search costs nothing extra:
  no stat. A peer's write becomes visible after Redis' round trip plus the time
  to apply it, a few milliseconds. While the listener is not connected (Redis
  down, refusing, restarting), searches fall back to the ``mtime`` check, so a
  process can be slow to see a peer's write but never stale for good.
- ``mtime``: before each search, stat the store's journal; when it changed, read
  only the new entries. No Redis.
- ``none``: never look; for a single process. No thread, no connection, no stat.

Versions repair every loss: a message whose version does not follow the cached
one, a reconnect, or a process forked after its parent loaded an index all end in
reading the journal from where the index stopped, never in a full reload.

The listener is fork-safe: nothing of it (thread, connection, locks) is used in a
child; a child that wants one starts its own on first use.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection

from django_embeddings import cache, messages
from django_embeddings.conf import conf
from django_embeddings.store import Entry, Store
from django_embeddings.typing import Vector

__all__ = [
    "announce",
    "handle_message",
    "listener_healthy",
    "mode",
    "needs_check",
    "publish",
    "restart",
    "start",
    "stop_invalidation_listeners",
]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # get_message() timeout: how fast the thread notices stop() and due work
GRACE_SECONDS = 0.5  # after (re)subscribing, searches keep checking this long (see _Listener)
PING_SECONDS = 1.0  # a PING on the listener connection this often...
DEAD_SECONDS = 3.0  # ...and no reply for this long means the connection is dead
BACKOFF_SECONDS = (0.1, 10.0)  # reconnect delay: first, then doubling up to the last
CATCH_UP_SECONDS = 10.0  # how long to keep trying to reach a version a peer announced
# Even while healthy, every loaded index is checked (a stat each) this often: a write
# whose PUBLISH failed (ACL, or the writer alone losing Redis) is seen within it.
SWEEP_SECONDS = 5.0
_JOIN_SECONDS = 2 * POLL_SECONDS + 1


def mode() -> str:
    return conf.INVALIDATION


def needs_check() -> bool:
    """Should a search check the store's version before trusting its cache?"""
    current = mode()
    if current == "none":
        return False
    if current != "pubsub":
        return True  # mtime, or a mode the system check reports: never risk staleness
    listener = _current_listener()
    return listener is None or not listener.healthy


def listener_healthy() -> bool:
    """Is this process's listener subscribed, caught up and receiving?"""
    listener = _current_listener()
    return listener is not None and listener.healthy


def publish(
    store: Store, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None = None
) -> None:
    """Tell peer processes about a committed write (``pubsub`` mode only).

    One PUBLISH per call. A failure never fails the write: it is logged (once per
    outage) and retried as a hint by the listener, and peers whose listeners lost
    Redis too are checking versions meanwhile.
    """
    if not entries or mode() != "pubsub":
        return
    _current_listener()  # a forked child starts its own listener on first use
    payload = messages.encode(
        store.label,
        _state.sender,
        entries[-1].version,
        entries,
        vectors,
        secret=conf.SIGNING_KEYS[0],
        channel=conf.CHANNEL,
    )
    _send(store, payload)


def announce(store: Store) -> None:
    """Tell peers that ``store`` changed in a way no journal entries describe
    (``Store.clear()``, an import): they re-read it. ``pubsub`` mode only."""
    if mode() != "pubsub":
        return
    _current_listener()
    payload = messages.encode(
        store.label,
        _state.sender,
        store.version(),
        [],
        None,
        secret=conf.SIGNING_KEYS[0],
        channel=conf.CHANNEL,
    )
    _send(store, payload)


def start(*, now: bool = False) -> None:
    """Ask for this process's listener if the mode wants one (``AppConfig.ready``).

    The thread starts on first use (the first search, write or health check), or
    at once with ``now=True``. Starting late keeps ``ready()`` free of threads and
    network, and keeps a pre-fork server's master (gunicorn ``--preload``, a
    Celery prefork pool) from forking while the thread is halfway through
    something. Idempotent. Forked children never inherit a listener: they start
    their own on first use.
    """
    with _state.lock:
        _check_pid()
        _state.wanted = mode() == "pubsub"
        if not _state.wanted or not now:
            return
        if _state.listener is not None and _state.listener.is_alive():
            return
        _state.listener = _Listener()
        _state.listener.start()


def restart() -> None:
    """Stop and start again after the settings changed."""
    stop_invalidation_listeners()
    _state.latest.clear()
    _state.unsent.clear()
    start()


def stop_invalidation_listeners(timeout: float = _JOIN_SECONDS) -> None:
    """Stop this process's listener and close its connection.

    Searches go back to checking versions (in ``pubsub`` mode) until :func:`start`.
    """
    with _state.lock:
        _check_pid()
        _state.wanted = False
        listener, _state.listener = _state.listener, None
    if listener is not None:
        listener.stop()
        if listener is not threading.current_thread():
            listener.join(timeout)


# -- receiving -------------------------------------------------------------------------


def handle_message(data: object) -> None:
    """Apply one received payload; anything wrong is dropped, never raised.

    A message that cannot be trusted but names a real store makes that store's
    index re-read the journal, which is always safe and reads only new entries.
    """
    try:
        message = messages.decode(data, secrets=conf.SIGNING_KEYS, channel=conf.CHANNEL)
    except messages.InvalidMessage as exc:
        logger.debug("Dropping a pub/sub message: %s", exc)
        if exc.label is not None:
            store = store_for_label(exc.label)
            if store is not None:
                _catch_up(store)
        return
    if message.sender == _state.sender:
        return  # our own write, applied when it was made
    store = store_for_label(message.label)
    if store is None:
        logger.debug("Dropping a pub/sub message for unknown store %r", message.label)
        return
    with _state.apply_lock:
        _note_version(store, message.version)
        index = cache.loaded(store.label)
        if index is None or index.store.path != store.path:
            return  # not loaded here: a later load reads the current state
        if not message.entries:
            cache.catch_up(index, force=True)
            return
        vectors: list[Vector | None] = []
        for raw in message.vectors:
            vector = None
            if raw is not None and index.dimensions is not None:
                vector = messages.vector_of(raw, index.dimensions)
                if vector is None:
                    logger.debug("%s: a vector of the wrong size in a message", store.label)
                    cache.catch_up(index, force=True)
                    return
            vectors.append(vector)
        cache.apply_delta(store, message.entries, vectors)


def store_for_label(label: str) -> Store | None:
    """The store of the EmbeddingField named ``app_label.Model.field``, or ``None``.

    Only labels of real, cached EmbeddingFields map to a store; anything else
    (a forged or foreign label) is ``None``.
    """
    if not messages.LABEL.match(label):
        return None
    from django_embeddings.fields import embedding_fields

    app_label, model_name, field_name = label.split(".")
    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        return None
    for field in embedding_fields(model):
        if field.name == field_name and field.label == label and field.cache:
            try:
                return field.store
            except ImproperlyConfigured:
                return None
    return None


def _catch_up(store: Store) -> None:
    with _state.apply_lock:
        index = cache.loaded(store.label)
        if index is not None and index.store.path == store.path:
            cache.catch_up(index, force=True)


def _note_version(store: Store, version: int) -> None:
    """Remember a version a peer announced, so an index loaded or reloaded
    concurrently with the message is still brought up to it (see :func:`_reconcile`)."""
    key = str(store.path)
    known = _state.latest.get(key)
    if known is None or known[1] < version:
        _state.latest[key] = (store, version, time.monotonic() + CATCH_UP_SECONDS)


def _reconcile() -> None:
    """Catch up indexes that are behind a version a peer announced.

    A message can arrive while its store is being loaded or reloaded (the load
    read the journal just before the write); the index then registers one
    version behind. Checking here bounds that staleness by the poll interval.
    """
    now = time.monotonic()
    for key, (store, version, until) in list(_state.latest.items()):
        index = cache.loaded(store.label)
        if index is not None and index.store.path == store.path:
            if index.version >= version:
                _state.latest.pop(key, None)
                continue
            with _state.apply_lock:
                try:
                    cache.catch_up(index, force=True)
                except Exception:
                    logger.debug("Could not catch up %s", store.label, exc_info=True)
        if now > until:
            _state.latest.pop(key, None)


def _catch_up_everything(*, force: bool = True) -> None:
    """Read what every loaded index missed: all journals after a (re)subscribe
    (``force``), or only those whose ``stat`` changed for the periodic sweep."""
    for index in cache.loaded_indexes():
        with _state.apply_lock:
            try:
                cache.catch_up(index, force=force)
            except Exception:
                logger.exception("Could not catch up %s", index.store.label)


# -- sending -----------------------------------------------------------------------------


def _send(store: Store, payload: bytes) -> None:
    try:
        client = _client()
        client.publish(conf.CHANNEL, payload)
    except Exception as exc:  # redis errors, bad configuration: never fail a committed write
        _state.unsent[str(store.path)] = store
        if not _state.publish_warned:
            _state.publish_warned = True
            logger.warning(
                "Could not publish a change of %s to DJANGO_EMBEDDINGS_REDIS %r (%s); "
                "retrying. Peers whose listener lost Redis too check versions meanwhile.",
                store.label,
                conf.REDIS,
                exc,
            )
        return
    if _state.publish_warned:
        _state.publish_warned = False
        logger.info("Publishing changes to DJANGO_EMBEDDINGS_REDIS %r again", conf.REDIS)
    _state.unsent.pop(str(store.path), None)


def _resend() -> None:
    """Send a hint for each store whose publish failed, so peers read its journal."""
    for store in list(_state.unsent.values()):
        try:
            announce(store)
        except Exception:
            logger.debug("Cannot read the version of %s", store.label, exc_info=True)


def _client() -> Any:
    """The Redis client for DJANGO_EMBEDDINGS_REDIS: a django-redis cache alias or a URL."""
    target = conf.REDIS
    if "://" in target:
        cached = _state.clients.get(target)
        if cached is None:
            # Timeouts keep a hung Redis from blocking a write; the URL's own options win.
            cached = redis.Redis.from_url(
                target, socket_timeout=5, socket_connect_timeout=2, health_check_interval=0
            )
            _state.clients[target] = cached
        return cached
    try:
        return get_redis_connection(target)
    except NotImplementedError as exc:
        raise ImproperlyConfigured(
            f"DJANGO_EMBEDDINGS_REDIS {target!r} names a cache that is not served by django-redis."
        ) from exc


# -- the listener ----------------------------------------------------------------------


class _Listener(threading.Thread):
    """Subscribes, applies peers' messages, and reconnects with backoff.

    ``healthy`` turns True only a grace period after the subscription is
    confirmed, and after every loaded index has read its journal: an index whose
    load began before we were subscribed may have missed a message, so searches
    keep checking versions a little longer, then one pass catches everyone up.
    """

    def __init__(self) -> None:
        super().__init__(name="django_embeddings.invalidation", daemon=True)
        self.healthy = False
        self._stop_event = threading.Event()
        self._warned = False

    def stop(self) -> None:
        self._stop_event.set()
        self.healthy = False

    def run(self) -> None:
        delay = BACKOFF_SECONDS[0]
        while not self._stop_event.is_set():
            pubsub = None
            try:
                pubsub = _client().pubsub(ignore_subscribe_messages=False)
                pubsub.subscribe(conf.CHANNEL)
                self._listen(pubsub)
                delay = BACKOFF_SECONDS[0]
            except Exception as exc:
                self.healthy = False
                self._warn(exc)
                _resend_quietly()
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
                        handle_message(message.get("data"))
                    except Exception:  # a broken store, not a broken connection
                        logger.exception("Could not apply a change published by a peer")
                elif kind == "unsubscribe":
                    raise ConnectionError("unsubscribed by the server")
                # Measured after handling, so a slow catch-up is not taken for silence.
                last_heard = time.monotonic()
            now = time.monotonic()
            if ready_at is not None and now >= ready_at:
                ready_at = None
                _catch_up_everything()
                self.healthy = True
                if self._warned:
                    self._warned = False
                    logger.info("Listening to DJANGO_EMBEDDINGS_REDIS %r again", conf.REDIS)
            _reconcile()
            if self.healthy and now - last_sweep >= SWEEP_SECONDS:
                last_sweep = now
                _catch_up_everything(force=False)
            if _state.unsent:
                _resend()
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


def _resend_quietly() -> None:
    try:
        _resend()
    except Exception:
        logger.debug("Could not resend hints", exc_info=True)


def _close(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:
        logger.debug("Error while closing the pub/sub connection", exc_info=True)


# -- per-process state and fork safety ---------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.sender = f"{self.pid}-{secrets.token_hex(8)}"
        self.lock = threading.Lock()  # start/stop
        self.apply_lock = threading.RLock()  # held while changing an index; forks wait for it
        self.listener: _Listener | None = None
        self.wanted = False  # start() ran here or in the parent we were forked from
        self.clients: dict[str, Any] = {}  # URL -> redis.Redis
        self.latest: dict[str, tuple[Store, int, float]] = {}
        self.unsent: dict[str, Store] = {}
        self.publish_warned = False


_state = _State()
_inherited: list[_State] = []


def _check_pid() -> None:
    """Forget the parent's listener in a forked child (should the fork hook not have run)."""
    if _state.pid != os.getpid():
        _after_fork_in_child()


def _current_listener() -> _Listener | None:
    """This process's listener; in a forked child, started on first use."""
    if _state.pid != os.getpid():
        _after_fork_in_child()
    listener = _state.listener
    if listener is None and _state.wanted:
        start(now=True)
        listener = _state.listener
    return listener


def _before_fork() -> None:
    _state.lock.acquire()
    _state.apply_lock.acquire()  # so no index is forked half-changed


def _after_fork_in_parent() -> None:
    _state.apply_lock.release()
    _state.lock.release()


def _after_fork_in_child() -> None:
    """Nothing of the parent's listener is ours: start afresh, and keep the parent's
    objects referenced so that no destructor ever touches its connections."""
    global _state
    _inherited.append(_state)
    wanted = _state.wanted
    _state = _State()
    _state.wanted = wanted


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
atexit.register(stop_invalidation_listeners, POLL_SECONDS)

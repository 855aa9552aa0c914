"""The invalidation modes: three strategies behind one interface.

``DJANGO_EMBEDDINGS_INVALIDATION`` (read through ``conf.INVALIDATION``) picks one in
:func:`current`, the only place the mode is looked at; the public functions below
ask it what to do. See :mod:`django_embeddings.coherence` for what each mode costs
and guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from django_embeddings.coherence import process, publisher
from django_embeddings.coherence.listener import Listener, stop_invalidation_listeners
from django_embeddings.conf import conf
from django_embeddings.store import Entry, Store
from django_embeddings.typing import Vector

__all__ = [
    "MODES",
    "Mode",
    "MtimeMode",
    "NoneMode",
    "PubSubMode",
    "announce",
    "current",
    "current_listener",
    "listener_healthy",
    "mode",
    "needs_check",
    "publish",
    "restart",
    "start",
]


class Mode:
    """How this process learns of its peers' writes, and tells them of its own.

    The base is the quiet part every mode shares: it publishes nothing and wants
    no listener.
    """

    name: ClassVar[str]

    def needs_check(self) -> bool:
        """Should a search check the store's version before trusting its cache?"""
        raise NotImplementedError

    def publish(
        self, store: Store, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None
    ) -> None:
        """Tell peers about a committed write."""

    def announce(self, store: Store, version: int | None = None) -> None:
        """Tell peers that ``store`` changed in a way no journal entries describe."""

    def start(self, *, now: bool = False) -> None:
        """Ask for what this mode needs in this process: here, no listener."""
        with process.state.lock:
            process.check_pid()
            process.state.wanted = False


class NoneMode(Mode):
    """Never look; for a single process. No thread, no connection, no stat."""

    name = "none"

    def needs_check(self) -> bool:
        return False


class MtimeMode(Mode):
    """Before each search, stat the store's journal and read only new entries."""

    name = "mtime"

    def needs_check(self) -> bool:
        return True


class PubSubMode(Mode):
    """Publish each write; one listener thread applies peers' writes in place.

    Searches check versions only while the listener is not healthy.
    """

    name = "pubsub"

    def needs_check(self) -> bool:
        listener = current_listener()
        return listener is None or not listener.healthy

    def publish(
        self, store: Store, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None
    ) -> None:
        if not entries:
            return
        current_listener()  # a forked child starts its own listener on first use
        publisher.send(store, publisher.message(store, entries[-1].version, entries, vectors))

    def announce(self, store: Store, version: int | None = None) -> None:
        current_listener()
        version = store.version() if version is None else version
        publisher.send(store, publisher.message(store, version, [], None))

    def start(self, *, now: bool = False) -> None:
        with process.state.lock:
            process.check_pid()
            state = process.state
            state.wanted = True
            if not now:
                return
            if state.listener is not None and state.listener.is_alive():
                return
            state.listener = Listener(announce)
            state.listener.start()


MODES: dict[str, Mode] = {cls.name: cls() for cls in (PubSubMode, MtimeMode, NoneMode)}


def current() -> Mode:
    """The mode ``conf.INVALIDATION`` names.

    A mode the system check reports falls back to ``mtime``: never risk staleness.
    """
    return MODES.get(conf.INVALIDATION) or MODES["mtime"]


def mode() -> str:
    return conf.INVALIDATION


def needs_check() -> bool:
    """Should a search check the store's version before trusting its cache?"""
    return current().needs_check()


def listener_healthy() -> bool:
    """Is this process's listener subscribed, caught up and receiving?"""
    listener = current_listener()
    return listener is not None and listener.healthy


def publish(
    store: Store, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None = None
) -> None:
    """Tell peer processes about a committed write (``pubsub`` mode only).

    One PUBLISH per call, written at once; its reply is read later. A failure never
    fails the write: it is logged (once per outage) and retried as a hint by the
    listener, and peers whose listeners lost Redis too are checking versions meanwhile.
    """
    current().publish(store, entries, vectors)


def announce(store: Store, version: int | None = None) -> None:
    """Tell peers that ``store`` changed in a way no journal entries describe
    (``Store.clear()``, an import, a compaction): they re-read it. ``pubsub`` mode only.
    ``version``: the store's, when the caller knows it (else it is read)."""
    current().announce(store, version)


def start(*, now: bool = False) -> None:
    """Ask for this process's listener if the mode wants one (``AppConfig.ready``).

    The thread starts on first use (the first search, write or health check), or
    at once with ``now=True``. Starting late keeps ``ready()`` free of threads and
    network, and keeps a pre-fork server's master (gunicorn ``--preload``, a
    Celery prefork pool) from forking while the thread is halfway through
    something. Idempotent. Forked children never inherit a listener: they start
    their own on first use.
    """
    current().start(now=now)


def restart() -> None:
    """Stop and start again after the settings changed."""
    stop_invalidation_listeners()
    process.state.latest.clear()
    process.state.unsent.clear()
    start()


def current_listener() -> Listener | None:
    """This process's listener; in a forked child, started on first use."""
    process.check_pid()
    listener = process.state.listener
    if listener is None and process.state.wanted:
        start(now=True)
        listener = process.state.listener
    return listener

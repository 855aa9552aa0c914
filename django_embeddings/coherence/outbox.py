"""PUBLISH without waiting for Redis' reply, so a save does not wait for the round trip.

Each process writes its PUBLISHes on one connection of its own and reads their
replies later: before its next PUBLISH, in the listener's loop (which wakes when
the message comes back on the subscription, or within its poll interval), and at
exit. Every reply is still read: an error (an ACL refusing PUBLISH, a lost
connection) is reported for the store it belongs to, as a failed PUBLISH always
was, only a little later, and the listener resends a hint for it.

Peers get the message as soon as before: it is written to Redis before the save
returns; only its acknowledgement is read afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from django_embeddings.store import Store

__all__ = ["MAX_PENDING", "Outbox"]

# Unread replies past which a PUBLISH waits for them: bounds what a stalled Redis
# leaves in the socket buffers, and how late an error can be reported.
MAX_PENDING = 64

Report = Callable[[Store, Exception | None], None]


class Outbox:
    """One process's PUBLISH connection and the stores whose replies are unread.

    ``report(store, error)`` is called once per message, in order, with ``None`` for
    a message Redis accepted. Thread-safe: saves and the listener share it.
    """

    def __init__(self, report: Report) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._pool: Any = None
        self._connection: Any = None
        self._pending: deque[Store] = deque()

    def send(self, client: Any, channel: str, payload: bytes, store: Store) -> None:
        """Write one PUBLISH; raises when it cannot be written (nothing is pending then)."""
        with self._lock:
            self._collect(0)
            connection = self._connection_for(client)
            try:
                # No health check: its PING would read our unread replies as its answer.
                connection.send_packed_command(
                    connection.pack_command("PUBLISH", channel, payload), check_health=False
                )
            except Exception as exc:
                self._lost(exc)  # the replies still owed went with the connection
                raise
            self._pending.append(store)
            if len(self._pending) > MAX_PENDING:
                self._collect(None)

    def collect(self, timeout: float | None = 0) -> None:
        """Read the replies that have come (``timeout`` 0), or wait for them: up to
        ``timeout`` seconds in all, or (``None``) up to the socket timeout for each."""
        with self._lock:
            self._collect(timeout)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _connection_for(self, client: Any) -> Any:
        pool = client.connection_pool
        if pool is not self._pool:
            # A new setting (or the first send): the old connection's replies first.
            self._collect(None)
            if self._connection is not None:
                self._connection.disconnect()
            self._pool, self._connection = pool, pool.make_connection()
        connection = self._connection
        if not self._pending:
            try:
                # Nothing is owed to us, so anything readable means Redis closed the
                # connection while it was idle (a restart): start afresh, as a pool does.
                stale = connection.can_read(0)
            except Exception:  # the close itself, as redis-py reports it
                stale = True
            if stale:
                connection.disconnect()
        return connection

    def _collect(self, timeout: float | None) -> None:
        connection = self._connection
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if left is not None and not connection.can_read(left):
                    return
                connection.read_response()
                error: Exception | None = None
            except redis.ResponseError as exc:  # this message refused; the connection is fine
                error = exc
            except Exception as exc:  # the connection is lost with every reply still owed
                self._lost(exc)
                return
            self._report(self._pending.popleft(), error)

    def _lost(self, exc: Exception) -> None:
        self._connection.disconnect()
        lost, self._pending = list(self._pending), deque()
        for store in lost:
            self._report(store, exc)

"""This process's coherence state, and what a fork does to it.

The publisher, the handler and the listener keep everything per process in one
:class:`State`: the sender id, the listener, the Redis clients, the versions
peers announced, the stores whose publish failed. A forked child never uses its
parent's: the fork hooks give it a fresh one, so nothing of the parent's listener
(thread, connection, locks) is used in a child.

Read it as ``process.state``, never import it by name: a fork replaces it.
"""

from __future__ import annotations

import os
import secrets
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_embeddings.coherence.listener import Listener
    from django_embeddings.coherence.outbox import Outbox
    from django_embeddings.store import Store

__all__ = ["State", "check_pid", "state"]


class State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.sender = f"{self.pid}-{secrets.token_hex(8)}"
        self.lock = threading.Lock()  # start/stop
        self.apply_lock = threading.RLock()  # held while changing an index; forks wait for it
        self.listener: Listener | None = None
        self.wanted = False  # start() ran here or in the parent we were forked from
        self.clients: dict[str, Any] = {}  # URL -> redis.Redis
        self.latest: dict[str, tuple[Store, int, float]] = {}
        self.unsent: dict[str, Store] = {}
        self.publish_warned = False
        # The signatures of our latest messages, oldest first: the listener knows its own
        # echo by them without verifying or decoding it (see publisher.is_own).
        self.sent: dict[bytes, bool] = {}
        self.sent_lock = threading.Lock()
        self.outbox: Outbox | None = None  # PUBLISHes whose replies are unread


state = State()
_inherited: list[State] = []


def check_pid() -> None:
    """Forget the parent's listener in a forked child (should the fork hook not have run)."""
    if state.pid != os.getpid():
        _after_fork_in_child()


def _before_fork() -> None:
    state.lock.acquire()
    state.apply_lock.acquire()  # so no index is forked half-changed


def _after_fork_in_parent() -> None:
    state.apply_lock.release()
    state.lock.release()


def _after_fork_in_child() -> None:
    """Nothing of the parent's listener is ours: start afresh, and keep the parent's
    objects referenced so that no destructor ever touches its connections."""
    global state
    _inherited.append(state)
    wanted = state.wanted
    state = State()
    state.wanted = wanted


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)

"""Compactions outside the save path: one background thread per store and process.

A save that makes a compaction due starts a thread here and returns. The thread
folds the journal into a new snapshot without the writer lock (the long part:
O(rows)), then holds the lock only to install it and to carry the entries written
meanwhile over to a new journal (O(those entries)). Across processes, a separate
lock file lets one merge run per store at a time; the others' attempts return at
once. A merge that fails (a full disk) or finds another compaction installed
first is abandoned: nothing was changed, and a later save starts another.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django_embeddings.store.permissions import Permissions

if TYPE_CHECKING:
    from django_embeddings.store import Store

logger = logging.getLogger(__name__)

LOCK = "_merge_lock"  # held by the process that merges, apart from the writer lock
RETRY_AFTER = 1.0  # seconds before a process tries again after another one held the merge
RETRY_AFTER_FAILURE = 60.0  # after a merge failed (a full disk): saves go on meanwhile

_threads: dict[Path, threading.Thread] = {}
_not_before: dict[Path, float] = {}
_guard = threading.Lock()


def start(store: Store) -> None:
    """Merge ``store`` in a background thread, unless one is running or was just refused."""
    with _guard:
        running = _threads.get(store.path)
        if running is not None and running.is_alive():
            return
        if time.monotonic() < _not_before.get(store.path, 0.0):
            return
        thread = threading.Thread(
            target=_run, args=(store,), name=f"django-embeddings merge {store.label}", daemon=True
        )
        _threads[store.path] = thread
        thread.start()


def running(path: Path) -> bool:
    """Is this process merging the store at ``path``?"""
    thread = _threads.get(Path(path))
    return thread is not None and thread.is_alive()


def wait(timeout: float | None = None) -> bool:
    """Wait for this process's merges to finish; ``False`` if one is still running."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _guard:
        threads = list(_threads.values())
    for thread in threads:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        thread.join(left)
    return not any(thread.is_alive() for thread in threads)


def _run(store: Store) -> None:
    try:
        pause = RETRY_AFTER if store.merge() is None else 0.0
    except Exception as exc:  # a full or read-only disk: the journal still holds every write
        logger.warning(
            "%s: could not compact the store in the background (trying again in %.0f s): %s",
            store.label,
            RETRY_AFTER_FAILURE,
            exc,
        )
        pause = RETRY_AFTER_FAILURE
    with _guard:
        _not_before[store.path] = time.monotonic() + pause


@contextlib.contextmanager
def exclusive(directory: Path, permissions: Permissions) -> Iterator[bool]:
    """Hold the store's merge lock if no other process does (``False``: one does)."""
    fd = permissions.open_or_create(os.path.join(directory, LOCK), os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock

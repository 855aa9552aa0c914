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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django_embeddings.store.permissions import Permissions

if TYPE_CHECKING:
    from django_embeddings.store import Store

logger = logging.getLogger(__name__)

LOCK = "_merge_lock"  # held by the process that merges, apart from the writer lock
# A merge's staged snapshot and log: temp files (swept after a crash) that a running
# merge is still using, so neither the sweep nor a status report counts them meanwhile.
TEMP_PREFIX = "tmp-merge-"
RETRY_AFTER = 1.0  # seconds before a process tries again after another one held the merge
RETRY_AFTER_FAILURE = 60.0  # after a merge failed (a full disk): saves go on meanwhile

_threads: dict[Path, threading.Thread] = {}
# Called, in the merging thread, after each merge that found a snapshot to load (its own,
# or one another process installed first): the app reloads this process's index there
# (not in the next save or search) and tells its peers.
_after_merge: list[Callable[[Store], None]] = []
_not_before: dict[Path, float] = {}
# Stores whose merge, run by this process's thread, has installed its snapshot and not
# yet loaded it into the process's index: meanwhile the index may read on from the new
# journal instead of loading the snapshot (see ``cache.catch_up``).
_installed: set[Path] = set()
_guard = threading.Lock()


def start(store: Store) -> None:
    """Merge ``store`` in a background thread, unless one is running or was just refused."""
    with _guard:
        running = _threads.get(store.path)
        if running is not None and running.is_alive():
            return
        if time.monotonic() < _not_before.get(store.path, 0.0):
            return
        # Not a daemon: a process that exits (a management command, a worker told to stop)
        # finishes its merge first instead of abandoning it half-written.
        thread = threading.Thread(
            target=_run, args=(store,), name=f"django-embeddings merge {store.label}", daemon=False
        )
        _threads[store.path] = thread
        thread.start()


def after_merge(callback: Callable[[Store], None]) -> None:
    """Call ``callback(store)`` in the merging thread after each merge (see ``_run``)."""
    with _guard:
        if callback not in _after_merge:
            _after_merge.append(callback)


def just_installed(path: Path) -> bool:
    """Has this process's merge of ``path`` installed a snapshot it has yet to load?"""
    with _guard:
        return Path(path) in _installed


def _note_installed(path: Path) -> None:
    with _guard:
        _installed.add(path)


def running(path: Path) -> bool:
    """Is this process merging the store at ``path``?"""
    with _guard:
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
        # A snapshot, ours or one another process installed meanwhile, for the index to load.
        merged = store.merge(on_install=_note_installed) is not None
        pause = 0.0 if merged else RETRY_AFTER
    except Exception as exc:  # a full or read-only disk: the journal still holds every write
        logger.warning(
            "%s: could not compact the store in the background (trying again in %.0f s): %s",
            store.label,
            RETRY_AFTER_FAILURE,
            exc,
        )
        merged, pause = False, RETRY_AFTER_FAILURE
    with _guard:
        callbacks = list(_after_merge) if merged else []
    for callback in callbacks:
        try:
            callback(store)
        except Exception:  # the merge is installed; the indexes catch up on their own
            logger.exception("%s: after merging the store", store.label)
    with _guard:  # forget this store unless the next try must wait
        _installed.discard(store.path)
        if pause:
            _not_before[store.path] = time.monotonic() + pause
        else:
            _not_before.pop(store.path, None)
        if _threads.get(store.path) is threading.current_thread():
            del _threads[store.path]


def in_progress(directory: Path) -> bool:
    """Is a merge of the store at ``directory`` running (in this process or another)?
    Reads only: creates no lock file."""
    try:
        fd = os.open(os.path.join(directory, LOCK), os.O_RDONLY)
    except FileNotFoundError:
        return False  # no merge ever ran there
    try:
        # flock() locks belong to the open file: a merge of this very process holds
        # its lock through another descriptor, so it conflicts too.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def leftovers(directory: Path) -> list[str]:
    """The staged files of merges that were killed; call while holding :func:`exclusive`."""
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


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
        _held.add(fd)
        yield True
    finally:
        _held.discard(fd)
        os.close(fd)  # closing releases the lock


_held: set[int] = set()  # descriptors of the merge locks this process holds


def _after_fork_in_child() -> None:
    """A child forked while this process merged (a pre-fork server's master) has no
    merging thread: it forgets them, and closes its copies of their lock descriptors,
    which would otherwise hold the lock for as long as it lives."""
    global _guard
    _guard = threading.Lock()  # a thread that no longer exists may have held it
    _threads.clear()
    _not_before.clear()
    _installed.clear()
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

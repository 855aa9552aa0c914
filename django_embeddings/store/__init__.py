"""The vector store of one model field: journal, vector log and snapshot behind one facade.

A store lives in ``<DJANGO_EMBEDDINGS_DIR>/<app_label>.<ModelName>/<field>/`` and
knows nothing of Django models: rows are identified by string keys. A put appends
its vectors to the vector log and its entries to the journal, under one short
lock; compaction folds both into a memory-mapped snapshot. Writes are safe from
any number of processes at once; a process killed at any instant leaves a store
that loads consistently, plus temp files or orphans that
:meth:`Store.sweep_tempfiles` and :meth:`Store.collect_garbage` remove.

Stores written by 0.1.0 keep working: their entries name no log offset, and the
vector of such an entry is read from its per-row ``.npy`` file (:mod:`.files`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from django_embeddings.exceptions import StoreError
from django_embeddings.keywords.terms import Terms
from django_embeddings.quantized import Int8Matrix
from django_embeddings.store import files, journal, merging, snapshot, vectorlog
from django_embeddings.store import keys as row_keys
from django_embeddings.store.journal import (
    NO_CHECKSUM,
    NO_OFFSET,
    Entry,
    Position,
    Records,
    Tail,
)
from django_embeddings.store.permissions import DEFAULT as DEFAULT_PERMISSIONS
from django_embeddings.store.permissions import Permissions
from django_embeddings.store.snapshot import Snapshot
from django_embeddings.typing import Matrix, Vector

__all__ = [
    "Change",
    "Entry",
    "GarbageReport",
    "Permissions",
    "Position",
    "Snapshot",
    "State",
    "Stats",
    "Store",
    "Tail",
    "TailRows",
]

logger = logging.getLogger(__name__)

_READ_ATTEMPTS = 20
INDEX_FILE = snapshot.INDEX
DIMENSIONS = "_dimensions"  # fixed by the first vector stored; cleared by clear()


@dataclass(frozen=True)
class Change:
    """A put (with its vector) or a delete, numbered by the store it was made in."""

    version: int
    op: str
    key: str
    vector: Vector | None = None
    hash: str = ""
    identity: str = ""
    terms: str | None = None
    stamp: int = 0  # when it was made, seconds since the epoch (0: not known)


@dataclass
class TailRows:
    """The net effect of a journal tail: the keys it changed, and the rows it leaves live.

    Rows whose vector cannot be read (a damaged log or file, another size) are
    left out, with a warning: they read as missing, for ``embeddings_backfill``.
    """

    changed: list[str] = field(default_factory=list)  # every key put or deleted in the tail
    keys: list[str] = field(default_factory=list)  # live after the tail, with a sound vector
    hashes: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # when each was stored (seconds; 0: unknown)
    terms: list[str | None] = field(default_factory=list)  # each one's bag (None: not known)
    vectors: Matrix = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # as stored
    # Each vector's length, when asked for (``State.rows(norms=True)``): measured
    # in the pass that checks them, so an index needs no normalized copy.
    norms: npt.NDArray[np.float32] | None = None


class State:
    """A consistent view: the snapshot plus the journal entries written after it.

    ``tail`` (entries) and :meth:`rows` (the tail's live rows with their vectors,
    gathered from the vector log in one pass) are built on first use.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        records: Records,
        position: Position,
        version: int,
        *,
        base: int = -1,
        source: _Source | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.records = records
        self.position = position
        self.version = version
        self.base = base  # the journal generation read (-1: none)
        self._source = source
        self._rows: dict[bool, TailRows] = {}

    @functools.cached_property
    def tail(self) -> list[Entry]:
        return self.records.entries()

    def newest(self) -> dict[str, int]:
        """key -> record of its newest entry in the tail."""
        return dict(zip(self.records.keys, range(len(self.records)), strict=True))

    def rows(self, *, norms: bool = False) -> TailRows:
        """The tail's live rows; with ``norms``, their vectors' lengths too (for an
        index, which then scales scores rather than copying normalized vectors)."""
        if norms not in self._rows:
            self._rows[norms] = self._net(norms)
        return self._rows[norms]

    def _net(self, norms: bool) -> TailRows:
        records = self.records
        live: list[int] | None
        if "del" not in records.ops and len(set(records.keys)) == len(records):
            # Every entry is its key's newest put (a bulk load): a set shows it, cheaper
            # than the key -> row map, and the keys come in the map's order anyway.
            rows = TailRows(changed=list(records.keys))
            live = None
        else:
            newest = self.newest()
            rows = TailRows(changed=list(newest))
            live = [row for row in newest.values() if records.ops[row] == "put"]
        if live == [] or self._source is None:
            return rows
        dimensions = self.snapshot.dimensions
        vectors, sound, lengths = self._source.gather(records, live, dimensions, norms=norms)
        if sound.all():
            kept = live
        else:
            kept = np.flatnonzero(sound).tolist() if live is None else _pick(live, sound)
        rows.keys = _column(records.keys, kept)
        rows.hashes = _column(records.hashes, kept)
        rows.identities = _column(records.identities, kept)
        rows.times = _column(records.times, kept)
        rows.terms = _column(records.terms, kept)
        rows.vectors = vectors if kept is live else vectors[sound]
        if lengths is not None:
            rows.norms = lengths if kept is live else lengths[sound]
        return rows


def _ints(values: list[int], rows: list[int] | None) -> npt.NDArray[np.int64]:
    """An int64 array of ``values`` at ``rows`` (``None``: all)."""
    column = np.fromiter(values, dtype=np.int64, count=len(values))
    return column if rows is None else column[np.array(rows, dtype=np.intp)]


def _pick(rows: list[int], mask: npt.NDArray[np.bool_]) -> list[int]:
    return [row for row, ok in zip(rows, mask.tolist(), strict=True) if ok]


def _column(values: list[_T], rows: list[int] | None) -> list[_T]:
    """``values`` at ``rows`` (``None``: all of them, shared, not copied)."""
    return values if rows is None else [values[row] for row in rows]


@dataclass
class GarbageReport:
    entries: list[str] = field(default_factory=list)  # keys whose index entry was removed
    files: list[str] = field(default_factory=list)  # vector files (or old logs) with no entry
    skipped_recent: int = 0  # orphans younger than the age guard
    journal: list[Entry] = field(default_factory=list)  # the deletions written, to announce


@dataclass
class Stats:
    """What :meth:`Store.stats` counts; read-only, for ``embeddings_status``."""

    version: int = 0  # newest version (snapshot plus journal)
    snapshot_version: int = 0
    vectors: int = 0  # live index entries
    journal_entries: int = 0  # entries past the snapshot, folded in by compact()
    dimensions: int | None = None
    identities: dict[str, int] = field(default_factory=dict)  # live vectors per identity
    temp_files: int = 0  # tmp* leftovers of interrupted writes, any age
    unindexed_files: int = 0  # files no entry needs (garbage collection removes them)


_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")
# In a bulk() block, the journal is folded once it holds this share of the snapshot's rows.
BULK_SHARE = 0.25
# Thresholds behind at which a save compacts itself even when merges run in the background:
# they are not keeping up, or threads do not run in this process (uWSGI without
# --enable-threads), and a journal that only grows would slow every cold start.
MERGE_BACKLOG = 4

_A = TypeVar("_A", bound=np.generic)


def _writes(method: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
    """Report an OS error of a write (read-only or full disk) as a StoreError naming the store."""

    @functools.wraps(method)
    def wrapper(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise StoreError(
                f"Cannot write to the store of {self.label} at {str(self.path)!r}: {exc}"
            ) from exc

    return wrapper


def normalize(matrix: Matrix, *, out: Matrix | None = None) -> Matrix:
    """Rows scaled to unit length, so a dot product is the cosine similarity.

    With ``out``, the rows are written there. Many rows are done a block at a time
    (the same arithmetic per row), so no temporary is the size of the matrix.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim == 1 and out is None:
        # One vector (a query): np.linalg.norm's arithmetic, without its overhead.
        norm = np.sqrt(np.add.reduce(matrix * matrix))
        return matrix / norm if norm else matrix.copy()
    if matrix.ndim != 2 or (out is None and len(matrix) <= _BLOCK):
        norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
        unit = (matrix / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)
        if out is None:
            return unit
        out[...] = unit
        return out
    if out is None:
        out = np.empty(matrix.shape, dtype=np.float32)
    for start in range(0, len(matrix), _BLOCK):
        block = matrix[start : start + _BLOCK]
        norms = np.linalg.norm(block, axis=-1, keepdims=True)
        np.divide(block, np.where(norms == 0, 1, norms), out=out[start : start + _BLOCK])
    return out


_BLOCK = 4096


@dataclass
class _Journal:
    """What this process knows of a store's journal between two writes.

    Checked under the lock against the file itself (inode, header, size), so a
    put reads only what other processes appended since, never the whole journal,
    ``_index.json`` or ``_dimensions`` again.
    """

    inode: int
    header: bytes
    size: int
    base: int
    last: int | None  # the newest complete entry's version (None: no entry yet)
    ends_line: bool  # the file ends with a newline (else a killed writer's fragment)
    dimensions: int | None = None
    index_stat: tuple[int, int, int] | None = None
    index_version: int = 0
    appended: _Append | None = None  # this process's last append to this journal

    @property
    def version(self) -> int:
        last = self.last if self.last is not None else self.base
        # The index is ahead of the journal only after a crash between writing a
        # snapshot and starting its journal: versions continue after the snapshot.
        return max(last, self.index_version)


@dataclass(frozen=True)
class _Append:
    version: int  # of its last entry
    before: tuple[int, int]  # the journal's (inode, size) just before it
    position: Position  # where the journal ended just after it
    stat: tuple[int, int, int]  # the journal's (inode, size, mtime) just after it


_journals: dict[Path, _Journal] = {}  # store path -> its journal, as this process last saw it


class Store:
    kind = "files"  # DJANGO_EMBEDDINGS_STORE's name for it

    def __init__(
        self,
        path: Path,
        *,
        label: str = "",
        compact_threshold: int = 10_000,
        permissions: Permissions = DEFAULT_PERMISSIONS,
        int8: bool = False,
        merge_in_background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        self.compact_threshold = compact_threshold
        self.permissions = permissions  # the modes of the files and directories it creates
        # Snapshots keep an int8 copy of their rows (DJANGO_EMBEDDINGS_SCAN = "int8").
        self.int8 = int8
        # A save that makes a compaction due starts merge() in a thread rather than
        # compacting itself (DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND).
        self.merge_in_background = merge_in_background
        self._bulk = 0  # bulk() blocks open in this process (any thread)
        self._bulk_lock = threading.Lock()
        self._lookup: _Lookup | None = None
        self._lookup_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Store {self.label!r} at {str(self.path)!r}>"

    # -- writes ------------------------------------------------------------------

    def put(
        self,
        key: str,
        vector: Vector,
        *,
        content_hash: str,
        identity: str,
        terms: str | None = None,
    ) -> Entry:
        return self.put_many([(key, vector, content_hash, identity)], terms=[terms])[0]

    @_writes
    def put_many(
        self,
        items: Iterable[tuple[str, Vector, str, str]],
        *,
        terms: Sequence[str | None] | None = None,
    ) -> list[Entry]:
        """Store vectors: one write to the vector log, then one journal append, under the lock.

        ``terms``, aligned with ``items``, are the rows' encoded bags of terms
        (:mod:`django_embeddings.keywords.terms`; ``None``: not known).

        A crash between the two leaves vectors no entry names (compaction drops
        them); a torn write of either is ignored by readers. Never an entry whose
        vector was not written in full.
        """
        items = list(items)
        if not items:
            return []
        bags = self._bags(items, terms)
        matrix = self._matrix(items)
        with self._writing() as (fd, known):
            first = known.version + 1
            entries = self._put_entries(
                known, items, matrix, bags, range(first, first + len(items))
            )
            self._append(fd, known, entries, stamp=int(time.time()))
            self._maybe_compact(known, entries[-1].version)
        logger.debug("%s: stored %d vectors of %d dimensions", self.label, *matrix.shape)
        return entries

    def delete(self, key: str) -> Entry:
        return self.delete_many([key])[0]

    @_writes
    def delete_many(self, keys: Iterable[str]) -> list[Entry]:
        keys = list(keys)
        if not keys or not self.path.is_dir():
            return []
        with self._writing() as (fd, known):
            first = known.version + 1
            entries = [Entry(first + n, "del", key) for n, key in enumerate(keys)]
            self._append(fd, known, entries)
            self._maybe_compact(known, entries[-1].version)
        return entries

    @_writes
    def compact(self) -> int:
        """Fold the journal into a new snapshot now; returns the snapshot's version."""
        if not self.path.is_dir():
            return 0
        with self._writing():
            return self._compact_locked()

    # -- reads -------------------------------------------------------------------

    def version(self) -> int:
        """The newest version: one small read of the journal's end."""
        return self._last_version()

    def read_state(self) -> State:
        """Load the snapshot (memory-mapped) and the journal entries after it.

        Lock-free: if a compaction swaps files while we read, we read again.
        """
        return self._read_state()

    def change_mark(self) -> Hashable:
        """A value that changes whenever the store does: searches compare it with the
        one their index was read at (a stat of the journal; ``None``: no journal)."""
        try:
            result = os.stat(_journal_path(self.path))
        except FileNotFoundError:
            return None
        return result.st_ino, result.st_size, result.st_mtime_ns

    def _read_state(self) -> State:
        for _ in range(_READ_ATTEMPTS):
            try:
                snap = snapshot.load(self.path)
            except FileNotFoundError:
                continue  # the snapshot named by _index.json was just replaced
            except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:  # EOF: empty
                snap = self._damaged_snapshot(exc)
            tail = journal.read(self.path)
            if tail is None:
                if not (self.path / journal.JOURNAL).exists():
                    return State(snap, Records(), Position(0, 0), snap.version)
                if journal.unreadable(self.path):
                    # Not a race: journals are swapped whole. The next append heals it.
                    if not self._found_damage() and (self.path, -1) not in _damaged:
                        _damaged.add((self.path, -1))
                        logger.warning(
                            "%s: the journal in %s has no readable line; using the snapshot",
                            self.label,
                            self.path,
                        )
                    return State(snap, Records(), Position(0, 0), snap.version)
                continue
            if tail.base > snap.version:
                continue  # journal newer than the snapshot we read: a compaction raced us
            records = tail.records.since(snap.version)
            source = self._source(tail, records)
            if source is None:
                continue  # the log went with a compaction that raced us
            version = records.versions[-1] if records.versions else snap.version
            return State(snap, records, tail.position, version, base=tail.base, source=source)
        raise StoreError(f"{self.label}: the store kept changing while it was read.")

    def appended_through(self, version: int) -> tuple[Position, Hashable] | None:
        """Where the journal ended (and its stat) right after this process appended the
        entries up to ``version``, if that is still its last append and no compaction
        followed: an index holding every entry up to ``version`` can read on from there."""
        appended = self._last_append()
        if appended is None or appended.version != version:
            return None
        return appended.position, appended.stat

    def journal_mark(self) -> tuple[int, int] | None:
        """The journal's (inode, size) now, for :meth:`only_append_since`."""
        try:
            stat = os.stat(_journal_path(self.path))  # before each insert: no Path built
        except OSError:
            return None
        return stat.st_ino, stat.st_size

    def only_append_since(self, mark: tuple[int, int] | None) -> bool:
        """Is this process's last append the only change to the journal since ``mark``
        (taken with :meth:`journal_mark`)? Then no other writer stored anything meanwhile."""
        appended = self._last_append()
        return mark is not None and appended is not None and appended.before == mark

    def _last_append(self) -> _Append | None:
        known = _journals.get(self.path)
        return known.appended if known is not None else None

    def read_tail(self, position: Position | None, *, after: int = 0) -> Tail | None:
        """Entries appended since ``position`` (``None``: the journal's whole tail) and newer
        than version ``after``, with their vectors; ``None`` when a compaction replaced the
        journal since ``position``.

        ``Tail.vectors`` is aligned with ``Tail.entries``: a put's vector as stored
        (``None`` for a delete, or a vector that cannot be read).
        """
        tail = journal.read(self.path, position)
        if tail is None:
            return None
        records = tail.records = tail.records.since(after)
        vectors: list[Vector | None] = [None] * len(records)
        puts = [row for row, op in enumerate(records.ops) if op == "put"]
        if puts:
            source = self._source(tail, records)
            if source is None:
                return None
            found, sound, _ = source.gather(records, puts, None)
            for n, row in enumerate(puts):
                if sound[n]:
                    vectors[row] = found[n]
        tail.vectors = vectors
        return tail

    def load_vector(self, key: str) -> Vector | None:
        """The vector stored for ``key`` (as the provider returned it), or ``None``.

        Repeated calls read only what the journal gained since the last one.
        """
        with self._lookup_lock:
            for _ in range(_READ_ATTEMPTS):
                lookup = self._lookup
                if lookup is not None:
                    tail = journal.read(self.path, lookup.position)
                    if tail is None:
                        lookup = None
                    else:
                        lookup.extend(tail)
                if lookup is None:
                    lookup = self._lookup = _Lookup(self, self.read_state())
                try:
                    return lookup.find(key)
                except FileNotFoundError:
                    self._lookup = None  # its log went with a compaction: read again
        raise StoreError(f"{self.label}: the store kept changing while it was read.")

    def stats(self) -> Stats:
        """Counts for a status report; reads, never writes (or creates) anything."""
        if not self.path.is_dir():
            return Stats()
        state = self.read_state()
        snap = state.snapshot
        records = state.records
        latest: dict[str, str | None] = {}  # key -> identity after the tail; None: deleted
        for key, op, identity in zip(records.keys, records.ops, records.identities, strict=True):
            latest[key] = identity if op == "put" else None
        base_alive = np.ones(len(snap), dtype=bool)
        if latest:
            rows = row_keys.rows_of(snap.keys, list(latest))
            base_alive[rows[rows >= 0]] = False
        identities: dict[str, int] = {}
        if len(snap):
            counts = np.bincount(
                np.asarray(snap.identities)[base_alive], minlength=len(snap.identity_names)
            )
            for name, count in zip(snap.identity_names, counts, strict=False):
                if count:
                    identities[name] = identities.get(name, 0) + int(count)
        for alive in latest.values():
            if alive is not None:
                identities[alive] = identities.get(alive, 0) + 1
        names = os.listdir(self.path)
        return Stats(
            version=state.version,
            snapshot_version=snap.version,
            vectors=sum(identities.values()),
            journal_entries=len(records),
            dimensions=self._stored_dimensions(),
            identities=identities,
            temp_files=len(self._temp_files(names)),
            unindexed_files=len(_unneeded(names, state)),
        )

    def temp_files(self) -> list[str]:
        """Leftovers of interrupted writes (``embeddings_sweep`` removes them): the temp
        files in the store's directory, but a running merge's, which it still needs."""
        if not self.path.is_dir():
            return []
        return self._temp_files(os.listdir(self.path))

    def _temp_files(self, names: list[str]) -> list[str]:
        found = [name for name in names if files.TEMP_NAME.match(name)]
        if any(name.startswith(merging.TEMP_PREFIX) for name in found) and (
            merging.in_progress(self.path)
        ):
            found = [name for name in found if not name.startswith(merging.TEMP_PREFIX)]
        return found

    # -- maintenance ---------------------------------------------------------------

    def collect_garbage(
        self,
        is_live: Callable[[list[str]], set[str]],
        *,
        min_age: float = 300,
        dry_run: bool = False,
    ) -> GarbageReport:
        """Remove entries of rows that no longer exist, and files no entry needs.

        ``is_live(keys)`` returns the subset of ``keys`` whose row exists. Entries
        and files younger than ``min_age`` seconds are kept: a save may have stored
        its vector before the row became visible to us (popoto's mtime race guard).
        Files no entry needs are per-row files of 0.1.0 and vector logs of journals
        a compaction replaced while a process was killed.
        """
        report = GarbageReport()
        if not self.path.is_dir():
            return report
        state = self.read_state()
        indexed = _live_keys(state)
        live = is_live(sorted(indexed))
        cutoff = time.time() - min_age
        newest = state.newest()
        dead = []
        for key in sorted(set(indexed) - live):
            stored = self._stored_at(state, newest, key)
            if stored is not None and stored >= cutoff:
                report.skipped_recent += 1
                continue
            dead.append(key)
        report.entries = dead
        for name in sorted(_unneeded(os.listdir(self.path), state)):
            mtime = _mtime(self.path / name)
            if mtime is None:
                continue
            if mtime >= cutoff:
                report.skipped_recent += 1
                continue
            report.files.append(name)
        if dry_run:
            return report
        if dead:
            report.journal = self.delete_many(dead)
        logs = [name for name in report.files if vectorlog.base_of(name) is not None]
        for name in report.files:
            if name not in logs:
                files.delete_vector(self.path, name)
        if logs:
            self._remove_old_logs(logs, report)
        return report

    def sweep_tempfiles(self, max_age: float = 3600) -> list[str]:
        """Remove leftovers of interrupted writes; not a running merge's staged snapshot
        and log, temp files too (removing them would install a damaged snapshot)."""
        if not self.path.is_dir():
            return []
        try:
            with merging.exclusive(self.path, self.permissions) as mine:
                if mine:
                    return files.sweep_tempfiles(self.path, max_age)
        except OSError:  # a read-only store: nothing merges there
            return files.sweep_tempfiles(self.path, max_age)
        logger.info("%s: a merge is running; its temp files stay", self.label)
        return files.sweep_tempfiles(self.path, max_age, keep_prefix=merging.TEMP_PREFIX)

    @_writes
    def clear(self) -> None:
        """Delete every vector (``embeddings_backfill --reset``)."""
        if not self.path.is_dir():
            return
        with journal.locked(self.path, self.permissions):
            self._install(Snapshot(version=self._last_version() + 1))
            for name in os.listdir(self.path):
                if files.VECTOR_NAME.match(name) or name == DIMENSIONS:
                    files.delete_vector(self.path, name)

    # -- internals: writing ----------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[int, _Journal]]:
        """Hold the lock with the journal open for appending, and what it holds known."""
        try:
            files.ensure_dir(self.path, self.permissions)
        except StoreError as exc:
            raise StoreError(f"{self.label}: {exc}") from exc
        with journal.locked(self.path, self.permissions):
            try:
                fd = journal.open_for_append(self.path)
            except FileNotFoundError:
                if not (self.path / INDEX_FILE).exists():
                    # An index from the start: a missing one would make every read
                    # list the directory, looking for snapshots to recover.
                    snapshot.write_index(self.path, self._index_version(), None, self.permissions)
                journal.create(self.path, self._index_version(), self.permissions)
                fd = journal.open_for_append(self.path)
            try:
                yield fd, self._known(fd)
            finally:
                os.close(fd)

    def _known(self, fd: int) -> _Journal:
        """The journal open at ``fd``: read only what changed since this process last wrote."""
        stat = os.fstat(fd)
        head = journal.header(fd)
        known = _journals.get(self.path)
        if (
            known is not None
            and known.inode == stat.st_ino
            and known.header == head
            and stat.st_size >= known.size
        ):
            if stat.st_size > known.size:  # other processes appended since
                last = journal.last_version_in(fd, known.size, stat.st_size)
                if last is not None:
                    known.last = last
                known.ends_line = os.pread(fd, 1, stat.st_size - 1) == b"\n"
                known.size = stat.st_size
        else:
            start = min(stat.st_size, len(head) + 1)
            known = _Journal(
                inode=stat.st_ino,
                header=head,
                size=stat.st_size,
                base=journal.read_base(head),
                last=journal.last_version_in(fd, start, stat.st_size),
                ends_line=not stat.st_size or os.pread(fd, 1, stat.st_size - 1) == b"\n",
            )
            _journals[self.path] = known
        try:
            index = os.stat(os.path.join(self.path, INDEX_FILE))
            signature: tuple[int, int, int] | None = (
                index.st_ino,
                index.st_size,
                index.st_mtime_ns,
            )
        except FileNotFoundError:
            signature = None
        if signature is None or signature != known.index_stat:
            known.index_version = self._index_version()
            known.index_stat = signature
        return known

    def _append(self, fd: int, known: _Journal, entries: list[Entry], *, stamp: int = 0) -> None:
        try:
            written = journal.append(fd, entries, stamp=stamp, close_line=not known.ends_line)
        except BaseException:
            _journals.pop(self.path, None)  # part of it may be there: read the file next time
            raise
        before = (known.inode, known.size)
        known.size += written
        known.last = entries[-1].version
        known.ends_line = True
        stat = os.fstat(fd)
        known.appended = _Append(
            known.last,
            before,
            Position(known.inode, known.size, known.header),
            (stat.st_ino, stat.st_size, stat.st_mtime_ns),
        )

    def _put_entries(
        self,
        known: _Journal,
        items: list[tuple[str, Vector, str, str]],
        matrix: Matrix,
        bags: Sequence[str | None],
        versions: Sequence[int],
    ) -> list[Entry]:
        """Write ``matrix`` to the vector log in one write; the put entries naming its
        rows, numbered ``versions`` (the caller appends them to the journal)."""
        dimensions = int(matrix.shape[1])
        self._check_dimensions(known, dimensions)
        offset = vectorlog.append(self.path, known.base, matrix, self.permissions)
        stride = 4 * dimensions
        sums = vectorlog.checksums(matrix).tolist()
        return [
            Entry(
                versions[n],
                "put",
                key,
                digest,
                identity,
                offset + n * stride,
                dimensions,
                sums[n],
                bags[n],
            )
            for n, (key, _, digest, identity) in enumerate(items)
        ]

    def _copy_locked(self, fd: int, known: _Journal, changes: Sequence[Change]) -> list[Entry]:
        """Append changes numbered elsewhere (the ``database`` store's local copy).

        Those at or below our version are skipped; the rest must follow it without
        a gap. The caller holds the lock.
        """
        changes = [change for change in changes if change.version > known.version]
        if not changes:
            return []
        if changes[0].version != known.version + 1:
            raise StoreError(
                f"{self.label}: change {changes[0].version} does not follow version "
                f"{known.version}."
            )
        puts = [change for change in changes if change.op == "put"]
        written: dict[int, Entry] = {}
        if puts:
            items = [(c.key, c.vector, c.hash, c.identity) for c in puts]
            matrix = self._matrix(items)  # type: ignore[arg-type]  # a put has its vector
            bags = [c.terms for c in puts]
            versions = [c.version for c in puts]
            for entry in self._put_entries(known, items, matrix, bags, versions):  # type: ignore[arg-type]
                written[entry.version] = entry
        entries = [written.get(c.version) or Entry(c.version, "del", c.key) for c in changes]
        # One stamp a journal append: the newest change's keeps gc's age guard on the safe side.
        stamp = max(change.stamp for change in changes) or int(time.time())
        self._append(fd, known, entries, stamp=stamp)
        return entries  # not compacted here: the caller may append more through ``fd``

    def _bags(
        self, items: list[tuple[str, Vector, str, str]], terms: Sequence[str | None] | None
    ) -> list[str | None]:
        """``terms`` as a list aligned with ``items``, each an encoded bag or ``None``."""
        if terms is None:
            return [None] * len(items)
        bags = list(terms)
        if len(bags) != len(items):
            raise StoreError(
                f"{self.label}: {len(bags)} bags of terms given for {len(items)} vectors."
            )
        for (key, _, _, _), bag in zip(items, bags, strict=True):
            if bag is not None and not (isinstance(bag, str) and journal.is_bag(bag)):
                raise StoreError(f"{self.label}: the terms of row {key!r} are no bag: {bag!r}.")
        return bags

    def _matrix(self, items: list[tuple[str, Vector, str, str]]) -> Matrix:
        """The batch's vectors as one little-endian float32 matrix; checks keys and shapes."""
        arrays = [np.asarray(vector) for _, vector, _, _ in items]
        sizes = {array.shape for array in arrays}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise StoreError(f"{self.label}: vectors must be 1-D and of one size, got {sizes!r}.")
        if len(arrays) == 1:
            matrix = np.ascontiguousarray(arrays[0], dtype="<f4").reshape(1, -1)
        else:
            matrix = np.ascontiguousarray(np.stack(arrays), dtype="<f4")
        return self._checked([key for key, _, _, _ in items], matrix)

    def _checked(self, keys: Sequence[str], matrix: Matrix) -> Matrix:
        """``matrix``, a vector per key, once no key holds NUL and every value is finite."""
        for key in keys:
            if "\0" in key:
                # numpy's fixed-width strings drop trailing NULs, so such a key could not
                # be found again in a snapshot; no database keeps NUL in a key in practice.
                raise StoreError(f"{self.label}: row key {key!r} contains a NUL character.")
        if not np.isfinite(matrix).all():
            rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1)).tolist()
            bad = [keys[row] for row in rows]
            raise StoreError(
                f"{self.label}: the vectors of rows {bad!r} hold NaN or infinite values; "
                "expected finite numbers."
            )
        return matrix

    def _check_dimensions(self, known: _Journal, dimensions: int) -> None:
        if known.dimensions is None:
            known.dimensions = self._stored_dimensions()
        if known.dimensions is None:
            files.write_atomic(
                self.path / DIMENSIONS, str(dimensions).encode("ascii"), self.permissions
            )
            known.dimensions = dimensions
        elif known.dimensions != dimensions:
            raise StoreError(
                f"{self.label} holds {known.dimensions}-dimensional vectors; cannot store "
                f"{dimensions}-dimensional ones. Re-embed everything with "
                f"`manage.py embeddings_backfill {self.label} --all --reset`."
            )

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Writes made meanwhile (by this process) compact the store only once the
        journal holds a share of the snapshot's rows (:data:`BULK_SHARE`), and at
        least ``compact_threshold``: a bulk load rewrites the snapshot a few times as
        it grows geometrically, not once per ``compact_threshold`` writes, which made
        a backfill's compactions quadratic in its rows. Leaving the last block without
        an error folds the journal if the usual rule says so (after an interruption,
        the next write does)."""
        with self._bulk_lock:
            self._bulk += 1
        try:
            yield
        finally:
            with self._bulk_lock:
                self._bulk -= 1
                done = not self._bulk
        if done:
            self._compact_if_due()

    def _compact_if_due(self) -> None:
        if not self.path.is_dir():
            return
        try:
            if self.version() - snapshot.index_version(self.path) >= self.compact_threshold:
                self.compact()
        except Exception as exc:  # as after a write (a full disk, the database away): a
            # later write retries; the bulk load itself is stored already.
            logger.warning("%s: could not compact the store: %s", self.label, exc)

    def _due(self, behind: int, threshold: int) -> bool:
        """Is a compaction due, ``behind`` changes after the last one?"""
        if behind < threshold:
            return False
        return not self._bulk or behind >= BULK_SHARE * snapshot.rows(self.path)

    def _maybe_compact(self, known: _Journal, version: int) -> None:
        behind = version - known.index_version
        if self._due(behind, self.compact_threshold):
            if (
                self.merge_in_background
                and not self._bulk
                and behind < MERGE_BACKLOG * self.compact_threshold
            ):
                merging.start(self)  # the save returns now; see merge()
                return
            try:
                self._compact_locked()
            except (OSError, StoreError) as exc:
                # The write that got us here is in the journal already: failing it now
                # (a full disk) would report a stored vector as lost. A later write retries.
                logger.warning("%s: could not compact the store: %s", self.label, exc)

    def _compact_locked(self) -> int:
        state = self._read_state()
        snap = state.snapshot
        legacy = len(snap) > 0 and snap.raw is None  # written by 0.1.0: vectors in per-row files
        if not len(state.records) and snap.name is not None and not legacy:
            return snap.version
        return self._install(self._merged(snap, state.rows(), state.version))

    @_writes
    def merge(self, *, on_install: Callable[[Path], None] | None = None) -> int | None:
        """Fold the journal into a new snapshot, holding the writer lock only to install it
        and the journal that carries over the entries written meanwhile (see
        :mod:`~django_embeddings.store.merging`). Returns the snapshot's version, or
        ``None`` when another process is merging or another compaction came first;
        ``on_install(path)`` is called under the lock once the new snapshot is in place."""
        if not self.path.is_dir():
            return None
        with merging.exclusive(self.path, self.permissions) as mine:
            if not mine:
                return None
            state = self._read_state()
            if state.version - state.snapshot.version < self.compact_threshold:
                return state.snapshot.version  # another process compacted meanwhile
            merged = self._merged(state.snapshot, state.rows(), state.version)
            for name in merging.leftovers(self.path):  # of a merge that was killed
                with contextlib.suppress(FileNotFoundError):
                    files.remove_temp(self.path / name)
            staged = snapshot.stage(self.path, merged, self.permissions, prefix=merging.TEMP_PREFIX)
            carried: _CarriedOver | None = None
            retired: list[Path] = []
            try:
                carried = _CarriedOver(self)
                # What was written while the snapshot was staged, copied without the lock;
                # under it, only what was written while that was copied.
                tail = Store.read_tail(self, state.position)  # never a database's sync
                if tail is None:
                    return None  # the journal was replaced: a compaction, clear()
                carried.add(tail)
                with self._writing() as (_, known):
                    rest = Store.read_tail(self, tail.position)
                    if rest is None or known.index_version >= merged.version:
                        return None
                    carried.add(rest)
                    snapshot.install(self.path, staged, merged.version, self.permissions)
                    carried.install(merged.version)
                    if on_install is not None:
                        on_install(self.path)
                    _journals.pop(self.path, None)
                    vectorlog.remove_others(self.path, merged.version)
                    retired = snapshot.retire_unreferenced(
                        self.path, f"snapshot-{merged.version}", prefix=merging.TEMP_PREFIX
                    )
            finally:
                shutil.rmtree(staged, ignore_errors=True)  # gone already once installed
                if carried is not None:
                    carried.discard()
                for directory in retired:
                    shutil.rmtree(directory, ignore_errors=True)
        logger.debug("%s: merged %d rows at version %d", self.label, len(merged), merged.version)
        return merged.version

    def _install_rows(
        self, known: _Journal, rows: TailRows, version: int, dimensions: int | None
    ) -> int:
        """Make ``rows`` the whole store at ``version``, as one snapshot and an empty
        journal: a copy built from elsewhere (the ``database`` store's table) without
        going through the journal. The caller holds the lock. ``rows.vectors`` are as
        stored; ``dimensions``, those of the first vector put (``None``: none was), fix
        the store's, as that put did, even if no row is left."""
        if dimensions is not None:
            self._check_dimensions(known, dimensions)
        if rows.keys:
            self._check_dimensions(known, int(rows.vectors.shape[1]))
        return self._install(self._merged(Snapshot(version=0), rows, version))

    def _merged(self, snap: Snapshot, rows: TailRows, version: int) -> Snapshot:
        """The snapshot at ``version``: the rows of ``snap`` that ``rows.changed`` leaves
        alone, and the live ``rows``, sorted by key."""
        keep = np.ones(len(snap), dtype=bool)
        if rows.changed and len(snap):
            found = row_keys.rows_of(snap.keys, rows.changed)
            keep[found[found >= 0]] = False
        dims = snap.dimensions or (int(rows.vectors.shape[1]) if rows.keys else 0)
        if not dims or not (keep.any() or rows.keys):
            return Snapshot(version=version)
        identity_names = list(snap.identity_names)
        numbers = {name: n for n, name in enumerate(identity_names)}
        for name in rows.identities:
            if name not in numbers:
                numbers[name] = len(identity_names)
                identity_names.append(name)
        kept = np.flatnonzero(keep)
        raw = rows.vectors.reshape(-1, dims)
        all_keys = row_keys.concat(np.asarray(snap.keys[kept]), row_keys.pack(rows.keys))
        order = _sorting(all_keys)
        old_vectors = np.asarray(snap.vectors[kept]).reshape(-1, dims)
        new_vectors = normalize(raw)
        merged = Snapshot(
            version=version,
            vectors=_joined(old_vectors, new_vectors, order),
            keys=all_keys if order is None else all_keys[order],
            hashes=_joined(
                np.asarray(snap.hashes[kept]).reshape(-1, 16), _digests(rows.hashes), order
            ),
            identities=_joined(
                np.asarray(snap.identities[kept]),
                np.array([numbers[i] for i in rows.identities], dtype=np.uint16),
                order,
            ),
            identity_names=identity_names,
            raw=_joined(self._kept_raw(snap, kept).reshape(-1, dims), raw, order),
            times=_joined(
                self._kept_times(snap, kept), np.array(rows.times, dtype=np.uint32), order
            ),
            terms=self._merged_terms(snap, kept, rows, order),
            int8=self._merged_int8(snap, kept, old_vectors, new_vectors, order),
        )
        logger.debug("%s: compacting %d rows at version %d", self.label, len(all_keys), version)
        return merged

    def _merged_int8(
        self,
        snap: Snapshot,
        kept: npt.NDArray[np.intp],
        old_vectors: Matrix,
        new_vectors: Matrix,
        order: npt.NDArray[np.intp] | None,
    ) -> Int8Matrix | None:
        """The int8 copy of a compaction's rows, when this store keeps one: the kept
        rows' codes as they are (quantized here only when the old snapshot has none),
        and the new rows', quantized. Each row's codes depend on that row alone, so the
        copy is the one the whole matrix would quantize to, for O(new rows) work."""
        if not self.int8:
            return None
        old = snap.int8.take(kept) if snap.int8 is not None else Int8Matrix.of(old_vectors)
        return old.joined(Int8Matrix.of(new_vectors), order)

    def _kept_raw(self, snap: Snapshot, kept: npt.NDArray[np.intp]) -> Matrix:
        """The stored vectors of the snapshot rows a compaction keeps."""
        if snap.raw is not None or not len(kept):
            return np.asarray(
                (snap.raw if snap.raw is not None else snap.vectors)[kept], np.float32
            )
        # A 0.1.0 snapshot: the per-row files hold them (read once, by this compaction).
        raw = np.array(snap.vectors[kept], dtype=np.float32)
        lost = 0
        for n, row in enumerate(kept):
            vector = files.load_vector(self.path, files.filename_for(str(snap.keys[row])))
            if vector is not None and vector.shape == raw[n].shape:
                raw[n] = vector
            else:
                lost += 1
        if lost:
            logger.warning(
                "%s: %d rows of the snapshot have no readable vector file; their normalized "
                "vectors are kept instead.",
                self.label,
                lost,
            )
        return raw

    def _merged_terms(
        self,
        snap: Snapshot,
        kept: npt.NDArray[np.intp],
        rows: TailRows,
        order: npt.NDArray[np.intp] | None,
    ) -> Terms | None:
        """The terms of a compaction's rows: the kept snapshot rows', then the tail's, in
        ``order`` (``None``: as they are); ``None`` when no row's are known (a field
        without keywords)."""
        old = snap.terms.take(kept) if snap.terms is not None else None
        tail_known = any(bag is not None for bag in rows.terms)
        if not tail_known and (old is None or not old.known.any()):
            return None
        if old is None:
            old = Terms.empty(len(kept))
        tail = self._terms_of(rows.terms)
        merged = old.concat(tail) if len(old) else tail
        return _pruned(merged if order is None else merged.take(order))

    def _terms_of(self, bags: list[str | None]) -> Terms:
        """``Terms`` of journal bags; one that is not a bag (a damaged line) reads as not known."""
        sound = [bag if bag is None or journal.is_bag(bag) else None for bag in bags]
        damaged = sum(1 for bag, kept in zip(bags, sound, strict=True) if kept is not bag)
        if damaged:
            logger.warning(
                "%s: %d rows have damaged keyword terms; they read as not known",
                self.label,
                damaged,
            )
        return Terms.from_bags(sound)

    def _kept_times(self, snap: Snapshot, kept: npt.NDArray[np.intp]) -> npt.NDArray[np.uint32]:
        if snap.times is not None:
            return np.asarray(snap.times[kept], dtype=np.uint32)
        times = [_mtime(self.path / files.filename_for(str(snap.keys[row]))) for row in kept]
        return np.array([int(t or 0) for t in times], dtype=np.uint32)

    def _install(self, snap: Snapshot) -> int:
        """Publish ``snap``, then start an empty journal (and log); the caller holds the lock."""
        snapshot.write(self.path, snap, self.permissions)
        journal.create(self.path, snap.version, self.permissions)
        _journals.pop(self.path, None)
        vectorlog.remove_others(self.path, snap.version)
        snapshot.remove_unreferenced(self.path, f"snapshot-{snap.version}")
        return snap.version

    def _remove_old_logs(self, names: list[str], report: GarbageReport) -> None:
        """Remove logs of replaced journals, under the lock (never the current one)."""
        with journal.locked(self.path, self.permissions):
            current = journal.last_base(self.path)
            for name in names:
                if vectorlog.base_of(name) == current:
                    report.files.remove(name)  # a compaction made it current meanwhile
                else:
                    files.delete_vector(self.path, name)

    # -- internals: reading ------------------------------------------------------------

    def _source(self, tail: Tail, records: Records) -> _Source | None:
        """Where the vectors of ``records`` are; ``None`` if a compaction took the log away."""
        if not records.offsets or max(records.offsets) == NO_OFFSET:
            return _Source(self, tail.base, None)
        try:
            return _Source(self, tail.base, vectorlog.Reader(self.path, tail.base))
        except FileNotFoundError:
            if not self._same_journal(tail.position):
                return None
        if not self._found_damage() and (self.path, tail.base) not in _damaged:
            _damaged.add((self.path, tail.base))
            logger.warning(
                "%s: the vector log %s is missing; the rows stored since the last compaction "
                "read as missing until `manage.py embeddings_backfill %s` embeds them again.",
                self.label,
                self.path / vectorlog.name_for(tail.base),
                self.label,
            )
        return _Source(self, tail.base, None)

    def _same_journal(self, position: Position) -> bool:
        """Is the journal ``position`` was taken in still the current one?"""
        current = journal.identity(self.path)
        return current is not None and position.same_journal(*current)

    def _stored_at(self, state: State, newest: dict[str, int], key: str) -> float | None:
        """When the live vector of ``key`` was stored (``None``: not known)."""
        records = state.records
        row = newest.get(key)
        if row is not None:
            if records.times[row]:
                return float(records.times[row])
            if records.offsets[row] == NO_OFFSET:
                return _mtime(self.path / files.filename_for(key))
            return None
        snap = state.snapshot
        found = snap.find(key)
        if found is not None and snap.times is not None:
            return float(snap.times[found]) or None
        return _mtime(self.path / files.filename_for(key))

    def _stored_dimensions(self) -> int | None:
        try:
            return int((self.path / DIMENSIONS).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _index_version(self) -> int:
        return snapshot.index_version(self.path)

    def _last_version(self) -> int:
        last = journal.last_version(self.path)
        return max(last if last is not None else 0, self._index_version())

    def _found_damage(self) -> bool:
        """A file of the store could not be read. Here its rows read as missing until
        ``embeddings_backfill`` (``False``: warn so); a copy of a table rebuilds itself."""
        return False

    def _damaged_snapshot(self, exc: Exception) -> Snapshot:
        """An empty stand-in for a snapshot that cannot be read (truncated, not arrays).

        Searches go on with the rows written since; the snapshot's rows read as
        missing, so ``embeddings_backfill`` embeds them again, and the next compaction
        replaces the damaged snapshot.
        """
        version = self._index_version()
        if not self._found_damage() and (self.path, version) not in _damaged:
            _damaged.add((self.path, version))
            logger.warning(
                "%s: the snapshot of version %d in %s is damaged (%s); its rows are left "
                "out until `manage.py embeddings_backfill %s` embeds them again.",
                self.label,
                version,
                self.path,
                exc,
                self.label,
            )
        return Snapshot(version=version)


class _CarriedOver:
    """The journal of a merged snapshot: the entries written while it was merged, their
    vectors in a staged log, both installed (renamed) under the lock by ``Store.merge``.

    Until then the old journal holds every entry, and readers skip those the new
    snapshot holds: a crash at any point loses nothing.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        fd, self.log = tempfile.mkstemp(dir=store.path, prefix=merging.TEMP_PREFIX)
        try:
            store.permissions.chmod_file(fd)
        finally:
            os.close(fd)
        self.lines: list[bytes] = []

    def add(self, tail: Tail) -> None:
        """Carry ``tail`` over: its puts' readable vectors into the staged log, and its
        lines, each naming where its vector now is (column by column: thousands of
        entries, in a thread that shares the GIL with the saves)."""
        records = tail.records
        vectors = tail.vectors or [None] * len(records)
        found = {n: v for n, v in enumerate(vectors) if v is not None and records.ops[n] == "put"}
        offsets = [journal.NO_OFFSET] * len(records)
        dimensions = [0] * len(records)
        sums = list(records.checksums)
        if found:
            matrix = np.ascontiguousarray(np.stack(list(found.values())), dtype="<f4")
            offset = vectorlog.append_to(self.log, matrix, self.store.permissions)
            width = int(matrix.shape[1])
            for row, (n, checksum) in enumerate(
                zip(found, vectorlog.checksums(matrix).tolist(), strict=True)
            ):
                offsets[n], dimensions[n], sums[n] = offset + row * 4 * width, width, checksum
        # A put whose vector could not be read keeps no offset: unreadable before, and now.
        self.lines.extend(
            journal.line(*fields)
            for fields in zip(
                records.versions,
                records.ops,
                records.keys,
                records.hashes,
                records.identities,
                offsets,
                dimensions,
                sums,
                records.times,
                records.terms,
                strict=True,
            )
        )

    def install(self, base: int) -> None:
        """Make the staged log and these entries the journal of snapshot ``base``."""
        os.replace(self.log, self.store.path / vectorlog.name_for(base))
        journal.create(self.store.path, base, self.store.permissions, b"".join(self.lines))

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log)


class _Source:
    """Where the vectors of one journal generation are: its log, or per-row files (0.1.0)."""

    def __init__(self, store: Store, base: int, reader: vectorlog.Reader | None) -> None:
        self.store = store
        self.base = base
        self.reader = reader

    def gather(
        self,
        records: Records,
        rows: list[int] | None,
        dimensions: int | None,
        *,
        norms: bool = False,
    ) -> tuple[Matrix, npt.NDArray[np.bool_], npt.NDArray[np.float32] | None]:
        """The vectors of the puts at ``rows`` (``None``: all records), which are
        sound, and (with ``norms``) their lengths, in one pass over the log.

        ``dimensions`` is what the store holds (``None``: take the first vector's).
        """
        at: Sequence[int] = range(len(records)) if rows is None else rows
        if dimensions is None:
            dimensions = self._dimensions(records, at)
        out = np.zeros((len(at), dimensions or 0), dtype=np.float32)
        sound = np.zeros(len(at), dtype=bool)
        lengths: npt.NDArray[np.float32] | None = None
        if not dimensions:
            return out, sound, np.zeros(len(at), np.float32) if norms else None
        offsets, sizes, expected = (
            _ints(column, rows)
            for column in (records.offsets, records.dimensions, records.checksums)
        )
        logged = offsets != NO_OFFSET
        fits = logged & (sizes == dimensions)
        if self.reader is not None and fits.any():
            if fits.all():
                out, sound, lengths = self.reader.gather(offsets, dimensions, expected, norms=norms)
            else:
                out[fits], sound[fits], _ = self.reader.gather(
                    offsets[fits], dimensions, expected[fits]
                )
        other_size = int((logged & ~fits).sum())
        for n in np.flatnonzero(~logged).tolist():
            key = records.keys[at[n]]
            vector = files.load_vector(self.store.path, files.filename_for(key))
            if vector is None:
                continue
            if vector.shape != (dimensions,):
                other_size += 1
                continue
            out[n], sound[n] = vector, True
        unread = [records.keys[at[n]] for n in np.flatnonzero(~sound).tolist()]
        if other_size:
            logger.warning(
                "%s: ignoring %d rows of another size than %d dimensions",
                self.store.label,
                other_size,
                dimensions,
            )
        if len(unread) > other_size:
            logger.warning(
                "%s: %d stored vectors cannot be read (rows %s); they read as missing until "
                "`manage.py embeddings_backfill %s` embeds them again.",
                self.store.label,
                len(unread),
                ", ".join(repr(key) for key in unread[:5]) + (", ..." if len(unread) > 5 else ""),
                self.store.label,
            )
        if norms and lengths is None:
            with np.errstate(over="ignore", invalid="ignore"):  # unsound rows: left out
                lengths = np.linalg.norm(out, axis=-1).astype(np.float32)
        return out, sound, lengths

    def _dimensions(self, records: Records, rows: Sequence[int]) -> int | None:
        """What the store holds: ``_dimensions``, else what most entries say."""
        stored = self.store._stored_dimensions()
        if stored is not None:
            return stored
        sizes = collections.Counter(records.dimensions[row] for row in rows)
        sizes.pop(0, None)
        if sizes:
            return sizes.most_common(1)[0][0]
        for row in rows:  # 0.1.0 entries only, and no _dimensions file
            vector = files.load_vector(self.store.path, files.filename_for(records.keys[row]))
            if vector is not None:
                return int(vector.shape[0])
        return None


class _Lookup:
    """Where the newest vector of each key is, kept in step with the journal by reading on."""

    def __init__(self, store: Store, state: State) -> None:
        self.store = store
        self.snapshot = state.snapshot
        self.base = state.base
        self.position = state.position
        self.records = Records()
        self.records.extend(state.records)
        self.newest = state.newest()

    def extend(self, tail: Tail) -> None:
        start = len(self.records)
        self.records.extend(tail.records)
        self.newest.update(zip(tail.records.keys, range(start, len(self.records)), strict=True))
        self.position = tail.position

    def find(self, key: str) -> Vector | None:
        path = self.store.path
        row = self.newest.get(key)
        if row is not None:
            records = self.records
            if records.ops[row] != "put":
                return None
            if records.offsets[row] == NO_OFFSET:
                return files.load_vector(path, files.filename_for(key))
            checksum = records.checksums[row]
            try:
                return vectorlog.read_one(
                    path,
                    self.base,
                    records.offsets[row],
                    records.dimensions[row],
                    None if checksum == NO_CHECKSUM else checksum,
                )
            except FileNotFoundError:
                if not self.store._same_journal(self.position):
                    raise  # a compaction replaced journal and log: the caller reads again
                return None
        snap = self.snapshot
        found = snap.find(key)
        if found is None:
            return None
        if snap.raw is not None:
            vector: Vector = np.array(snap.raw[found], dtype=np.float32)
            return vector
        return files.load_vector(path, files.filename_for(key))  # a 0.1.0 snapshot


_damaged: set[tuple[Path, int]] = set()  # snapshots and logs already reported as damaged


def _live_keys(state: State) -> set[str]:
    live = {str(key) for key in state.snapshot.keys}
    records = state.records
    for key, op in zip(records.keys, records.ops, strict=True):
        if op == "put":
            live.add(key)
        else:
            live.discard(key)
    return live


def _unneeded(names: Iterable[str], state: State) -> list[str]:
    """Per-row files no live entry reads, and vector logs of replaced journals."""
    records = state.records
    newest = state.newest()
    needed = set()
    if state.snapshot.raw is None:  # a 0.1.0 snapshot: its rows' vectors are in their files
        needed = {files.filename_for(str(key)) for key in state.snapshot.keys}
    for key, row in newest.items():
        name = files.filename_for(key)
        if records.ops[row] == "put" and records.offsets[row] == NO_OFFSET:
            needed.add(name)
        else:
            needed.discard(name)
    unneeded = []
    for name in names:
        if files.VECTOR_NAME.match(name):
            if name not in needed:
                unneeded.append(name)
        else:
            base = vectorlog.base_of(name)
            if base is not None and base != state.base:
                unneeded.append(name)
    return unneeded


def _pruned(terms: Terms) -> Terms:
    """``terms`` over only the tokens its rows use: the vocabulary of rows deleted or
    replaced goes with the compaction that drops them."""
    used = np.zeros(len(terms.vocab), dtype=bool)
    used[terms.ids] = True
    if used.all():
        return terms
    numbers = np.cumsum(used, dtype=np.int64) - 1
    vocab = [token for token, keep in zip(terms.vocab, used.tolist(), strict=True) if keep]
    ids = numbers[terms.ids].astype(np.int32)
    return Terms(vocab, terms.ptr, ids, terms.counts, terms.known)


def _sorting(keys: row_keys.Keys) -> npt.NDArray[np.intp] | None:
    """The order that sorts ``keys`` (distinct), or ``None`` when they are sorted already,
    as rows stored in the order of their primary keys are."""
    values: npt.NDArray[Any] = keys
    if len(values) < 2 or bool(np.all(values[1:] > values[:-1])):
        return None
    return np.argsort(keys, kind="stable")


def _joined(first: npt.NDArray[_A], second: npt.NDArray[_A], order: Any) -> npt.NDArray[_A]:
    """The rows of ``first`` then ``second``, taken in ``order`` (``None``: as they are).
    A compaction's arrays are large: when one side is empty, the other is not copied
    to be joined, nor at all when it is in order already."""
    whole = second if not len(first) else first if not len(second) else None
    if whole is None:
        whole = np.concatenate([first, second])
    return whole if order is None else whole[order]


def _digests(content_hashes: list[str]) -> npt.NDArray[np.uint8]:
    """A row of 16 bytes per content hash (:func:`_digest`'s), decoded in one call
    when every hash is hex of one even length of 32 digits or more, as SHA-256's are."""
    lengths = set(map(len, content_hashes))
    if len(lengths) == 1:
        (length,) = lengths
        joined = "".join(content_hashes)
        if length >= 32 and length % 2 == 0 and _HEX.fullmatch(joined):
            raw = np.frombuffer(bytes.fromhex(joined), dtype=np.uint8)
            return raw.reshape(-1, length // 2)[:, :16].copy()
    return np.array([_digest(h) for h in content_hashes], dtype=np.uint8).reshape(-1, 16)


_HEX = re.compile("[0-9a-fA-F]*")


def _digest(content_hash: str) -> list[int]:
    try:
        raw = bytes.fromhex(content_hash)[:16]
    except ValueError:
        raw = b""
    return list(raw.ljust(16, b"\0"))


@functools.lru_cache(maxsize=256)
def _journal_path(path: Path) -> str:
    return os.path.join(path, journal.JOURNAL)  # a stat before each search: no Path built


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None

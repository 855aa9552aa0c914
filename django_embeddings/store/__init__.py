"""The vector store of one model field: files, journal and snapshot behind one facade.

A store lives in ``<DJANGO_EMBEDDINGS_DIR>/<app_label>.<ModelName>/<field>/`` and
knows nothing of Django models: rows are identified by string keys. Writes are
safe from any number of processes at once; a process killed at any instant
leaves a store that loads consistently, plus temp files or orphans that
:meth:`Store.sweep_tempfiles` and :meth:`Store.collect_garbage` remove.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from django_embeddings.exceptions import StoreError
from django_embeddings.store import files, journal, snapshot
from django_embeddings.store import keys as row_keys
from django_embeddings.store.journal import Entry, Position, Tail
from django_embeddings.store.snapshot import Snapshot
from django_embeddings.typing import Matrix, Vector

__all__ = ["Entry", "GarbageReport", "Position", "Snapshot", "State", "Stats", "Store", "Tail"]

logger = logging.getLogger(__name__)

_READ_ATTEMPTS = 20
INDEX_FILE = snapshot.INDEX
DIMENSIONS = "_dimensions"  # fixed by the first vector stored; cleared by clear()


@dataclass
class State:
    """A consistent view: the snapshot plus the journal entries written after it."""

    snapshot: Snapshot
    tail: list[Entry]
    position: Position
    version: int


@dataclass
class GarbageReport:
    entries: list[str] = field(default_factory=list)  # keys whose index entry was removed
    files: list[str] = field(default_factory=list)  # vector files removed with no entry
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
    unindexed_files: int = 0  # vector files with no index entry (garbage collection removes)


_P = ParamSpec("_P")
_R = TypeVar("_R")


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


def normalize(matrix: Matrix) -> Matrix:
    """Rows scaled to unit length, so a dot product is the cosine similarity."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)


class Store:
    def __init__(self, path: Path, *, label: str = "", compact_threshold: int = 10_000) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        self.compact_threshold = compact_threshold

    def __repr__(self) -> str:
        return f"<Store {self.label!r} at {str(self.path)!r}>"

    # -- writes ------------------------------------------------------------------

    def put(self, key: str, vector: Vector, *, content_hash: str, identity: str) -> Entry:
        return self.put_many([(key, vector, content_hash, identity)])[0]

    @_writes
    def put_many(self, items: Iterable[tuple[str, Vector, str, str]]) -> list[Entry]:
        """Store vectors: files first, then one journal append for the batch.

        Files are written to temp files outside the lock, then renamed into place
        under it, just before the append: so the file of a key always holds the
        vector of the key's newest entry, even when processes store one key at once.
        A crash after the renames but before the append leaves files with no entry
        (garbage collection removes them) or a newer vector under an older entry
        (whose hash no longer matches the row's text: ``embeddings_backfill --stale``);
        never an entry with no file.
        """
        items = list(items)
        if not items:
            return []
        self._prepare()
        dimensions = self._check_dimensions(items)
        staged: list[tuple[str, str]] = []
        installed = 0
        try:
            for key, vector, _, _ in items:
                staged.append((key, self._stage_file(key, vector)))
            with journal.locked(self.path):
                for key, tmp in staged:  # in order: a key given twice keeps its last vector
                    self._install_file(key, tmp)
                    installed += 1
                version = self._last_version()
                entries = [
                    Entry(version + offset, "put", key, content_hash, identity)
                    for offset, (key, _, content_hash, identity) in enumerate(items, start=1)
                ]
                journal.append(self.path, entries)
                self._maybe_compact(entries[-1].version)
        finally:
            for _, tmp in staged[installed:]:
                files.discard(tmp)  # staged by a write that failed
        logger.debug("%s: stored %d vectors of %d dimensions", self.label, len(items), dimensions)
        return entries

    def delete(self, key: str) -> Entry:
        return self.delete_many([key])[0]

    @_writes
    def delete_many(self, keys: Iterable[str]) -> list[Entry]:
        keys = list(keys)
        if not keys or not self.path.is_dir():
            return []
        self._prepare()
        with journal.locked(self.path):
            version = self._last_version()
            entries = [Entry(version + n, "del", key) for n, key in enumerate(keys, start=1)]
            journal.append(self.path, entries)
            # Under the lock, so a concurrent put of the same key cannot land between
            # our append and our unlink.
            for key in keys:
                files.delete_vector(self.path, files.filename_for(key))
            self._maybe_compact(entries[-1].version)
        return entries

    @_writes
    def compact(self) -> int:
        """Fold the journal into a new snapshot now; returns the snapshot's version."""
        if not self.path.is_dir():
            return 0
        self._prepare()
        with journal.locked(self.path):
            return self._compact_locked()

    # -- reads -------------------------------------------------------------------

    def version(self) -> int:
        """The newest version: one small read of the journal's end."""
        return self._last_version()

    def read_state(self) -> State:
        """Load the snapshot (memory-mapped) and the journal entries after it.

        Lock-free: if a compaction swaps files while we read, we read again.
        """
        for _ in range(_READ_ATTEMPTS):
            try:
                snap = snapshot.load(self.path)
            except FileNotFoundError:
                continue  # the snapshot named by _index.json was just replaced
            except (OSError, ValueError, KeyError, TypeError) as exc:
                snap = self._damaged_snapshot(exc)
            tail = journal.read(self.path)
            if tail is None:
                if not (self.path / journal.JOURNAL).exists():
                    return State(snap, [], Position(0, 0), snap.version)
                if journal.unreadable(self.path):
                    # Not a race: journals are swapped whole. The next append heals it.
                    if (self.path, -1) not in _damaged:
                        _damaged.add((self.path, -1))
                        logger.warning(
                            "%s: the journal in %s has no readable line; using the snapshot",
                            self.label,
                            self.path,
                        )
                    return State(snap, [], Position(0, 0), snap.version)
                continue
            if tail.base > snap.version:
                continue  # journal newer than the snapshot we read: a compaction raced us
            entries = [entry for entry in tail.entries if entry.version > snap.version]
            version = entries[-1].version if entries else snap.version
            return State(snap, entries, tail.position, version)
        raise StoreError(f"{self.label}: the store kept changing while it was read.")

    def read_tail(self, position: Position) -> Tail | None:
        """Entries appended since ``position``; ``None`` after a compaction."""
        return journal.read(self.path, position)

    def load_vector(self, key: str) -> Vector | None:
        return files.load_vector(self.path, files.filename_for(key))

    def stats(self) -> Stats:
        """Counts for a status report; reads, never writes (or creates) anything."""
        if not self.path.is_dir():
            return Stats()
        state = self.read_state()
        snap = state.snapshot
        latest: dict[str, str | None] = {}  # key -> identity after the tail; None: deleted
        for entry in state.tail:
            latest[entry.key] = entry.identity if entry.op == "put" else None
        base_alive = np.ones(len(snap), dtype=bool)
        for key in latest:
            row = snap.find(key)
            if row is not None:
                base_alive[row] = False
        identities: dict[str, int] = {}
        if len(snap):
            counts = np.bincount(
                np.asarray(snap.identities)[base_alive], minlength=len(snap.identity_names)
            )
            for name, count in zip(snap.identity_names, counts, strict=False):
                if count:
                    identities[name] = identities.get(name, 0) + int(count)
        for identity in latest.values():
            if identity is not None:
                identities[identity] = identities.get(identity, 0) + 1
        known = {files.filename_for(key) for key in _live_keys(state)}
        names = os.listdir(self.path)
        return Stats(
            version=state.version,
            snapshot_version=snap.version,
            vectors=sum(identities.values()),
            journal_entries=len(state.tail),
            dimensions=self._stored_dimensions(),
            identities=identities,
            temp_files=sum(1 for name in names if files.TEMP_NAME.match(name)),
            unindexed_files=sum(
                1 for name in names if files.VECTOR_NAME.match(name) and name not in known
            ),
        )

    # -- maintenance ---------------------------------------------------------------

    def collect_garbage(
        self,
        is_live: Callable[[list[str]], set[str]],
        *,
        min_age: float = 300,
        dry_run: bool = False,
    ) -> GarbageReport:
        """Remove entries and files of rows that no longer exist.

        ``is_live(keys)`` returns the subset of ``keys`` whose row exists. Files
        younger than ``min_age`` seconds are kept: a save may have written its file
        before the row became visible to us (popoto's mtime race guard).
        """
        report = GarbageReport()
        if not self.path.is_dir():
            return report
        state = self.read_state()
        indexed = _live_keys(state)
        live = is_live(sorted(indexed))
        cutoff = time.time() - min_age
        dead = []
        for key in sorted(set(indexed) - live):
            mtime = _mtime(self.path / files.filename_for(key))
            if mtime is not None and mtime >= cutoff:
                report.skipped_recent += 1
                continue
            dead.append(key)
        report.entries = dead
        known = {files.filename_for(key) for key in indexed}
        for name in sorted(os.listdir(self.path)):
            if files.VECTOR_NAME.match(name) and name not in known:
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
        for name in report.files:
            files.delete_vector(self.path, name)
        return report

    def sweep_tempfiles(self, max_age: float = 3600) -> list[str]:
        return files.sweep_tempfiles(self.path, max_age)

    @_writes
    def clear(self) -> None:
        """Delete every vector (``embeddings_backfill --reset``)."""
        if not self.path.is_dir():
            return
        with journal.locked(self.path):
            self._install(Snapshot(version=self._last_version() + 1))
            for name in os.listdir(self.path):
                if files.VECTOR_NAME.match(name) or name == DIMENSIONS:
                    files.delete_vector(self.path, name)

    # -- internals -----------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            files.ensure_dir(self.path)
        except StoreError as exc:
            raise StoreError(f"{self.label}: {exc}") from exc
        if not (self.path / journal.JOURNAL).exists():
            with journal.locked(self.path):
                if not (self.path / INDEX_FILE).exists():
                    # An index from the start: a missing one would make every read
                    # list the directory, looking for snapshots to recover.
                    snapshot.write_index(self.path, self._index_version(), None)
                if not (self.path / journal.JOURNAL).exists():
                    journal.create(self.path, self._index_version())

    def _stage_file(self, key: str, vector: Vector) -> str:
        if "\0" in key:
            # numpy's fixed-width strings drop trailing NULs, so such a key could not
            # be found again in a snapshot; no database keeps NUL in a key in practice.
            raise StoreError(f"{self.label}: row key {key!r} contains a NUL character.")
        try:
            return files.stage_vector(self.path, vector)
        except OSError as exc:
            raise StoreError(
                f"Cannot write the embedding of {self.label} row {key!r} to "
                f"{str(self.path)!r}: {exc}"
            ) from exc

    def _install_file(self, key: str, tmp: str) -> None:
        try:
            files.install_vector(self.path, key, tmp)
        except OSError as exc:
            raise StoreError(
                f"Cannot write the embedding of {self.label} row {key!r} to "
                f"{str(self.path)!r}: {exc}"
            ) from exc

    def _check_dimensions(self, items: list[tuple[str, Vector, str, str]]) -> int:
        sizes = {np.asarray(vector).shape for _, vector, _, _ in items}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise StoreError(f"{self.label}: vectors must be 1-D and of one size, got {sizes!r}.")
        dimensions = next(iter(sizes))[0]
        stored = self._stored_dimensions()
        if stored is None:
            files.write_atomic(self.path / DIMENSIONS, str(dimensions).encode("ascii"))
        elif stored != dimensions:
            raise StoreError(
                f"{self.label} holds {stored}-dimensional vectors; cannot store "
                f"{dimensions}-dimensional ones. Re-embed everything with "
                f"`manage.py embeddings_backfill {self.label} --all --reset`."
            )
        return int(dimensions)

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

    def _damaged_snapshot(self, exc: Exception) -> Snapshot:
        """An empty stand-in for a snapshot that cannot be read (truncated, not arrays).

        Searches go on with the rows written since; the snapshot's rows read as
        missing, so ``embeddings_backfill`` embeds them again, and the next compaction
        replaces the damaged snapshot.
        """
        version = self._index_version()
        if (self.path, version) not in _damaged:
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

    def _maybe_compact(self, version: int) -> None:
        if version - self._index_version() >= self.compact_threshold:
            try:
                self._compact_locked()
            except (OSError, StoreError) as exc:
                # The write that got us here is in the journal already: failing it now
                # (a full disk) would report a stored vector as lost. A later write retries.
                logger.warning("%s: could not compact the store: %s", self.label, exc)

    def _compact_locked(self) -> int:
        state = self.read_state()
        snap = state.snapshot
        if not state.tail and snap.name is not None:
            return snap.version
        keep = np.ones(len(snap), dtype=bool)
        fresh: dict[str, tuple[str, str]] = {}
        for entry in state.tail:
            row = snap.find(entry.key)
            if row is not None:
                keep[row] = False
            if entry.op == "put":
                fresh[entry.key] = (entry.hash, entry.identity)
            else:
                fresh.pop(entry.key, None)
        identity_names = list(snap.identity_names)
        new_keys, new_vectors, new_hashes, new_ids = [], [], [], []
        expected = snap.dimensions or self._stored_dimensions()
        for key, (content_hash, identity) in fresh.items():
            vector = self.load_vector(key)
            if vector is None:
                logger.warning("%s: the file of row %r is missing; dropping it", self.label, key)
                continue
            if expected is not None and vector.shape != (expected,):
                logger.warning(
                    "%s: the file of row %r holds %d values, not %d; dropping it",
                    self.label,
                    key,
                    vector.shape[0],
                    expected,
                )
                continue
            if identity not in identity_names:
                identity_names.append(identity)
            new_keys.append(key)
            new_vectors.append(vector)
            new_hashes.append(_digest(content_hash))
            new_ids.append(identity_names.index(identity))
        dims = snap.dimensions or (len(new_vectors[0]) if new_vectors else 0)
        if not dims or not (keep.any() or new_keys):
            return self._install(Snapshot(version=state.version))
        vectors = np.concatenate(
            [
                np.asarray(snap.vectors[keep]).reshape(-1, dims),
                normalize(np.array(new_vectors, np.float32).reshape(-1, dims)),
            ]
        )
        all_keys = row_keys.concat(np.asarray(snap.keys[keep]), row_keys.pack(new_keys))
        order = np.argsort(all_keys, kind="stable")
        merged = Snapshot(
            version=state.version,
            vectors=np.ascontiguousarray(vectors[order]),
            keys=all_keys[order],
            hashes=np.concatenate(
                [
                    np.asarray(snap.hashes[keep]).reshape(-1, 16),
                    np.array(new_hashes, dtype=np.uint8).reshape(-1, 16),
                ]
            )[order],
            identities=np.concatenate(
                [np.asarray(snap.identities[keep]), np.array(new_ids, dtype=np.uint16)]
            )[order],
            identity_names=identity_names,
        )
        logger.debug("%s: compacting %d rows at version %d", self.label, len(order), state.version)
        return self._install(merged)

    def _install(self, snap: Snapshot) -> int:
        """Publish ``snap`` and start an empty journal after it; the caller holds the lock."""
        snapshot.write(self.path, snap)
        journal.create(self.path, snap.version)
        snapshot.remove_unreferenced(self.path, f"snapshot-{snap.version}")
        return snap.version


_damaged: set[tuple[Path, int]] = set()  # snapshots already reported as damaged


def _live_keys(state: State) -> set[str]:
    live = {str(key) for key in state.snapshot.keys}
    for entry in state.tail:
        if entry.op == "put":
            live.add(entry.key)
        else:
            live.discard(entry.key)
    return live


def _digest(content_hash: str) -> list[int]:
    try:
        raw = bytes.fromhex(content_hash)[:16]
    except ValueError:
        raw = b""
    return list(raw.ljust(16, b"\0"))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None

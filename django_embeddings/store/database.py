"""The ``database`` store: vectors in the project's database, a local copy per machine.

``DJANGO_EMBEDDINGS_STORE = "database"``. The tables (:mod:`django_embeddings.models`)
are the store: every put and delete is a :class:`~django_embeddings.models.StoreChange`
row, numbered under a lock on the field's :class:`~django_embeddings.models.StoreHead`
row. Each machine keeps a files store under ``DJANGO_EMBEDDINGS_DIR`` as a copy of
it (same versions, same snapshots and memory maps), which its processes search
exactly as they search a files store, and which they bring up to date by reading
only the changes past its version. No disk is shared between machines.

Versions follow commit order: a writer increments the head row's version (which
locks that row, or the whole database on SQLite) before inserting its changes,
and holds the lock until it commits, so no reader can see version ``n + 1``
before version ``n``. Readers therefore catch up with one indexed query,
``version > local``, and a gap in what it returns means compaction removed rows
meanwhile: the copy is then rebuilt.

Compaction keeps the table close to the live rows: changes below a horizon that
a later change of the same key supersedes (and deletes) go, and the horizon is
recorded in the head row. A copy older than the horizon, one made from another
database (the head row's ``token`` differs) or one ahead of the table (a database
restored from a backup, a rolled-back test transaction) is rebuilt from the table.
A new or rebuilt copy is written as one snapshot of the table's live rows (the
superseded rows the table still holds are folded in memory), with no journal to
write and then compact; a copy that is only behind appends what it lacks.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models import Exists, F, OuterRef, Q

from django_embeddings.exceptions import StoreError
from django_embeddings.store import (
    Change,
    Entry,
    GarbageReport,
    Position,
    State,
    Stats,
    Store,
    Tail,
    TailRows,
    _Journal,
    _journals,
    files,
    journal,
)
from django_embeddings.store.permissions import DEFAULT as DEFAULT_PERMISSIONS
from django_embeddings.store.permissions import Permissions
from django_embeddings.store.snapshot import Snapshot
from django_embeddings.typing import Matrix, Vector

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from django_embeddings.models import StoreChange

__all__ = ["DatabaseStore"]

logger = logging.getLogger(__name__)

# The columns read from the table, and the position of those a rebuild looks at.
_COLUMNS = ("version", "op", "key", "vector", "content_hash", "identity", "terms", "stamp")
_VERSION, _OP, _KEY, _VECTOR = range(4)
_Row = tuple[Any, ...]

TOKEN_FILE = "_database"  # the token of the head row this copy was made from
_CHUNK = 2_000  # changes read per round trip when copying
TRIM_BATCH = 500  # keys per delete when trimming the table
_DAMAGED = "a file of it could not be read"


class _Rebuild(Exception):
    """The local copy cannot be caught up: rebuild it from the table."""

    def __init__(self, reason: str, token: str | None) -> None:
        super().__init__(reason)
        self.token = token


class DatabaseStore(Store):
    """A files store kept as a copy of one field's rows in the database ``using``.

    The tables live in the database a router's ``db_for_write`` names for
    :class:`~django_embeddings.models.StoreChange` (hint ``store_for=using``), else
    in ``using``, the database of the field's rows.
    """

    kind = "database"

    def __init__(
        self,
        path: Path,
        *,
        using: str,
        label: str = "",
        compact_threshold: int = 10_000,
        permissions: Permissions = DEFAULT_PERMISSIONS,
        int8: bool = False,
        merge_in_background: bool = False,
    ) -> None:
        super().__init__(
            path,
            label=label,
            compact_threshold=compact_threshold,
            permissions=permissions,
            int8=int8,
            merge_in_background=merge_in_background,
        )
        self.using = using
        self._unreachable = False  # logged once per outage
        self._damaged = False  # a file of the copy could not be read: rebuild it
        self._written = threading.local()  # .first: the first version of this thread's last write
        self._head: tuple[int, str] = (0, "")  # (horizon, token) as the last write saw them

    def __repr__(self) -> str:
        return f"<DatabaseStore {self.label!r} in {self.database!r}, copy at {str(self.path)!r}>"

    @property
    def database(self) -> str:
        from django_embeddings.models import StoreChange

        for each in router.routers:
            chosen = getattr(each, "db_for_write", None)
            alias = chosen(StoreChange, store_for=self.using) if chosen else None
            if alias:
                return str(alias)
        return self.using

    # -- writes: the table first, then the local copy -----------------------------------

    def put_many(
        self,
        items: Iterable[tuple[str, Vector, str, str]],
        *,
        terms: Sequence[str | None] | None = None,
    ) -> list[Entry]:
        items = list(items)
        if not items:
            return []
        bags = self._bags(items, terms)
        matrix = self._matrix(items)
        changes = [
            Change(0, "put", key, matrix[n], digest, identity, bags[n])
            for n, (key, _, digest, identity) in enumerate(items)
        ]
        return self._write(changes)

    def delete_many(self, keys: Iterable[str]) -> list[Entry]:
        keys = list(keys)
        if not keys:
            return []
        return self._write([Change(0, "del", key) for key in keys])

    def clear(self) -> None:
        from django_embeddings.models import StoreChange, StoreHead

        with transaction.atomic(using=self.database):
            version = self._claim(1)
            StoreChange.objects.using(self.database).filter(label=self.label).delete()
            heads = StoreHead.objects.using(self.database).filter(label=self.label)
            heads.update(horizon=version)
        self.sync()

    def compact(self) -> int:
        """Drop superseded changes from the table, then fold the local copy's journal.

        The last ``compact_threshold`` changes stay: a machine's copy that is fewer
        changes behind reads only those, instead of being rebuilt from the table.
        """
        self.sync()
        self._trim(super().version() - self.compact_threshold)
        return super().compact()

    def _write(self, changes: list[Change]) -> list[Entry]:
        """Number and commit ``changes`` in the table, then copy them here."""
        from django_embeddings.models import StoreChange

        stamp = int(time.time())
        if not self._head[1]:
            self._create_head()
        with transaction.atomic(using=self.database):
            last = self._claim(len(changes))
            first = last - len(changes) + 1
            numbered = [
                Change(first + n, c.op, c.key, c.vector, c.hash, c.identity, c.terms, stamp)
                for n, c in enumerate(changes)
            ]
            StoreChange.objects.using(self.database).bulk_create(
                [_row(self.label, change, stamp) for change in numbered], batch_size=500
            )
        self._unreachable = False
        self._written.first = first
        try:
            copied = self._copy_own(numbered)
        except (DatabaseError, OSError, StoreError) as exc:
            # Committed: the table has it, and the next read copies it. Failing the
            # write now would report as lost a vector every machine will find.
            logger.warning("%s: could not copy a write to %s: %s", self.label, self.path, exc)
            copied = {}
        if self._due(last - self._head[0], 2 * self.compact_threshold):
            self._trim_quietly(last - self.compact_threshold)
        return [copied.get(change.version) or _entry(change) for change in numbered]

    def _claim(self, count: int) -> int:
        """Take ``count`` versions in the caller's transaction; returns the last.

        The UPDATE locks the head row (SQLite: the database) until commit, so
        versions are handed out, and become visible, in commit order.
        """
        head = self._take(count)
        if head is None:
            self._create_head()  # cleared behind our back (a flushed test database)
            head = self._take(count)
        if head is None:
            raise StoreError(f"{self.label}: the head row of the table cannot be created.")
        version, horizon, token = head
        self._head = (int(horizon), str(token))
        return int(version)

    def _take(self, count: int) -> tuple[Any, ...] | None:
        """Add ``count`` to the head row's version; its (version, horizon, token) after,
        or ``None`` without a head row. One round trip where UPDATE can return them."""
        from django_embeddings.models import StoreHead

        connection = connections[self.database]
        if not _returns_from_update(connection):
            heads = StoreHead.objects.using(self.database).filter(label=self.label)
            if not heads.update(version=F("version") + count):
                return None
            head: tuple[Any, ...] = heads.values_list("version", "horizon", "token").get()
            return head
        quote = connection.ops.quote_name
        table = quote(StoreHead._meta.db_table)
        columns = {f.name: quote(str(f.column)) for f in StoreHead._meta.concrete_fields}
        version, horizon, token, label = (
            columns[name] for name in ("version", "horizon", "token", "label")
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {version} = {version} + %s WHERE {label} = %s "
                f"RETURNING {version}, {horizon}, {token}",
                [count, self.label],
            )
            row: tuple[Any, ...] | None = cursor.fetchone()
        return row

    def _create_head(self) -> None:
        """The field's head row, unless it exists: created before the write's transaction,
        as two first writers each inserting it under their row lock could deadlock."""
        from django_embeddings.models import StoreHead

        try:
            with transaction.atomic(using=self.database):
                StoreHead.objects.using(self.database).get_or_create(
                    label=self.label, defaults={"token": secrets.token_hex(16)}
                )
        except IntegrityError:
            pass  # another writer created it first

    def _copy_own(self, numbered: list[Change]) -> dict[int, Entry]:
        """Append our committed changes to the local copy (first any it is missing)."""
        with self._writing() as (fd, known):
            follows = known.version == numbered[0].version - 1
            if follows and self._local_token() == self._head[1]:
                entries = self._copy_locked(fd, known, numbered)
                self._maybe_compact(known, entries[-1].version)
                return {entry.version: entry for entry in entries}
        # Others wrote in between (or the copy is not what the table says): catch up,
        # rebuilding the copy if need be, which makes this process's index reload.
        self.sync()
        return {}

    def _trim(self, horizon: int) -> None:
        """Remove changes below ``horizon`` that later ones supersede, and deletes.

        The change at ``horizon`` itself stays: a copy made from the table then
        reaches the horizon (were it a trailing delete, the copy would end below it
        and be rebuilt on every read), and a reader whose rows were trimmed while it
        read them sees a gap before it.
        """
        from django_embeddings.models import StoreChange, StoreHead

        changes = StoreChange.objects.using(self.database).filter(label=self.label)
        heads = StoreHead.objects.using(self.database).filter(label=self.label)
        later = changes.filter(key=OuterRef("key"), version__gt=OuterRef("version"))
        with transaction.atomic(using=self.database):
            # The last trim left no row below its horizon that a later change
            # supersedes, so only keys changed since then can have rows to remove: a
            # trim costs the changes since the last one, not the table. The keys go
            # in batches, so each delete walks the (label, key, version) index
            # whatever the planner's statistics say.
            since = heads.values_list("horizon", flat=True).first() or 0
            changed = changes.filter(version__gte=since)
            keys = sorted(set(changed.values_list("key", flat=True)))
            for start in range(0, len(keys), TRIM_BATCH):
                changes.filter(
                    version__lt=horizon, key__in=keys[start : start + TRIM_BATCH]
                ).filter(Q(op="del") | Exists(later)).delete()
            # Last, so the head row (which every writer locks) is held only briefly.
            heads.filter(horizon__lt=horizon).update(horizon=horizon)
        self._head = (horizon, self._head[1])

    def _trim_quietly(self, horizon: int) -> None:
        try:
            self._trim(horizon)
        except DatabaseError as exc:
            logger.warning("%s: could not compact the table: %s", self.label, exc)

    # -- reads: catch the local copy up first ----------------------------------------------

    def read_state(self) -> State:
        self._sync_quietly()
        state = super().read_state()
        if self._damaged:  # found while reading: rebuilt now, never served half
            self._sync_quietly()
            state = super().read_state()
        return state

    def _found_damage(self) -> bool:
        self._damaged = True
        return True  # the rebuild says so

    def read_tail(self, position: Position | None, *, after: int = 0) -> Tail | None:
        self._sync_quietly()
        return super().read_tail(position, after=after)

    def version(self) -> int:
        self._sync_quietly()
        return super().version()

    def stats(self) -> Stats:
        # The base class reports an empty store when the copy's directory is missing,
        # as it is on a new machine before its first read.
        self._sync_quietly()
        return super().stats()

    def collect_garbage(
        self,
        is_live: Callable[[list[str]], set[str]],
        *,
        min_age: float = 300,
        dry_run: bool = False,
    ) -> GarbageReport:
        self.sync()  # deletes go through the table: a copy it cannot reach collects nothing
        return super().collect_garbage(is_live, min_age=min_age, dry_run=dry_run)

    def change_mark(self) -> Hashable:
        """The table's newest version (one indexed query) and the local copy's stat."""
        from django_embeddings.models import StoreHead

        local = super().change_mark()
        try:
            head = (
                StoreHead.objects.using(self.database)
                .filter(label=self.label)
                .values_list("version", flat=True)
                .first()
            )
        except DatabaseError as exc:
            self._note_unreachable(exc)
            return local
        return head, local

    def journal_mark(self) -> tuple[int, int] | None:
        """The local copy's version as this process last saw it (never ahead of the
        table): see :meth:`only_append_since`."""
        known = _journals.get(self.path)
        return None if known is None else (0, known.version)

    def only_append_since(self, mark: tuple[int, int] | None) -> bool:
        """Did this thread's last write take the version right after ``mark``? Then no
        other writer, on any machine, stored anything in between."""
        first = getattr(self._written, "first", None)
        return mark is not None and first == mark[1] + 1

    def appended_through(self, version: int) -> tuple[Position, Hashable] | None:
        mark = super().appended_through(version)
        if mark is None:
            return None
        position, stat = mark
        return position, (version, stat)

    def sync(self) -> None:
        """Bring the local copy up to the table: only the changes past its version,
        or all of them when it must be rebuilt."""
        for _ in range(3):
            with self._writing() as (fd, known):
                try:
                    self._pull_locked(fd, known)
                    return
                except _Rebuild as rebuild:
                    reason, token = str(rebuild), rebuild.token
            level = logging.WARNING if reason == _DAMAGED else logging.INFO
            logger.log(level, "%s: rebuilding the copy in %s (%s)", self.label, self.path, reason)
            self._reset(token)
        raise StoreError(f"{self.label}: the table kept changing while it was copied.")

    def _sync_quietly(self) -> None:
        try:
            self.sync()
        except (DatabaseError, OSError, StoreError) as exc:
            self._note_unreachable(exc)
        else:
            self._unreachable = False

    def _note_unreachable(self, exc: Exception) -> None:
        connection = connections[self.database]
        if isinstance(exc, DatabaseError) and not connection.in_atomic_block:
            connection.close()  # a broken connection is never reused (the listener's thread)
        if not self._unreachable:
            self._unreachable = True
            logger.warning(
                "%s: cannot catch up with database %r (%s); searching the local copy as it is",
                self.label,
                self.database,
                exc,
            )

    def _pull_locked(self, fd: int, known: _Journal) -> list[Entry]:
        from django_embeddings.models import StoreHead

        local = known.version
        if self._damaged:
            raise _Rebuild(_DAMAGED, self._local_token())
        token = self._local_token()
        head = (
            StoreHead.objects.using(self.database)
            .filter(label=self.label)
            .values_list("version", "horizon", "token")
            .first()
        )
        if head is None:
            if local or token is not None:
                raise _Rebuild("the table holds nothing for this field", None)
            return []
        version, horizon, head_token = head
        if token != head_token:
            if local or token is not None:
                raise _Rebuild("made from another table", head_token)
            self._write_token(head_token)  # a new copy: it starts from this table
        if local > version:
            raise _Rebuild(f"ahead of the table ({local} > {version})", head_token)
        if 0 < local < horizon:
            raise _Rebuild(f"older than the table's horizon {horizon}", head_token)
        # The copy's newest entry is read again from the table too: a copy that took a
        # write the table then lost (a rolled-back transaction, a restore) differs there.
        last = journal.last_entry_in(fd, len(known.header) + 1, known.size)
        check = last if last is not None and last.version == local > horizon else None
        if check is None and local == version:
            return []
        if not local:
            self._build_locked(known, horizon, head_token, version)
            return []
        entries: list[Entry] = []
        expected = local + 1
        for rows in self._pages(local - 1 if check else local, version):
            page = [_change(row) for row in rows]
            if check is not None:
                found, page = page[0], page[1:]
                if (found.version, found.op, found.key, found.hash) != (
                    check.version,
                    check.op,
                    check.key,
                    check.hash,
                ):
                    raise _Rebuild(f"not what the table holds at version {local}", head_token)
                check = None
            for change in page:
                if change.version != expected:
                    raise _Rebuild("compacted while it was read", head_token)
                expected = change.version + 1
            if page:
                entries += self._copy_locked(fd, known, page)
        if check is not None:
            raise _Rebuild(f"not what the table holds at version {local}", head_token)
        if entries:
            self._maybe_compact(known, entries[-1].version)
        return entries

    def _build_locked(self, known: _Journal, horizon: int, token: str, through: int) -> None:
        """Make a new copy's snapshot straight from the table, with no journal to
        write and fold: below the horizon the table holds one row per live key (and
        the change at the horizon); the superseded rows above it are resolved here,
        the last change of a key winning and a delete dropping it."""
        latest = _Latest(self.label)
        for page in self._pages(0, through):
            latest.add(page)
        if not latest.version:
            return  # nothing to copy (a table just cleared): the copy stays empty
        if self._horizon() != horizon:
            # Read in pages: a compaction meanwhile may have taken a delete this copy
            # needed (its put read on an earlier page).
            raise _Rebuild("compacted while it was read", token)
        rows = latest.rows(self._checked)
        version, dimensions = latest.version, latest.dimensions
        del latest  # the rows as the database returned them: their vectors are in ``rows``
        self._install_rows(known, rows, version, dimensions)

    def _pages(self, after: int, through: int) -> Iterator[list[_Row]]:
        """The rows of versions ``after`` < v <= ``through``, oldest first, a page per
        query (keyset pagination: no driver holds the whole table in memory, whatever
        its cursors), with the columns of :data:`_COLUMNS`.

        Each query also bounds the versions from above: without table statistics (a
        freshly loaded table), PostgreSQL would sort every remaining row for each
        page. The window widens over sparse versions (a trimmed table holds about one
        row per live key) and narrows where a page fills.
        """
        from django_embeddings.models import StoreChange

        rows = (
            StoreChange.objects.using(self.database)
            .filter(label=self.label)
            .order_by("version")
            .values_list(*_COLUMNS)
        )
        span = _CHUNK
        while after < through:
            end = min(through, after + span)
            page = list(rows.filter(version__gt=after, version__lte=end)[:_CHUNK])
            if page:
                yield page
            if len(page) == _CHUNK:
                after = int(page[-1][_VERSION])
                span = max(_CHUNK, span // 2)
            else:
                after = end  # the whole window is read
                if len(page) < _CHUNK // 2:
                    span *= 2

    def _horizon(self) -> int | None:
        from django_embeddings.models import StoreHead

        heads = StoreHead.objects.using(self.database).filter(label=self.label)
        return heads.values_list("horizon", flat=True).first()

    def _reset(self, token: str | None) -> None:
        """Empty the local copy and record which table it is now a copy of."""
        from django_embeddings.store import DIMENSIONS

        files.ensure_dir(self.path, self.permissions)
        with journal.locked(self.path, self.permissions):
            self._damaged = False
            self._install(Snapshot(version=0))
            with contextlib.suppress(FileNotFoundError):
                (self.path / DIMENSIONS).unlink()
            if token is None:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / TOKEN_FILE).unlink()
            else:
                self._write_token(token)

    def _local_token(self) -> str | None:
        try:
            return (self.path / TOKEN_FILE).read_text("ascii").strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def _write_token(self, token: str) -> None:
        files.write_atomic(self.path / TOKEN_FILE, token.encode("ascii"), self.permissions)


class _Latest:
    """The table's rows folded in version order: each key's last change (``None`` once
    deleted), kept in the order keys first appear, as a journal's tail reads. Rows stay
    as the database returned them: a rebuild converts only those that are kept."""

    def __init__(self, label: str) -> None:
        self.label = label  # the store's, for errors
        self.changes: dict[str, _Row | None] = {}
        self.version = 0
        self.dimensions: int | None = None  # of the first vector put

    def add(self, page: list[_Row]) -> None:
        changes = self.changes
        for row in page:
            changes[row[_KEY]] = row if row[_OP] == "put" else None
        if self.dimensions is None:
            first = next((row for row in page if row[_OP] == "put"), None)
            if first is not None and first[_VECTOR] is not None:
                self.dimensions = len(first[_VECTOR]) // 4
        if page:
            self.version = int(page[-1][_VERSION])

    def rows(self, checked: Callable[[Sequence[str], Matrix], Matrix]) -> TailRows:
        """The live rows, their vectors as stored, all in one matrix that ``checked``
        checks as a put's are."""
        rows = TailRows(changed=list(self.changes))
        live = [row for row in self.changes.values() if row is not None]
        if not live:
            return rows
        _, _, keys, vectors, hashes, identities, terms, stamps = zip(*live, strict=True)
        rows.keys = list(map(str, keys))
        rows.hashes = list(map(str, hashes))
        rows.identities = list(map(str, identities))
        rows.times = list(map(int, stamps))
        rows.terms = [None if bag is None else str(bag) for bag in terms]
        missing = next((row for row in live if row[_VECTOR] is None), None)
        if missing is not None:
            version, key = missing[_VERSION], missing[_KEY]
            raise StoreError(f"{self.label}: put of {key!r} at version {version} has no vector")
        sizes = set(map(len, vectors))
        if len(sizes) != 1 or min(sizes) % 4:
            raise StoreError(
                f"{self.label}: the table's vectors must be of one size, "
                f"got {sorted(sizes)!r} bytes"
            )
        matrix = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(live), -1)
        rows.vectors = checked(rows.keys, matrix)
        return rows


def _returns_from_update(connection: BaseDatabaseWrapper) -> bool:
    """Can this database return the updated row (``UPDATE ... RETURNING``)? PostgreSQL
    and SQLite from 3.35 can; MariaDB returns rows from INSERT and DELETE only."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        return sqlite3.sqlite_version_info >= (3, 35)  # the module Django's backend uses
    return False


def _row(label: str, change: Change, stamp: int) -> StoreChange:
    from django_embeddings.models import StoreChange

    vector = None
    if change.vector is not None:
        vector = np.ascontiguousarray(change.vector, dtype="<f4").tobytes()
    return StoreChange(
        label=label,
        version=change.version,
        op=change.op,
        key=change.key,
        vector=vector,
        content_hash=change.hash,
        identity=change.identity,
        terms=change.terms,
        stamp=stamp,
    )


def _change(row: _Row) -> Change:
    version, op, key, vector, content_hash, identity, terms, stamp = row
    array = None
    if op == "put":
        if vector is None:
            raise StoreError(f"put of {key!r} at version {version} has no vector")
        array = np.frombuffer(bytes(vector), dtype="<f4")
    return Change(
        int(version),
        str(op),
        str(key),
        array,
        str(content_hash),
        str(identity),
        terms if terms is None else str(terms),
        int(stamp),
    )


def _entry(change: Change) -> Entry:
    """The entry of a change the local copy did not take (yet): no log offset."""
    if change.op == "put":
        return Entry(
            change.version, "put", change.key, change.hash, change.identity, terms=change.terms
        )
    return Entry(change.version, "del", change.key)

"""The write path: the only code that changes a store.

Every change goes the same way: the store first, then this process's index, then
the peers (:func:`announce`). Saves and deletes arrive from the receivers in
:mod:`django_embeddings.signals` and are collected per transaction, field and
database into a :class:`Batch` with one ``on_commit`` callback, so the provider
sees one batch per field and transaction. Backfills, tasks and imports call
:func:`sync` and the ``*_vectors`` functions directly.

After commit nothing raises: a failure is logged, sent as the
``embedding_failed`` signal, and its rows stay pending (their column names a text
the store has no vector of) until ``embeddings_backfill`` embeds them. Direct
callers (:func:`sync`) get the exception.

After storing, one query reads the rows' committed hashes back. A row saved again
meanwhile by another process, a save undone by a savepoint rollback, or a row
deleted since, goes round again from what the database now holds, so the last
writer to finish leaves what the database holds. Searches never depend on that:
they serve a row only when the store's hash equals the row's column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any

from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from django_embeddings import cache, invalidation
from django_embeddings.fields import content_hash
from django_embeddings.keywords.terms import bag_of
from django_embeddings.providers import embed_checked
from django_embeddings.store import Entry, GarbageReport, Store
from django_embeddings.typing import Vector

if TYPE_CHECKING:
    from django_embeddings.fields import EmbeddingField

__all__ = [
    "Batch",
    "announce",
    "clear_vectors",
    "merged",
    "add_terms",
    "collect_garbage",
    "delete_vectors",
    "put_vectors",
    "remove",
    "schedule_delete",
    "schedule_put",
    "sync",
]

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 5
_CHUNK = 500  # primary keys per query (SQLite's parameter limit is 999 on old builds)
_BATCHES = "_django_embeddings_batches"  # per-connection {(label, alias): Batch}

Mark = tuple[int, int] | None  # a store journal's (inode, size), see Store.journal_mark


# -- the store's only writers ------------------------------------------------------------


def announce(
    store: Store, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None = None
) -> None:
    """Apply a committed store change to this process's index and tell the peers."""
    cache.apply_delta(store, entries, vectors)
    invalidation.publish(store, entries, vectors)


def put_vectors(
    store: Store,
    items: Sequence[tuple[str, Vector, str, str]],
    *,
    terms: Sequence[str | None] | None = None,
) -> list[Entry]:
    """Store ``(key, vector, content hash, provider identity)`` items, with the rows'
    bags of terms when known (aligned with ``items``), and announce them."""
    entries = store.put_many(items, terms=terms)
    announce(store, entries, [vector for _, vector, _, _ in items])
    return entries


def delete_vectors(store: Store, keys: Iterable[str]) -> list[Entry]:
    entries = store.delete_many(keys)
    announce(store, entries)
    return entries


def collect_garbage(
    store: Store, is_live: Callable[[list[str]], set[str]], *, min_age: float, dry_run: bool
) -> GarbageReport:
    """Remove the vectors of rows that no longer exist (``embeddings_gc``)."""
    report = store.collect_garbage(is_live, min_age=min_age, dry_run=dry_run)
    announce(store, report.journal)
    return report


def clear_vectors(store: Store) -> None:
    """Delete every vector of ``store`` (``embeddings_backfill --all --reset``)."""
    store.clear()
    cache.reload(store)
    invalidation.announce(store)


def merged(store: Store) -> None:
    """After a background merge, in its thread: load the new snapshot into this process's
    index here rather than in the next save or search, and have the peers do the same
    in their listeners.

    Only the store's files are read here: a ``database`` store's table is not (a
    connection opened by this short-lived thread would be left open), and any the
    thread did open is closed when it is done.
    """
    try:
        cache.refresh(store)
        invalidation.announce(store, Store.version(store))
    finally:
        connections.close_all()  # this thread's connections only


# -- collecting a transaction's saves and deletes ------------------------------------------


@dataclass(eq=False)
class Batch:
    """One transaction's saves and deletes of one field in one database."""

    field: EmbeddingField
    using: str
    puts: dict[str, tuple[str, str | None]] = dataclass_field(default_factory=dict)
    deletes: set[str] = dataclass_field(default_factory=set)
    mark: Mark = None
    marked: bool = False

    def __post_init__(self) -> None:
        # on_commit keeps this very object, so the batch can tell whether it is still
        # registered (a rollback drops it) by identity.
        self.callback = self.flush

    def put(self, key: str, text: str, previous: str | None, mark: Mark = None) -> None:
        if not self.marked:
            # The first save's mark: the earliest, taken before the transaction commits.
            self.mark, self.marked = mark, True
        elif mark is None:
            self.mark = None  # a save with no mark (an update) is always checked
        self.deletes.discard(key)
        if key in self.puts:
            previous = self.puts[key][1]  # what the column said before this transaction
        self.puts[key] = (text, previous)

    def delete(self, key: str) -> None:
        self.puts.pop(key, None)
        self.deletes.add(key)

    def flush(self) -> None:
        """Apply the batch after commit; never raises (see the module docstring)."""
        field, using = self.field, self.using
        keys = [*self.deletes, *self.puts]
        try:
            if self.deletes:
                remove(field, sorted(self.deletes), using=using)
            if self.puts and field.deferred:
                from django_embeddings import tasks

                tasks.enqueue(field, list(self.puts), using=using)
            elif self.puts:
                _write(field, using, self.puts, self.mark)
        except Exception as exc:
            report_failure(field, keys, using, exc)


def schedule_put(
    field: EmbeddingField, using: str, key: str, text: str, previous: Any, mark: Mark = None
) -> None:
    """Embed ``text`` for row ``key`` once the current transaction commits; ``mark`` is
    the store journal's state before it committed (see ``EmbeddingField.pre_save``)."""
    _with_batch(field, using, lambda batch: batch.put(key, text, previous, mark))


def schedule_delete(field: EmbeddingField, using: str, key: str) -> None:
    _with_batch(field, using, lambda batch: batch.delete(key))


def _with_batch(field: EmbeddingField, using: str, change: Any) -> None:
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        batch = Batch(field, using)  # autocommit: the row is committed already
        change(batch)
        batch.flush()
        return
    batches: dict[tuple[str, str], Batch] = connection.__dict__.setdefault(_BATCHES, {})
    current = batches.get((field.label, using))
    if current is None or not _registered(connection, current):
        current = Batch(field, using)
        batches[(field.label, using)] = current
        transaction.on_commit(current.callback, using=using, robust=True)
    change(current)


def _registered(connection: BaseDatabaseWrapper, batch: Batch) -> bool:
    """Will ``batch`` run at commit? A rollback (of the transaction, or of the
    savepoint it was registered in) drops its callback, and a commit consumes it."""
    return any(entry[1] is batch.callback for entry in connection.run_on_commit)


def report_failure(field: EmbeddingField, keys: Sequence[str], using: str, exc: Exception) -> None:
    """Log a failure after commit and send ``embedding_failed``; the rows stay pending."""
    from django_embeddings.signals import embedding_failed

    shown = ", ".join(repr(key) for key in list(keys)[:5])
    logger.error(
        "Could not embed %d rows of %s (%s%s) after commit (%s). They stay pending until "
        "`manage.py embeddings_backfill %s`.",
        len(keys),
        field.label,
        shown,
        ", ..." if len(keys) > 5 else "",
        exc,
        field.model._meta.label,
        exc_info=exc,
    )
    for receiver, error in embedding_failed.send_robust(
        sender=field.model, field=field, keys=list(keys), using=using, exception=exc
    ):
        if isinstance(error, Exception):
            logger.error("An embedding_failed receiver %r raised: %s", receiver, error)


# -- embedding rows ----------------------------------------------------------------------------


def _write(
    field: EmbeddingField, using: str, puts: dict[str, tuple[str, str | None]], mark: Mark
) -> None:
    """Embed a committed batch's texts (one provider call), then check them against the
    rows, unless the batch inserted them and no other writer touched the store since
    before it committed (see ``EmbeddingField._mark``)."""
    texts = {key: text for key, (text, _) in puts.items()}
    previous = {key: old for key, (_, old) in puts.items()}
    store = field.store_for(using)
    stored = _store_texts(field, using, texts, previous=previous, store=store)
    if stored and not store.only_append_since(mark):
        _recheck(field, using, stored, rounds=_MAX_ROUNDS)


def sync(
    field: EmbeddingField,
    instances: Sequence[models.Model],
    *,
    using: str = "default",
    force: bool = False,
) -> int:
    """Embed and store ``instances``' texts as the database holds them; returns how many
    texts reached the provider. Unchanged texts (same hash and provider identity) cost
    nothing unless ``force``. Rows whose column does not record their text's hash
    (``bulk_create`` before 0.2, ``QuerySet.update()``, raw SQL) get it recorded.
    Raises :class:`~django_embeddings.exceptions.EmbeddingsError` when the provider or
    the store fails.
    """
    rows = {field.key(obj.pk): obj for obj in instances if obj.pk is not None}
    if not rows:
        return 0
    texts = {key: field.source_text(obj) for key, obj in rows.items()}
    columns = {key: obj.__dict__.get(field.attname) for key, obj in rows.items()}
    embedded = _store_texts(field, using, texts, previous=None, force=force)
    _fix_columns(field, using, texts, columns)
    _recheck(field, using, embedded, rounds=_MAX_ROUNDS - 1)
    return sum(1 for value in embedded.values() if value is not None)


def add_terms(field: EmbeddingField, instances: Sequence[models.Model], *, using: str) -> int:
    """Give rows whose vector is current their terms, stored again with the same vector:
    no provider call. Returns how many rows got terms; rows whose text no longer matches
    their vector are left to the embedding path."""
    store = field.store_for(using)
    index = cache.get(store)
    items: list[tuple[str, Vector, str, str]] = []
    bags: list[str | None] = []
    for obj in instances:
        key, text = field.key(obj.pk), field.source_text(obj)
        meta = index.meta(key)
        vector = store.load_vector(key) if meta is not None else None
        if vector is None or meta is None or not text.strip() or meta[0] != content_hash(text):
            continue
        items.append((key, vector, meta[0], meta[1]))
        bags.append(bag_of(text, len(text)))
    if items:
        put_vectors(store, items, terms=bags)
        # As after any write: a row saved again meanwhile goes round from what it holds.
        _recheck(field, using, {key: value for key, _, value, _ in items}, rounds=_MAX_ROUNDS - 1)
    return len(items)


def remove(field: EmbeddingField, keys: Sequence[str], *, using: str) -> None:
    """Delete the vectors of deleted rows; rows that exist again meanwhile (deleted,
    then created again by another process) are embedded again."""
    delete_vectors(field.store_for(using), keys)
    back = list(_rows(field, keys, using))
    if back:
        sync(field, back, using=using)


def _store_texts(
    field: EmbeddingField,
    using: str,
    texts: dict[str, str],
    *,
    previous: dict[str, str | None] | None,
    force: bool = False,
    store: Store | None = None,
) -> dict[str, str | None]:
    """Bring the store in line with ``texts``; returns ``{key: hash}`` of what it now
    holds for the rows it wrote (``None``: removed, the text was empty).

    ``previous`` (saves) holds what each column said before the save: a field that
    keeps no index here (``cache=False``) treats an unchanged hash as stored.
    ``store`` is ``field.store_for(using)`` when the caller has it already.
    """
    if store is None:
        store = field.store_for(using)
    provider = field.get_provider()
    identity = provider.identity
    index = cache.get(store, check=invalidation.needs_check()) if field.cache else None
    hashes = {key: content_hash(text) if text.strip() else None for key, text in texts.items()}
    todo: dict[str, str] = {}
    gone: list[str] = []
    for key, value in hashes.items():
        if value is None:
            if index is None or index.meta(key) is not None:
                gone.append(key)
        elif force:
            todo[key] = texts[key]
        elif index is not None:
            if index.meta(key) != (value, identity):
                todo[key] = texts[key]
        elif previous is None or previous.get(key) != value:
            todo[key] = texts[key]
    if gone:
        # Nothing to search by: such rows have no vector, like rows never embedded.
        delete_vectors(store, gone)
    if todo:
        keys = list(todo)
        shown = ", ".join(repr(key) for key in keys[:5])
        target = f"{field.label} (rows {shown})"
        vectors = embed_checked(provider, list(todo.values()), input_type="document", target=target)
        put_vectors(
            store,
            [
                (key, vector, str(hashes[key]), identity)
                for key, vector in zip(keys, vectors, strict=True)
            ],
            terms=[bag_of(text, len(text)) for text in todo.values()] if field.keywords else None,
        )
    return {key: hashes[key] for key in [*todo, *gone]}


def _recheck(
    field: EmbeddingField, using: str, stored: dict[str, str | None], *, rounds: int
) -> None:
    """Go round again for rows whose committed hash is not the one just stored."""
    if not stored:
        return
    committed = _committed_hashes(field, using, list(stored))
    gone = [key for key in stored if key not in committed]
    changed = [key for key, value in stored.items() if key in committed and committed[key] != value]
    if gone:
        remove(field, gone, using=using)  # re-embeds a row created again meanwhile
    if changed:
        if rounds <= 0:
            logger.warning(
                "%s: rows %r kept changing while they were embedded; they stay pending.",
                field.label,
                changed[:5],
            )
            return
        fresh = list(_rows(field, changed, using))
        texts = {field.key(obj.pk): field.source_text(obj) for obj in fresh}
        columns = {field.key(obj.pk): obj.__dict__.get(field.attname) for obj in fresh}
        again = _store_texts(field, using, texts, previous=None)
        _fix_columns(field, using, texts, columns)
        _recheck(field, using, again, rounds=rounds - 1)


def _committed_hashes(field: EmbeddingField, using: str, keys: list[str]) -> dict[str, Any]:
    """``{key: column}`` of the rows of ``keys`` that exist: one plain query (this runs
    after every save, so it skips the ORM's query building)."""
    connection = connections[using]
    meta = field.model._meta
    pk = meta.pk
    quote = connection.ops.quote_name
    found: dict[str, Any] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        values = [pk.get_db_prep_value(field.pk_from_key(key), connection) for key in chunk]
        sql = (
            f"SELECT {quote(str(pk.column))}, {quote(str(field.column))} "
            f"FROM {quote(meta.db_table)} "
            f"WHERE {quote(str(pk.column))} IN ({', '.join(['%s'] * len(values))})"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            for value, column in cursor.fetchall():
                found[field.key(pk.to_python(value))] = column
    return found


def _fix_columns(
    field: EmbeddingField, using: str, texts: dict[str, str], columns: dict[str, Any]
) -> None:
    """Record each row's text hash where its column says otherwise.

    Each update applies only while the column still holds what was read with the
    text, so a save committed meanwhile (with its own hash) is never overwritten.
    """
    manager = field.model._base_manager.using(using)
    for key, text in texts.items():
        value = content_hash(text) if text.strip() else None
        if columns.get(key) != value:
            condition = (
                {field.attname: columns[key]}
                if columns[key] is not None
                else {f"{field.attname}__isnull": True}
            )
            manager.filter(pk=field.pk_from_key(key), **condition).update(**{field.attname: value})


def _rows(field: EmbeddingField, keys: Sequence[str], using: str) -> Iterable[models.Model]:
    """The rows of ``keys`` that exist in ``using``."""
    pks = [field.pk_from_key(key) for key in keys]
    return field.model._base_manager.using(using).filter(pk__in=pks)

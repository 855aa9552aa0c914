"""Embedding rows: the write path shared by saves, backfills and tasks.

``sync`` brings the store in line with the rows as the database holds them after
commit: changed texts are embedded in one provider batch, unchanged ones (same
content hash and provider identity) cost nothing, and rows that are gone are
removed. After storing, it reads the source back from the database; if another
transaction changed a text meanwhile, it goes round again. The last writer to
finish therefore always stores the text the database ended up with, even when
several processes save the same row at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import models

from django_embeddings import cache, invalidation
from django_embeddings.conf import conf
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.providers import embed_checked
from django_embeddings.store import Entry, Store
from django_embeddings.typing import Vector

if TYPE_CHECKING:
    from django_embeddings.fields import EmbeddingField

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 5


def content_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def sync(
    field: EmbeddingField,
    instances: Sequence[models.Model],
    *,
    using: str = "default",
    force: bool = False,
) -> int:
    """Embed and store ``instances``' current texts; returns how many were embedded.

    ``force`` re-embeds even unchanged texts. Failures follow
    ``DJANGO_EMBEDDINGS_ON_ERROR``: the rows are left with no embedding and the
    error is raised or logged.
    """
    embedded = 0
    rows = {field.key(obj.pk): obj for obj in instances if obj.pk is not None}
    for _ in range(_MAX_ROUNDS):
        if not rows:
            break
        try:
            embedded += _store_rows(field, rows, using=using, force=force)
        except EmbeddingsError as exc:
            _fail(field, list(rows), using, exc)
            return embedded
        rows = _changed_since(field, rows, using)
        force = False
    return embedded


def remove(field: EmbeddingField, keys: Iterable[str], *, using: str | None = None) -> None:
    """Delete the vectors of rows that were deleted.

    With ``using``, rows that exist again once their vectors are gone (deleted, then
    created again by another process whose own save finished first) are embedded
    again, so the last writer to finish leaves what the database holds.
    """
    keys = list(keys)
    store = field.store
    announce(store, store.delete_many(keys))
    if using is not None:
        back = list(_rows(field, keys, using))
        if back:
            sync(field, back, using=using)


def announce(
    store: Store, entries: Sequence[Entry], vectors: Sequence[Vector] | None = None
) -> None:
    """Apply a committed store change to this process's index and tell the peers."""
    cache.apply_delta(store, entries, vectors)
    invalidation.publish(store, entries, vectors)


def _store_rows(
    field: EmbeddingField, rows: dict[str, models.Model], *, using: str, force: bool
) -> int:
    store = field.store
    provider = field.get_provider()
    index = cache.get(store, keep=field.cache)
    texts = {key: field.source_text(obj) for key, obj in rows.items()}
    empty = [key for key, text in texts.items() if not text.strip()]
    todo = {
        key: text
        for key, text in texts.items()
        if key not in empty
        and (force or index.meta(key) != (content_hash(text), provider.identity))
    }
    if empty:
        # Nothing to search by: such rows have no vector, like rows never embedded.
        remove(field, [key for key in empty if index.meta(key) is not None])
        _set_column(field, [rows[key] for key in empty], None, using)
    if todo:
        keys = list(todo)
        target = f"{field.label} (rows {', '.join(repr(k) for k in keys[:5])})"
        vectors = embed_checked(provider, list(todo.values()), input_type="document", target=target)
        entries = store.put_many(
            (key, vector, content_hash(todo[key]), provider.identity)
            for key, vector in zip(keys, vectors, strict=True)
        )
        announce(store, entries, list(vectors))
    stored = [obj for key, obj in rows.items() if key not in empty]
    _set_column(field, stored, provider.dimensions, using)
    return len(todo)


def _changed_since(
    field: EmbeddingField, rows: dict[str, models.Model], using: str
) -> dict[str, models.Model]:
    """Rows whose text in the database is no longer the text we just stored."""
    manager = field.model._base_manager.using(using)
    columns = field.source_field_names()
    pks = [obj.pk for obj in rows.values()]
    fresh_qs = manager.filter(pk__in=pks)
    if columns is not None:
        # The column too: _set_column reads it, and a deferred read of a row deleted
        # meanwhile would raise DoesNotExist out of an unrelated save.
        fresh_qs = fresh_qs.only(*columns, field.attname)
    fresh = {field.key(obj.pk): obj for obj in fresh_qs}
    changed = {
        key: obj
        for key, obj in fresh.items()
        if field.source_text(obj) != field.source_text(rows[key])
    }
    gone = [key for key in rows if key not in fresh]
    if gone:
        remove(field, gone)
        # Created again while we removed it: its own save may have stored it before
        # our removal, so the next round stores it again.
        changed.update((field.key(obj.pk), obj) for obj in _rows(field, gone, using))
    return changed


def _rows(field: EmbeddingField, keys: Sequence[str], using: str) -> Iterable[models.Model]:
    """The rows of ``keys`` that exist in ``using``."""
    pks = [field.pk_from_key(key) for key in keys]
    return field.model._base_manager.using(using).filter(pk__in=pks)


def _set_column(
    field: EmbeddingField, instances: Sequence[models.Model], value: int | None, using: str
) -> None:
    stale = [obj for obj in instances if getattr(obj, field.attname) != value]
    if not stale:
        return
    field.model._base_manager.using(using).filter(pk__in=[obj.pk for obj in stale]).update(
        **{field.attname: value}
    )
    for obj in stale:
        setattr(obj, field.attname, value)


def _fail(field: EmbeddingField, keys: list[str], using: str, exc: Exception) -> None:
    """Leave failed rows with no embedding, then raise or log as configured.

    The column is cleared first and on its own: when the store is what failed (a
    read-only or full disk), removing the old vectors fails too, and the NULL column
    is what makes ``embeddings_backfill --missing`` find the rows again.
    """
    pks: list[Any] = [field.pk_from_key(key) for key in keys]
    try:
        field.model._base_manager.using(using).filter(pk__in=pks).update(**{field.attname: None})
    except Exception as cleanup:  # the original error matters more than the clean-up's
        logger.warning("Could not mark the rows of %s as missing: %s", field.label, cleanup)
    try:
        remove(field, keys)
    except Exception as cleanup:
        logger.warning("Could not remove the old vectors of %s: %s", field.label, cleanup)
    if conf.ON_ERROR == "log":
        logger.error("Embedding %s failed: %s", field.label, exc, exc_info=exc)
        return
    raise exc

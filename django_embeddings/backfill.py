"""Embedding rows that signals never saw, in batches: ``embed_queryset``.

``bulk_create``, ``QuerySet.update()``, raw SQL, rows from before the field
existed, saves whose provider call failed and deferred tasks that never ran all
leave rows without a current vector. :func:`embed_queryset` walks a queryset by
primary key (keyset pagination: one short query per batch, never the whole
table in memory), picks the rows that need work and hands each batch to
:func:`django_embeddings.writer.sync`, which embeds it in one provider call
and commits it. Stopping at any point loses at most the batch in flight, and
running again skips every row already done, so a backfill is resumable and
idempotent. ``manage.py embeddings_backfill`` is a thin wrapper.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from django_embeddings import cache, writer
from django_embeddings.fields import EmbeddingField, content_hash, embedding_fields

__all__ = [
    "MODES",
    "BackfillResult",
    "embed_queryset",
    "existing_keys",
    "is_pending",
    "keys_with_text",
]

logger = logging.getLogger(__name__)

MODES = ("missing", "stale", "all")
DEFAULT_BATCH_SIZE = 256
LOOKUP_CHUNK = 500  # primary keys per ``pk__in`` query (SQLite allows 999 parameters)


@dataclass
class BackfillResult:
    """How one field's backfill went; also what ``progress`` is called with."""

    label: str
    mode: str
    total: int  # rows in the queryset when the backfill started
    scanned: int = 0  # rows looked at so far
    selected: int = 0  # rows that needed work (what a dry run would embed)
    embedded: int = 0  # texts sent to the provider and stored
    terms: int = 0  # rows whose current vector got its keyword terms (no provider call)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def rate(self) -> float:
        """Rows scanned per second."""
        return self.scanned / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[BackfillResult], None]


def embed_queryset(
    queryset: models.QuerySet[Any],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    field: str | EmbeddingField | None = None,
    mode: str = "missing",
    progress: Progress | None = None,
    dry_run: bool = False,
) -> list[BackfillResult]:
    """Embed the rows of ``queryset`` that need it; one result per field.

    ``mode``:

    - ``"missing"``: pending rows, whose column names a text the store has no vector
      of (``bulk_create``, a failed provider call, a crash after commit, a deferred
      task that never ran), and rows with a text but a NULL column (inserted by raw
      SQL, or from before the field existed);
    - ``"stale"``: those, plus rows whose vector was made by another provider
      identity or whose text changed behind the ORM's back (``QuerySet.update()``,
      raw SQL), which reads every row's text;
    - ``"all"``: every row, re-embedded even when unchanged.

    ``field`` is an EmbeddingField (or its name) of the queryset's model; by
    default every one of them. ``progress`` is called after each batch with the
    running :class:`BackfillResult`. ``dry_run`` only counts the rows.
    """
    if mode not in MODES:
        raise ValueError(f"mode should be one of {list(MODES)!r}, not {mode!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size should be a positive int, not {batch_size!r}.")
    if queryset.query.is_sliced:
        raise TypeError("Cannot backfill a sliced queryset; filter it instead.")
    return [
        _embed_field(
            queryset, target, batch_size=batch_size, mode=mode, progress=progress, dry_run=dry_run
        )
        for target in _fields(queryset.model, field)
    ]


def existing_keys(
    field: EmbeddingField, keys: Sequence[str], *, using: str = "default"
) -> set[str]:
    """The subset of store ``keys`` whose row exists, queried in chunks.

    A key that is not a valid primary key of the model (left by an older schema)
    has no row.
    """
    manager = field.model._base_manager.using(using)
    found: set[str] = set()
    for start in range(0, len(keys), LOOKUP_CHUNK):
        pks = []
        for key in keys[start : start + LOOKUP_CHUNK]:
            try:
                pks.append(field.pk_from_key(key))
            except (ValidationError, ValueError, TypeError):
                continue
        if pks:
            found.update(
                field.key(pk) for pk in manager.filter(pk__in=pks).values_list("pk", flat=True)
            )
    return found


def keys_with_text(
    field: EmbeddingField, pks: Sequence[Any], *, using: str = "default"
) -> set[str]:
    """The keys of the rows among ``pks`` that have a text to embed, read in chunks
    with only the columns the source needs."""
    columns = field.source_field_names()
    manager = field.model._base_manager.using(using)
    rows = manager.only(field.model._meta.pk.attname, *columns) if columns else manager.all()
    found: set[str] = set()
    for start in range(0, len(pks), LOOKUP_CHUNK):
        for obj in rows.filter(pk__in=pks[start : start + LOOKUP_CHUNK]):
            if field.source_text(obj).strip():
                found.add(field.key(obj.pk))
    return found


# -- internals -------------------------------------------------------------------------


def _fields(model: type[models.Model], field: str | EmbeddingField | None) -> list[EmbeddingField]:
    fields = list(embedding_fields(model))
    if field is None:
        if not fields:
            raise ValueError(f"{model._meta.label} has no EmbeddingField.")
        return fields
    name = field.name if isinstance(field, EmbeddingField) else field
    for candidate in fields:
        if candidate.name == name:
            return [candidate]
    raise ValueError(
        f"{model._meta.label} has no EmbeddingField named {name!r}; "
        f"it has {[f.name for f in fields]!r}."
    )


def _embed_field(
    queryset: models.QuerySet[Any],
    field: EmbeddingField,
    *,
    batch_size: int,
    mode: str,
    progress: Progress | None,
    dry_run: bool,
) -> BackfillResult:
    using = queryset.db
    base = queryset.order_by()
    started = time.monotonic()
    result = BackfillResult(field.label, mode, total=base.count(), dry_run=dry_run)
    provider = field.get_provider()
    # A field with cache=False keeps no index in this process: load one for the
    # whole run instead of one per batch. Each batch re-checks through sync anyway.
    store = field.store_for(using)
    fixed_index = None if field.cache else cache.get(store, keep=False)
    if progress is not None:
        progress(result)

    def index() -> cache.FieldIndex:
        return fixed_index if fixed_index is not None else cache.get(store)

    # Compactions as the store grows geometrically, not every compact_threshold rows
    # (quadratic in a large backfill); the closing one below folds the rest.
    with store.bulk():
        for batch in _batches(base, field, batch_size, mode, result, index):
            current = index()
            todo = [obj for obj in batch if _needs_work(field, obj, current, provider, mode)]
            chosen = {id(obj) for obj in todo}
            termless = _without_terms(
                field, [obj for obj in batch if id(obj) not in chosen], current
            )
            result.selected += len(todo) + len(termless)
            if todo and not dry_run:
                result.embedded += writer.sync(field, todo, using=using, force=mode == "all")
            if termless and not dry_run:
                result.terms += writer.add_terms(field, termless, using=using)
            result.seconds = time.monotonic() - started
            if progress is not None:
                progress(result)
    if result.embedded or result.terms:
        # A bulk load leaves a long journal: fold it now, so that cold starts map
        # one matrix instead of reading a file per row.
        store.compact()
    result.seconds = time.monotonic() - started
    logger.info(
        "%s: backfill (%s) embedded %d of %d rows in %.1f s",
        field.label,
        mode,
        result.embedded,
        result.scanned,
        result.seconds,
    )
    return result


def _batches(
    base: models.QuerySet[Any],
    field: EmbeddingField,
    batch_size: int,
    mode: str,
    result: BackfillResult,
    index: Callable[[], cache.FieldIndex],
) -> Iterator[list[models.Model]]:
    """Keyset pagination by primary key: each batch is one short query.

    In ``missing`` mode only primary keys and the column are read to choose
    rows; the chosen rows are then loaded with just the columns embedding needs.
    """
    columns = field.source_field_names()
    loaded = base.only(field.model._meta.pk.attname, field.attname, *columns) if columns else base
    last: Any = None
    while True:
        after = {} if last is None else {"pk__gt": last}
        if mode == "missing":
            rows = list(
                base.filter(**after).order_by("pk").values_list("pk", field.attname)[:batch_size]
            )
            if not rows:
                return
            last = rows[-1][0]
            result.scanned += len(rows)
            current = index()
            wanted = [
                pk for pk, column in rows if _may_be_pending(column, current.meta(field.key(pk)))
            ]
            if field.keywords:
                chosen = set(wanted)
                rest = {field.key(pk): pk for pk, _ in rows if pk not in chosen}
                wanted += [rest[key] for key in current.without_terms(list(rest))]
            yield list(loaded.filter(pk__in=wanted).order_by("pk")) if wanted else []
        else:
            objects = list(loaded.filter(**after).order_by("pk")[:batch_size])
            if not objects:
                return
            last = objects[-1].pk
            result.scanned += len(objects)
            yield objects


def is_pending(column: str | None, meta: tuple[str, str] | None) -> bool:
    """Does the store lack the vector the row's column names (or keep one it should not)?"""
    if column is None:
        return meta is not None
    return meta is None or meta[0] != column


def _may_be_pending(column: str | None, meta: tuple[str, str] | None) -> bool:
    """Pending, or unknown until the text is read: a NULL column with no vector is an
    empty text, or a row that never went through ``pre_save`` (raw SQL, rows from
    before the field existed)."""
    return column is None or is_pending(column, meta)


def _without_terms(
    field: EmbeddingField, objects: list[models.Model], index: cache.FieldIndex
) -> list[models.Model]:
    """Rows with a current vector but no keyword terms (stored before the field kept any)."""
    if not field.keywords or not objects:
        return []
    missing = set(index.without_terms([field.key(obj.pk) for obj in objects]))
    return [obj for obj in objects if field.key(obj.pk) in missing]


def _needs_work(
    field: EmbeddingField, obj: models.Model, index: cache.FieldIndex, provider: Any, mode: str
) -> bool:
    """Would :func:`writer.sync` change anything for ``obj``?"""
    meta = index.meta(field.key(obj.pk))
    column = obj.__dict__.get(field.attname)
    text = field.source_text(obj)
    if not text.strip():
        # Nothing to embed: only a leftover vector or column needs clearing.
        return meta is not None or column is not None
    if mode == "all":
        return True
    if mode == "missing":
        return _may_be_pending(column, meta)  # a NULL column: its text was never recorded
    value = content_hash(text)
    return meta != (value, provider.identity) or column != value

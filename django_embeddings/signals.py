"""Receivers that hand saves and deletes to the writer, and our public signals.

The receivers are connected in ``AppConfig.ready()``. A save's text and hash were
recorded by ``EmbeddingField.pre_save``; here they join the transaction's batch
for the field (see :mod:`django_embeddings.writer`), which reaches the provider
once, after commit.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal

from django_embeddings import writer
from django_embeddings.fields import SAVED, EmbeddingField, content_hash, embedding_fields
from django_embeddings.store import merging

__all__ = ["connect", "embedding_failed"]

# Sent after commit when rows could not be embedded (the provider or the store
# failed); the rows stay pending for ``embeddings_backfill``. Arguments:
# ``sender`` (the model), ``field`` (the EmbeddingField), ``keys`` (primary keys,
# as strings), ``using`` (the database alias), ``exception``.
embedding_failed = Signal()


def connect() -> None:
    # One receiver for every model: it finds the sender's embedding fields, so
    # proxy models and multi-table children are embedded too.
    post_save.connect(_on_post_save, dispatch_uid="django_embeddings.post_save")
    post_delete.connect(_on_post_delete, dispatch_uid="django_embeddings.post_delete")
    merging.after_merge(writer.merged)


def _on_post_save(
    sender: type[models.Model],
    instance: models.Model,
    raw: bool = False,
    using: str = "default",
    update_fields: frozenset[str] | None = None,
    **kwargs: Any,
) -> None:
    if raw:
        return  # fixtures: embeddings travel with embeddings_export/import or backfill
    saved: dict[str, tuple[str | None, str, Any]] = instance.__dict__.pop(SAVED, {})
    for field in embedding_fields(sender):
        mark = None
        if field.attname in saved:
            previous, text, mark = saved[field.attname]
        elif update_fields is not None:
            # save(update_fields=...) left the column out, so pre_save did not run.
            if not _source_in(field, update_fields):
                continue
            previous = instance.__dict__.get(field.attname)
            text = field.source_text(instance)
            _update_column(field, instance, text, using)
        else:
            continue
        if field.auto_embed:
            writer.schedule_put(field, using, field.key(instance.pk), text, previous, mark)


def _on_post_delete(
    sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any
) -> None:
    for field in embedding_fields(sender):
        writer.schedule_delete(field, using, field.key(instance.pk))


def _source_in(field: EmbeddingField, update_fields: frozenset[str]) -> bool:
    columns = field.source_field_names()
    if columns is None:
        return True  # a computed source may read any column
    return bool({str(field.source), *columns} & update_fields)


def _update_column(field: EmbeddingField, instance: models.Model, text: str, using: str) -> None:
    """Record the new text's hash when ``update_fields`` named the source but not the field."""
    value = content_hash(text) if text.strip() else None
    if value != instance.__dict__.get(field.attname):
        manager = field.model._base_manager.using(using)
        manager.filter(pk=instance.pk).update(**{field.attname: value})
        setattr(instance, field.attname, value)

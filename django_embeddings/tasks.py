"""Deferred embedding: saves enqueue a task instead of calling the provider.

With ``EmbeddingField(defer=True)`` (or ``DJANGO_EMBEDDINGS_DEFER = True``), a
commit enqueues :data:`embed_rows` through Django's tasks framework
(``django.tasks`` on Django 6.0+, the ``django-tasks`` backport package on 5.2)
and the request returns without waiting for the provider. The row is pending
(searches leave it out, ``embeddings_status`` counts it as missing) until a
worker ran the task. A failed task raises, so the task backend records the failure (and retries
it, if the backend retries); ``embeddings_backfill --missing`` catches up on
whatever never ran.

The task's arguments are JSON: the field's label, the rows' keys (their primary
keys as strings) and the database alias.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django_embeddings.fields import EmbeddingField

logger = logging.getLogger(__name__)

__all__ = ["embed_rows", "enqueue", "framework"]


def _find_framework() -> tuple[Callable[..., Any] | None, str | None]:
    """Django's own tasks framework (6.0+), else the django-tasks backport (5.2)."""
    for name in ("django.tasks", "django_tasks"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.task, name
    return None, None


task, framework = _find_framework()


def embed_rows(label: str, keys: list[str], using: str = "default") -> int:
    """Embed the rows ``keys`` of the field ``label``; returns how many were embedded.

    Rows deleted since they were enqueued are skipped. Raises when a row could
    not be embedded, so the task backend sees the failure.
    """
    from django_embeddings import writer
    from django_embeddings.labels import resolve_one

    field = resolve_one(label)
    manager = field.model._base_manager.using(using)
    pks = [field.pk_from_key(key) for key in keys]
    return writer.sync(field, list(manager.filter(pk__in=pks)), using=using)


if task is not None:
    # Rebound to the Task object under the function's own name, so a worker that
    # imports "django_embeddings.tasks.embed_rows" finds the task.
    embed_rows = task()(embed_rows)


def enqueue(field: EmbeddingField, keys: Sequence[str], *, using: str = "default") -> Any:
    """Enqueue :data:`embed_rows` for ``keys`` of ``field``; returns the task result."""
    if task is None or not hasattr(embed_rows, "enqueue"):
        raise ImproperlyConfigured(
            f"{field.label} defers embedding to a task, which needs Django's tasks "
            "framework: Django 6.0 or later, or `pip install django-tasks` (with "
            '"django_tasks" in INSTALLED_APPS) on Django 5.2.'
        )
    result = embed_rows.enqueue(field.label, list(keys), using)
    logger.debug("%s: enqueued embedding of %d rows (task %s)", field.label, len(keys), result.id)
    return result

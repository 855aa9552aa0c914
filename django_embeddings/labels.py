"""Turning ``app_label.ModelName[.field]`` labels into embedding fields.

Every management command and the deferred-embedding task name fields this way:
``testapp.Article`` means each EmbeddingField of that model,
``testapp.Article.embedding`` one field, and no label at all every
EmbeddingField of every installed model.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps

from django_embeddings.fields import EmbeddingField, embedding_fields

__all__ = ["LabelError", "all_fields", "resolve", "resolve_one"]


class LabelError(ValueError):
    """A label names no installed model or no EmbeddingField of it."""


def all_fields() -> list[EmbeddingField]:
    """Every EmbeddingField of every installed model, each once, sorted by label."""
    found: dict[str, EmbeddingField] = {}
    for model in apps.get_models():
        for field in embedding_fields(model):
            # Proxies and multi-table children list their parent's fields too.
            found.setdefault(field.label, field)
    return [found[label] for label in sorted(found)]


def resolve(labels: Iterable[str]) -> list[EmbeddingField]:
    """The fields ``labels`` name, in order and without repeats; all of them if none.

    Raises :class:`LabelError` naming the first bad label.
    """
    labels = list(labels)
    if not labels:
        return all_fields()
    found: dict[str, EmbeddingField] = {}
    for label in labels:
        for field in _resolve_label(label):
            found.setdefault(field.label, field)
    return list(found.values())


def resolve_one(label: str) -> EmbeddingField:
    """The one field ``app_label.ModelName.field`` names."""
    fields = _resolve_label(label)
    if label.count(".") != 2:
        raise LabelError(f"{label!r} should name one field, as app_label.ModelName.field_name.")
    return fields[0]


def _resolve_label(label: str) -> list[EmbeddingField]:
    parts = label.split(".") if isinstance(label, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise LabelError(
            f"{label!r} is not a model or field label; use app_label.ModelName or "
            "app_label.ModelName.field_name."
        )
    app_label, model_name = parts[0], parts[1]
    try:
        model = apps.get_model(app_label, model_name)
    except LookupError as exc:
        raise LabelError(f"{label!r} names no installed model: {exc}") from exc
    fields = list(embedding_fields(model))
    if not fields:
        raise LabelError(f"{label!r}: {model._meta.label} has no EmbeddingField.")
    if len(parts) == 2:
        return fields
    for field in fields:
        if field.name == parts[2]:
            return [field]
    raise LabelError(
        f"{label!r}: {model._meta.label} has no EmbeddingField named {parts[2]!r}; "
        f"it has {[field.name for field in fields]!r}."
    )

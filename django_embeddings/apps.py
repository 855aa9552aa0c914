from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.db.models.signals import post_migrate


class DjangoEmbeddingsConfig(AppConfig):
    name = "django_embeddings"
    verbose_name = "Embeddings"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_embeddings import databases, invalidation, signals
        from django_embeddings.checks import register_checks

        register_checks()
        setting_changed.connect(_reset_on_setting_change, dispatch_uid="django_embeddings.reset")
        post_migrate.connect(_reset_test_stores, dispatch_uid="django_embeddings.test_stores")
        databases.remember_configured_names()
        signals.connect()
        invalidation.start()


def _reset_test_stores(*, using: str = "default", **kwargs: Any) -> None:
    """A test database was just migrated or flushed: its stores start empty too, and
    what its filters selected is forgotten."""
    from django_embeddings import databases, selectivity

    databases.reset_test_stores(using)
    selectivity.clear()


def _reset_on_setting_change(*, setting: str, **kwargs: Any) -> None:
    """Drop cached providers, stores and matrices when a test overrides our settings."""
    if not setting.startswith("DJANGO_EMBEDDINGS_"):
        return
    from django_embeddings import cache, invalidation, selectivity
    from django_embeddings.fields import _store, _stores
    from django_embeddings.providers import clear_providers

    clear_providers()
    _store.cache_clear()
    _stores.clear()
    cache.clear()
    selectivity.clear()
    if setting in (
        "DJANGO_EMBEDDINGS_INVALIDATION",
        "DJANGO_EMBEDDINGS_REDIS",
        "DJANGO_EMBEDDINGS_CHANNEL",
    ):
        invalidation.restart()

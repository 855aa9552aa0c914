from __future__ import annotations

from pathlib import Path

import pytest

from django_embeddings.conf import conf
from django_embeddings.store import Permissions

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture
def no_mode(settings, monkeypatch):  # type: ignore[no-untyped-def]
    """Neither the setting nor the environment variable gives a mode."""
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    del settings.DJANGO_EMBEDDINGS_INVALIDATION
    return settings


def test_defaults(settings, no_mode):
    del settings.DJANGO_EMBEDDINGS_PROVIDERS
    assert conf.PROVIDERS == {
        "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"}
    }
    assert conf.INVALIDATION == "pubsub"  # the test settings' "default" cache is django-redis
    assert conf.INVALIDATION_GIVEN is None
    assert conf.REDIS == "default"
    assert conf.CHANNEL == "django_embeddings"
    assert conf.ON_ERROR == "raise"
    assert conf.MAX_TEXT_LENGTH == 20_000
    assert conf.COMPACT_THRESHOLD == 10_000
    assert conf.DEFER is False
    assert conf.FILE_PERMISSIONS == 0o640
    assert conf.DIRECTORY_PERMISSIONS == 0o750


def test_dir_is_a_path(settings):
    settings.DJANGO_EMBEDDINGS_DIR = "/var/lib/embeddings"
    assert isinstance(conf.DIR, Path)
    assert str(conf.DIR) == "/var/lib/embeddings"


def test_dir_of_another_type_is_returned_as_given(settings):
    settings.DJANGO_EMBEDDINGS_DIR = 42
    assert conf.DIR == 42  # for the check E017 to report


def test_environment_wins_over_settings(settings, monkeypatch):
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "mtime"
    monkeypatch.setenv("DJANGO_EMBEDDINGS_INVALIDATION", " None ")
    assert conf.INVALIDATION == "none"
    assert conf.INVALIDATION_GIVEN == "none"


def test_default_mode_is_mtime_without_redis(settings, no_mode):
    settings.CACHES = LOCMEM
    assert conf.REDIS_CONFIGURED is False
    assert conf.INVALIDATION == "mtime"


@pytest.mark.parametrize(
    "redis",
    ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380/1", "unix:///run/redis.sock"],
)
def test_default_mode_is_pubsub_with_a_redis_url(settings, no_mode, redis):
    settings.CACHES = LOCMEM
    settings.DJANGO_EMBEDDINGS_REDIS = redis
    assert conf.INVALIDATION == "pubsub"


def test_default_mode_is_pubsub_with_a_django_redis_cache(settings, no_mode):
    settings.CACHES = {
        **LOCMEM,
        "shared": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://x/0"},
    }
    settings.DJANGO_EMBEDDINGS_REDIS = "shared"
    assert conf.INVALIDATION == "pubsub"
    settings.DJANGO_EMBEDDINGS_REDIS = "default"
    assert conf.INVALIDATION == "mtime"


def test_django_own_redis_cache_is_not_enough(settings, no_mode):
    """Pub/sub needs django-redis' raw client; Django's RedisCache does not give one."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379",
        }
    }
    assert conf.INVALIDATION == "mtime"


def test_explicit_mode_is_kept(settings, no_mode):
    settings.CACHES = LOCMEM
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
    assert conf.INVALIDATION == "pubsub"  # E011 reports it
    settings.DJANGO_EMBEDDINGS_INVALIDATION = None
    assert conf.INVALIDATION == "mtime"  # None counts as not given


def test_permissions_are_returned_as_given(settings):
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = "0o660"
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o770
    assert conf.FILE_PERMISSIONS == "0o660"  # for the check (E018) to name, never int("0o660")
    assert conf.DIRECTORY_PERMISSIONS == 0o770


def test_stores_are_built_with_the_permissions(settings):
    from tests.testapp.models import Article

    field = Article._meta.get_field("embedding")
    assert field.store.permissions == Permissions(0o640, 0o750)  # type: ignore[attr-defined]
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o600
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o700
    assert field.store.permissions == Permissions(0o600, 0o700)  # type: ignore[attr-defined]

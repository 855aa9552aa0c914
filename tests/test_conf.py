from __future__ import annotations

from pathlib import Path

from django_embeddings.conf import conf


def test_defaults(settings):
    del settings.DJANGO_EMBEDDINGS_PROVIDERS
    del settings.DJANGO_EMBEDDINGS_INVALIDATION
    assert conf.PROVIDERS == {
        "default": {"BACKEND": "django_embeddings.providers.StaticModelProvider"}
    }
    assert conf.INVALIDATION == "pubsub"
    assert conf.REDIS == "default"
    assert conf.CHANNEL == "django_embeddings"
    assert conf.ON_ERROR == "raise"
    assert conf.MAX_TEXT_LENGTH == 20_000


def test_dir_is_a_path(settings):
    settings.DJANGO_EMBEDDINGS_DIR = "/var/lib/embeddings"
    assert isinstance(conf.DIR, Path)
    assert str(conf.DIR) == "/var/lib/embeddings"


def test_environment_wins_over_settings(settings, monkeypatch):
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "mtime"
    monkeypatch.setenv("DJANGO_EMBEDDINGS_INVALIDATION", " None ")
    assert conf.INVALIDATION == "none"

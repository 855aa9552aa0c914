from __future__ import annotations

import os
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_embeddings.checks import check_settings
from django_embeddings.fields import EmbeddingField
from tests.conftest import skip_or_fail
from tests.reliability.disks import Tmpfs, mount_problem
from tests.testapp.models import Article


def ids(messages) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.id for m in messages]


def test_default_test_settings_pass():
    assert check_settings() == []


def test_providers_not_a_dict(settings):
    settings.DJANGO_EMBEDDINGS_PROVIDERS = ["default"]
    messages = check_settings()
    assert ids(messages) == ["django_embeddings.E001"]
    assert (
        messages[0].msg
        == "DJANGO_EMBEDDINGS_PROVIDERS should be a dict of aliases, not ['default']."
    )


def test_provider_backend_that_does_not_import(settings):
    settings.DJANGO_EMBEDDINGS_PROVIDERS = {"default": {"BACKEND": "nowhere.Provider"}}
    messages = check_settings()
    assert ids(messages) == ["django_embeddings.E001"]
    assert (
        "DJANGO_EMBEDDINGS_PROVIDERS['default'] has BACKEND 'nowhere.Provider'" in messages[0].msg
    )


def test_provider_options_not_a_dict(settings):
    settings.DJANGO_EMBEDDINGS_PROVIDERS = {
        "default": {"BACKEND": "django_embeddings.providers.HashingProvider", "OPTIONS": 3}
    }
    assert "has OPTIONS 3" in check_settings()[0].msg


def test_dir_not_set(settings):
    settings.DJANGO_EMBEDDINGS_DIR = None
    assert ids(check_settings()) == ["django_embeddings.E002"]


def test_dir_not_writable(settings, tmp_path):
    """A read-only mount when we are root (chmod does not stop root), else a 0500 folder."""
    locked = tmp_path / "locked"
    if os.geteuid() != 0:
        locked.mkdir(mode=0o500)
        settings.DJANGO_EMBEDDINGS_DIR = locked / "embeddings"
        assert ids(check_settings()) == ["django_embeddings.E003"]
        return
    problem = mount_problem()
    if problem:
        skip_or_fail(problem)
    disk = Tmpfs(locked, size_kb=64).mount()
    try:
        disk.readonly()
        settings.DJANGO_EMBEDDINGS_DIR = locked / "embeddings"
        assert ids(check_settings()) == ["django_embeddings.E003"]
    finally:
        disk.unmount()


def test_dir_not_writable_as_a_file(settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings.DJANGO_EMBEDDINGS_DIR = blocker / "embeddings"
    assert ids(check_settings()) == ["django_embeddings.E003"]


def test_bad_invalidation(settings, monkeypatch):
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "sometimes"
    messages = check_settings()
    assert ids(messages) == ["django_embeddings.E004"]
    assert "not 'sometimes'" in messages[0].msg


def test_bad_on_error(settings):
    settings.DJANGO_EMBEDDINGS_ON_ERROR = "ignore"
    assert ids(check_settings()) == ["django_embeddings.E008"]


class TestFieldChecks:
    def make(self, **kwargs):  # type: ignore[no-untyped-def]
        field = EmbeddingField(**kwargs)
        field.set_attributes_from_name("vec")
        field.model = Article
        return field

    def test_sound_field(self):
        assert self.make(source="body").check() == []

    def test_no_source(self):
        assert ids(self.make().check()) == ["django_embeddings.E005"]

    def test_missing_source(self):
        messages = self.make(source="nope").check()
        assert ids(messages) == ["django_embeddings.E006"]
        assert "has source 'nope'" in messages[0].msg

    def test_unknown_provider_alias(self):
        messages = self.make(source="body", provider="elsewhere").check()
        assert ids(messages) == ["django_embeddings.E009"]


def test_checks_are_registered(settings):
    settings.DJANGO_EMBEDDINGS_DIR = None
    with pytest.raises(SystemCheckError, match="django_embeddings.E002"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_deferred_field_passes_with_a_tasks_framework(settings):
    settings.DJANGO_EMBEDDINGS_DEFER = True
    field = EmbeddingField(source="body")
    field.set_attributes_from_name("vec")
    field.model = Article
    assert field.check() == []  # django.tasks (6.x) or django-tasks (5.2) is installed

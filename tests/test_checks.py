from __future__ import annotations

import os
import pwd
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_embeddings.checks import (
    check_deployment,
    check_settings,
    check_store_owner,
    check_store_writable,
    read_only_check_tags,
)
from django_embeddings.conf import conf
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
        assert ids(check_store_writable()) == ["django_embeddings.E003"]
        return
    problem = mount_problem()
    if problem:
        skip_or_fail(problem)
    disk = Tmpfs(locked, size_kb=64).mount()
    try:
        disk.readonly()
        settings.DJANGO_EMBEDDINGS_DIR = locked / "embeddings"
        assert ids(check_store_writable()) == ["django_embeddings.E003"]
        assert check_settings() == []  # E003 has its own tag (see below)
    finally:
        disk.unmount()


def test_dir_not_writable_as_a_file(settings, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings.DJANGO_EMBEDDINGS_DIR = blocker / "embeddings"
    assert ids(check_store_writable()) == ["django_embeddings.E003"]


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


def test_hints_point_at_the_readme(settings):
    settings.DJANGO_EMBEDDINGS_PROVIDERS = ["default"]
    assert check_settings()[0].hint == (
        'See the "System checks" section of the README (README.md#system-checks).'
    )


# --- every setting's type and value --------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "check_id", "message"),
    [
        (
            "DJANGO_EMBEDDINGS_REDIS",
            5,
            "E012",
            "DJANGO_EMBEDDINGS_REDIS should be a str (a CACHES alias or a redis:// URL), not 5.",
        ),
        (
            "DJANGO_EMBEDDINGS_CHANNEL",
            "",
            "E013",
            "DJANGO_EMBEDDINGS_CHANNEL should be a non-empty str, not ''.",
        ),
        (
            "DJANGO_EMBEDDINGS_CHANNEL",
            b"news",
            "E013",
            "DJANGO_EMBEDDINGS_CHANNEL should be a non-empty str, not b'news'.",
        ),
        (
            "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH",
            "20000",
            "E014",
            "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH should be a positive int, not '20000'.",
        ),
        (
            "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH",
            0,
            "E014",
            "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH should be a positive int, not 0.",
        ),
        (
            "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH",
            True,
            "E014",
            "DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH should be a positive int, not True.",
        ),
        (
            "DJANGO_EMBEDDINGS_COMPACT_THRESHOLD",
            -1,
            "E015",
            "DJANGO_EMBEDDINGS_COMPACT_THRESHOLD should be a positive int, not -1.",
        ),
        (
            "DJANGO_EMBEDDINGS_COMPACT_THRESHOLD",
            1e4,
            "E015",
            "DJANGO_EMBEDDINGS_COMPACT_THRESHOLD should be a positive int, not 10000.0.",
        ),
        (
            "DJANGO_EMBEDDINGS_DEFER",
            "False",
            "E016",
            "DJANGO_EMBEDDINGS_DEFER should be True or False, not 'False'.",
        ),
        (
            "DJANGO_EMBEDDINGS_DEFER",
            1,
            "E016",
            "DJANGO_EMBEDDINGS_DEFER should be True or False, not 1.",
        ),
        (
            "DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND",
            "no",
            "E023",
            "DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND should be True or False, not 'no'.",
        ),
        (
            "DJANGO_EMBEDDINGS_DIR",
            42,
            "E017",
            "DJANGO_EMBEDDINGS_DIR should be a str or a Path, not 42.",
        ),
        (
            "DJANGO_EMBEDDINGS_ON_ERROR",
            True,
            "E008",
            "DJANGO_EMBEDDINGS_ON_ERROR should be one of ['raise', 'log'], not True.",
        ),
        (
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS",
            "0o640",
            "E018",
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS should be an int from 0 to 0o777 (a mode such "
            "as 0o640), not '0o640'.",
        ),
        (
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS",
            0o4640,
            "E018",
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS should be an int from 0 to 0o777 (a mode such "
            "as 0o640), not 2464.",
        ),
        (
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS",
            True,
            "E018",
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS should be an int from 0 to 0o777 (a mode such "
            "as 0o640), not True.",
        ),
        (
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS",
            0o440,
            "E018",
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS is 0o440, which leaves out bits of 0o600: the "
            "store's own process needs them to go on writing what it created.",
        ),
        (
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS",
            -1,
            "E019",
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS should be an int from 0 to 0o777 (a mode "
            "such as 0o640), not -1.",
        ),
        (
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS",
            488.0,
            "E019",
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS should be an int from 0 to 0o777 (a mode "
            "such as 0o640), not 488.0.",
        ),
        (
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS",
            0o640,
            "E019",
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS is 0o640, which leaves out bits of 0o700: "
            "the store's own process needs them to go on writing what it created.",
        ),
        (
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS",
            0o666,
            "W003",
            "DJANGO_EMBEDDINGS_FILE_PERMISSIONS is 0o666: every local user could change or "
            "replace the vectors.",
        ),
        (
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS",
            0o777,
            "W003",
            "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS is 0o777: every local user could change "
            "or replace the vectors.",
        ),
        (
            "DJANGO_EMBEDDINGS_INVALIDATION",
            "PubSub ",
            "E004",
            "DJANGO_EMBEDDINGS_INVALIDATION should be one of ['pubsub', 'mtime', 'none'], "
            "not 'PubSub '.",
        ),
    ],
)
def test_setting_of_the_wrong_type_or_value(
    settings, monkeypatch, setting, value, check_id, message
):
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    setattr(settings, setting, value)
    messages = check_settings()
    assert ids(messages) == [f"django_embeddings.{check_id}"]
    assert messages[0].msg == message


def test_settings_are_read_as_given(settings):
    settings.DJANGO_EMBEDDINGS_DEFER = "False"
    settings.DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH = "20000"
    assert conf.DEFER == "False"  # not bool("False"), which is True
    assert conf.MAX_TEXT_LENGTH == "20000"


def test_valid_values_pass(settings):
    settings.DJANGO_EMBEDDINGS_DEFER = True
    settings.DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH = 1
    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 500
    settings.DJANGO_EMBEDDINGS_CHANNEL = "site-a"
    settings.DJANGO_EMBEDDINGS_REDIS = "redis://127.0.0.1:6379/0"
    settings.DJANGO_EMBEDDINGS_DIR = "relative/embeddings"
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o644  # world-readable is a choice, not a risk
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o700
    assert check_settings() == []


def test_world_writable_hint_names_the_mode_without_it(settings):
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o777
    assert check_settings()[0].hint.startswith(
        "Leave out the 0o002 bit (0o775) and share through a group instead."
    )


# --- the default invalidation mode ---------------------------------------------------

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def test_new_project_without_redis_passes_in_mtime_mode(settings, monkeypatch):
    """A startproject's CACHES (LocMemCache) and no mode: mtime, and no E011."""
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    settings.CACHES = LOCMEM
    del settings.DJANGO_EMBEDDINGS_INVALIDATION
    assert conf.INVALIDATION == "mtime"
    assert check_settings() == []
    call_command("check", stdout=StringIO(), stderr=StringIO())


def test_explicit_pubsub_without_redis_is_still_an_error(settings, monkeypatch):
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    settings.CACHES = LOCMEM
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
    messages = check_settings()
    assert ids(messages) == ["django_embeddings.E011"]
    assert "'default' names a cache with BACKEND" in messages[0].msg


def test_deploy_warns_about_mtime_chosen_by_default(settings, monkeypatch):
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    settings.CACHES = LOCMEM
    del settings.DJANGO_EMBEDDINGS_INVALIDATION
    messages = check_deployment()
    assert ids(messages) == ["django_embeddings.W002"]
    assert "DJANGO_EMBEDDINGS_REDIS 'default' names no django-redis cache" in messages[0].msg
    assert "'mtime'" in messages[0].msg
    assert "several processes or machines" in messages[0].hint
    # Only with --deploy.
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "W002" not in out.getvalue()
    call_command("check", deploy=True, stdout=out, stderr=out)
    assert "django_embeddings.W002" in out.getvalue()


@pytest.mark.parametrize(
    ("env", "setting"), [("mtime", None), (None, "mtime"), (None, "none"), ("pubsub", "mtime")]
)
def test_deploy_is_silent_when_the_mode_is_chosen(settings, monkeypatch, env, setting):
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    if env:
        monkeypatch.setenv("DJANGO_EMBEDDINGS_INVALIDATION", env)
    settings.CACHES = LOCMEM
    if setting:
        settings.DJANGO_EMBEDDINGS_INVALIDATION = setting
    else:
        del settings.DJANGO_EMBEDDINGS_INVALIDATION
    assert check_deployment() == []


def test_deploy_is_silent_when_redis_is_found(settings, monkeypatch):
    monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION", raising=False)
    del settings.DJANGO_EMBEDDINGS_INVALIDATION
    assert conf.INVALIDATION == "pubsub"  # the test settings' CACHES use django-redis
    assert check_deployment() == []


# --- read-only commands on a read-only store -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_read_only_commands_run_on_a_read_only_store(settings, tmp_path):
    """manage.py runs the system checks first; E003 must not stop the commands that
    only read a store, and must still stop the others."""
    if os.geteuid() == 0:
        problem = mount_problem()
        if problem:
            skip_or_fail(problem)
        disk = Tmpfs(tmp_path / "disk", size_kb=1024).mount()
        finish = disk.unmount
    else:  # chmod is enough for other users
        (tmp_path / "disk").mkdir()
        disk = None
        finish = lambda: (tmp_path / "disk").chmod(0o700)  # noqa: E731
    try:
        settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "disk" / "embeddings"
        Article.objects.create(title="a", body="one text")
        Article.objects.create(title="b", body="another text")
        if disk is not None:
            disk.readonly()
        else:
            (tmp_path / "disk").chmod(0o500)
        assert ids(check_store_writable()) == ["django_embeddings.E003"]
        assert "django_embeddings_store_writable" not in read_only_check_tags()
        assert "models" in read_only_check_tags()

        out = StringIO()
        call_command("embeddings_status", "testapp.Article", skip_checks=False, stdout=out)
        assert "  embedded    2\n" in out.getvalue()
        out = StringIO()
        call_command(
            "embeddings_export",
            "testapp.Article",
            output=str(tmp_path),
            skip_checks=False,
            stdout=out,
        )
        assert out.getvalue().startswith("Exported 2 embeddings of testapp.Article.embedding")
        with pytest.raises(SystemCheckError, match="django_embeddings.E003"):
            call_command("embeddings_gc", skip_checks=False, stdout=StringIO())
        # Other checks still run before the read-only commands.
        settings.DJANGO_EMBEDDINGS_DEFER = "yes"
        with pytest.raises(SystemCheckError, match="django_embeddings.E016"):
            call_command("embeddings_status", skip_checks=False, stdout=StringIO())
    finally:
        finish()


# --- a store directory that belongs to another user ----------------------------------

NOBODY = 65534


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user (os.chown) needs root")


def test_no_owner_warning_before_the_directory_exists(settings, tmp_path, as_root):
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, NOBODY, NOBODY)
    settings.DJANGO_EMBEDDINGS_DIR = parent / "embeddings"
    assert check_store_owner() == []


def test_no_owner_warning_for_our_own_directory(settings, store_dir):
    store_dir.mkdir()
    (store_dir / "@replica").mkdir()
    assert check_store_owner() == []


def test_directory_of_another_user_warns(settings, store_dir, as_root):
    store_dir.mkdir()
    os.chown(store_dir, NOBODY, NOBODY)
    messages = check_store_owner()
    assert ids(messages) == ["django_embeddings.W004"]
    nobody = pwd.getpwuid(NOBODY).pw_name
    assert messages[0].msg == (
        f"{str(store_dir)!r} (DJANGO_EMBEDDINGS_DIR or a store root in it) belongs to {nobody} "
        f"(uid {NOBODY}), but this process runs as root (uid 0): the files it creates there "
        f"will belong to root, and processes running as {nobody} may be unable to read or "
        "write them."
    )
    assert messages[0].hint.startswith(
        f"Run this command as {nobody} (e.g. `sudo -u {nobody} python manage.py ...`). Or "
        "share a group:"
    )
    assert "DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o660" in messages[0].hint
    assert "DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o770" in messages[0].hint


def test_store_root_of_another_user_warns(settings, store_dir, as_root):
    """The directory is ours; the store root of another database (or a test one) is not."""
    for root in ("@replica", "@test-0123456789ab", "app.Model"):
        (store_dir / root).mkdir(parents=True)
        os.chown(store_dir / root, 54321, 54321)  # a uid with no name, as in containers
    (store_dir / "@file").write_text("not a store root")
    messages = check_store_owner()
    assert ids(messages) == ["django_embeddings.W004"] * 2
    assert [m.msg.split(" (DJANGO")[0] for m in messages] == [
        repr(str(store_dir / "@replica")),
        repr(str(store_dir / "@test-0123456789ab")),
    ]
    assert "belongs to uid 54321, but this process runs as root (uid 0)" in messages[0].msg
    assert "`sudo -u '#54321' python manage.py ...`" in messages[0].hint


def test_no_owner_warning_once_a_group_is_shared(settings, store_dir, as_root):
    """A setgid directory (new files take its group) and group-writable modes: set up."""
    store_dir.mkdir()
    os.chown(store_dir, NOBODY, 0)
    store_dir.chmod(0o2770)
    assert ids(check_store_owner()) == ["django_embeddings.W004"]  # the default 0o640: read-only
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o660
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o770
    assert check_store_owner() == []
    store_dir.chmod(0o770)  # no setgid: new files would take root's group
    assert ids(check_store_owner()) == ["django_embeddings.W004"]
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = "0o660"  # E018 reports it
    store_dir.chmod(0o2770)
    assert ids(check_store_owner()) == ["django_embeddings.W004"]


@pytest.mark.django_db
def test_owner_warning_runs_with_the_writability_check(settings, store_dir, as_root):
    """Like E003, W004 is about writing: commands that only read skip it."""
    store_dir.mkdir()
    os.chown(store_dir, NOBODY, NOBODY)
    out, err = StringIO(), StringIO()
    call_command("check", stdout=out, stderr=err)
    assert "django_embeddings.W004" in out.getvalue() + err.getvalue()
    out, err = StringIO(), StringIO()
    call_command("check", tags=read_only_check_tags(), stdout=out, stderr=err)
    assert "django_embeddings.W004" not in out.getvalue() + err.getvalue()

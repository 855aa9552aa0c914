from __future__ import annotations

import json
import logging
from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction
from django.db.migrations.writer import MigrationWriter

from django_embeddings import EmbeddingField, cache, tasks
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import content_hash
from django_embeddings.providers import get_provider
from django_embeddings.tasks import embed_rows, framework
from tests.testapp.models import Article, SlugDoc
from tests.utils import is_embedded, stored_hash

pytestmark = pytest.mark.django_db(transaction=True)

# django.tasks on Django 6.0+, the django-tasks backport on 5.2: the same backends.
IMMEDIATE = f"{framework}.backends.immediate.ImmediateBackend"
DUMMY = f"{framework}.backends.dummy.DummyBackend"


def calls() -> list[list[str]]:
    return get_provider("default").calls  # type: ignore[attr-defined, no-any-return]


def stored(model) -> set[str]:  # type: ignore[no-untyped-def]
    return set(cache.get(model._meta.get_field("embedding").store).keys())


def backend():  # type: ignore[no-untyped-def]
    from importlib import import_module

    return import_module(framework).task_backends["default"]  # type: ignore[arg-type]


@pytest.fixture
def deferred(settings):  # type: ignore[no-untyped-def]
    settings.DJANGO_EMBEDDINGS_DEFER = True


@pytest.fixture
def dummy(settings, deferred):  # type: ignore[no-untyped-def]
    settings.TASKS = {"default": {"BACKEND": DUMMY}}
    yield backend()
    backend().clear()


@pytest.fixture
def immediate(settings, deferred):  # type: ignore[no-untyped-def]
    settings.TASKS = {"default": {"BACKEND": IMMEDIATE}}
    return backend()


def test_a_tasks_framework_is_found():
    assert framework in ("django.tasks", "django_tasks")
    assert embed_rows.module_path == "django_embeddings.tasks.embed_rows"  # type: ignore[attr-defined]


class TestDummyBackend:
    def test_save_enqueues_after_commit_and_calls_no_provider(self, dummy):
        with transaction.atomic():
            article = Article.objects.create(title="a", body="deferred text")
            assert dummy.results == []  # nothing before commit
        assert calls() == []
        article.refresh_from_db()
        assert article.embedding == content_hash("deferred text")
        assert not is_embedded(article)  # pending until the task runs
        (result,) = dummy.results
        assert result.task.module_path == "django_embeddings.tasks.embed_rows"
        assert result.args == ["testapp.Article.embedding", [str(article.pk)], "default"]
        json.dumps([result.args, result.kwargs])  # what any queue can carry

        # A worker runs it.
        assert result.task.call(*result.args, **result.kwargs) == 1
        assert is_embedded(article)
        assert stored(Article) == {str(article.pk)}

    def test_rolled_back_save_enqueues_nothing(self, dummy):
        with transaction.atomic():
            Article.objects.create(title="a", body="text")
            transaction.set_rollback(True)
        assert dummy.results == []

    def test_status_shows_deferred_rows_as_missing(self, dummy):
        Article.objects.create(title="a", body="waiting for a worker")
        out = StringIO()
        call_command("embeddings_status", "testapp.Article", json=True, stdout=out)
        status = json.loads(out.getvalue())["testapp.Article.embedding"]
        assert (status["missing"], status["embedded"], status["deferred"]) == (1, 0, True)

    def test_backfill_catches_up_on_tasks_that_never_ran(self, dummy):
        Article.objects.create(title="a", body="lost task")
        out = StringIO()
        call_command("embeddings_backfill", "testapp.Article", stdout=out)
        assert out.getvalue() == "Embedded 1 of 1 rows of testapp.Article.embedding (--missing).\n"

    def test_deletes_are_not_deferred(self, dummy, settings):
        settings.DJANGO_EMBEDDINGS_DEFER = False
        article = Article.objects.create(title="a", body="text")
        settings.DJANGO_EMBEDDINGS_DEFER = True
        article.delete()
        assert stored(Article) == set()
        assert dummy.results == []

    def test_string_keys_travel_as_strings(self, dummy):
        doc = SlugDoc.objects.create(slug="a/../ü", text="slug text")
        (result,) = dummy.results
        assert result.args[1] == ["a/../ü"]
        result.task.call(*result.args, **result.kwargs)
        assert stored(SlugDoc) == {doc.pk}

    def test_row_deleted_before_the_task_ran(self, dummy):
        article = Article.objects.create(title="a", body="text")
        Article.objects.filter(pk=article.pk)._raw_delete(using="default")
        (result,) = dummy.results
        assert result.task.call(*result.args, **result.kwargs) == 0
        assert stored(Article) == set()


class TestImmediateBackend:
    def test_embeds_after_commit(self, immediate):
        article = Article.objects.create(title="a", body="embedded by a task")
        assert is_embedded(article)
        assert calls() == [["embedded by a task"]]

    def test_failure_is_recorded_by_the_backend_and_the_row_stays_missing(
        self, immediate, settings, caplog
    ):
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            "default": {"BACKEND": "tests.utils.FailingProvider"}
        }
        finished = []

        from importlib import import_module

        signals = import_module(f"{framework}.signals")

        def on_finished(sender, task_result, **kwargs):  # type: ignore[no-untyped-def]
            finished.append(task_result)

        signals.task_finished.connect(on_finished)
        try:
            with caplog.at_level(logging.ERROR):
                article = Article.objects.create(title="a", body="provider is down")
        finally:
            signals.task_finished.disconnect(on_finished)
        (result,) = finished
        assert result.status == "FAILED"
        assert result.errors[0].exception_class_path == "django_embeddings.exceptions.ProviderError"
        article.refresh_from_db()
        assert article.embedding == content_hash("provider is down")
        assert stored_hash(article) is None  # pending: embeddings_backfill embeds it

    def test_failure_raises_even_when_errors_are_only_logged(self, settings, caplog):
        settings.DJANGO_EMBEDDINGS_ON_ERROR = "log"
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            "default": {"BACKEND": "tests.utils.FailingProvider"}
        }
        Article.objects.bulk_create([Article(title="a", body="provider is down")])
        pk = str(Article.objects.get().pk)
        with caplog.at_level(logging.CRITICAL), pytest.raises(EmbeddingsError) as excinfo:
            embed_rows.call("testapp.Article.embedding", [pk])  # type: ignore[attr-defined]
        assert str(excinfo.value) == (
            f"Provider 'hashing-v1-64' failed to embed testapp.Article.embedding (rows {pk!r}): "
            "the provider is down"
        )


class TestField:
    def test_field_option_wins_over_the_setting(self, dummy, settings, monkeypatch):
        field = Article._meta.get_field("embedding")
        monkeypatch.setattr(field, "defer", False)
        Article.objects.create(title="a", body="in the request")
        assert dummy.results == []
        settings.DJANGO_EMBEDDINGS_DEFER = False
        monkeypatch.setattr(field, "defer", True)
        Article.objects.create(title="b", body="in a task")
        assert len(dummy.results) == 1

    def test_deconstruct(self):
        assert "defer" not in EmbeddingField(source="body").deconstruct()[3]
        assert EmbeddingField(source="body", defer=True).deconstruct()[3]["defer"] is True
        assert EmbeddingField(source="body", defer=False).deconstruct()[3]["defer"] is False
        string, _ = MigrationWriter.serialize(EmbeddingField(source="body", defer=True))
        assert string == "django_embeddings.fields.EmbeddingField(defer=True, source='body')"

    def test_without_a_tasks_framework_the_error_says_what_to_install(self, monkeypatch):
        monkeypatch.setattr(tasks, "task", None)
        with pytest.raises(ImproperlyConfigured) as excinfo:
            tasks.enqueue(Article._meta.get_field("embedding"), ["1"])
        assert str(excinfo.value) == (
            "testapp.Article.embedding defers embedding to a task, which needs Django's tasks "
            "framework: Django 6.0 or later, or `pip install django-tasks` (with "
            '"django_tasks" in INSTALLED_APPS) on Django 5.2.'
        )

    def test_unknown_label(self):
        from django_embeddings.labels import LabelError

        with pytest.raises(LabelError, match="'testapp.Article' should name one field"):
            embed_rows.call("testapp.Article", ["1"])  # type: ignore[attr-defined]

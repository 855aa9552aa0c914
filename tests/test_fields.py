from __future__ import annotations

import uuid

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.migrations.writer import MigrationWriter
from django.test.utils import CaptureQueriesContext

from django_embeddings import EmbeddingField, cache, writer
from django_embeddings.exceptions import ProviderError
from django_embeddings.fields import content_hash
from django_embeddings.providers import get_provider
from django_embeddings.signals import embedding_failed
from tests.otherapp.models import Doc as OtherDoc
from tests.testapp.models import (
    Article,
    ArticleProxy,
    Doc,
    ManualDoc,
    Note,
    Product,
    SlugDoc,
    UUIDDoc,
)

pytestmark = pytest.mark.django_db(transaction=True)


def stored_keys(field: EmbeddingField) -> set[str]:
    return set(cache.get(field.store).keys())


def field_of(model, name="embedding") -> EmbeddingField:  # type: ignore[no-untyped-def]
    return model._meta.get_field(name)


def store_root_of(model) -> object:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from django.conf import settings

    return Path(settings.DJANGO_EMBEDDINGS_DIR)


def calls() -> list[list[str]]:
    return get_provider("default").calls  # type: ignore[attr-defined, no-any-return]


class TestSave:
    def test_create_embeds_and_records_the_text_hash(self):
        text = "Read and write comma separated files"
        article = Article.objects.create(title="CSV", body=text)
        assert article.embedding == content_hash(text)
        article.refresh_from_db()
        assert article.embedding == content_hash(text)
        assert field_of(Article).store.path.is_relative_to(store_root_of(Article))
        field = field_of(Article)
        assert stored_keys(field) == {str(article.pk)}
        vector = field.store.load_vector(str(article.pk))
        expected = get_provider().embed(["Read and write comma separated files"])[0]
        np.testing.assert_array_equal(vector, expected)

    def test_vector_goes_to_the_vector_log_with_the_file_mode(self):
        Article.objects.create(title="a", body="alpha beta")
        folder = field_of(Article).store.path
        assert not list(folder.glob("*.npy"))  # no file per row
        names = [p.name for p in folder.glob("_vectors-*")]
        assert names == ["_vectors-0"]
        assert (folder / names[0]).stat().st_mode & 0o777 == 0o640  # the default mode

    def test_unchanged_text_makes_no_provider_call(self):
        article = Article.objects.create(title="a", body="same text")
        before = len(calls())
        article.title = "renamed"
        article.save()
        Article.objects.get(pk=article.pk).save()
        assert len(calls()) == before

    def test_changed_text_is_embedded_again(self):
        article = Article.objects.create(title="a", body="first text")
        article.body = "second text"
        article.save()
        assert calls()[-1] == ["second text"]
        vector = field_of(Article).store.load_vector(str(article.pk))
        np.testing.assert_array_equal(vector, get_provider().embed(["second text"])[0])

    def test_a_save_alone_reads_nothing_back(self):
        """With no other write to the store since the save, its vector is the newest:
        the save's INSERT is its only query."""
        Article.objects.create(title="warm", body="the store exists now")
        table = Article._meta.db_table
        with CaptureQueriesContext(connection) as queries:
            article = Article.objects.create(title="a", body="a text written alone")
        assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]
        assert field_of(Article).store.load_vector(str(article.pk)) is not None
        assert table in queries.captured_queries[0]["sql"]

    def test_an_update_always_checks_the_row(self):
        """A concurrent save may commit an older text the store holds already, and store
        nothing: only reading the row back after storing tells."""
        article = Article.objects.create(title="a", body="first text")
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            Article.objects.create(title="b", body="a new row")
            article.body = "second text"
            article.save()
        selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
        assert len(selects) == 1 and str(article.pk) in selects[0], selects

    def test_a_store_write_since_the_save_makes_it_check_the_row(self):
        """Another write reached the store between the save and its own store write: a
        newer text of the row may be stored already, so the row's hash is read back."""
        Article.objects.create(title="warm", body="the store exists now")
        field = field_of(Article)
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            article = Article.objects.create(title="b", body="a text of its own")
            # Another writer's vector, stored before this transaction commits.
            vector = get_provider().embed(["another row"])[0]
            writer.put_vectors(field.store, [("999999", vector, content_hash("x"), "h")])
        selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
        assert len(selects) == 1 and str(article.pk) in selects[0], selects

    def test_update_fields_without_the_source_skips_work(self):
        article = Article.objects.create(title="a", body="body text")
        before = len(calls())
        article.body = "changed but not saved"
        article.save(update_fields=["title"])
        assert len(calls()) == before

    def test_rolled_back_transaction_changes_no_embedding(self):
        article = Article.objects.create(title="a", body="kept text")
        before = field_of(Article).store.load_vector(str(article.pk))
        with pytest.raises(RuntimeError), transaction.atomic():
            article.body = "rolled back text"
            article.save()
            Article.objects.create(title="b", body="never committed")
            raise RuntimeError
        assert stored_keys(field_of(Article)) == {str(article.pk)}
        np.testing.assert_array_equal(field_of(Article).store.load_vector(str(article.pk)), before)
        assert ["rolled back text"] not in calls()

    def test_embedding_waits_for_commit(self):
        with transaction.atomic():
            article = Article.objects.create(title="a", body="inside a transaction")
            assert stored_keys(field_of(Article)) == set()
        assert stored_keys(field_of(Article)) == {str(article.pk)}

    def test_delete_removes_the_vector(self, store_dir):
        article = Article.objects.create(title="a", body="to be deleted")
        pk = article.pk
        article.delete()
        assert stored_keys(field_of(Article)) == set()
        assert not list(field_of(Article).store.path.glob("*.npy"))
        assert field_of(Article).store.load_vector(str(pk)) is None

    def test_queryset_delete_removes_vectors(self):
        for n in range(3):
            Article.objects.create(title=str(n), body=f"text number {n}")
        Article.objects.filter(title__in=["0", "1"]).delete()
        assert stored_keys(field_of(Article)) == {str(Article.objects.get().pk)}

    def test_empty_text_stores_nothing(self):
        article = Article.objects.create(title="a", body="")
        assert article.embedding is None
        assert stored_keys(field_of(Article)) == set()
        article.body = "now with words"
        article.save()
        article.body = "   "
        article.save()
        article.refresh_from_db()
        assert article.embedding is None
        assert stored_keys(field_of(Article)) == set()

    def test_proxy_model_saves_are_embedded(self):
        proxy = ArticleProxy.objects.create(title="p", body="saved through a proxy")
        assert stored_keys(field_of(Article)) == {str(proxy.pk)}

    def test_auto_embed_false_leaves_rows_pending(self):
        doc = ManualDoc.objects.create(text="manual")
        assert doc.embedding == content_hash("manual")
        assert stored_keys(field_of(ManualDoc)) == set()
        assert list(ManualDoc.objects.semantic_search("manual", k=1)) == []

    def test_long_text_is_cut_to_the_documented_length(self, settings):
        settings.DJANGO_EMBEDDINGS_MAX_TEXT_LENGTH = 10
        Article.objects.create(title="a", body="0123456789abcdef")
        assert calls()[-1] == ["0123456789"]

    def test_bulk_create_records_the_hash_but_embeds_nothing(self):
        Article.objects.bulk_create([Article(title="x", body="bulk created")])
        assert Article.objects.get().embedding == content_hash("bulk created")
        assert stored_keys(field_of(Article)) == set()

    def test_update_fields_naming_the_source_records_the_new_hash(self):
        article = Article.objects.create(title="a", body="first words")
        article.body = "second words"
        article.save(update_fields=["body"])
        article.refresh_from_db()
        assert article.embedding == content_hash("second words")
        assert calls()[-1] == ["second words"]
        assert [a.pk for a in Article.objects.semantic_search("second words", k=1)] == [article.pk]

    def test_saves_in_one_transaction_reach_the_provider_as_one_batch(self):
        before = len(calls())
        with transaction.atomic():
            for n in range(5):
                Article.objects.create(title=str(n), body=f"batched text {n}")
        assert calls()[before:] == [[f"batched text {n}" for n in range(5)]]
        assert len(stored_keys(field_of(Article))) == 5

    def test_a_savepoint_rolled_back_leaves_the_rest_of_the_batch(self):
        with transaction.atomic():
            kept = Article.objects.create(title="kept", body="kept text")
            with pytest.raises(RuntimeError), transaction.atomic():
                Article.objects.create(title="gone", body="rolled back text")
                raise RuntimeError
            also = Article.objects.create(title="also", body="also kept")
        assert stored_keys(field_of(Article)) == {str(kept.pk), str(also.pk)}


class TestKeys:
    def test_uuid_primary_keys(self):
        doc = UUIDDoc.objects.create(text="uuid keyed")
        assert stored_keys(field_of(UUIDDoc)) == {str(doc.pk)}
        hits = UUIDDoc.objects.semantic_search("uuid keyed", k=1)
        assert [h.pk for h in hits] == [doc.pk]
        assert isinstance(hits[0].pk, uuid.UUID)

    @pytest.mark.parametrize("slug", ["a/b", "../../etc/passwd", "ünïcødé ✓", "..", "x" * 200])
    def test_string_keys_never_become_paths(self, slug, store_dir):
        SlugDoc.objects.create(slug=slug, text=f"document {slug}")
        folder = field_of(SlugDoc).store.path
        for path in store_dir.rglob("*"):
            assert path.resolve().is_relative_to(store_dir.resolve())
        assert [p.name for p in folder.glob("_vectors-*")] == ["_vectors-0"]
        hits = SlugDoc.objects.semantic_search(f"document {slug}", k=1)
        assert [h.pk for h in hits] == [slug]

    def test_two_models_with_one_name_in_two_apps_never_collide(self):
        ours = Doc.objects.create(text="ours")
        theirs = OtherDoc.objects.create(text="theirs")
        assert field_of(Doc).store.path != field_of(OtherDoc).store.path
        assert [d.pk for d in Doc.objects.semantic_search("theirs", k=5)] == [ours.pk]
        assert [d.pk for d in OtherDoc.objects.semantic_search("ours", k=5)] == [theirs.pk]

    def test_two_fields_on_one_model_are_independent(self):
        product = Product.objects.create(name="Lamp", description="A bright desk lamp")
        assert product.name_embedding == content_hash("Lamp")
        assert product.full_embedding == content_hash("Lamp\nA bright desk lamp")
        name_store = field_of(Product, "name_embedding").store
        full_store = field_of(Product, "full_embedding").store
        assert name_store.path != full_store.path
        np.testing.assert_array_equal(
            full_store.load_vector(str(product.pk)),
            get_provider().embed(["Lamp\nA bright desk lamp"])[0],
        )
        with pytest.raises(ValueError, match="several EmbeddingFields"):
            Product.objects.semantic_search("lamp")
        hits = Product.objects.semantic_search("lamp", field="name_embedding")
        assert [h.pk for h in hits] == [product.pk]

    def test_callable_source(self):
        note = Note.objects.create(heading="Todo", content="buy milk")
        vector = field_of(Note).store.load_vector(str(note.pk))
        np.testing.assert_array_equal(vector, get_provider().embed(["Todo: buy milk"])[0])
        assert [n.pk for n in Note.objects.semantic_search("milk", k=1)] == [note.pk]


class TestFailures:
    @pytest.fixture
    def failing(self, settings):
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.FailingProvider"},
        }

    def test_provider_failure_after_commit_is_logged_and_leaves_the_row_pending(
        self, failing, caplog
    ):
        failures = []
        embedding_failed.connect(lambda **kwargs: failures.append(kwargs), weak=False)
        try:
            article = Article.objects.create(title="a", body="cannot embed")
        finally:
            embedding_failed.receivers.clear()
        assert Article.objects.get().embedding == content_hash("cannot embed")
        assert stored_keys(field_of(Article)) == set()
        assert "Could not embed 1 rows of testapp.Article.embedding" in caplog.text
        assert "embeddings_backfill testapp.Article" in caplog.text
        [failure] = failures
        assert failure["sender"] is Article and failure["keys"] == [str(article.pk)]
        assert isinstance(failure["exception"], ProviderError)

    def test_a_failure_never_skips_other_on_commit_callbacks(self, failing):
        ran = []
        with transaction.atomic():
            Article.objects.create(title="a", body="cannot embed")
            transaction.on_commit(lambda: ran.append(True))
        assert ran == [True]

    def test_failure_of_a_changed_text_never_serves_the_old_vector(self, settings):
        article = Article.objects.create(title="a", body="old text")
        old = get_provider().embed(["old text"])[0]
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.FailingProvider"},
        }
        article.body = "new text"
        article.save()
        article.refresh_from_db()
        assert article.embedding == content_hash("new text")
        # The old vector is of another text: it is never served for this row.
        assert list(Article.objects.semantic_search(old, k=1)) == []

    def test_missing_dir_is_a_clear_error(self, settings, caplog):
        settings.DJANGO_EMBEDDINGS_DIR = None
        Article.objects.create(title="a", body="anything")
        assert "DJANGO_EMBEDDINGS_DIR is not set" in caplog.text
        with pytest.raises(ImproperlyConfigured, match="DJANGO_EMBEDDINGS_DIR is not set"):
            list(Article.objects.semantic_search("anything"))


class TestDeconstruct:
    def test_defaults_are_omitted(self):
        field = EmbeddingField(source="body")
        name, path, args, kwargs = field.deconstruct()
        assert path == "django_embeddings.fields.EmbeddingField"
        assert args == []
        assert kwargs == {"source": "body"}
        assert EmbeddingField(*args, **kwargs).deconstruct()[3] == kwargs

    def test_options_round_trip(self):
        field = EmbeddingField(source="body", provider="small", auto_embed=False, cache=False)
        kwargs = field.deconstruct()[3]
        assert kwargs == {
            "source": "body",
            "provider": "small",
            "auto_embed": False,
            "cache": False,
        }
        clone = EmbeddingField(**kwargs)
        assert clone.provider_alias == "small" and not clone.auto_embed and not clone.cache

    def test_serializes_for_migrations_without_settings(self, settings):
        settings.DJANGO_EMBEDDINGS_DIR = "/somewhere/else"
        serialized, imports = MigrationWriter.serialize(field_of(Article))
        assert serialized == "django_embeddings.fields.EmbeddingField(source='body')"
        assert "import django_embeddings.fields" in imports

    def test_callable_source_serializes_by_reference(self):
        serialized, imports = MigrationWriter.serialize(field_of(Note))
        assert "tests.testapp.models.note_text" in serialized

    def test_formfield_is_none(self):
        assert field_of(Article).formfield() is None

    def test_column_is_a_nullable_hash(self):
        field = field_of(Article)
        assert field.null and field.get_internal_type() == "CharField"
        assert field.max_length == 32
        assert field.db_type(connection) is not None


def test_migrations_are_current():
    from io import StringIO

    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", stdout=StringIO())


def test_content_hash_is_stable():
    assert content_hash("x") == content_hash("x") != content_hash("y")
    assert len(content_hash("x")) == 32

from __future__ import annotations

import json
import os
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from django_embeddings import cache
from django_embeddings.backfill import embed_queryset
from django_embeddings.fields import content_hash
from django_embeddings.keywords.terms import bag_of
from django_embeddings.management.commands import embeddings_gc
from django_embeddings.management.commands.embeddings_backfill import ProgressBar
from django_embeddings.providers import get_provider
from django_embeddings.store import files, journal
from tests.otherapp.models import Doc as OtherDoc
from tests.testapp.models import Article, Doc, Product, SlugDoc
from tests.utils import is_embedded

pytestmark = pytest.mark.django_db(transaction=True)

ALL_LABELS = [
    "otherapp.Doc.embedding",
    "testapp.Article.embedding",
    "testapp.Doc.embedding",
    "testapp.ManualDoc.embedding",
    "testapp.Note.embedding",
    "testapp.Product.full_embedding",
    "testapp.Product.name_embedding",
    "testapp.SlugDoc.embedding",
    "testapp.UUIDDoc.embedding",
]


def run(*args: str, **options: object) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def field_of(model, name="embedding"):  # type: ignore[no-untyped-def]
    return model._meta.get_field(name)


def stored(model, name="embedding") -> set[str]:  # type: ignore[no-untyped-def]
    return set(cache.get(field_of(model, name).store).keys())


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def age_store(model, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Date the journal's puts ``seconds`` earlier, as the GC's age guard reads them."""
    path = field_of(model).store.path / journal.JOURNAL
    header, body = path.read_bytes().split(b"\n", 1)
    records = journal.parse(body)
    lines = [records.entry(n).to_line(records.times[n] - int(seconds)) for n in range(len(records))]
    path.write_bytes(header + b"\n" + b"".join(lines))


class TestLabels:
    @pytest.mark.parametrize(
        "command",
        [
            "embeddings_gc",
            "embeddings_sweep",
            "embeddings_backfill",
            "embeddings_status",
            "embeddings_compact",
            "embeddings_export",
        ],
    )
    @pytest.mark.parametrize(
        ("label", "message"),
        [
            (
                "testapp",
                "'testapp' is not a model or field label; use app_label.ModelName or "
                "app_label.ModelName.field_name.",
            ),
            (
                "testapp.Nope",
                "'testapp.Nope' names no installed model: "
                "App 'testapp' doesn't have a 'Nope' model.",
            ),
            (
                "nope.Article",
                "'nope.Article' names no installed model: No installed app with label 'nope'.",
            ),
            ("auth.User", "'auth.User': auth.User has no EmbeddingField."),
            (
                "testapp.Product.name",
                "'testapp.Product.name': testapp.Product has no EmbeddingField named 'name'; "
                "it has ['name_embedding', 'full_embedding'].",
            ),
            ("testapp.Article.embedding.x", "'testapp.Article.embedding.x' is not a model"),
        ],
    )
    def test_bad_label_names_the_label(self, command, label, message):
        with pytest.raises(CommandError) as excinfo:
            run(command, label)
        assert str(excinfo.value).startswith(message)

    def test_no_label_means_every_field(self):
        output = run("embeddings_compact")
        assert output.splitlines() == [f"Compacted {label} at version 0." for label in ALL_LABELS]

    def test_model_label_means_its_fields_and_repeats_are_dropped(self):
        output = run(
            "embeddings_compact", "testapp.Product", "testapp.Product.name_embedding", "testapp.doc"
        )
        assert output == (
            "Compacted testapp.Product.name_embedding at version 0.\n"
            "Compacted testapp.Product.full_embedding at version 0.\n"
            "Compacted testapp.Doc.embedding at version 0.\n"
        )


class TestGc:
    def test_removes_vectors_of_rows_deleted_by_raw_sql(self):
        kept, gone = (
            Article.objects.create(title="a", body="kept"),
            Article.objects.create(title="b", body="gone"),
        )
        Article.objects.filter(pk=gone.pk)._raw_delete(using="default")  # no signals
        age_store(Article, 600)
        assert run("embeddings_gc", "testapp.Article") == (
            "Removed 1 orphaned embeddings for testapp.Article.embedding.\n"
        )
        assert stored(Article) == {str(kept.pk)}
        assert field_of(Article).store.load_vector(str(gone.pk)) is None

    def test_dry_run_removes_nothing(self):
        gone = Article.objects.create(title="b", body="gone")
        Article.objects.filter(pk=gone.pk)._raw_delete(using="default")
        age_store(Article, 600)
        output = run("embeddings_gc", "testapp.Article", dry_run=True)
        assert output == "Would remove 1 orphaned embeddings for testapp.Article.embedding.\n"
        assert stored(Article) == {str(gone.pk)}

    def test_recent_orphans_are_kept(self):
        gone = Article.objects.create(title="b", body="gone")
        Article.objects.filter(pk=gone.pk)._raw_delete(using="default")
        output = run("embeddings_gc", "testapp.Article.embedding")
        assert output == (
            "Removed 0 orphaned embeddings for testapp.Article.embedding.\n"
            "Kept 1 orphaned embeddings of testapp.Article.embedding younger than 300 seconds.\n"
        )
        assert run("embeddings_gc", "testapp.Article.embedding", min_age=0) == (
            "Removed 1 orphaned embeddings for testapp.Article.embedding.\n"
        )

    def test_files_with_no_index_entry_are_removed(self):
        article = Article.objects.create(title="a", body="text")
        store = field_of(Article).store
        stray = store.path / files.filename_for("crashed-before-journal")
        np.save(stray, np.ones(64, np.float32))
        age(stray, 600)
        assert run("embeddings_gc", "testapp.Article", min_age=60) == (
            "Removed 1 orphaned embeddings for testapp.Article.embedding.\n"
        )
        assert not stray.exists()
        assert stored(Article) == {str(article.pk)}

    def test_keys_of_another_type_are_orphans(self):
        field = field_of(Article)
        field.store.put("not-an-int", np.ones(64, np.float32), content_hash="", identity="x")
        assert run("embeddings_gc", "testapp.Article", min_age=0) == (
            "Removed 1 orphaned embeddings for testapp.Article.embedding.\n"
        )

    def test_string_keys(self):
        SlugDoc.objects.create(slug="a/../b", text="kept")
        gone = SlugDoc.objects.create(slug="ü/x", text="gone")
        SlugDoc.objects.filter(pk=gone.pk)._raw_delete(using="default")
        output = run("embeddings_gc", "testapp.SlugDoc", min_age=0)
        assert output == "Removed 1 orphaned embeddings for testapp.SlugDoc.embedding.\n"
        assert stored(SlugDoc) == {"a/../b"}

    def test_every_field_by_default(self):
        output = run("embeddings_gc")
        assert output.splitlines() == [
            f"Removed 0 orphaned embeddings for {label}." for label in ALL_LABELS
        ]

    def test_refuses_an_empty_table_next_to_a_large_store(self, monkeypatch):
        monkeypatch.setattr(embeddings_gc, "GUARD_VECTORS", 3)
        Article.objects.bulk_create(Article(title="t", body=f"text {n}") for n in range(3))
        embed_queryset(Article.objects.all())
        Article.objects.all()._raw_delete(using="default")
        age_store(Article, 600)
        with pytest.raises(CommandError) as excinfo:
            run("embeddings_gc", min_age=0)
        assert str(excinfo.value) == (
            "Refusing to collect testapp.Article.embedding: table 'testapp_article' in database "
            "'default' is empty, but the store holds 3 vectors. Check DATABASES and "
            "DJANGO_EMBEDDINGS_DIR; if the table really is empty, run again with --force."
        )
        assert len(stored(Article)) == 3  # nothing was touched, in any field
        output = run("embeddings_gc", "testapp.Article", min_age=0, force=True)
        assert output == "Removed 3 orphaned embeddings for testapp.Article.embedding.\n"

    def test_guard_default_is_a_thousand(self):
        assert embeddings_gc.GUARD_VECTORS == 1000

    def test_negative_min_age(self):
        with pytest.raises(CommandError, match=r"--min-age should be 0 or more seconds, not -1.0"):
            run("embeddings_gc", "--min-age", "-1")

    def test_searches_after_gc_skip_removed_rows(self):
        Article.objects.create(title="a", body="python tutorial")
        gone = Article.objects.create(title="b", body="python snakes")
        Article.objects.filter(pk=gone.pk)._raw_delete(using="default")
        run("embeddings_gc", min_age=0)
        assert gone.pk not in [a.pk for a in Article.objects.semantic_search("python", k=5)]


class TestSweep:
    def test_removes_old_temp_files_only(self):
        Article.objects.create(title="a", body="text")
        folder = field_of(Article).store.path
        old, new = folder / "tmpabc.npy", folder / "tmpdef.npy"
        old.write_bytes(b"partial")
        new.write_bytes(b"in flight")
        age(old, 7200)
        output = run("embeddings_sweep", "testapp.Article")
        assert output == "Removed 1 temporary files for testapp.Article.embedding.\n"
        assert not old.exists() and new.exists()
        assert run("embeddings_sweep", "testapp.Article", max_age=0) == (
            "Removed 1 temporary files for testapp.Article.embedding.\n"
        )

    def test_every_field_by_default_even_without_a_store(self):
        output = run("embeddings_sweep", "--max-age", "10")
        assert output.splitlines() == [
            f"Removed 0 temporary files for {label}." for label in ALL_LABELS
        ]

    def test_negative_max_age(self):
        with pytest.raises(CommandError, match="--max-age should be 0 or more seconds"):
            run("embeddings_sweep", max_age=-5)


class TestBackfill:
    def test_missing_is_the_default(self):
        Article.objects.bulk_create(Article(title="t", body=f"text {n}") for n in range(3))
        output = run("embeddings_backfill", "testapp.Article")
        assert output == "Embedded 3 of 3 rows of testapp.Article.embedding (--missing).\n"
        assert all(is_embedded(a) for a in Article.objects.all())
        assert run("embeddings_backfill", "testapp.Article") == (
            "Embedded 0 of 3 rows of testapp.Article.embedding (--missing).\n"
        )

    def test_modes_and_dry_run(self):
        Article.objects.bulk_create(Article(title="t", body=f"text {n}") for n in range(3))
        assert run("embeddings_backfill", "testapp.Article", "--dry-run") == (
            "Would embed 3 of 3 rows of testapp.Article.embedding (--missing).\n"
        )
        run("embeddings_backfill", "testapp.Article", verbosity=0)
        Article.objects.filter(body="text 1").update(body="changed")
        assert run("embeddings_backfill", "testapp.Article", "--stale", "--dry-run") == (
            "Would embed 1 of 3 rows of testapp.Article.embedding (--stale).\n"
        )
        assert run("embeddings_backfill", "testapp.Article", "--stale") == (
            "Embedded 1 of 3 rows of testapp.Article.embedding (--stale).\n"
        )
        assert run("embeddings_backfill", "testapp.Article", "--all", "--batch-size", "2") == (
            "Embedded 3 of 3 rows of testapp.Article.embedding (--all).\n"
        )

    def test_verbosity_0_is_silent_and_2_adds_the_rate(self):
        Article.objects.bulk_create([Article(title="t", body="text")])
        assert run("embeddings_backfill", "testapp.Article", verbosity=0) == ""
        lines = run("embeddings_backfill", "testapp.Article", "--all", verbosity=2).splitlines()
        assert lines[0] == "Embedded 1 of 1 rows of testapp.Article.embedding (--all)."
        assert lines[1].startswith("  1 rows in ") and lines[1].endswith(" rows/s).")

    def test_every_field_by_default(self):
        Product.objects.bulk_create([Product(name="lamp", description="desk lamp")])
        output = run("embeddings_backfill")
        assert "Embedded 1 of 1 rows of testapp.Product.name_embedding (--missing).\n" in output
        assert "Embedded 1 of 1 rows of testapp.Product.full_embedding (--missing).\n" in output
        assert len(output.splitlines()) == len(ALL_LABELS)

    def test_modes_are_exclusive(self):
        with pytest.raises(CommandError, match="not allowed with argument"):
            run("embeddings_backfill", "--missing", "--all")

    def test_reset_needs_all(self):
        with pytest.raises(CommandError) as excinfo:
            run("embeddings_backfill", "--reset")
        assert str(excinfo.value) == (
            "--reset deletes every stored vector, so it needs --all to embed every row again."
        )

    def test_bad_batch_size(self):
        with pytest.raises(CommandError, match="--batch-size should be a positive number, not 0"):
            run("embeddings_backfill", "--batch-size", "0")

    def test_reset_after_a_dimension_change(self, settings):
        Article.objects.bulk_create(Article(title="t", body=f"text {n}") for n in range(2))
        run("embeddings_backfill", "testapp.Article")
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.CountingProvider", "OPTIONS": {"dimensions": 32}},
        }
        with pytest.raises(CommandError) as excinfo:
            run("embeddings_backfill", "testapp.Article", "--all")
        assert "holds 64-dimensional vectors" in str(excinfo.value)
        output = run("embeddings_backfill", "testapp.Article", "--all", "--reset")
        assert output == (
            "Deleted every stored vector of testapp.Article.embedding.\n"
            "Embedded 2 of 2 rows of testapp.Article.embedding (--all).\n"
        )
        assert field_of(Article).store.stats().dimensions == 32
        assert all(is_embedded(a) for a in Article.objects.all())
        assert len(Article.objects.semantic_search("text 1", k=5)) == 2

    def test_reset_dry_run_deletes_nothing(self):
        Article.objects.create(title="t", body="text")
        output = run("embeddings_backfill", "testapp.Article", "--all", "--reset", "--dry-run")
        assert output == (
            "Would delete every stored vector of testapp.Article.embedding.\n"
            "Would embed 1 of 1 rows of testapp.Article.embedding (--all).\n"
        )
        assert len(stored(Article)) == 1

    def test_interrupt_says_how_to_resume(self, monkeypatch):
        Article.objects.bulk_create(Article(title="t", body=f"text {n}") for n in range(4))
        provider = get_provider()
        real_embed = provider.embed

        def embed_then_interrupt(texts, input_type="document"):  # type: ignore[no-untyped-def]
            if provider.calls:  # type: ignore[attr-defined]
                raise KeyboardInterrupt
            return real_embed(texts, input_type)

        monkeypatch.setattr(provider, "embed", embed_then_interrupt)
        with pytest.raises(CommandError) as excinfo:
            run("embeddings_backfill", "testapp.Article", batch_size=2)
        assert str(excinfo.value) == (
            "Interrupted while embedding testapp.Article.embedding after embedding 2 rows. "
            "Every finished batch is saved: run the command again to continue."
        )
        assert excinfo.value.returncode == 130
        monkeypatch.undo()
        assert run("embeddings_backfill", "testapp.Article", batch_size=2) == (
            "Embedded 2 of 4 rows of testapp.Article.embedding (--missing).\n"
        )

    def test_progress_bar_on_a_terminal(self):
        class Terminal(StringIO):
            def isatty(self) -> bool:
                return True

        Article.objects.bulk_create(Article(title="t", body=f"text {n}") for n in range(3))
        out = Terminal()
        call_command("embeddings_backfill", "testapp.Article", batch_size=1, stdout=out)
        output = out.getvalue()
        assert output.startswith("\rtestapp.Article.embedding [")
        final = output.splitlines()[-2].rsplit("\r", 1)[-1].rstrip()
        assert final.startswith("testapp.Article.embedding [" + "#" * ProgressBar.WIDTH + "] 100%")
        assert "3/3 rows, " in final and final.endswith(" rows/s, done")
        assert output.endswith("Embedded 3 of 3 rows of testapp.Article.embedding (--missing).\n")


class TestProgressBar:
    def test_draws_rate_and_eta(self):
        from django.core.management.base import OutputWrapper

        from django_embeddings.backfill import BackfillResult

        out = StringIO()
        bar = ProgressBar(OutputWrapper(out), interval=0)
        bar(BackfillResult("a.B.c", "missing", total=1000, scanned=250, seconds=2.5))
        assert out.getvalue() == (
            "\ra.B.c [#######.....................]  25% 250/1000 rows, 100 rows/s, ETA 0:08"
        )
        bar(BackfillResult("a.B.c", "missing", total=100_000, scanned=1, seconds=100))
        assert out.getvalue().endswith(
            "\ra.B.c [............................]   0% 1/100000 rows, 0.0 rows/s, ETA 2777:45:00"
        )
        bar.finish()
        assert out.getvalue().endswith("\n")


class TestStatus:
    def test_counts(self, store_dir):
        embedded = Article.objects.create(title="a", body="embedded")
        Article.objects.bulk_create([Article(title="b", body="never embedded")])
        Article.objects.create(title="e", body="")  # nothing to embed
        stale = Article.objects.create(title="c", body="old provider")
        orphan = Article.objects.create(title="d", body="deleted by raw SQL")
        Article.objects.filter(pk=orphan.pk)._raw_delete(using="default")
        field = field_of(Article)
        vector = field.store.load_vector(str(stale.pk))
        field.store.put(
            str(stale.pk), vector, content_hash=content_hash("old provider"), identity="older-model"
        )
        (field.store.path / "tmpleftover").write_bytes(b"")
        version = field.store.version()
        output = run("embeddings_status", "testapp.Article")
        assert output == (
            "testapp.Article.embedding\n"
            "  rows        4\n"
            "  embedded    1\n"
            "  missing     1\n"
            "  empty       1\n"
            "  stale       1\n"
            "  keywords    0 rows without terms\n"
            "  orphans     1\n"
            "  temp files  1\n"
            "  store       files\n"
            f"  version     {version}\n"
            f"  journal     {version}\n"
            "  provider    default (hashing-v1-64)\n"
            "  dimensions  64\n"
            "  deferred    no\n"
        )
        assert embedded.pk  # the embedded row is counted as such

    def test_rows_no_save_recorded_are_missing_when_they_have_a_text(self):
        # Raw SQL (or rows from before the field existed): a NULL column, text or not.
        with connection.cursor() as cursor:
            for body in ("inserted by raw SQL", " "):
                cursor.execute(
                    f"INSERT INTO {Article._meta.db_table} (title, body, published) "
                    "VALUES (%s, %s, %s)",
                    ["raw", body, True],
                )
        status = json.loads(run("embeddings_status", "testapp.Article", json=True))
        counts = status["testapp.Article.embedding"]
        assert (counts["rows"], counts["missing"], counts["empty"]) == (2, 1, 1)
        assert run("embeddings_backfill", "testapp.Article") == (
            "Embedded 1 of 2 rows of testapp.Article.embedding (--missing).\n"
        )
        status = json.loads(run("embeddings_status", "testapp.Article", json=True))
        counts = status["testapp.Article.embedding"]
        assert (counts["embedded"], counts["missing"], counts["empty"]) == (1, 0, 1)

    def test_json(self):
        Article.objects.create(title="a", body="text")
        data = json.loads(run("embeddings_status", "testapp.Article", "testapp.Product", json=True))
        assert sorted(data) == [
            "testapp.Article.embedding",
            "testapp.Product.full_embedding",
            "testapp.Product.name_embedding",
        ]
        article = data["testapp.Article.embedding"]
        assert article == {
            "rows": 1,
            "embedded": 1,
            "missing": 0,
            "empty": 0,
            "stale": 0,
            "keywords_missing": 0,
            "orphans": 0,
            "temp_files": 0,
            "store": "files",
            "version": 1,
            "snapshot_version": 0,
            "journal_entries": 1,
            "vectors": 1,
            "identities": {"hashing-v1-64": 1},
            "provider": "default",
            "identity": "hashing-v1-64",
            "provider_error": None,
            "dimensions": 64,
            "stored_dimensions": 64,
            "deferred": False,
        }
        assert data["testapp.Product.name_embedding"]["identity"] == "hashing-v1-16"

    def test_store_that_was_never_written(self, store_dir):
        data = json.loads(run("embeddings_status", "otherapp.Doc", json=True))
        assert data["otherapp.Doc.embedding"]["version"] == 0
        assert not (store_dir / "otherapp.Doc").exists()  # status writes nothing

    def test_dimension_change_is_shown(self, settings):
        Article.objects.create(title="a", body="text")
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {
            **settings.DJANGO_EMBEDDINGS_PROVIDERS,
            "default": {"BACKEND": "tests.utils.CountingProvider", "OPTIONS": {"dimensions": 8}},
        }
        output = run("embeddings_status", "testapp.Article")
        assert "  stale       1\n" in output
        assert "  dimensions  8 (store: 64)\n" in output

    def test_unavailable_provider(self, settings):
        settings.DJANGO_EMBEDDINGS_PROVIDERS = {"default": {"BACKEND": "nope.Provider"}}
        output = run("embeddings_status", "testapp.Article")
        assert (
            "  provider    default (unavailable: DJANGO_EMBEDDINGS_PROVIDERS['default']" in output
        )


class TestCompact:
    def test_prints_the_version(self):
        Article.objects.create(title="a", body="one")
        Article.objects.create(title="b", body="two")
        assert run("embeddings_compact", "testapp.Article") == (
            "Compacted testapp.Article.embedding at version 2.\n"
        )
        stats = field_of(Article).store.stats()
        assert (stats.snapshot_version, stats.journal_entries, stats.vectors) == (2, 0, 2)
        assert len(Article.objects.semantic_search("one", k=5)) == 2


class TestExportImport:
    def test_round_trip_into_an_empty_store(self, tmp_path, settings):
        articles = [Article.objects.create(title=f"t{n}", body=f"text {n}") for n in range(3)]
        Doc.objects.create(text="a doc")
        output = run("embeddings_export", "testapp.Article", "testapp.Doc", output=str(tmp_path))
        assert output == (
            f"Exported 3 embeddings of testapp.Article.embedding to "
            f"{tmp_path / 'testapp.Article.embedding.npz'}.\n"
            f"Exported 1 embeddings of testapp.Doc.embedding to "
            f"{tmp_path / 'testapp.Doc.embedding.npz'}.\n"
        )
        with np.load(tmp_path / "testapp.Article.embedding.npz", allow_pickle=False) as data:
            assert data["vectors"].shape == (3, 64)
            assert json.loads(str(data["meta"][()]))["label"] == "testapp.Article.embedding"
        # Exported as searches use them: normalized.
        index = cache.get(field_of(Article).store)
        expected = {a.pk: index.vector(str(a.pk)) for a in articles}

        # Another deployment: the same rows (loaddata carries their columns, the hashes of
        # their texts), an empty store.
        settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "restored"
        Article.objects.filter(pk=articles[2].pk)._raw_delete(using="default")
        assert not any(is_embedded(a) for a in articles[:2])
        output = run("embeddings_import", str(tmp_path / "testapp.Article.embedding.npz"))
        assert output == (
            "Imported 2 of 3 embeddings into testapp.Article.embedding (1 skipped: no such row).\n"
        )
        assert stored(Article) == {str(articles[0].pk), str(articles[1].pk)}
        for pk in (articles[0].pk, articles[1].pk):
            vector = field_of(Article).store.load_vector(str(pk))
            np.testing.assert_array_equal(vector, expected[pk])
        # The hashes travel with the vectors: the rows are served, nothing is embedded again.
        assert all(is_embedded(a) for a in articles[:2])
        before = len(get_provider().calls)  # type: ignore[attr-defined]
        run("embeddings_backfill", "testapp.Article", verbosity=0)
        run("embeddings_backfill", "testapp.Article", "--stale", verbosity=0)
        assert len(get_provider().calls) == before  # type: ignore[attr-defined]
        hits = Article.objects.semantic_search("text 1", k=1)
        assert [a.pk for a in hits] == [articles[1].pk]

    def test_terms_travel_with_the_vectors(self, tmp_path, settings):
        articles = [Article.objects.create(title=f"t{n}", body=f"text {n}") for n in range(3)]
        store = field_of(Article).store
        bags = {str(articles[0].pk): bag_of("quick fox fox"), str(articles[1].pk): ""}
        for article in articles:  # the first two as a field with keywords stores them
            key = str(article.pk)
            vector = store.load_vector(key)
            digest, identity = cache.get(store).meta(key)
            store.put(key, vector, content_hash=digest, identity=identity, terms=bags.get(key))
        store.compact()  # the snapshot's terms, and the journal's, are both exported
        put_again = articles[1]
        digest, identity = cache.get(store).meta(str(put_again.pk))
        store.put(
            str(put_again.pk),
            store.load_vector(str(put_again.pk)),
            content_hash=digest,
            identity=identity,
            terms="text",
        )
        bags[str(put_again.pk)] = "text"
        run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
        path = tmp_path / "testapp.Article.embedding.npz"
        with np.load(path, allow_pickle=False) as data:
            assert {"terms_ptr", "terms_ids", "terms_counts", "terms_known", "terms_vocab"} <= set(
                data.files
            )

        settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "restored"
        assert run("embeddings_import", str(path)) == (
            "Imported 3 of 3 embeddings into testapp.Article.embedding.\n"
        )
        restored = field_of(Article).store
        tail = restored.read_state().tail
        assert {entry.key: entry.terms for entry in tail} == {
            str(a.pk): bags.get(str(a.pk)) for a in articles
        }

    def test_a_file_without_terms_imports_with_none(self, tmp_path, settings, monkeypatch):
        monkeypatch.setattr(field_of(Article), "keywords", False)  # rows stored without terms
        articles = [Article.objects.create(title=f"t{n}", body=f"text {n}") for n in range(2)]
        run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
        path = tmp_path / "testapp.Article.embedding.npz"
        with np.load(path, allow_pickle=False) as data:
            assert not [name for name in data.files if name.startswith("terms")]
        settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "restored"
        run("embeddings_import", str(path), verbosity=0)
        tail = field_of(Article).store.read_state().tail
        assert sorted(entry.key for entry in tail) == sorted(str(a.pk) for a in articles)
        assert {entry.terms for entry in tail} == {None}

    @pytest.mark.parametrize(
        "damage",
        [
            lambda arrays: arrays.pop("terms_vocab"),
            lambda arrays: arrays.update(terms_ids=arrays["terms_ids"].astype(np.int64)),
            lambda arrays: arrays.update(terms_vocab=np.frombuffer(b"\xff", np.uint8)),
            lambda arrays: arrays.update(terms_known=np.ones(5, bool)),
            lambda arrays: arrays.update(terms_counts=np.zeros_like(arrays["terms_counts"])),
        ],
    )
    def test_terms_that_do_not_fit_are_refused(self, tmp_path, damage):
        article = Article.objects.create(title="a", body="text")
        store = field_of(Article).store
        key = str(article.pk)
        digest, identity = cache.get(store).meta(key)
        vector = store.load_vector(key)
        store.put(key, vector, content_hash=digest, identity=identity, terms="text")
        run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
        path = tmp_path / "testapp.Article.embedding.npz"
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        damage(arrays)
        np.savez(path, **arrays)
        version = store.version()
        with pytest.raises(CommandError, match="has keyword terms that do not fit its rows"):
            run("embeddings_import", str(path))
        assert store.version() == version

    def test_import_a_directory(self, tmp_path):
        Article.objects.create(title="a", body="text")
        OtherDoc.objects.create(text="other text")
        run("embeddings_export", output=str(tmp_path), verbosity=0)
        assert len(list(tmp_path.glob("*.npz"))) == len(ALL_LABELS)
        output = run("embeddings_import", str(tmp_path))
        assert "Imported 1 of 1 embeddings into testapp.Article.embedding.\n" in output
        assert "Imported 1 of 1 embeddings into otherapp.Doc.embedding.\n" in output
        assert "Imported 0 of 0 embeddings into testapp.UUIDDoc.embedding.\n" in output

    def test_other_provider_is_reported(self, tmp_path):
        article = Article.objects.create(title="a", body="text")
        field = field_of(Article)
        vector = field.store.load_vector(str(article.pk))
        field.store.put(str(article.pk), vector, content_hash="", identity="older-model")
        run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
        output = run("embeddings_import", str(tmp_path))
        assert output == (
            "Imported 1 of 1 embeddings into testapp.Article.embedding.\n"
            "1 of them were made by another provider than testapp.Article.embedding's; "
            "run embeddings_backfill testapp.Article.embedding --stale.\n"
        )

    def test_bad_paths_and_files(self, tmp_path):
        with pytest.raises(CommandError, match="'nowhere' is neither an export file"):
            run("embeddings_import", "nowhere")
        with pytest.raises(CommandError, match="No .npz export files found in"):
            run("embeddings_import", str(tmp_path))
        bogus = tmp_path / "bogus.npz"
        bogus.write_bytes(b"not a zip")
        with pytest.raises(CommandError, match="is not an embeddings export file"):
            run("embeddings_import", str(bogus))
        pickled = tmp_path / "pickled.npz"
        np.savez(pickled, keys=np.array([{"evil": 1}], dtype=object))
        with pytest.raises(CommandError, match="is not an embeddings export file"):
            run("embeddings_import", str(pickled))

    def test_file_for_a_field_not_found_here(self, tmp_path):
        Article.objects.create(title="a", body="text")
        run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
        path = tmp_path / "testapp.Article.embedding.npz"
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        arrays["meta"] = np.array(json.dumps({"format": 1, "label": "gone.Model.field"}))
        np.savez(path, **arrays)
        with pytest.raises(CommandError) as excinfo:
            run("embeddings_import", str(path))
        assert "is for a field not found here: 'gone.Model.field' names no installed model" in str(
            excinfo.value
        )

    def test_dimension_mismatch_is_a_clear_error(self, tmp_path, settings):
        Article.objects.create(title="a", body="text")
        run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
        settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "other"
        field_of(Article).store.put("999", np.ones(8, np.float32), content_hash="", identity="x")
        with pytest.raises(CommandError, match="holds 8-dimensional vectors; cannot store 64"):
            run("embeddings_import", str(tmp_path / "testapp.Article.embedding.npz"))

"""DJANGO_EMBEDDINGS_STORE = "database" through the ORM and the commands: the same
results as the files store, local copies built, caught up and rebuilt from the
table, the table trimmed, and a store database that fails for real."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.db.utils import load_backend
from django.test.utils import CaptureQueriesContext

from django_embeddings import cache
from django_embeddings.checks import check_settings
from django_embeddings.keywords.terms import bag_of
from django_embeddings.models import StoreChange, StoreHead
from django_embeddings.providers import get_provider
from django_embeddings.store import _digest as store_digest
from django_embeddings.store.database import TOKEN_FILE, DatabaseStore
from django_embeddings.writer import put_vectors
from tests.databases import (
    MARIADB_CHARSET,
    mariadb_connect,
    mariadb_database,
    postgres_database,
    vendor,
)
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "testapp.Article.embedding"
WORDS = ["apple", "banana", "cherry", "delta", "echo", "fox", "golf", "hotel", "india", "kilo"]
QUERY = "apple banana fox"


@pytest.fixture(autouse=True)
def database_store(settings) -> None:
    settings.DJANGO_EMBEDDINGS_STORE = "database"


def copy_path() -> Path:
    """This machine's local copy of the Article store (under DJANGO_EMBEDDINGS_DIR)."""
    return Article._meta.get_field("embedding").store.path


def changes(using: str = "default") -> list[tuple[str, str]]:
    """The table's (op, key) rows of the Article store, in version order."""
    rows = StoreChange.objects.using(using).filter(label=LABEL).order_by("version")
    return list(rows.values_list("op", "key"))


def head(using: str = "default") -> StoreHead:
    return StoreHead.objects.using(using).get(label=LABEL)


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def titles(queryset: Any) -> list[str]:
    return [article.title for article in queryset]


def results(query: str = QUERY) -> dict[str, list[tuple[str, float]]]:
    """Each search's (title, score), on a filtered queryset for the vector rankers."""
    published = Article.objects.filter(published=True)
    return {
        "semantic": [(a.title, round(a.similarity, 5)) for a in published.semantic_search(query)],
        "hybrid": [(a.title, round(a.score, 5)) for a in published.hybrid_search(query)],
        "keyword": [
            (a.title, round(a.keyword_score, 5)) for a in Article.objects.keyword_search(query)
        ],
    }


def workload(count: int = 40, *, seed: int = 7) -> list[Article]:
    """Creates, then updates of text and of the filter column, then deletes."""
    rng = np.random.default_rng(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))

    articles = [
        Article.objects.create(title=f"t{n}", body=text(), published=bool(n % 3))
        for n in range(count)
    ]
    for article in articles[::4]:
        article.body = text()
        article.save()
    for article in articles[1::5]:
        article.published = not article.published
        article.save()
    for article in articles[2::7]:
        article.delete()
    return list(Article.objects.order_by("pk"))


def rebuilds(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rebuilding the copy in" in r.getMessage()]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="django_embeddings")
    return caplog


# -- the same answers as the files store --------------------------------------------------


def test_results_are_those_of_the_files_store(settings) -> None:
    settings.DJANGO_EMBEDDINGS_STORE = "files"
    workload()
    expected = results()
    Article.objects.all().delete()

    settings.DJANGO_EMBEDDINGS_STORE = "database"
    articles = workload()
    assert results() == expected
    assert all(len(found) == 10 for found in expected.values())
    # The table holds every change; a version per change, in order.
    versions = StoreChange.objects.order_by("version").values_list("version", flat=True)
    assert list(versions) == list(range(1, head().version + 1))
    assert {key for op, key in changes()} >= {str(a.pk) for a in articles}


def test_unchanged_text_writes_nothing_to_the_table() -> None:
    article = Article.objects.create(title="a", body="apple banana")
    version = head().version
    article.title = "renamed"
    article.published = False
    article.save()
    Article.objects.get(pk=article.pk).save()
    assert head().version == version
    assert changes() == [("put", str(article.pk))]


# -- local copies: a new machine, a second machine ------------------------------------------


def test_a_new_machine_builds_its_copy_from_the_table(settings, tmp_path, logs) -> None:
    workload()
    expected = results()
    first = settings.DJANGO_EMBEDDINGS_DIR

    shutil.rmtree(copy_path())  # this machine lost its disk
    cache.clear()
    assert results() == expected
    assert (copy_path() / TOKEN_FILE).read_text() == head().token

    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"
    assert copy_path().is_relative_to(tmp_path / "machine-b")
    assert results() == expected
    added = Article.objects.create(title="added on b", body="apple banana fox fox")
    Article.objects.filter(title="t0").get().delete()
    on_b = results()
    assert on_b["keyword"][0][0] == "added on b"
    assert "t0" not in {title for found in on_b.values() for title, _ in found}

    settings.DJANGO_EMBEDDINGS_DIR = first  # machine A catches up with what B wrote
    assert results() == on_b
    assert Article._meta.get_field("embedding").store.version() == head().version
    added.body = "kilo india"
    added.save()
    assert "added on b" not in titles(Article.objects.keyword_search(QUERY))
    assert rebuilds(logs) == []  # new copies start from the table; none was rebuilt


def test_a_copy_of_another_table_is_rebuilt(logs) -> None:
    workload()
    expected = results()
    (copy_path() / TOKEN_FILE).write_text("0" * 32)  # made from another database
    cache.clear()
    assert results() == expected
    assert len(rebuilds(logs)) == 1
    assert "made from another table" in rebuilds(logs)[0]
    assert (copy_path() / TOKEN_FILE).read_text() == head().token


def test_a_copy_ahead_of_the_table_is_rebuilt(logs) -> None:
    workload()
    expected = results()
    for n in range(3):
        Article.objects.create(title=f"late{n}", body="apple banana fox")
    assert results()["keyword"][0][0].startswith("late")
    # The database restored from a backup taken before the last three saves.
    newest = head().version
    StoreChange.objects.filter(label=LABEL, version__gt=newest - 3).delete()
    StoreHead.objects.filter(label=LABEL).update(version=newest - 3)

    assert results() == expected  # the loaded index notices through the head's version
    assert len(rebuilds(logs)) == 1
    assert f"ahead of the table ({newest} > {newest - 3})" in rebuilds(logs)[0]
    status = json.loads(run("embeddings_status", "testapp.Article", "--json"))[LABEL]
    assert status["missing"] == 3
    run("embeddings_backfill", "testapp.Article", "--missing", verbosity=0)
    assert {"late0", "late1", "late2"} <= set(titles(Article.objects.keyword_search(QUERY)))


def test_a_gap_in_the_versions_rebuilds_the_copy(settings, tmp_path, logs) -> None:
    articles = workload()
    results()  # machine A's copy is at this version
    first = settings.DJANGO_EMBEDDINGS_DIR
    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"
    for article in (articles[0], articles[0], articles[1]):
        article.body = f"{article.body} fox"
        article.save()
    on_b = results()
    # A trim between A's read of the head and of the rows: the superseded change is gone
    # and the horizon A read is the old one.
    StoreChange.objects.filter(label=LABEL, version=head().version - 2).delete()

    settings.DJANGO_EMBEDDINGS_DIR = first
    assert results() == on_b
    assert len(rebuilds(logs)) == 1
    assert "compacted while it was read" in rebuilds(logs)[0]


def test_a_search_asks_the_table_one_query(settings) -> None:
    workload(12)
    results()
    with CaptureQueriesContext(connection) as queries:
        assert titles(Article.objects.semantic_search(QUERY, k=3))
    store_queries = [q["sql"] for q in queries if "django_embeddings_" in q["sql"]]
    assert len(store_queries) == 1
    assert "django_embeddings_head" in store_queries[0]


def test_a_copy_older_than_the_horizon_is_rebuilt(settings, tmp_path, logs) -> None:
    articles = workload()
    results()  # machine A's copy is at this version
    first = settings.DJANGO_EMBEDDINGS_DIR

    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"
    for article in articles[:10]:
        article.body = f"{article.body} fox golf"
        article.save()
    # Compaction keeps the last COMPACT_THRESHOLD changes: A is 10 behind, past them.
    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 4
    run("embeddings_compact", "testapp.Article", verbosity=0)
    assert head().horizon == head().version - 4
    on_b = results()

    settings.DJANGO_EMBEDDINGS_DIR = first
    assert results() == on_b
    assert len(rebuilds(logs)) == 1
    assert f"older than the table's horizon {head().horizon}" in rebuilds(logs)[0]


# -- clearing and trimming the table --------------------------------------------------------


def test_backfill_all_reset_clears_the_table(settings, tmp_path, logs) -> None:
    articles = workload()
    expected = results()
    first = settings.DJANGO_EMBEDDINGS_DIR
    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"
    assert results() == expected

    settings.DJANGO_EMBEDDINGS_DIR = first
    before = head().version
    run("embeddings_backfill", "testapp.Article", "--all", "--reset", verbosity=0)
    # One put per row, all after the clear: the old changes are gone.
    assert sorted(key for _, key in changes()) == sorted(str(a.pk) for a in articles)
    assert StoreChange.objects.filter(label=LABEL, version__lte=before).count() == 0
    assert results() == expected

    Article.objects.all()._raw_delete("default")  # rows gone behind the ORM's back
    run("embeddings_backfill", "testapp.Article", "--all", "--reset", verbosity=0)
    assert changes() == []
    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"
    assert Article._meta.get_field("embedding").store.stats().vectors == 0
    assert len(rebuilds(logs)) == 3  # A's copy after each clear, B's after both


def test_compact_keeps_one_row_per_live_key(settings) -> None:
    articles = workload()
    for round_ in range(3):
        for article in articles:
            article.body = f"{article.body} {WORDS[round_]}"
            article.save()
    expected = results()
    assert len(changes()) > 4 * len(articles)
    assert "del" in {op for op, _ in changes()}

    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 1  # keep only the newest change
    run("embeddings_compact", "testapp.Article", verbosity=0)
    assert sorted(changes()) == sorted(("put", str(a.pk)) for a in articles)
    cache.clear()
    assert results() == expected


def test_writes_trim_the_table_past_twice_the_threshold(settings, tmp_path) -> None:
    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 5
    articles = [Article.objects.create(title=f"t{n}", body="apple banana") for n in range(4)]
    for round_ in range(10):
        for article in articles:
            article.body = f"{article.body} {WORDS[round_]}"
            article.save()
    # Versions 1-44; a write trims once the head is two thresholds past the horizon
    # (at 10, 15, ... 40), up to a threshold below itself, keeping the change at the
    # horizon. Each key changed after 35.
    assert (head().version, head().horizon) == (44, 35)
    versions = StoreChange.objects.order_by("version").values_list("version", flat=True)
    assert list(versions) == list(range(35, 45))
    expected = results()
    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"  # a new machine
    assert results() == expected


def test_the_copy_merges_and_loads_in_the_background_without_the_database(
    settings, monkeypatch
) -> None:
    """The merging thread works on this machine's copy only: it queries no table (it
    would leave a connection open behind it), its process's index has the new snapshot
    when it is done, and the peers are told the copy's version (``pubsub`` would read
    the table for it otherwise)."""
    from django_embeddings import invalidation
    from django_embeddings.store import merging
    from django_embeddings.store.database import DatabaseStore

    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 10
    settings.DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND = True
    syncing: set[str] = set()
    sync = DatabaseStore.sync

    def sync_noting_the_thread(self: DatabaseStore) -> None:
        syncing.add(threading.current_thread().name)
        sync(self)

    announced: list[int | None] = []

    def announce(store: Any, version: int | None = None) -> None:
        announced.append(version)  # pubsub's announce reads store.version() when None

    monkeypatch.setattr(DatabaseStore, "sync", sync_noting_the_thread)
    monkeypatch.setattr(invalidation, "announce", announce)
    articles = [Article.objects.create(title="first", body="apple banana")]
    assert [a.pk for a in Article.objects.semantic_search("apple banana", k=1)] == [articles[0].pk]
    articles += [Article.objects.create(title=f"t{n}", body=f"cherry {WORDS[n]}") for n in range(9)]
    articles.append(Article.objects.create(title="last", body="delta echo"))
    assert merging.wait(timeout=30)
    index = cache.loaded(LABEL)
    assert index is not None and len(index.base_keys) >= 10
    assert syncing == {threading.main_thread().name}
    assert len(announced) == 1 and announced[0] is not None  # the copy's own version
    assert len(Article.objects.semantic_search("apple", k=100)) == len(articles)


def test_a_trim_removes_a_row_that_an_earlier_trim_kept(settings) -> None:
    """A trim reads only the keys changed since the last horizon: a row kept then as
    the newest of its key must still go once its key has changed again."""

    def compact() -> None:
        settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 1  # keep only the newest change
        run("embeddings_compact", "testapp.Article", verbosity=0)
        settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 10_000

    still = [Article.objects.create(title=f"still {n}", body="kilo") for n in range(3)]
    late = Article.objects.create(title="late", body="golf")
    busy = Article.objects.create(title="busy", body="apple")
    compact()
    late.body = "golf hotel"
    late.save()
    for word in WORDS[:3]:
        busy.body = f"{busy.body} {word}"
        busy.save()
    compact()
    assert head().horizon > StoreChange.objects.get(label=LABEL, key=str(late.pk)).version
    rows = changes()
    assert all(rows.count(("put", str(article.pk))) == 1 for article in [*still, late])
    cache.clear()
    assert titles(Article.objects.semantic_search("golf hotel", k=1)) == ["late"]


# -- the other commands ---------------------------------------------------------------------


def test_gc_deletes_through_the_table(settings, tmp_path) -> None:
    articles = workload(12)
    expected = results()
    first = settings.DJANGO_EMBEDDINGS_DIR
    gone = articles[:3]
    Article.objects.filter(pk__in=[a.pk for a in gone])._raw_delete("default")

    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"  # gc on a machine with no copy yet
    output = run("embeddings_gc", "testapp.Article", "--min-age", "0")
    assert output == f"Removed 3 orphaned embeddings for {LABEL}.\n"
    deleted = [key for op, key in changes() if op == "del"][-3:]
    # gc's order is not part of its contract (MariaDB returns the keys in another order).
    assert sorted(deleted) == sorted(str(a.pk) for a in gone)
    # The rows were gone: searches never served them (BM25's statistics counted them).
    assert results()["semantic"] == expected["semantic"]

    settings.DJANGO_EMBEDDINGS_DIR = first
    store = Article._meta.get_field("embedding").store
    assert store.stats().vectors == len(articles) - 3
    assert json.loads(run("embeddings_status", "--json"))[LABEL]["orphans"] == 0


def test_export_then_import_into_an_empty_table(settings, tmp_path, logs) -> None:
    workload(12)
    expected = results()
    run("embeddings_export", "testapp.Article", output=str(tmp_path), verbosity=0)
    # Another database with the same rows: no head row, no changes.
    StoreChange.objects.all().delete()
    StoreHead.objects.all().delete()
    assert results()["semantic"] == []
    assert "the table holds nothing for this field" in rebuilds(logs)[0]

    calls = len(get_provider().calls)
    run("embeddings_import", str(tmp_path / f"{LABEL}.npz"), verbosity=0)
    assert len(get_provider().calls) == calls
    assert len(changes()) == Article.objects.count()
    assert results() == expected
    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "machine-b"
    assert results() == expected


# -- a store database that fails ------------------------------------------------------------


class StoreRouter:
    """Keeps the store's tables in database ``alias`` (the store asks db_for_write)."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return self.alias if model in (StoreChange, StoreHead) else None

    db_for_read = db_for_write


class StoreDatabase:
    """A database of its own for the store's tables, which this test can break for real:
    PostgreSQL refuses connections, elsewhere the tables are renamed away."""

    ALIAS = "embeddings_store"

    def __init__(self, tmp_path: Path) -> None:
        self.name = f"test_django_embeddings_store_{os.getpid()}"
        if vendor() == "postgres":
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.name}"')
            config: dict[str, Any] = postgres_database(self.name)
        elif vendor() == "mariadb":
            server = mariadb_connect()
            server.cursor().execute(f"CREATE DATABASE `{self.name}` {MARIADB_CHARSET}")
            server.close()
            config = mariadb_database(self.name)
        else:
            config = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "store.db")}
        # Not in settings.DATABASES: a connection made at run time, which Django's test
        # case lets this test use (and whose database it neither creates nor flushes).
        config = connections.configure_settings({"default": {}, self.ALIAS: config})[self.ALIAS]
        connections[self.ALIAS] = load_backend(config["ENGINE"]).DatabaseWrapper(config, self.ALIAS)
        with connections[self.ALIAS].schema_editor() as editor:
            editor.create_model(StoreHead)
            editor.create_model(StoreChange)

    def _rename(self, pairs: list[tuple[str, str]]) -> None:
        with connections[self.ALIAS].cursor() as cursor:
            for old, new in pairs:
                cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")

    def break_(self) -> None:
        if vendor() == "postgres":
            with connection.cursor() as cursor:
                cursor.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    [self.name],
                )
        else:
            tables = [StoreHead._meta.db_table, StoreChange._meta.db_table]
            self._rename([(table, f"away_{table}") for table in tables])

    def heal(self) -> None:
        if vendor() == "postgres":
            with connection.cursor() as cursor:
                cursor.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
            # What Django does at the end of each request.
            connections[self.ALIAS].close_if_unusable_or_obsolete()
        else:
            tables = [StoreHead._meta.db_table, StoreChange._meta.db_table]
            self._rename([(f"away_{table}", table) for table in tables])

    def drop(self) -> None:
        connections[self.ALIAS].close()
        del connections[self.ALIAS]
        if vendor() == "postgres":
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        elif vendor() == "mariadb":
            server = mariadb_connect()
            server.cursor().execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            server.close()


@pytest.fixture
def store_database(settings, tmp_path) -> Iterator[StoreDatabase]:
    database = StoreDatabase(tmp_path)
    settings.DATABASE_ROUTERS = [StoreRouter(database.ALIAS)]
    try:
        yield database
    finally:
        database.drop()


def test_the_tables_live_where_the_router_says(store_database) -> None:
    article = Article.objects.create(title="a", body="apple banana")
    assert changes(StoreDatabase.ALIAS) == [("put", str(article.pk))]
    assert changes() == []
    assert StoreDatabase.ALIAS in repr(Article._meta.get_field("embedding").store)


def test_a_store_database_fault_leaves_the_row_pending(store_database, logs) -> None:
    Article.objects.create(title="first", body="apple banana cherry")
    assert titles(Article.objects.semantic_search("apple")) == ["first"]  # loaded here

    store_database.break_()
    Article.objects.create(title="second", body="apple delta echo")  # the row commits
    assert [r.getMessage() for r in logs.records if r.levelno == logging.ERROR][0].startswith(
        "Could not embed 1 rows of testapp.Article.embedding"
    )
    # Searches answer from the loaded index, with one warning for the outage.
    for _ in range(3):
        assert titles(Article.objects.semantic_search("apple")) == ["first"]
        assert titles(Article.objects.hybrid_search("apple")) == ["first"]
    warnings = [r for r in logs.records if "cannot catch up with database" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    status = json.loads(run("embeddings_status", "testapp.Article", "--json"))[LABEL]
    assert (status["embedded"], status["missing"]) == (1, 1)

    store_database.heal()
    assert "Embedded 1 of 2 rows" in run("embeddings_backfill", "testapp.Article", "--missing")
    assert sorted(titles(Article.objects.semantic_search("apple"))) == ["first", "second"]
    assert len(changes(StoreDatabase.ALIAS)) == 2


# -- the setting's check --------------------------------------------------------------------


def test_an_unknown_store_is_reported(settings) -> None:
    assert check_settings() == []  # "database" is one
    settings.DJANGO_EMBEDDINGS_STORE = "redis"
    messages = check_settings()
    assert [m.id for m in messages] == ["django_embeddings.E020"]
    assert messages[0].msg == (
        "DJANGO_EMBEDDINGS_STORE should be one of ['files', 'database'], not 'redis'."
    )


def test_a_write_the_table_rolled_back_is_not_kept_by_the_copy(logs) -> None:
    """A store write inside a transaction that rolls back (a ``TestCase`` running commit
    callbacks) reached the copy; the next write takes the version it had."""
    articles = workload(6)
    store = Article._meta.get_field("embedding").store
    identity = get_provider().identity
    with pytest.raises(RuntimeError), transaction.atomic():
        put_vectors(store, [("ghost", np.ones(64, dtype=np.float32), "0" * 32, identity)])
        raise RuntimeError("roll back")
    vector = np.linspace(-1, 1, 64, dtype=np.float32)
    (entry,) = put_vectors(store, [("real", vector, "1" * 32, identity)])

    assert entry.version == head().version  # the rolled-back write's version, taken again
    assert any("not what the table holds" in message for message in rebuilds(logs))
    expected = {str(a.pk) for a in articles} | {"real"}
    assert set(cache.get(store).keys()) == expected
    cache.clear()  # a new process agrees
    assert set(cache.get(store).keys()) == expected


def test_the_copy_needs_no_directory_setting(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # leave nothing in the real one
    del settings.DJANGO_EMBEDDINGS_DIR
    assert not [m for m in check_settings() if m.id == "django_embeddings.E002"]
    articles = workload(5)
    path = Article._meta.get_field("embedding").store.path
    assert path.is_relative_to(Path(tempfile.gettempdir()) / f"django-embeddings-{os.geteuid()}")
    assert {a.title for a in Article.objects.semantic_search(QUERY, k=10)} == {
        a.title for a in articles
    }


# -- a rebuilt copy is the copy its writer made -----------------------------------------------


def contents(
    store: DatabaseStore,
) -> tuple[int, dict[str, tuple[bytes, str, str, str | None, int]]]:
    """The version and, per live key, what a read finds: the vector as stored, the content
    digest, identity, bag of terms and time, from the snapshot and the journal after it."""
    state = store.read_state()
    snap = state.snapshot
    rows = {}
    for n, key in enumerate(snap.keys.tolist()):
        assert snap.raw is not None and snap.times is not None
        rows[str(key)] = (
            np.asarray(snap.raw[n], dtype="<f4").tobytes(),
            bytes(snap.hashes[n]).hex(),
            snap.identity_names[int(snap.identities[n])],
            snap.terms.bag(n) if snap.terms is not None else None,
            int(snap.times[n]),
        )
    tail = state.rows()
    for key in tail.changed:
        rows.pop(key, None)
    for n, key in enumerate(tail.keys):
        rows[key] = (
            np.asarray(tail.vectors[n], dtype="<f4").tobytes(),
            bytes(store_digest(tail.hashes[n])).hex(),
            tail.identities[n],
            tail.terms[n],
            tail.times[n],
        )
    return state.version, rows


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("keys", ["integers", "text"])
def test_a_rebuilt_copy_is_the_copy_built_by_its_writes(tmp_path, keys, monkeypatch) -> None:
    """A new machine's copy, written as one snapshot from the table (one row per live key
    below the horizon, superseded rows and deletes above it folded in memory), reads
    exactly as the copy the writer built change by change, journal and compactions."""
    rng = np.random.default_rng(3)
    clock = iter(range(1_700_000_000, 1_800_000_000, 7))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))  # a stamp per write
    names = [str(n * 3 + 1) if keys == "integers" else f"row-{n:02}" for n in range(30)]
    writer = DatabaseStore(tmp_path / "a", using="default", label="rebuild", compact_threshold=6)
    for step in range(160):
        batch = sorted({str(rng.choice(names)) for _ in range(int(rng.integers(1, 4)))})
        if rng.random() < 0.25:
            writer.delete_many(batch)
            continue
        items = [
            (
                key,
                rng.standard_normal(16).astype(np.float32),
                sha256(f"{step} {key}"),
                f"m{step % 3}",
            )
            for key in batch
        ]
        bags = [None if rng.random() < 0.2 else bag_of(f"word{step} {key} {key}") for key in batch]
        writer.put_many(items, terms=bags)
    row = StoreHead.objects.get(label="rebuild")
    above = list(
        StoreChange.objects.filter(label="rebuild", version__gt=row.horizon).values_list(
            "op", "key"
        )
    )
    # What the rebuild folds in memory: deletes, and keys changed more than once.
    assert row.horizon > 0 and ("del" in {op for op, _ in above})
    assert len({key for _, key in above}) < len(above)

    rebuilt = DatabaseStore(tmp_path / "b", using="default", label="rebuild", compact_threshold=6)
    version, rows = contents(rebuilt)
    assert (version, rows) == contents(writer)
    assert version == row.version and 0 < len(rows) < len(names)
    state = rebuilt.read_state()
    assert len(state.snapshot) == len(rows) and not len(state.records)  # no journal to fold
    assert any(bag is None for *_, bag, _ in rows.values())
    theirs, ours = writer.stats(), rebuilt.stats()
    assert (ours.version, ours.vectors, ours.dimensions, ours.identities) == (
        theirs.version,
        theirs.vectors,
        theirs.dimensions,
        theirs.identities,
    )


def test_a_table_whose_rows_are_all_deleted_rebuilds_an_empty_copy(tmp_path) -> None:
    writer = DatabaseStore(tmp_path / "a", using="default", label="gone")
    writer.put_many([(str(n), np.ones(4, np.float32), "ab" * 16, "m") for n in range(5)])
    writer.delete_many([str(n) for n in range(5)])
    rebuilt = DatabaseStore(tmp_path / "b", using="default", label="gone")
    assert contents(rebuilt) == contents(writer) == (10, {})
    # The vectors put (and deleted since) fixed the dimensions, on both machines.
    assert rebuilt.stats().dimensions == writer.stats().dimensions == 4


# -- numbering a write ------------------------------------------------------------------------


def test_a_write_takes_its_versions_in_one_statement() -> None:
    """``UPDATE ... RETURNING`` where the database has it (PostgreSQL, SQLite), else an
    UPDATE then a SELECT of the head row (MariaDB)."""
    Article.objects.create(title="first", body="apple")
    with CaptureQueriesContext(connection) as queries:
        Article.objects.create(title="second", body="banana")
    on_head = [q["sql"] for q in queries if "django_embeddings_head" in q["sql"]]
    (claim,) = [n for n, sql in enumerate(on_head) if sql.startswith("UPDATE")]
    # Before it, the reads of any create (the copy caught up); after it, the claim's own.
    after = [sql.split()[0] for sql in on_head[claim + 1 :]]
    if vendor() == "mariadb":
        assert after == ["SELECT"]
    else:
        assert after == [] and "RETURNING" in on_head[claim]
    assert head().version == 2
    assert changes() == [("put", str(pk)) for pk in Article.objects.values_list("pk", flat=True)]


def test_a_write_recreates_a_missing_head_row(monkeypatch) -> None:
    Article.objects.create(title="first", body="apple")
    StoreChange.objects.all().delete()  # a flushed database, the local copy kept
    StoreHead.objects.all().delete()
    created = []
    create_head = DatabaseStore._create_head
    monkeypatch.setattr(
        DatabaseStore, "_create_head", lambda store: created.append(store) or create_head(store)
    )
    article = Article.objects.create(title="second", body="banana")
    assert len(created) == 1  # by the claim, which found no head row to update
    assert (head().version, changes()) == (1, [("put", str(article.pk))])
    assert titles(Article.objects.semantic_search("banana", k=5)) == ["second"]
    assert (copy_path() / TOKEN_FILE).read_text() == head().token

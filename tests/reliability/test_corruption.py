"""Damaged and hostile files in a store directory.

Loading skips or repairs what it cannot trust with a warning, never runs code
from a file (``allow_pickle=False`` everywhere) and never makes a search fail.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from django_embeddings import cache
from django_embeddings.fields import EmbeddingField
from django_embeddings.store import Store, files
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def write_pickle_npy(path: Path, marker: Path) -> None:
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PICKLE-RAN"
    # The payload is real: numpy with pickles allowed does run it.
    probe = tmp_path / "probe.npy"
    write_pickle_npy(probe, path)
    np.load(probe, allow_pickle=True)
    assert path.exists()
    path.rmdir()
    probe.unlink()
    yield path
    assert not path.exists(), "a pickle stored in the store directory was executed"


def field() -> EmbeddingField:
    return Article._meta.get_field("embedding")  # type: ignore[return-value]


def store() -> Store:
    return field().store


def rows(n: int = 6) -> list[Article]:
    topics = ["csv files", "json parsing", "yaml config", "toml tables", "xml trees", "ini keys"]
    return [Article.objects.create(title=t, body=f"about {t}") for t in topics[:n]]


def search(text: str, k: int = 3) -> list[str]:
    return [a.title for a in Article.objects.semantic_search(text, k=k)]


def fresh() -> None:
    """Forget this process's index, as a newly started worker would."""
    cache.clear()


def log_path() -> Path:
    (path,) = store().path.glob("_vectors-*")
    return path


class TestVectorLog:
    def test_truncated_vector_log_is_skipped_with_a_warning(self, caplog) -> None:  # type: ignore[no-untyped-def]
        rows()
        path = log_path()
        path.write_bytes(path.read_bytes()[:-70])  # the last row's vector cut
        fresh()
        with caplog.at_level(logging.WARNING):
            found = search("about", k=10)
        assert "ini keys" not in found and len(found) == 5
        warnings = [r for r in caplog.records if "cannot be read" in r.getMessage()]
        assert len(warnings) == 1
        # A new write lands after the cut, and is read back whole.
        Article.objects.create(title="after", body="about the vector log")
        fresh()
        assert "after" in search("about", k=10)
        # Compaction drops the row too; a backfill restores it.
        store().compact()
        fresh()
        assert "ini keys" not in search("about", k=10)
        call_command("embeddings_backfill", field().label, "--missing", stdout=StringIO())
        fresh()
        assert "ini keys" in search("about", k=10)

    def test_vector_log_replaced_by_a_pickle_never_runs(self, marker: Path) -> None:
        rows()
        path = log_path()
        size = path.stat().st_size
        with open(path, "wb") as handle:  # np.save would add ".npy" to the name
            np.save(handle, np.array([Payload(marker)], dtype=object), allow_pickle=True)
            handle.truncate(size)  # as long as before: every offset lands in the pickle
        fresh()
        assert search("about", k=10) == []  # no vector passes its checksum
        store().compact()
        store().stats()
        fresh()
        assert search("about", k=10) == []

    def test_pickled_file_under_an_unknown_name_is_garbage(self, marker: Path) -> None:
        rows(2)
        write_pickle_npy(store().path / files.filename_for("no such row"), marker)
        fresh()
        assert len(search("about", k=10)) == 2
        report = store().collect_garbage(lambda keys: set(keys), min_age=0)
        assert report.files == [files.filename_for("no such row")]

    def test_an_entry_naming_a_vector_of_another_size_is_skipped(self, caplog) -> None:  # type: ignore[no-untyped-def]
        """A journal line naming a 16-dimension vector (as Product.name_embedding stores)."""
        articles = rows()
        line = {"v": store().version() + 1, "op": "put", "k": str(articles[2].pk)}
        line.update(h="00" * 16, i="hashing-v1-64", o=0, d=16)
        with open(store().path / "_journal", "a") as handle:
            handle.write(json.dumps(line) + "\n")
        fresh()
        with caplog.at_level(logging.WARNING):
            found = search("about", k=10)
        assert "yaml config" not in found and len(found) == 5
        assert any("another size" in r.getMessage() for r in caplog.records)
        store().compact()  # the odd entry does not break compaction either
        fresh()
        assert len(search("about", k=10)) == 5


class TestSnapshot:
    def snapshot_dir(self) -> Path:
        (path,) = store().path.glob("snapshot-*")
        return path

    @pytest.mark.parametrize("array", ["vectors", "keys", "hashes", "identities", "raw", "times"])
    def test_truncated_snapshot_array(self, array: str, caplog) -> None:  # type: ignore[no-untyped-def]
        rows()
        store().compact()
        path = self.snapshot_dir() / f"{array}.npy"
        path.write_bytes(path.read_bytes()[: max(10, path.stat().st_size // 2)])
        fresh()
        with caplog.at_level(logging.WARNING):
            search("about", k=10)  # no exception
        assert caplog.records

    @pytest.mark.parametrize("array", ["vectors", "keys", "hashes", "identities", "raw", "times"])
    def test_pickled_snapshot_array_never_runs(self, array: str, marker: Path) -> None:
        rows()
        store().compact()
        write_pickle_npy(self.snapshot_dir() / f"{array}.npy", marker)
        fresh()
        search("about", k=10)


class TestIndexAndJournal:
    @pytest.mark.parametrize(
        "content", [b"", b"\x00\xff garbage", b"[1, 2, 3]", b'{"_version": "7"}', b"{" * 5000]
    )
    def test_garbage_index_json_falls_back_to_the_newest_snapshot(self, content, caplog) -> None:  # type: ignore[no-untyped-def]
        rows()
        store().compact()
        Article.objects.create(title="after", body="about the journal tail")
        (store().path / "_index.json").write_bytes(content)
        fresh()
        with caplog.at_level(logging.WARNING):
            assert len(search("about", k=10)) == 7
            assert len(search("about", k=10)) == 7
        damaged = [r for r in caplog.records if "damaged" in r.getMessage()]
        assert len(damaged) <= 1
        # Writes go on, and the next compaction rewrites the index.
        Article.objects.create(title="later", body="about repairs")
        store().compact()
        fresh()
        assert len(search("about", k=10)) == 8

    @pytest.mark.parametrize(
        "tail",
        [
            b'{"v": 99, "op": "put", "k": "1", "h": "ab',  # torn line
            b"\x00" * 300,  # zeros after a power loss
            b'{"v": "x", "op": "put"}\nnot json\n',
            b'{"v": 10**9, "op": "nuke", "k": "1"}\n',
        ],
    )
    def test_garbage_journal_tail_is_skipped(self, tail: bytes, caplog) -> None:  # type: ignore[no-untyped-def]
        rows()
        with open(store().path / "_journal", "ab") as handle:
            handle.write(tail)
        fresh()
        with caplog.at_level(logging.WARNING):
            assert len(search("about", k=10)) == 6
        # The next write closes the damaged line and stays readable by every process.
        Article.objects.create(title="after", body="about the journal tail")
        fresh()
        assert len(search("about", k=10)) == 7
        live = store().read_state()
        versions = [entry.version for entry in live.tail]
        assert versions == sorted(set(versions))

    def test_journal_replaced_by_a_pickle_never_runs(self, marker: Path) -> None:
        rows()
        (store().path / "_journal").write_bytes(pickle.dumps(Payload(marker)))
        fresh()
        search("about", k=10)

    def test_foreign_snapshot_directory_is_not_loaded_while_the_index_is_sound(self) -> None:
        rows()
        store().compact()
        foreign = store().path / "snapshot-999999"
        foreign.mkdir()
        for name in ("vectors", "keys", "hashes", "identities"):
            np.save(foreign / f"{name}.npy", np.zeros(3))
        (foreign / "meta.json").write_text('{"version": 999999, "identities": []}')
        fresh()
        assert len(search("about", k=10)) == 6
        assert os.path.isdir(foreign)

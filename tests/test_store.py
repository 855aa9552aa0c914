"""The store on its own: no Django models, real files, real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from django_embeddings.exceptions import StoreError
from django_embeddings.store import Store, files, journal


def vec(seed: int, dims: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def live(store: Store) -> dict[str, str]:
    """key -> content hash of every live row, replayed from snapshot + journal."""
    state = store.read_state()
    rows = {
        str(k): bytes(h).hex()
        for k, h in zip(state.snapshot.keys, state.snapshot.hashes, strict=True)
    }
    for entry in state.tail:
        if entry.op == "put":
            rows[entry.key] = entry.hash
        else:
            rows.pop(entry.key, None)
    return rows


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "app.Model" / "field", label="app.Model.field")


def test_put_assigns_consecutive_versions(store):
    entries = store.put_many([(str(n), vec(n), f"{n:032x}", "id") for n in range(3)])
    assert [e.version for e in entries] == [1, 2, 3]
    assert store.delete("1").version == 4
    assert store.version() == 4
    assert live(store) == {"0": f"{0:032x}", "2": f"{2:032x}"}


def test_vectors_round_trip_as_npy_without_pickle(store):
    store.put("k", vec(1), content_hash="00" * 16, identity="id")
    path = store.path / files.filename_for("k")
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), vec(1))
    np.testing.assert_array_equal(store.load_vector("k"), vec(1))


def test_pickled_npy_is_never_loaded(store, caplog):
    store.put("k", vec(1), content_hash="00" * 16, identity="id")
    np.save(store.path / files.filename_for("k"), np.array([object()]), allow_pickle=True)
    assert store.load_vector("k") is None
    assert "unreadable" in caplog.text


def test_truncated_npy_is_skipped(store, caplog):
    store.put("k", vec(1), content_hash="00" * 16, identity="id")
    path = store.path / files.filename_for("k")
    path.write_bytes(path.read_bytes()[:40])
    assert store.load_vector("k") is None


def test_other_dimensions_are_refused(store):
    store.put("a", vec(1, 8), content_hash="00" * 16, identity="id")
    with pytest.raises(StoreError, match=r"app\.Model\.field holds 8-dimensional vectors"):
        store.put("b", vec(2, 16), content_hash="00" * 16, identity="id")
    assert set(live(store)) == {"a"}
    store.clear()
    store.put("b", vec(2, 16), content_hash="00" * 16, identity="id")
    assert set(live(store)) == {"b"}


def test_nul_in_a_key_is_refused(store):
    with pytest.raises(StoreError, match="NUL"):
        store.put("a\0", vec(1), content_hash="00" * 16, identity="id")


def test_compaction_folds_the_journal_into_a_snapshot(store):
    for n in range(10):
        store.put(str(n), vec(n), content_hash=f"{n:032x}", identity="id")
    store.delete("3")
    store.put("4", vec(40), content_hash=f"{40:032x}", identity="id2")
    before = live(store)
    version = store.compact()
    assert version == store.version() == 12
    state = store.read_state()
    assert state.tail == []
    assert state.snapshot.keys.dtype == np.int64  # integer keys pack as integers
    assert [str(k) for k in state.snapshot.keys] == sorted(before, key=int)
    assert live(store) == before
    row = state.snapshot.find("4")
    expected = vec(40) / np.linalg.norm(vec(40))
    np.testing.assert_allclose(state.snapshot.vectors[row], expected, rtol=1e-6)
    assert state.snapshot.identity_names[state.snapshot.identities[row]] == "id2"
    index = json.loads((store.path / "_index.json").read_text())
    assert index["_version"] == 12
    assert [p.name for p in store.path.glob("snapshot-*")] == ["snapshot-12"]
    # Writes after compaction continue the version sequence.
    assert store.put("x", vec(99), content_hash="00" * 16, identity="id").version == 13


def test_compaction_runs_by_itself_past_the_threshold(tmp_path):
    store = Store(tmp_path / "s", label="s", compact_threshold=5)
    for n in range(12):
        store.put(str(n), vec(n), content_hash="00" * 16, identity="id")
    state = store.read_state()
    assert state.snapshot.version >= 10
    assert len(state.tail) < 5
    assert set(live(store)) == {str(n) for n in range(12)}


def test_torn_journal_tail_is_ignored_then_closed(store, caplog):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    with open(store.path / journal.JOURNAL, "ab") as handle:
        handle.write(b'{"v":2,"op":"put","k":"b"')  # a writer killed mid-line
    assert set(live(store)) == {"a"}
    assert store.version() == 1
    store.put("c", vec(3), content_hash="00" * 16, identity="id")
    assert set(live(store)) == {"a", "c"}
    assert store.version() == 2


def test_garbage_journal_line_is_skipped_with_a_warning(store, caplog):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    with open(store.path / journal.JOURNAL, "ab") as handle:
        handle.write(b"\x00\xffgarbage\n")
    store.put("b", vec(2), content_hash="00" * 16, identity="id")
    assert set(live(store)) == {"a", "b"}
    assert "damaged line" in caplog.text


def test_damaged_index_json_falls_back_to_the_newest_snapshot(store, caplog):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    store.compact()
    store.put("b", vec(2), content_hash="00" * 16, identity="id")
    (store.path / "_index.json").write_text("{not json")
    assert set(live(store)) == {"a", "b"}
    assert caplog.text.count("is damaged") == 1
    store.compact()  # writes a sound index again
    assert json.loads((store.path / "_index.json").read_text())["_version"] == 2


def test_garbage_collection_respects_the_age_guard(store):
    for key in "abc":
        store.put(key, vec(ord(key)), content_hash="00" * 16, identity="id")
    orphan = store.path / files.filename_for("zombie")
    np.save(orphan, vec(5))

    def is_live(keys: list[str]) -> set[str]:
        return {"a"} & set(keys)

    report = store.collect_garbage(is_live, min_age=300)
    assert report.entries == [] and report.files == [] and report.skipped_recent == 3
    old = time.time() - 600
    for path in store.path.glob("*.npy"):
        os.utime(path, (old, old))
    report = store.collect_garbage(is_live, min_age=300, dry_run=True)
    assert report.entries == ["b", "c"] and report.files == [orphan.name]
    assert set(live(store)) == {"a", "b", "c"}
    store.collect_garbage(is_live, min_age=300)
    assert set(live(store)) == {"a"}
    assert not orphan.exists()
    assert sorted(p.name for p in store.path.glob("*.npy")) == [files.filename_for("a")]


def test_sweep_removes_only_old_temp_files(store):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    old_tmp = store.path / "tmpabc.npy"
    new_tmp = store.path / "tmpdef.npy"
    old_tmp.write_bytes(b"x")
    new_tmp.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old_tmp, (past, past))
    assert store.sweep_tempfiles(max_age=3600) == ["tmpabc.npy"]
    assert new_tmp.exists()


def _writer(path: str, worker: int, count: int) -> None:
    store = Store(Path(path), label="shared", compact_threshold=50)
    for n in range(count):
        key = f"w{worker}-{n}"
        store.put(key, vec(worker * 1000 + n), content_hash=f"{n:032x}", identity="id")
        if n % 7 == 3:
            store.delete(key)


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    """Four processes append at once (and compact): no entry is lost or duplicated."""
    path = tmp_path / "shared"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), w, 60)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    store = Store(path, label="shared")
    expected = {f"w{w}-{n}" for w in range(4) for n in range(60) if n % 7 != 3}
    assert set(live(store)) == expected
    assert store.version() == 4 * (60 + len([n for n in range(60) if n % 7 == 3]))
    store.compact()
    assert set(live(store)) == expected
    assert {files.filename_for(k) for k in expected} == {p.name for p in path.glob("*.npy")}


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        (["3", "10", "-2"], "i"),
        (["3", "03"], "U"),  # "03" is not how 3 prints: kept as text
        (["9223372036854775808"], "U"),  # beyond int64
        (["a/b", "1"], "U"),
        (["١٢"], "U"),  # non-ASCII digits
    ],
)
def test_keys_pack_and_find(given, kind):
    from django_embeddings.store import keys

    packed = keys.pack(given)
    assert packed.dtype.kind == kind
    ordered = np.sort(packed)
    for key in given:
        assert str(ordered[keys.find(ordered, key)]) == key
    assert keys.find(ordered, "missing") is None
    assert list(keys.rows_of(ordered, ["missing", given[0]]))[0] == -1


def test_text_keys_survive_compaction(store):
    for key in ["b/..", "ü", "1", "a"]:
        store.put(key, vec(len(key)), content_hash="00" * 16, identity="id")
    store.compact()
    assert set(live(store)) == {"b/..", "ü", "1", "a"}
    assert store.read_state().snapshot.find("ü") is not None


def test_a_key_given_twice_in_one_batch_keeps_its_last_vector(store):
    entries = store.put_many([("k", vec(1), "01" * 16, "id"), ("k", vec(2), "02" * 16, "id")])
    assert [e.version for e in entries] == [1, 2]
    np.testing.assert_array_equal(store.load_vector("k"), vec(2))
    assert live(store) == {"k": "02" * 16}
    assert not list(store.path.glob("tmp*"))


def test_vector_files_of_another_numpy_layout_still_load(store):
    store.put("k", vec(1), content_hash="00" * 16, identity="id")
    np.save(store.path / files.filename_for("k"), vec(1).astype(np.float64))
    np.testing.assert_allclose(store.load_vector("k"), vec(1), rtol=1e-6)
    assert store.load_vector("k").dtype == np.float32

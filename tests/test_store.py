"""The store on its own: no Django models, real files, real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

import django_embeddings.store as store_module
from django_embeddings import cache
from django_embeddings.exceptions import StoreError
from django_embeddings.keywords.terms import Terms, bag_of
from django_embeddings.store import Entry, Permissions, Store, files, journal, snapshot, vectorlog


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


def logs(store: Store) -> list[str]:
    return sorted(p.name for p in store.path.glob(f"{vectorlog.PREFIX}*"))


def test_vectors_go_to_one_log_not_a_file_per_row(store):
    entries = store.put_many([(str(n), vec(n), "00" * 16, "id") for n in range(3)])
    store.put("3", vec(3), content_hash="00" * 16, identity="id")
    assert logs(store) == [vectorlog.name_for(0)]
    assert not list(store.path.glob("*.npy"))
    raw = (store.path / vectorlog.name_for(0)).read_bytes()
    assert len(raw) == 4 * 8 * 4
    assert [e.offset for e in entries] == [0, 32, 64]
    np.testing.assert_array_equal(np.frombuffer(raw[32:64], dtype="<f4"), vec(1))
    for n in range(4):
        np.testing.assert_array_equal(store.load_vector(str(n)), vec(n))
    assert store.load_vector("missing") is None


def test_stored_vectors_read_back_exactly_after_compaction(store):
    for n in range(5):
        store.put(str(n), vec(n) * 10, content_hash="00" * 16, identity="id")
    store.delete("2")
    store.compact()
    assert logs(store) == []  # the new journal's log starts with the next put
    for n in (0, 1, 3, 4):
        np.testing.assert_array_equal(store.load_vector(str(n)), vec(n) * 10)
    assert store.load_vector("2") is None
    store.put("1", vec(11), content_hash="00" * 16, identity="id")
    np.testing.assert_array_equal(store.load_vector("1"), vec(11))
    assert logs(store) == [vectorlog.name_for(6)]


def test_entries_compare_without_their_location(store):
    (entry,) = store.put_many([("k", vec(1), "ab" * 16, "id")])
    assert entry.offset == 0 and entry.dimensions == 8
    assert entry == Entry(1, "put", "k", "ab" * 16, "id")  # as a peer receives it


def test_read_tail_brings_the_vectors_of_new_entries(store):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    state = store.read_state()
    store.put_many([("b", vec(2), "00" * 16, "id"), ("c", vec(3), "00" * 16, "id")])
    store.delete("a")
    tail = store.read_tail(state.position)
    assert [(e.op, e.key) for e in tail.entries] == [("put", "b"), ("put", "c"), ("del", "a")]
    np.testing.assert_array_equal(tail.vectors[0], vec(2))
    np.testing.assert_array_equal(tail.vectors[1], vec(3))
    assert tail.vectors[2] is None
    store.compact()
    assert store.read_tail(tail.position) is None  # replaced: reload


def test_journal_lines_parse_alike_at_once_and_one_by_one(store, caplog):
    store.put_many([(str(n), vec(n), f"{n:032x}", "id") for n in range(3)])
    store.delete("1")
    raw = (store.path / journal.JOURNAL).read_bytes()
    body = raw[raw.index(b"\n") + 1 :]
    at_once = journal.parse(body).entries()
    assert [(e.version, e.op, e.key) for e in at_once] == [
        (1, "put", "0"),
        (2, "put", "1"),
        (3, "put", "2"),
        (4, "del", "1"),
    ]
    # A 0.1.0 line makes the rest go one line at a time, to the same entries.
    mixed = journal.parse(body + b'{"v": 5, "op": "del", "k": "2"}\n').entries()
    assert mixed == [*at_once, Entry(5, "del", "2")]
    assert [(e.offset, e.dimensions, e.checksum) for e in mixed[:4]] == [
        (e.offset, e.dimensions, e.checksum) for e in at_once
    ]
    # Lines one value short and one too long would shift every column: both are refused.
    odd = b'[5,"del","2","","",-1,0,-1]\n[6,"del","0","","",-1,0,-1,0,0]\n'
    assert journal.parse(body + odd).entries() == at_once
    assert caplog.text.count("Skipping a damaged line") == 2


def test_lines_the_whole_journal_decode_refuses_go_one_by_one(store, caplog):
    store.put_many([(str(n), vec(n), f"{n:032x}", "id") for n in range(2)])
    raw = (store.path / journal.JOURNAL).read_bytes()
    body = raw[raw.index(b"\n") + 1 :]
    good = journal.parse(body).entries()
    put = '"put","k","h","id",0,8,7,1'
    damaged = [
        f"[3,{put}][4,{put}]",  # two entries on one line
        f"[3,{put}][4,{put}]\n",  # and a blank line: as many values as lines
        f"[true,{put}]",  # JSON's true is no version
        f"[3.0,{put}]",
        f"[3,{put},0]",  # a tenth value that is no bag of terms
        f'[3,{put},"a",0]',  # an eleventh value
        '[3,"get","k","","",-1,0,-1,0]',
    ]
    for line in damaged:
        caplog.clear()
        assert journal.parse(body + line.encode() + b"\n").entries() == good, line
        assert "Skipping a damaged line" in caplog.text
    # A version past 64 bits, and versions out of order, are read one by one, to the same entries.
    big = f"[{1 << 64},{put}]".encode()
    assert journal.parse(body + big + b"\n").entries() == [*good, journal.parse_entry(big)]
    swapped = b"\n".join(reversed(body.rstrip(b"\n").split(b"\n"))) + b"\n"
    assert journal.parse(swapped).entries() == good[::-1]


def test_a_position_in_a_replaced_journal_is_never_read_on(store):
    """A new journal may get the inode of the one it replaced: its header tells them apart."""
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    state = store.read_state()
    store.compact()
    store.put("b", vec(2), content_hash="00" * 16, identity="id")
    inode = os.stat(store.path / journal.JOURNAL).st_ino
    reused = journal.Position(inode, state.position.offset, state.position.header)
    assert store.read_tail(reused) is None
    assert store.read_tail(store.read_state().position).entries == []


def test_a_peer_entry_without_its_vector_is_caught_up_from_the_journal(store):
    """A message that left the vector out (too large) is a gap, not a deleted row."""
    cache.clear()
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    index = cache.get(store)
    entries = store.put_many([("b", vec(2), "00" * 16, "id")])
    peer_view = [Entry(e.version, e.op, e.key, e.hash, e.identity) for e in entries]
    cache.apply_delta(store, peer_view)
    assert sorted(index.keys()) == ["a", "b"]
    np.testing.assert_allclose(index.vector("b"), vec(2) / np.linalg.norm(vec(2)), rtol=1e-6)
    cache.clear()


def test_a_torn_vector_write_shifts_nothing(store):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    with open(store.path / vectorlog.name_for(0), "ab") as handle:
        handle.write(b"\x01\x02\x03\x04\x05")  # a writer killed mid-write: no entry names it
    (entry,) = store.put_many([("b", vec(2), "00" * 16, "id")])
    assert entry.offset == 40  # 32 + 5, rounded up to 4 bytes
    index = cache.FieldIndex(store, store.read_state())
    assert sorted(index.keys()) == ["a", "b"]
    np.testing.assert_array_equal(store.load_vector("b"), vec(2))
    store.compact()
    np.testing.assert_array_equal(store.load_vector("b"), vec(2))


def test_a_vector_the_log_does_not_hold_reads_as_missing(store, caplog):
    store.put_many([(str(n), vec(n), "00" * 16, "id") for n in range(3)])
    path = store.path / vectorlog.name_for(0)
    path.write_bytes(path.read_bytes()[:70])  # damaged: row 2 cut, row 1 whole
    index = cache.FieldIndex(store, store.read_state())
    assert sorted(index.keys()) == ["0", "1"]
    assert "1 stored vectors cannot be read (rows '2')" in caplog.text
    assert store.load_vector("2") is None
    store.put("3", vec(3), content_hash="00" * 16, identity="id")
    np.testing.assert_array_equal(store.load_vector("3"), vec(3))
    store.compact()  # drops the unreadable row, keeps the others
    assert set(live(store)) == {"0", "1", "3"}


def test_non_finite_values_in_the_log_are_never_loaded(store, caplog):
    store.put_many([("a", vec(1), "00" * 16, "id"), ("b", vec(2), "00" * 16, "id")])
    path = store.path / vectorlog.name_for(0)
    data = bytearray(path.read_bytes())
    data[32:36] = np.array([np.nan], dtype="<f4").tobytes()
    path.write_bytes(bytes(data))
    assert sorted(cache.FieldIndex(store, store.read_state()).keys()) == ["a"]


def test_a_missing_log_leaves_the_snapshot_searchable(store, caplog):
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    store.compact()
    store.put("b", vec(2), content_hash="00" * 16, identity="id")
    (store.path / vectorlog.name_for(1)).unlink()
    index = cache.FieldIndex(store, store.read_state())
    assert sorted(index.keys()) == ["a"]
    assert "is missing" in caplog.text
    assert store.load_vector("b") is None


def test_pickled_npy_is_never_loaded(tmp_path, caplog):
    store = legacy_store(tmp_path, {"k": vec(1)})
    np.save(store.path / files.filename_for("k"), np.array([object()]), allow_pickle=True)
    assert store.load_vector("k") is None
    assert "unreadable" in caplog.text


def test_truncated_npy_is_skipped(tmp_path):
    store = legacy_store(tmp_path, {"k": vec(1)})
    path = store.path / files.filename_for("k")
    path.write_bytes(path.read_bytes()[:40])
    assert store.load_vector("k") is None


@pytest.mark.parametrize("array", ["vectors", "times"])
def test_an_empty_snapshot_array_is_skipped_with_a_warning(store, caplog, array):
    store.put_many([(str(n), vec(n), "00" * 16, "id") for n in range(3)])
    store.compact()
    (directory,) = store.path.glob("snapshot-*")
    (directory / f"{array}.npy").write_bytes(b"")
    state = store.read_state()  # no exception
    assert "damaged" in caplog.text or "Ignoring" in caplog.text
    assert len(state.snapshot) == (0 if array == "vectors" else 3)


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


def test_compaction_merges_snapshot_and_journal_rows_in_key_order(store):
    """Rows after the snapshot's keys (in order already: nothing is rearranged), then rows
    between them and a row replaced (sorted again), each compacted into the snapshot."""
    stored: dict[str, np.ndarray] = {}
    for round_, keys in enumerate((["10", "20", "30"], ["40", "50"], ["15", "45", "20"])):
        for key in keys:
            stored[key] = vec(int(key) + 100 * round_)
            store.put(key, stored[key], content_hash=f"{int(key):032x}", identity=f"m{round_}")
        before = live(store)
        store.compact()
        snap = store.read_state().snapshot
        assert [str(key) for key in snap.keys] == sorted(stored, key=int)
        assert live(store) == before
        assert snap.raw is not None
        for key, vector in stored.items():
            np.testing.assert_array_equal(snap.raw[snap.find(key)], vector)
    assert snap.identity_names[snap.identities[snap.find("20")]] == "m2"


@pytest.mark.parametrize(
    "hashes",
    [
        [f"{n:064x}" for n in range(5)],  # SHA-256's: decoded in one call
        ["AB" * 16, "cd" * 16],  # upper case, 32 digits
        ["ab" * 16, "ab" * 20],  # two lengths
        ["ab" * 17 + "a"],  # odd
        ["ab" * 8],  # shorter than 16 bytes
        ["", "zz" * 16],  # not hex
        ["ab cd " * 8],  # spaces, which bytes.fromhex() skips
        [],
    ],
)
def test_the_digests_of_many_hashes_are_each_one_s(hashes):
    expected = np.array([store_module._digest(h) for h in hashes], dtype=np.uint8)
    np.testing.assert_array_equal(store_module._digests(hashes), expected.reshape(-1, 16))


def test_compaction_runs_by_itself_past_the_threshold(tmp_path):
    store = Store(tmp_path / "s", label="s", compact_threshold=5)
    for n in range(12):
        store.put(str(n), vec(n), content_hash="00" * 16, identity="id")
    state = store.read_state()
    assert state.snapshot.version >= 10
    assert len(state.tail) < 5
    assert set(live(store)) == {str(n) for n in range(12)}


def test_a_bulk_load_compacts_as_the_store_grows_not_every_threshold(tmp_path, monkeypatch):
    store = Store(tmp_path / "s", label="s", compact_threshold=10)
    sizes: list[int] = []  # rows of each snapshot a compaction wrote
    install = Store._install

    def counted(self: Store, snap: snapshot.Snapshot) -> int:
        sizes.append(len(snap))
        return install(self, snap)

    monkeypatch.setattr(Store, "_install", counted)
    with store.bulk():
        for start in range(0, 2000, 10):
            store.put_many((str(n), vec(n), "00" * 16, "id") for n in range(start, start + 10))
    # Each compaction waited for the threshold and a quarter of the snapshot's rows:
    # past 40 rows the snapshot grew geometrically (200 compactions without bulk()).
    assert 1 < len(sizes) < 30, sizes
    *grown, last = sizes
    pairs = zip(grown, grown[1:], strict=False)
    assert all(later - earlier >= max(10, earlier / 4) for earlier, later in pairs), sizes
    # Leaving the block applied the usual rule: the rest was folded in.
    assert last == 2000 and not store.read_state().tail
    assert set(live(store)) == {str(n) for n in range(2000)}
    sizes.clear()
    for n in range(2000, 2012):  # out of bulk(): every 10 writes again
        store.put(str(n), vec(n), content_hash="00" * 16, identity="id")
    assert len(sizes) == 1


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


def test_garbage_collection_respects_the_age_guard(store, monkeypatch):
    store.put("b", vec(2), content_hash="00" * 16, identity="id")
    store.compact()  # "b" ages in the snapshot, "a" and "c" in the journal
    for key in "ac":
        store.put(key, vec(ord(key)), content_hash="00" * 16, identity="id")
    orphan = store.path / files.filename_for("zombie")  # a 0.1.0 file no entry names
    np.save(orphan, vec(5))
    stale_log = store.path / vectorlog.name_for(0)  # left by a compaction killed midway
    stale_log.write_bytes(b"\0" * 32)

    def is_live(keys: list[str]) -> set[str]:
        return {"a"} & set(keys)

    report = store.collect_garbage(is_live, min_age=300)
    assert report.entries == [] and report.files == [] and report.skipped_recent == 4
    assert store.stats().unindexed_files == 2
    later = time.time() + 600
    monkeypatch.setattr(store_module.time, "time", lambda: later)
    report = store.collect_garbage(is_live, min_age=300, dry_run=True)
    assert report.entries == ["b", "c"]
    assert report.files == [orphan.name, stale_log.name]
    assert set(live(store)) == {"a", "b", "c"}
    store.collect_garbage(is_live, min_age=300)
    assert set(live(store)) == {"a"}
    assert not orphan.exists() and not stale_log.exists()
    assert logs(store) == [vectorlog.name_for(1)]  # the current log stays
    assert store.stats().unindexed_files == 0
    np.testing.assert_array_equal(store.load_vector("a"), vec(ord("a")))


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
    for key in sorted(expected)[::17]:
        worker, n = (int(part) for part in key[1:].split("-"))
        np.testing.assert_array_equal(store.load_vector(key), vec(worker * 1000 + n))
    store.compact()
    assert set(live(store)) == expected
    assert not list(path.glob("*.npy"))
    assert logs(store) == []
    for key in sorted(expected)[::17]:
        worker, n = (int(part) for part in key[1:].split("-"))
        np.testing.assert_array_equal(store.load_vector(key), vec(worker * 1000 + n))


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
    index = cache.FieldIndex(store, store.read_state())
    np.testing.assert_allclose(index.vector("k"), vec(2) / np.linalg.norm(vec(2)), rtol=1e-6)


def test_vector_files_of_another_numpy_layout_still_load(tmp_path):
    store = legacy_store(tmp_path, {"k": vec(1)})
    np.save(store.path / files.filename_for("k"), vec(1).astype(np.float64))
    np.testing.assert_allclose(store.load_vector("k"), vec(1), rtol=1e-6)
    assert store.load_vector("k").dtype == np.float32


def test_versions_continue_after_a_snapshot_whose_journal_was_never_started(store, monkeypatch):
    """A crash between publishing a snapshot and starting its journal loses no later put."""
    store.put_many([("a", vec(1), "00" * 16, "id"), ("b", vec(2), "00" * 16, "id")])

    def killed(directory: Path, base: int, permissions: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(journal, "create", killed)
    with pytest.raises(StoreError):
        store.clear()  # the empty snapshot 3 is published, the old journal stays
    monkeypatch.undo()
    (entry,) = store.put_many([("c", vec(3), "00" * 16, "id")])
    assert entry.version == 4
    assert set(live(store)) == {"c"}
    np.testing.assert_array_equal(store.load_vector("c"), vec(3))


def _clear_then_store_16(path: str) -> None:
    other = Store(Path(path), label="app.Model.field")
    other.clear()
    other.put("b", vec(2, 16), content_hash="00" * 16, identity="id")


def test_a_writer_sees_the_dimensions_another_process_set(store):
    """What a writer keeps between puts (versions, dimensions) follows other processes."""
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    process = multiprocessing.get_context("spawn").Process(
        target=_clear_then_store_16, args=(str(store.path),)
    )
    process.start()
    process.join(60)
    assert process.exitcode == 0
    with pytest.raises(StoreError, match="holds 16-dimensional vectors"):
        store.put("c", vec(3), content_hash="00" * 16, identity="id")
    entry = store.put("c", vec(3, 16), content_hash="00" * 16, identity="id")
    assert entry.version == store.version() == 4
    assert set(live(store)) == {"b", "c"}


def legacy_store(tmp_path: Path, rows: dict[str, np.ndarray], *, snapshot_rows: int = 0) -> Store:
    """A store as 0.1.0 wrote it: a file per row, a journal without offsets, snapshots
    without stored vectors. The first ``snapshot_rows`` rows are in a snapshot."""
    path = tmp_path / "legacy.Model" / "field"
    path.mkdir(parents=True, mode=0o700)
    for key, vector in rows.items():
        np.save(path / files.filename_for(key), vector)
    (path / "_dimensions").write_text(str(len(next(iter(rows.values())))))
    items = list(rows.items())
    folded, journaled = items[:snapshot_rows], items[snapshot_rows:]
    base = len(folded)
    if folded:
        from django_embeddings.store import keys, normalize

        packed = keys.pack([key for key, _ in folded])
        order = np.argsort(packed, kind="stable")
        snapshot.write(
            path,
            snapshot.Snapshot(
                version=base,
                vectors=normalize(np.array([v for _, v in folded]))[order],
                keys=packed[order],
                hashes=np.zeros((base, 16), np.uint8),
                identities=np.zeros(base, np.uint16),
                identity_names=["id"],
            ),
        )
    else:
        snapshot.write_index(path, 0, None)
    lines = [json.dumps({"base": base})]
    for n, (key, _) in enumerate(journaled, start=base + 1):
        lines.append(json.dumps({"v": n, "op": "put", "k": key, "h": "00" * 16, "i": "id"}))
    (path / "_journal").write_text("\n".join(lines) + "\n")
    return Store(path, label="legacy.Model.field", compact_threshold=1000)


def test_a_store_written_by_0_1_0_loads_and_migrates(tmp_path):
    rows = {str(n): vec(n) * (n + 1) for n in range(6)}
    store = legacy_store(tmp_path, rows, snapshot_rows=3)
    assert set(live(store)) == set(rows)
    for key, vector in rows.items():
        np.testing.assert_array_equal(store.load_vector(key), vector)
    index = cache.FieldIndex(store, store.read_state())
    assert sorted(index.keys()) == sorted(rows)
    assert index.search(vec(4), 1, identity="id")[0].key == "4"
    assert store.stats().unindexed_files == 0  # every file is still needed
    # New writes go to the log; the legacy rows keep their files.
    store.put("4", vec(40), content_hash="00" * 16, identity="id")
    store.put("9", vec(9), content_hash="00" * 16, identity="id")
    rows.update({"4": vec(40), "9": vec(9)})
    assert store.stats().unindexed_files == 1  # the file of "4", replaced by a logged vector
    for key, vector in rows.items():
        np.testing.assert_array_equal(store.load_vector(key), vector)
    store.compact()  # folds both kinds, and the old snapshot's stored vectors
    assert set(live(store)) == set(rows)
    for key, vector in rows.items():
        np.testing.assert_array_equal(store.load_vector(key), vector)
    assert store.stats().unindexed_files == 6
    report = store.collect_garbage(lambda keys: set(keys), min_age=0)
    assert sorted(report.files) == sorted(files.filename_for(str(n)) for n in range(6))
    assert not list(store.path.glob("*.npy"))
    for key, vector in rows.items():
        np.testing.assert_array_equal(store.load_vector(key), vector)
    fresh = cache.FieldIndex(store, store.read_state())
    assert sorted(fresh.keys()) == sorted(rows)


# --- the modes of what a store creates -----------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "modes",
    [Permissions(), Permissions(0o600, 0o700), Permissions(0o664, 0o775)],
    ids=["defaults", "private", "group-and-others-read"],
)
def test_new_files_and_directories_get_the_modes_not_the_umask(tmp_path, umask, modes):
    top = tmp_path / "embeddings"  # created by the store, like each directory below it
    store = Store(top / "app.Model" / "field", label="app.Model.field", permissions=modes)
    store.put_many([(str(n), vec(n), "00" * 16, "id") for n in range(3)])
    store.delete("1")
    store.compact()
    store.put("after", vec(9), content_hash="00" * 16, identity="id")
    names = []
    for directory, _, filenames in os.walk(top):
        assert mode_of(Path(directory)) == modes.directory, directory
        names += filenames
        for name in filenames:
            assert mode_of(Path(directory) / name) == modes.file, name
    assert {"_lock", "_journal", "_index.json", "_dimensions", "meta.json", "vectors.npy"} <= set(
        names
    )
    assert any(name.startswith(vectorlog.PREFIX) for name in names)


def test_the_default_modes_share_with_the_group_only():
    assert Store(Path("unused")).permissions == Permissions(0o640, 0o750)


def test_a_setgid_directory_passes_its_group_bit_down(tmp_path, umask):
    """In a directory shared through a setgid group, new directories stay setgid."""
    top = tmp_path / "shared"
    top.mkdir()
    top.chmod(0o2770)
    if not mode_of(top) & stat.S_ISGID:
        pytest.skip("this file system does not keep the setgid bit of directories")
    store = Store(top / "app.Model" / "field", permissions=Permissions(0o660, 0o770))
    store.put("a", vec(1), content_hash="00" * 16, identity="id")
    store.compact()
    for path in (top / "app.Model", store.path, store.path / f"snapshot-{store.version()}"):
        assert mode_of(path) == 0o2770, path
    assert mode_of(store.path / "_journal") == 0o660


def test_a_file_is_created_with_its_mode_where_hard_links_fail(tmp_path, umask, monkeypatch):
    """Some network file systems have no hard links: the file is made in place instead."""

    def no_links(source: str, target: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    modes = Permissions(0o660, 0o770)
    fd = modes.open_or_create(tmp_path / "_lock", os.O_RDWR)
    os.close(fd)
    assert mode_of(tmp_path / "_lock") == 0o660
    fd = modes.open_or_create(tmp_path / "_lock", os.O_RDWR)  # now it exists: opened
    os.close(fd)
    assert os.listdir(tmp_path) == ["_lock"]  # no temp file left behind


def read_opened(path: Path) -> bytes:
    """What the descriptor ``Permissions().open_or_create()`` returns for ``path`` reads."""
    fd = Permissions().open_or_create(path, os.O_RDONLY)
    try:
        return os.read(fd, 1024)
    finally:
        os.close(fd)


def test_a_file_made_meanwhile_by_another_process_is_opened(tmp_path, monkeypatch):
    """Two processes creating the lock at once: the one that loses opens the winner's."""
    real_link = os.link

    def other_process_first(source: str, target: str) -> None:
        Path(target).write_bytes(b"theirs")
        real_link(source, target)  # FileExistsError, as when the other process won

    monkeypatch.setattr(os, "link", other_process_first)
    assert read_opened(tmp_path / "_lock") == b"theirs"
    assert os.listdir(tmp_path) == ["_lock"]

    def unsupported(source: str, target: str) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "link", unsupported)
    (tmp_path / "_vectors-0").write_bytes(b"made meanwhile")  # exists by the fallback's turn
    real_open = os.open
    calls = []

    def missing_once(path, flags, *args):  # type: ignore[no-untyped-def]
        calls.append(flags)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", missing_once)
    assert read_opened(tmp_path / "_vectors-0") == b"made meanwhile"


# --- each row's keyword terms ------------------------------------------------------------


def put_with_terms(store: Store, bags: dict[str, str | None], seed: int = 0) -> list[Entry]:
    keys = list(bags)
    items = [(key, vec(seed + n), f"{n:032x}", "id") for n, key in enumerate(keys)]
    return store.put_many(items, terms=[bags[key] for key in keys])


def journal_body(store: Store) -> bytes:
    raw = (store.path / journal.JOURNAL).read_bytes()
    return raw[raw.index(b"\n") + 1 :]


def snapshot_bags(store: Store) -> dict[str, str | None]:
    snap = store.read_state().snapshot
    assert snap.terms is not None
    return {str(key): snap.terms.bag(row) for row, key in enumerate(snap.keys)}


def test_lines_without_terms_are_written_as_before():
    put = Entry(3, "put", "k", "ab" * 16, "id", 32, 8, 7)
    assert put.to_line(5) == b'[3,"put","k","%s","id",32,8,7,5]\n' % (b"ab" * 16)
    assert Entry(4, "del", "k").to_line(5) == b'[4,"del","k","","",-1,0,-1,0]\n'
    with_terms = Entry(3, "put", "k", "ab" * 16, "id", 32, 8, 7, terms="fox:2 quick")
    assert with_terms.to_line(5) == put.to_line(5)[:-2] + b',"fox:2 quick"]\n'


def test_terms_travel_in_the_journal(store, caplog):
    bags = {"a": bag_of("The quick fox, the quick fox"), "b": None, "c": "", "d": "caf\u00e9"}
    entries = put_with_terms(store, bags)
    assert [e.terms for e in entries] == list(bags.values())
    store.delete("b")
    lines = journal_body(store).splitlines()
    assert [len(json.loads(line)) for line in lines] == [10, 9, 10, 10, 9]
    state = store.read_state()
    assert state.records.terms == [*bags.values(), None]
    assert [e.terms for e in state.tail] == [*bags.values(), None]
    rows = state.rows()
    assert dict(zip(rows.keys, rows.terms, strict=True)) == {
        "a": bags["a"],
        "c": "",
        "d": "caf\u00e9",
    }
    # Read at once, and one line at a time (an old line, then a damaged one, before them).
    body = journal_body(store)
    assert journal._typed(body, np.flatnonzero(np.frombuffer(body, np.uint8) == 10)) is not None
    old = b'{"v": 0, "op": "del", "k": "z"}\n'
    damaged = b'[0,"put","k","h","id",0,8,7,1,["not", "a", "bag"]]\n'
    mixed = journal.parse(old + damaged + body)
    assert mixed.terms == [None, *bags.values(), None]
    assert caplog.text.count("Skipping a damaged line") == 1
    assert [journal.parse_entry(line).terms for line in lines] == [*bags.values(), None]
    # A null tenth value reads as terms not known, both ways.
    null = b'[9,"put","k","h","id",0,8,7,1,null]\n'
    assert journal.parse(null).terms == journal.parse(old + null).terms[1:] == [None]


def test_terms_survive_compaction(store):
    fox, dog, cat = bag_of("quick brown fox"), bag_of("lazy dog dog"), bag_of("a cat")
    put_with_terms(store, {"1": fox, "2": dog, "3": cat, "4": None})
    store.delete("2")
    put_with_terms(store, {"3": None}, seed=30)  # re-embedded by a release without keywords
    store.compact()
    assert snapshot_bags(store) == {"1": fox, "3": None, "4": None}
    terms = store.read_state().snapshot.terms
    assert isinstance(terms.ids, np.memmap)  # mapped, as the vectors are
    assert sorted(terms.vocab) == sorted(Terms.from_bags([fox]).vocab)  # dog's and cat's went
    # Folded again with the snapshot's own terms, and new rows in between.
    put_with_terms(store, {"0": dog, "2": cat}, seed=50)
    store.delete("4")
    store.compact()
    assert snapshot_bags(store) == {"0": dog, "1": fox, "2": cat, "3": None}
    np.testing.assert_array_equal(store.load_vector("1"), vec(0))


def test_a_store_without_terms_writes_no_terms_files(store):
    store.put_many([(str(n), vec(n), "00" * 16, "id") for n in range(3)])
    store.compact()
    (directory,) = store.path.glob("snapshot-*")
    assert not list(directory.glob("terms_*"))
    assert store.read_state().snapshot.terms is None
    # Terms known for no row (an old snapshot, a tail of rows without them): still none.
    put_with_terms(store, {"3": None})
    store.compact()
    (directory,) = store.path.glob("snapshot-*")
    assert not list(directory.glob("terms_*"))


def test_terms_start_with_the_first_row_that_has_them(store):
    store.put_many([(str(n), vec(n), "00" * 16, "id") for n in range(3)])
    store.compact()
    put_with_terms(store, {"1": ""})  # a text without a token: no vocabulary at all
    store.compact()
    assert snapshot_bags(store) == {"0": None, "1": "", "2": None}
    put_with_terms(store, {"2": "fox"})
    store.compact()
    assert snapshot_bags(store) == {"0": None, "1": "", "2": "fox"}


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _other_dtype(path: Path) -> None:
    np.save(path, np.load(path).astype(np.int64))


def _bad_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe")


def _too_few_tokens(path: Path) -> None:
    path.write_text("fox")


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("terms_ids.npy", _cut),
        ("terms_ptr.npy", lambda path: path.write_bytes(b"")),
        ("terms_counts.npy", lambda path: path.unlink()),
        ("terms_ids.npy", _other_dtype),
        ("terms_ids.npy", lambda path: np.save(path, np.array([object()]), allow_pickle=True)),
        ("terms_known.npy", lambda path: np.save(path, np.ones(1, bool))),
        ("terms_ptr.npy", lambda path: np.save(path, np.array([0, 9, 1, 2, 3], np.int64))),
        ("terms_vocab.txt", _bad_utf8),
        ("terms_vocab.txt", _too_few_tokens),
        ("terms_vocab.txt", lambda path: path.unlink()),
    ],
)
def test_terms_files_that_do_not_fit_are_ignored(store, caplog, name, damage):
    put_with_terms(store, {str(n): bag_of(f"word{n} other") for n in range(4)})
    store.compact()
    (directory,) = store.path.glob("snapshot-*")
    damage(directory / name)
    state = store.read_state()
    assert state.snapshot.terms is None
    assert "Ignoring the keyword terms of" in caplog.text
    index = cache.FieldIndex(store, state)
    assert index.search(vec(2), 1, identity="id")[0].key == "2"
    # The next compaction writes the store's rows again, their terms not known.
    put_with_terms(store, {"9": "word9"})
    store.compact()
    assert snapshot_bags(store) == {"0": None, "1": None, "2": None, "3": None, "9": "word9"}


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.unlink(),
        lambda path: np.save(path, np.arange(3, dtype=np.int64)),  # another length
        lambda path: np.save(path, np.full(len(np.load(path)), 10**9, dtype=np.int64)),
    ],
)
def test_the_postings_order_is_kept_and_a_bad_one_is_sorted_again(store, caplog, damage):
    from django_embeddings.keywords.terms import analyze

    bags = {str(n): bag_of(f"word{n % 3} other{n} shared") for n in range(6)}
    put_with_terms(store, bags)
    store.compact()
    state = store.read_state()
    terms = state.snapshot.terms
    np.testing.assert_array_equal(terms.order, np.argsort(terms.ids, kind="stable"))
    expected = cache.FieldIndex(store, state).keyword_index().scores(analyze("word1 shared"))
    (directory,) = store.path.glob("snapshot-*")
    damage(directory / "terms_order.npy")
    state = store.read_state()
    assert state.snapshot.terms is not None and state.snapshot.terms.order is None
    got = cache.FieldIndex(store, state).keyword_index().scores(analyze("word1 shared"))
    assert got[0].tolist() == expected[0].tolist()
    np.testing.assert_allclose(got[1], expected[1])


def test_puts_refuse_what_is_no_bag_of_terms(store):
    store.put("a", vec(1), content_hash="00" * 16, identity="id", terms="fox")
    bad_bags = ["fox\nquick", "fox\rquick", "fox:0", "fox:-2", f"fox:{1 << 32}", " fox", "a:b:2"]
    for bad in bad_bags:
        with pytest.raises(StoreError, match="are no bag"):
            store.put("b", vec(2), content_hash="00" * 16, identity="id", terms=bad)
    with pytest.raises(StoreError, match="2 bags of terms given for 1 vectors"):
        store.put_many([("b", vec(2), "00" * 16, "id")], terms=["fox", "fox"])
    assert store.version() == 1


def test_a_damaged_bag_in_the_journal_reads_as_not_known(store, caplog):
    put_with_terms(store, {"a": "fox", "b": "dog"})
    body = journal_body(store).replace(b'"dog"]', b'"dog:0"]')
    header = (store.path / journal.JOURNAL).read_bytes().split(b"\n")[0]
    (store.path / journal.JOURNAL).write_bytes(header + b"\n" + body)
    store.compact()
    assert snapshot_bags(store) == {"a": "fox", "b": None}
    assert "1 rows have damaged keyword terms" in caplog.text

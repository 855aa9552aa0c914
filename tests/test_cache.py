"""The per-process index: deltas applied in place must equal a fresh load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from django_embeddings import cache
from django_embeddings.store import Store


def vec(seed: int, dims: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def put(store: Store, key: str, seed: int, identity: str = "m1"):  # type: ignore[no-untyped-def]
    return store.put_many([(key, vec(seed), f"{seed:032x}", identity)])


def ranking(index: cache.FieldIndex, query: np.ndarray, k: int = 50, **kwargs):  # type: ignore[no-untyped-def]
    return [(h.key, round(h.score, 5)) for h in index.search(query, k, identity="m1", **kwargs)]


@pytest.fixture(autouse=True)
def fresh_cache():  # type: ignore[no-untyped-def]
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s", label="app.M.f", compact_threshold=1000)


def test_deltas_equal_a_fresh_load(store):
    for n in range(30):
        put(store, str(n), n)
    store.compact()
    index = cache.get(store)
    rng = np.random.default_rng(0)
    for step in range(200):
        key = str(int(rng.integers(0, 45)))
        if rng.random() < 0.3:
            entries = store.delete_many([key])
            cache.apply_delta(store, entries)
        else:
            seed = int(rng.integers(0, 10_000))
            entries = put(store, key, seed)
            cache.apply_delta(store, entries, [vec(seed)])
        if step % 50 == 0:
            store.compact()
    query = vec(123456)
    fresh = cache.FieldIndex(store, store.read_state())
    assert index is cache.loaded(store.label)
    assert sorted(index.keys()) == sorted(fresh.keys())
    assert ranking(index, query) == ranking(fresh, query)


def test_catch_up_reads_only_new_entries(store):
    put(store, "a", 1)
    index = cache.get(store)
    writer = Store(store.path, label=store.label)  # another process's view
    put(writer, "b", 2)
    writer.delete("a")
    same = cache.get(store, check=False)
    assert same is index and sorted(index.keys()) == ["a"]  # not checked: not seen
    checked = cache.get(store, check=True)
    assert checked is index  # caught up in place, no reload
    assert sorted(index.keys()) == ["b"]


def test_catch_up_after_a_peer_compacted(store):
    put(store, "a", 1)
    index = cache.get(store)
    writer = Store(store.path, label=store.label)
    put(writer, "b", 2)
    writer.compact()
    put(writer, "c", 3)
    checked = cache.get(store)
    assert sorted(checked.keys()) == ["a", "b", "c"]
    assert checked.version == writer.version()
    assert index is not checked  # a compaction replaces the snapshot: reloaded


def test_a_version_gap_catches_up_from_the_journal(store):
    put(store, "a", 1)
    index = cache.get(store)
    put(store, "b", 2)  # never applied: a lost message
    entries = put(store, "c", 3)
    cache.apply_delta(store, entries, [vec(3)])
    assert sorted(cache.loaded(store.label).keys()) == ["a", "b", "c"]
    assert cache.loaded(store.label) is index and index.version == 3


def test_replayed_or_old_deltas_are_ignored(store):
    entries = put(store, "a", 1)
    index = cache.get(store)
    cache.apply_delta(store, entries, [vec(999)])  # already applied: must not overwrite
    np.testing.assert_allclose(index.vector("a"), vec(1) / np.linalg.norm(vec(1)), rtol=1e-6)


def test_search_excludes_and_restricts(store):
    for n in range(10):
        put(store, str(n), n)
    index = cache.get(store)
    query = vec(3)
    assert index.search(query, 1, identity="m1")[0].key == "3"
    assert "3" not in [h.key for h in index.search(query, 10, identity="m1", exclude="3")]
    hits = index.search(query, 10, identity="m1", candidates=["1", "7", "missing"])
    assert sorted(h.key for h in hits) == ["1", "7"]


def test_query_of_another_size_is_a_clear_error(store):
    put(store, "a", 1)
    with pytest.raises(ValueError, match="the query has 8 dimensions, the stored vectors 16"):
        cache.get(store).search(vec(1, 8), 1, identity="m1")


def test_throwaway_index_is_not_kept(store):
    put(store, "a", 1)
    cache.get(store, keep=False)
    assert cache.loaded(store.label) is None


def test_ties_are_broken_by_key_integers_numerically(store):
    for key in ["10", "9", "b", "11", "a"]:
        store.put_many([(key, vec(7), "00" * 16, "m1")])
    hits = cache.get(store).search(vec(7), 5, identity="m1")
    assert [h.key for h in hits] == ["9", "10", "11", "a", "b"]


@pytest.mark.parametrize("as_ints", [False, True], ids=["string-keys", "int64-keys"])
def test_candidates_restrict_the_snapshot_and_the_rows_written_after_it(store, as_ints):
    def among(*keys: int) -> list[str]:
        candidates = np.array(keys, dtype=np.int64) if as_ints else [str(k) for k in keys]
        hits = cache.get(store).search(vec(1), 10, identity="m1", candidates=candidates)
        return sorted(h.key for h in hits)

    for n in range(6):
        put(store, str(n), n)
    store.compact()
    assert not cache.get(store).tail_rows  # every row in the snapshot
    assert among(1, 4, 99) == ["1", "4"]
    put(store, "7", 7)
    put(store, "8", 8)
    assert cache.get(store).tail_rows
    assert among(1, 7, 99) == ["1", "7"]
    assert among(99) == []


def test_a_loaded_tail_keeps_each_rows_provider_and_hash(store):
    """Rows loaded from the journal and rows applied after agree on identity and hash."""
    for n in range(6):
        put(store, str(n), n, identity="m1" if n % 2 else "m2")
    index = cache.get(store)
    put(store, "6", 6, identity="m2")
    put(store, "1", 11, identity="m2")  # an update moves row 1 to another provider
    index = cache.get(store)
    assert sorted(h.key for h in index.search(vec(0), 10, identity="m1")) == ["3", "5"]
    assert sorted(h.key for h in index.search(vec(0), 10, identity="m2")) == [
        "0",
        "1",
        "2",
        "4",
        "6",
    ]
    assert index.meta("1") == (f"{11:032x}", "m2")
    assert index.meta("3") == (f"{3:032x}", "m1")
    assert index.hashes(["0", "1", "9"]) == [f"{0:032x}", f"{11:032x}", None]
    store.delete("3")
    index = cache.get(store)
    assert index.meta("3") is None
    assert [h.key for h in index.search(vec(0), 10, identity="m1")] == ["5"]
    fresh = cache.reload(store)
    for key in "0123456":
        assert fresh.meta(key) == index.meta(key)


def test_writes_after_a_load_of_journal_rows_equal_a_fresh_load(store):
    """Rows loaded from the log are kept as stored and scaled; writes after the load
    (updates of those rows, new rows, deletes) give what a fresh load gives."""
    store.put_many([(str(n), vec(n) * (n + 1), f"{n:032x}", "m1") for n in range(40)])
    index = cache.get(store)
    assert not index.tail.flags.writeable  # the log's pages, not a copy
    np.testing.assert_array_equal(index.vector("3"), vec(3) / np.linalg.norm(vec(3)))
    put(store, "3", 103)
    put(store, "new", 104)
    store.delete("5")
    index = cache.get(store)
    fresh = cache.reload(store)
    for query in (vec(103), vec(7), vec(200)):
        assert ranking(index, query) == ranking(fresh, query)
    for key in ("3", "5", "7", "new"):
        a, b = index.vector(key), fresh.vector(key)
        assert (a is None and b is None) or np.array_equal(a, b), key
    assert index.keys() and sorted(index.keys()) == sorted(fresh.keys())
    assert len(index) == len(fresh) == 40

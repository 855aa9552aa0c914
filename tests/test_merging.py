"""Compactions outside the save path (``Store.merge``): real files, threads and processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import django_embeddings.store as store_module
from django_embeddings import cache
from django_embeddings.keywords.terms import bag_of
from django_embeddings.store import Store, journal, merging, snapshot, vectorlog
from django_embeddings.store.permissions import TEMP_PREFIX
from tests.conftest import skip_or_fail
from tests.reliability.disks import Tmpfs, mount_problem


def vec(seed: int, dims: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def put(store: Store, numbers: range | list[int], tag: int = 0) -> None:
    store.put_many(
        [(str(n), vec(n + 1000 * tag), f"{n + 1000 * tag:032x}", "id") for n in numbers],
        terms=[bag_of(f"row {n} tag {tag}", 100) for n in numbers],
    )


def contents(store: Store) -> dict[str, tuple[str, bytes]]:
    """key -> (hash, stored vector's bytes) of every live row, as a new reader sees them."""
    fresh = Store(store.path, label=store.label)
    state = fresh.read_state()
    rows: dict[str, tuple[str, bytes]] = {}
    for row, key in enumerate(state.snapshot.keys):
        raw = state.snapshot.raw if state.snapshot.raw is not None else state.snapshot.vectors
        rows[str(key)] = (bytes(state.snapshot.hashes[row]).hex(), np.asarray(raw[row]).tobytes())
    last = {entry.key: entry for entry in state.tail}
    for key, entry in last.items():
        rows.pop(key, None)
        if entry.op == "put":
            vector = fresh.load_vector(key)
            assert vector is not None, entry
            rows[key] = (entry.hash, vector.tobytes())
    return rows


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "app.Model" / "field", label="app.Model.field", compact_threshold=50)


@pytest.fixture
def other(store: Store) -> Store:
    """Another writer of the same store (as another process would be) that never compacts."""
    return Store(store.path, label=store.label, compact_threshold=10**9)


def test_a_save_that_makes_a_compaction_due_leaves_it_to_a_thread(tmp_path, monkeypatch):
    store = Store(tmp_path / "s", compact_threshold=50, merge_in_background=True)
    go = threading.Event()
    merge = Store.merge
    merges: list[Store] = []

    def merge_when_told(self: Store, **kwargs: Any) -> int | None:
        merges.append(self)
        assert go.wait(timeout=30)
        return merge(self, **kwargs)

    monkeypatch.setattr(Store, "merge", merge_when_told)
    put(store, range(60))  # returns while the merge waits
    assert merging.running(store.path) and snapshot.index_version(store.path) == 0
    put(store, range(60, 70))  # a second save starts no second merge
    go.set()
    assert merging.wait(timeout=30) and len(merges) == 1
    assert snapshot.index_version(store.path) >= 50
    assert len(store.read_state().snapshot) >= 50
    assert set(contents(store)) == {str(n) for n in range(70)}


def test_writes_made_while_a_merge_runs_are_carried_over(store, other, monkeypatch):
    put(other, range(100))
    before = contents(store)
    stage = snapshot.stage

    def stage_while_others_write(*args: Any, **kwargs: Any) -> Path:
        staged = stage(*args, **kwargs)
        put(other, range(90, 130), tag=1)  # overwrites ten rows, adds thirty
        other.delete_many(["5", "95", "125"])
        return staged

    monkeypatch.setattr(snapshot, "stage", stage_while_others_write)
    version = store.merge()
    assert version == 100
    state = store.read_state()
    assert state.snapshot.version == 100 and len(state.snapshot) == 100
    assert [e.version for e in state.tail] == list(range(101, 144))
    assert journal.read_base(journal.header(journal.open_for_append(store.path))) == 100
    assert [p.name for p in store.path.glob(f"{vectorlog.PREFIX}*")] == [vectorlog.name_for(100)]
    after = contents(store)
    expected = {k: v for k, v in before.items() if k not in {"5", "95"}}
    for n in range(90, 130):
        if n not in (95, 125):
            expected[str(n)] = (f"{n + 1000:032x}", vec(n + 1000).tobytes())
    assert after == expected
    # The carried-over rows keep their keyword terms, and the index reads it all.
    assert {e.key: e.terms for e in state.tail if e.op == "put"}["100"] == bag_of(
        "row 100 tag 1", 100
    )
    index = cache.FieldIndex(store, state)
    assert index.meta("129") == (f"{1129:032x}", "id")
    assert not list(store.path.glob(f"{TEMP_PREFIX}*"))


def test_a_merge_that_another_compaction_beat_changes_nothing(store, other, monkeypatch):
    put(other, range(80))
    stage = snapshot.stage

    def stage_then_compact(*args: Any, **kwargs: Any) -> Path:
        monkeypatch.setattr(snapshot, "stage", stage)  # the compaction below stages too
        staged = stage(*args, **kwargs)
        put(other, range(80, 85))
        other.compact()  # another process's compaction, installed first
        return staged

    monkeypatch.setattr(snapshot, "stage", stage_then_compact)
    assert store.merge() is None
    state = store.read_state()
    assert state.snapshot.version == 85 and not state.tail
    assert set(contents(store)) == {str(n) for n in range(85)}
    assert not list(store.path.glob(f"{TEMP_PREFIX}*"))


def test_one_process_merges_a_store_at_a_time(store, other):
    put(other, range(60))
    with merging.exclusive(store.path, store.permissions) as mine:
        assert mine
        assert store.merge() is None  # as another process would find it
    assert store.merge() == 60


def test_a_merge_that_is_not_due_any_more_returns_the_snapshot(store, other):
    put(other, range(60))
    other.compact()
    assert store.merge() == 60
    assert store.read_state().snapshot.version == 60


def _writer(path: str, start: int, count: int) -> None:
    store = Store(Path(path), compact_threshold=25, merge_in_background=True)
    for n in range(start, start + count):
        put(store, [n], tag=n % 3)
    merging.wait(timeout=60)


def test_writers_in_several_processes_keep_every_row(tmp_path):
    path = tmp_path / "shared"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), 200 * w, 200)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    rows = contents(Store(path))
    assert len(rows) == 800
    for n in range(800):
        tag = n % 3
        assert rows[str(n)] == (f"{n + 1000 * tag:032x}", vec(n + 1000 * tag).tobytes())
    assert snapshot.index_version(path) > 0


def test_writes_made_while_the_tail_is_copied_are_carried_too(store, other, monkeypatch):
    put(other, range(60))
    add = store_module._CarriedOver.add
    calls: list[int] = []

    def add_then_write(self: Any, tail: Any) -> None:
        add(self, tail)
        calls.append(len(tail.entries))
        if len(calls) == 1:  # between the copy without the lock and the one under it
            put(other, range(55, 70), tag=2)
            other.delete_many(["3"])

    monkeypatch.setattr(store_module._CarriedOver, "add", add_then_write)
    assert store.merge() == 60
    assert calls == [0, 16]
    expected = {str(n): (f"{n:032x}", vec(n).tobytes()) for n in range(60) if n != 3}
    expected.update({str(n): (f"{n + 2000:032x}", vec(n + 2000).tobytes()) for n in range(55, 70)})
    assert contents(store) == expected
    assert not list(store.path.glob(f"{TEMP_PREFIX}*"))


def test_a_save_compacts_itself_when_merges_fall_far_behind(tmp_path, monkeypatch):
    """Threads that never run (uWSGI without --enable-threads) leave no journal that only grows."""
    monkeypatch.setattr(merging, "start", lambda store: None)
    store = Store(tmp_path / "s", compact_threshold=10, merge_in_background=True)
    for n in range(39):
        put(store, [n])
    assert snapshot.index_version(store.path) == 0
    put(store, [39])  # four thresholds behind
    assert snapshot.index_version(store.path) == 40


@pytest.mark.django_db(transaction=True)
def test_saves_through_the_orm_merge_in_the_background_and_search_every_row(settings):
    from tests.testapp.models import Article

    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 20
    settings.DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND = True
    articles = [Article.objects.create(title=f"t{n}", body=f"text number {n}") for n in range(50)]
    store = Article._meta.get_field("embedding").store
    assert store.merge_in_background
    assert merging.wait(timeout=30)
    assert snapshot.index_version(store.path) >= 20
    for article in articles[::7]:
        found = list(Article.objects.semantic_search(article.body, k=1))
        assert [row.pk for row in found] == [article.pk]
    assert Article.objects.semantic_search("text", k=100).count() == 50


@pytest.mark.django_db(transaction=True)
def test_the_merging_thread_loads_the_new_snapshot_into_its_process(settings):
    """The save or search after a merge does not pay for loading its snapshot."""
    from tests.testapp.models import Article

    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 20
    settings.DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND = True
    Article.objects.create(title="first", body="the first text")
    assert len(Article.objects.semantic_search("text", k=1)) == 1  # loads the index
    store = Article._meta.get_field("embedding").store
    before = cache.loaded(store.label)
    assert before is not None and len(before.base_keys) == 0
    for n in range(25):
        Article.objects.create(title=f"t{n}", body=f"text number {n}")
    assert merging.wait(timeout=30)
    after = cache.loaded(store.label)
    assert after is not None and after is not before
    assert len(after.base_keys) == snapshot.rows(store.path) >= 20
    assert after.version == store.version() == 26
    assert len(Article.objects.semantic_search("text", k=100)) == 26


@pytest.mark.django_db(transaction=True)
def test_saves_right_after_a_merge_read_on_without_loading_its_snapshot(settings, monkeypatch):
    """Between the install and the merging thread's load, this process's index reads the
    new journal on from where its version is; it does not load the snapshot itself."""
    from tests.testapp.models import Article

    settings.DJANGO_EMBEDDINGS_COMPACT_THRESHOLD = 20
    settings.DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND = True
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "mtime"  # every search checks the journal
    installed, go = threading.Event(), threading.Event()
    refresh = cache.refresh

    def refresh_when_told(store: Store) -> None:
        installed.set()
        assert go.wait(timeout=30)
        refresh(store)

    monkeypatch.setattr(cache, "refresh", refresh_when_told)
    Article.objects.create(title="first", body="the first text")
    assert len(Article.objects.semantic_search("text", k=1)) == 1  # loads the index
    store = Article._meta.get_field("embedding").store
    loaded = cache.loaded(store.label)
    articles = [Article.objects.create(title=f"t{n}", body=f"text number {n}") for n in range(20)]
    assert installed.wait(timeout=30)
    assert snapshot.index_version(store.path) >= 20
    articles += [Article.objects.create(title=f"u{n}", body=f"more text {n}") for n in range(3)]
    for article in articles[::4]:
        assert [row.pk for row in Article.objects.semantic_search(article.body, k=1)] == [
            article.pk
        ]
    assert cache.loaded(store.label) is loaded  # read on, not reloaded
    assert loaded.version == 24
    go.set()
    assert merging.wait(timeout=30)
    assert cache.loaded(store.label) is not loaded
    assert len(Article.objects.semantic_search("text", k=100)) == 24


def test_a_merge_that_fills_the_disk_is_abandoned_and_saves_go_on(tmp_path, caplog):
    problem = mount_problem()
    if problem is not None:
        skip_or_fail(problem)
    disk = Tmpfs(tmp_path / "disk", size_kb=768).mount()
    try:
        store = Store(disk.path / "s", compact_threshold=200, merge_in_background=True)
        rows = np.random.default_rng(5).standard_normal((300, 384)).astype(np.float32)

        def put_rows(numbers: range) -> None:
            for n in numbers:
                store.put_many([(str(n), rows[n], f"{n:032x}", "id")])

        put_rows(range(200))  # the snapshot of these (raw and normalized) does not fit
        assert merging.wait(timeout=30)
        assert "could not compact the store in the background" in caplog.text
        assert snapshot.index_version(store.path) == 0
        assert not list(store.path.glob(f"{TEMP_PREFIX}*"))
        put_rows(range(200, 260))  # saves go on; the next try waits a minute
        assert not merging.running(store.path)
        state = Store(store.path).read_state()
        assert [entry.key for entry in state.tail] == [str(n) for n in range(260)]
        for n in (0, 199, 259):
            assert np.array_equal(store.load_vector(str(n)), rows[n])
    finally:
        merging.wait(timeout=30)
        disk.unmount()


def test_a_sweep_and_status_leave_a_running_merge_its_temp_files(store, other):
    put(other, range(5))
    staged = store.path / f"{merging.TEMP_PREFIX}staged-snapshot"
    staged.mkdir()
    crashed = store.path / f"{TEMP_PREFIX}of-a-crashed-write"
    crashed.touch()
    for path in (staged, crashed):
        os.utime(path, (0, 0))  # old enough for any max_age
    assert sorted(store.temp_files()) == sorted([staged.name, crashed.name])
    with merging.exclusive(store.path, store.permissions) as mine:  # as a merge holds it
        assert mine
        assert store.temp_files() == [crashed.name]
        assert store.stats().temp_files == 1
        assert store.sweep_tempfiles(max_age=0) == [crashed.name]
        assert staged.is_dir()
    assert store.stats().temp_files == 1  # no merge: a leftover of one that was killed
    assert store.sweep_tempfiles(max_age=0) == [staged.name]


def test_a_forked_child_does_not_hold_the_merge_lock_of_its_parent(store):
    """A pre-fork server's master that forks while it merges: once the merge ends, the
    lock is free, however long the child lives."""
    store.path.mkdir(parents=True)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    with merging.exclusive(store.path, store.permissions) as mine:
        assert mine
        pid = os.fork()
        if pid == 0:  # the child: says whether it believes a merge runs, then waits
            try:
                os.write(ready_w, b"1" if merging.running(store.path) else b"0")
                os.read(done_r, 1)
            finally:
                os._exit(0)
        assert os.read(ready_r, 1) == b"0"
    try:
        with merging.exclusive(store.path, store.permissions) as mine:
            assert mine  # the child still lives
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def test_a_merge_removes_what_a_killed_merge_left(store, other):
    put(other, range(60))
    left = store.path / f"{merging.TEMP_PREFIX}of-a-killed-merge"
    left.mkdir()
    (left / "vectors.npy").write_bytes(b"half written")
    assert store.merge() == 60
    assert store.temp_files() == []


_EXITS_WHILE_MERGING = """
import sys, time
import numpy as np
from pathlib import Path
from django_embeddings.store import Store, merging
store = Store(Path(sys.argv[1]), compact_threshold=50, merge_in_background=True)
merge = Store.merge
def slow_merge(self, **kwargs):
    time.sleep(1.0)  # still merging when the main thread returns
    return merge(self, **kwargs)
Store.merge = slow_merge
rng = np.random.default_rng(0)
store.put_many([(str(n), rng.standard_normal(8).astype(np.float32), f"{n:032x}", "id")
                for n in range(60)])
assert merging.running(store.path)
"""


def test_a_process_that_exits_finishes_its_merge_first(tmp_path):
    """A management command (or a worker told to stop) does not abandon a merge half-written."""
    import subprocess
    import sys

    path = tmp_path / "s"
    done = subprocess.run(
        [sys.executable, "-c", _EXITS_WHILE_MERGING, str(path)], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert snapshot.index_version(path) == 60
    assert Store(path).temp_files() == []

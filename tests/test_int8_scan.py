"""DJANGO_EMBEDDINGS_SCAN = "int8": the same results as the float32 scan, whatever the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from django_embeddings import cache, checks, quantized
from django_embeddings.quantized import Int8Matrix, Int8Scored
from django_embeddings.ranking import _TIE
from django_embeddings.store import Store, normalize

pytestmark = pytest.mark.skipif(not quantized.available(), reason="numkong is not installed")

# float32 products of the same row may round differently by where BLAS finds the row
# (the float32 scan's filtered and unfiltered searches differ as much): a few units in
# the last place of a score below 1.
ULPS = 2e-7


@pytest.fixture(autouse=True)
def every_size(monkeypatch):  # type: ignore[no-untyped-def]
    """Small stores through the int8 copy too (it is skipped below MIN_ROWS rows)."""
    monkeypatch.setattr(quantized, "MIN_ROWS", 0)
    cache.clear()
    yield
    cache.clear()


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1, norms)).astype(np.float32)


def _data(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return _unit_rows(rng.standard_normal((3000, 32), dtype=np.float32))
    if kind == "duplicates":  # exact ties, broken by key
        return np.repeat(_unit_rows(rng.standard_normal((40, 32), dtype=np.float32)), 60, axis=0)
    if kind == "near-ties":  # scores within the tie margin of each other
        base = np.repeat(rng.standard_normal((6, 32), dtype=np.float32), 400, axis=0)
        return _unit_rows(base + 1e-6 * rng.standard_normal(base.shape, dtype=np.float32))
    if kind == "spiky":  # one large coordinate: a coarse int8 scale for the rest
        spikes = np.eye(24, dtype=np.float32)[rng.integers(0, 24, 2500)] * 30
        return _unit_rows(spikes + rng.standard_normal((2500, 24), dtype=np.float32))
    assert kind == "three-dimensions"  # dense scores: many rows near the k-th
    return _unit_rows(rng.standard_normal((6000, 3), dtype=np.float32))


def _store(tmp_path: Path, rows: np.ndarray) -> Store:
    store = Store(tmp_path / "s", label="app.M.f", compact_threshold=10**9)
    store.put_many((str(n), row, f"{n:032x}", "m1") for n, row in enumerate(rows))
    store.compact()
    return store


def _search(
    index: cache.FieldIndex, settings: Any, scan: str, query: np.ndarray, k: int, **kw: Any
) -> list[cache.Hit]:
    settings.DJANGO_EMBEDDINGS_SCAN = scan
    return index.search(query, k, identity="m1", **kw)


def _assert_same(
    index: cache.FieldIndex, settings: Any, query: np.ndarray, k: int, **kw: Any
) -> None:
    expected = _search(index, settings, "float32", query, k, **kw)
    found = _search(index, settings, "int8", query, k, **kw)
    assert [hit.key for hit in found] == [hit.key for hit in expected]
    np.testing.assert_allclose(
        [hit.score for hit in found], [hit.score for hit in expected], rtol=0, atol=ULPS
    )


@pytest.mark.parametrize("kind", ["random", "duplicates", "near-ties", "spiky", "three-dimensions"])
def test_int8_scan_returns_the_float32_results(tmp_path, settings, kind):
    rng = np.random.default_rng(len(kind))
    rows = _data(kind, rng)
    index = cache.get(_store(tmp_path, rows))
    n = len(rows)
    keys = [str(key) for key in range(n)]
    queries = [
        rng.standard_normal(rows.shape[1]).astype(np.float32),
        rows[int(rng.integers(n))],  # a stored row, and its duplicates if any
        -rows[int(rng.integers(n))],
    ]
    restrictions: list[Any] = [
        None,
        [keys[i] for i in np.flatnonzero(rng.random(n) < 0.01)],
        np.flatnonzero(rng.random(n) < 0.1).astype(np.int64),  # integer keys
        [keys[i] for i in np.flatnonzero(rng.random(n) < 0.6)],
        [],
    ]
    for query in queries:
        for candidates in restrictions:
            for k in (1, 10, 100, n + 5):  # k beyond the rows: every allowed row
                _assert_same(index, settings, query, k, candidates=candidates)
        _assert_same(index, settings, query, 10, exclude=keys[0])


def test_deltas_applied_in_place(tmp_path, settings):
    """Replaced and deleted snapshot rows are masked, new rows go to the float32 tail."""
    rng = np.random.default_rng(5)
    rows = _data("duplicates", rng)
    store = _store(tmp_path, rows)
    settings.DJANGO_EMBEDDINGS_SCAN = "int8"  # a change of setting forgets loaded indexes
    index = cache.get(store)
    index.search(rows[0], 10, identity="m1")  # builds the int8 copy before the writes
    for step in range(300):
        key = str(int(rng.integers(0, len(rows) + 200)))
        if rng.random() < 0.4:
            cache.apply_delta(store, store.delete_many([key]))
        else:
            # Often a copy of a stored row: ties across the snapshot and the tail.
            vector = rows[int(rng.integers(len(rows)))] if rng.random() < 0.5 else None
            if vector is None:
                vector = rng.standard_normal(rows.shape[1]).astype(np.float32)
            entries = store.put_many([(key, vector, f"{step:032x}", "m1")])
            cache.apply_delta(store, entries, [vector])
    assert index is cache.loaded(store.label)
    fresh = cache.FieldIndex(store, store.read_state())
    assert sorted(index.keys()) == sorted(fresh.keys())
    for query in (rows[3], rng.standard_normal(rows.shape[1]).astype(np.float32)):
        for k in (1, 10, 100, 5000):
            _assert_same(index, settings, query, k)
            _assert_same(index, settings, query, k, candidates=[str(i) for i in range(0, 3000, 7)])
            _assert_same(fresh, settings, query, k)
            here = _search(index, settings, "int8", query, k)
            loaded = _search(fresh, settings, "int8", query, k)
            assert [hit.key for hit in here] == [hit.key for hit in loaded]
            np.testing.assert_allclose(
                [hit.score for hit in here], [hit.score for hit in loaded], rtol=0, atol=ULPS
            )


def test_every_score_lies_within_its_bound():
    """The bound the candidates rest on, against float64 scores, on awkward rows."""
    rng = np.random.default_rng(11)
    rows = np.concatenate(
        [
            _data("spiky", rng)[:1000, :24],
            _unit_rows(np.eye(24, dtype=np.float32)),
            np.zeros((3, 24), dtype=np.float32),
            _unit_rows(rng.standard_normal((1000, 24), dtype=np.float32) ** 5),
        ]
    )
    copy = Int8Matrix.of(rows)
    for _ in range(20):
        unit = normalize(rng.standard_normal(24).astype(np.float32) ** 3)
        scored = Int8Scored(copy, rows, None, unit, _TIE, rows=np.arange(len(rows)))
        radius = scored._radius(np.arange(len(rows)))
        exact32 = rows @ unit
        exact64 = rows.astype(np.float64) @ unit.astype(np.float64)
        approx = scored.approx.astype(np.float64)
        assert np.all(np.abs(approx - exact64) <= radius)
        assert np.all(np.abs(approx - exact32) <= radius)


def test_the_copy_is_a_quarter_of_the_matrix():
    rows = _unit_rows(np.random.default_rng(2).standard_normal((1000, 384), dtype=np.float32))
    copy = Int8Matrix.of(rows)
    assert copy.codes.dtype == np.int8
    assert copy.nbytes <= rows.nbytes / 4 + 12 * len(rows)


def test_check_names_the_setting_and_the_extra(settings, monkeypatch):
    settings.DJANGO_EMBEDDINGS_SCAN = "int8"
    assert not [e for e in checks.check_settings() if e.id.endswith(("E021", "E022"))]
    monkeypatch.setattr(quantized, "available", lambda: False)
    (error,) = [e for e in checks.check_settings() if e.id == "django_embeddings.E022"]
    assert "DJANGO_EMBEDDINGS_SCAN" in error.msg
    assert "django-embedding-field[int8]" in (error.hint or "")
    settings.DJANGO_EMBEDDINGS_SCAN = "int4"
    (error,) = [e for e in checks.check_settings() if e.id == "django_embeddings.E021"]
    assert "DJANGO_EMBEDDINGS_SCAN" in error.msg


def _same_copy(found: Int8Matrix, expected: Int8Matrix) -> None:
    for name in ("codes", "scales", "errors", "l1"):
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name))
    assert found.norm >= expected.norm  # a bound on the kept rows' lengths
    assert (found.widest_error, found.widest_l1) == (expected.widest_error, expected.widest_l1)


def test_snapshots_keep_the_copy_and_compactions_extend_it(tmp_path, settings):
    """A store that keeps an int8 copy writes it beside each snapshot; a compaction
    quantizes only the rows it adds, and the copy is the whole matrix's."""
    rng = np.random.default_rng(9)
    rows = _data("random", rng)
    store = Store(tmp_path / "s", label="app.M.f", compact_threshold=10**9, int8=True)
    store.put_many((str(n), row, f"{n:032x}", "m1") for n, row in enumerate(rows))
    store.compact()
    first = store.read_state().snapshot
    assert first.int8 is not None
    _same_copy(first.int8, Int8Matrix.of(np.asarray(first.vectors)))
    # Updates, deletes and new keys (sorted in among the old ones), then compaction.
    fresh = rng.standard_normal((300, rows.shape[1])).astype(np.float32)
    store.put_many((str(n * 7), row, f"{n:032x}", "m2") for n, row in enumerate(fresh))
    deleted = {str(n) for n in range(1, 2000, 3)}
    store.delete_many(sorted(deleted))
    quantized_rows: list[int] = []
    real_of = Int8Matrix.of.__func__  # type: ignore[attr-defined]

    def counting_of(cls: type[Int8Matrix], matrix: np.ndarray) -> Int8Matrix:
        quantized_rows.append(len(matrix))
        return real_of(cls, matrix)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Int8Matrix, "of", classmethod(counting_of))
        store.compact()
    # Only the rows written since were quantized: the kept rows' codes were reused.
    assert sum(quantized_rows) == sum(str(n * 7) not in deleted for n in range(len(fresh)))
    second = store.read_state().snapshot
    assert second.int8 is not None and len(second.int8.codes) == len(second)
    _same_copy(second.int8, Int8Matrix.of(np.asarray(second.vectors)))


def test_a_process_maps_the_snapshot_copy_and_finds_the_same_rows(tmp_path, settings, monkeypatch):
    settings.DJANGO_EMBEDDINGS_SCAN = "int8"
    rng = np.random.default_rng(4)
    rows = _data("near-ties", rng)
    store = Store(tmp_path / "s", label="app.M.f", compact_threshold=10**9, int8=True)
    store.put_many((str(n), row, f"{n:032x}", "m1") for n, row in enumerate(rows))
    store.compact()
    index = cache.get(store)

    def no_quantizing(matrix: np.ndarray) -> Int8Matrix:
        raise AssertionError("the snapshot's copy should be used")

    monkeypatch.setattr(Int8Matrix, "of", no_quantizing)
    copy = index.int8()
    assert isinstance(copy.codes, np.ndarray) and not isinstance(copy.codes, np.memmap)
    monkeypatch.undo()
    settings.DJANGO_EMBEDDINGS_SCAN = "int8"
    index = cache.get(store)
    for query in (rows[7], rng.standard_normal(rows.shape[1]).astype(np.float32)):
        for k in (1, 10, 500):
            _assert_same(index, settings, query, k)


@pytest.mark.parametrize("damage", ["truncated", "other-shape", "no-norm", "missing"])
def test_a_copy_that_does_not_fit_is_ignored(tmp_path, settings, caplog, damage):
    rows = _data("random", np.random.default_rng(3))[:500]
    store = Store(tmp_path / "s", label="app.M.f", compact_threshold=10**9, int8=True)
    store.put_many((str(n), row, f"{n:032x}", "m1") for n, row in enumerate(rows))
    store.compact()
    snapshot_dir = next(store.path.glob("snapshot-*"))
    if damage == "truncated":
        (snapshot_dir / "int8_codes.npy").write_bytes(b"\x93NUMPY")
    elif damage == "other-shape":
        np.save(snapshot_dir / "int8_scales.npy", np.zeros(7, dtype=np.float32))
    elif damage == "missing":
        (snapshot_dir / "int8_l1.npy").unlink()
    else:
        meta = snapshot_dir / "meta.json"
        meta.write_text(meta.read_text().replace('"int8_norm"', '"other"'))
    snap = store.read_state().snapshot
    assert snap.int8 is None and len(snap) == len(rows)
    if damage != "no-norm":  # one warning, naming the file that does not fit
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "int8_" in warnings[0], warnings
    # The process quantizes the matrix itself: the same results.
    settings.DJANGO_EMBEDDINGS_SCAN = "int8"
    index = cache.FieldIndex(store, store.read_state())
    _assert_same(index, settings, rows[0], 10)

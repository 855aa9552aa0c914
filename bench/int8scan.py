"""The int8 scan (``DJANGO_EMBEDDINGS_SCAN = "int8"``) against the float32 one, at the index.

    python -m bench.int8scan [--sizes 100000,1000000] [--queries 20] [--dir DIR]
    python -m bench.int8scan --queryset 100000 [--queries 20] [--dir DIR]
    python -m bench.int8scan --cold 1000000 [--dir DIR]

Builds (or reuses) a store of the bench corpus per size, then times
``FieldIndex.search`` warm, both ways, unfiltered and restricted to 1 % and 10 % of the
rows (integer keys, as a filtered queryset passes them), for k = 10 and 100. Prints a
table: the best and median time per query, the ratio, whether every query returned the
same keys in the same order, the largest score difference, and the memory scanned.

``--queryset N`` times the whole ``list(qs.semantic_search(vector, k))`` instead, on N
rows of the end-to-end benchmark's model in SQLite (a file), embedded by its backfill.

``--cold N`` times what the int8 copy costs outside searches, on a store of N rows:
a new process's first int8 search (index load included, page cache warm), with the
copy beside the snapshot and with its files moved away (the process quantizes the
matrix, as before snapshots kept it); and a compaction that folds 10,000 new rows in,
for a store that keeps no copy, one whose old snapshot has none (the whole matrix is
quantized once), and one whose old snapshot has it (only the new rows are).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bench-int8scan"))
    parser.add_argument("--queryset", type=int, help="rows for the whole-queryset table")
    parser.add_argument("--cold", type=int, help="rows for the first-search and compaction table")
    parser.add_argument("--first-search", help=argparse.SUPPRESS)  # a store, in a new process
    args = parser.parse_args()
    if args.first_search:
        _first_search(Path(args.first_search))
        return
    if args.queryset:
        _querysets(args.queryset, args.queries, Path(args.dir))
        return
    if args.cold:
        _cold(args.cold, Path(args.dir) / f"store-{args.cold}-int8")
        return
    from django.conf import settings

    settings.configure(DJANGO_EMBEDDINGS_SCAN="float32")
    print(f"load before: {os.getloadavg()[0]:.2f}")
    print(
        "| rows | filter | k | float32 ms (best / median) | int8 ms (best / median) | ratio "
        "| same keys, same order | max score diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    memory = []
    for n in (int(size) for size in args.sizes.split(",")):
        index = _index(Path(args.dir) / f"store-{n}", n)
        memory.append(_memory(index, settings))
        queries = corpus.queries(args.queries, n)
        rng = np.random.default_rng(n)
        for label, fraction in (("none", None), ("1 %", 0.01), ("10 %", 0.1)):
            candidates = None
            if fraction is not None:
                candidates = np.flatnonzero(rng.random(n) < fraction).astype(np.int64)
            for k in (10, 100):
                print(_row(index, settings, queries, n, label, candidates, k), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print()
    print("| rows | float32 matrix | int8 copy (codes + 12 bytes a row) | int8 copy built in |")
    print("|---|---|---|---|")
    for line in memory:
        print(line)


def _filled(path: Path, n: int, *, int8: bool = False) -> Any:
    """The bench corpus's store of ``n`` rows at ``path``, compacted (built unless there)."""
    from django_embeddings.store import Store

    store = Store(path, label="bench.Int8.vector", compact_threshold=2**62, int8=int8)
    if not (path.is_dir() and store.stats().vectors == n):
        store.clear()
        for lo, block in corpus.chunks(n):
            store.put_many(
                (corpus.key(lo + i), block[i], f"{lo + i:032x}", corpus.IDENTITY)
                for i in range(len(block))
            )
    store.compact()
    return store


def _index(path: Path, n: int) -> Any:
    from django_embeddings import cache

    store = _filled(path, n)
    return cache.FieldIndex(store, store.read_state())


def _first_search(path: Path) -> None:
    """In a new process: load the store's index, then one int8 search; print seconds."""
    from django.conf import settings

    settings.configure(DJANGO_EMBEDDINGS_SCAN="int8")
    from django_embeddings import cache
    from django_embeddings.store import Store

    (query,) = corpus.queries(1, 1000)
    started = time.perf_counter()
    store = Store(path, label="bench.Int8.vector")
    index = cache.FieldIndex(store, store.read_state())
    hits = index.search(query, 10, identity=corpus.IDENTITY)
    print(f"{time.perf_counter() - started:.4f} {len(hits)}")


def _cold(n: int, path: Path) -> None:
    import subprocess
    import sys

    from django.conf import settings

    settings.configure(DJANGO_EMBEDDINGS_SCAN="int8")
    from django_embeddings.store import Store

    store = _filled(path, n, int8=True)  # its snapshot with its copy
    snapshot_dir = next(path.glob("snapshot-*"))
    aside = path.parent / f"{path.name}-int8-aside"
    aside.mkdir(exist_ok=True)

    def first_search() -> float:
        command = [sys.executable, "-m", "bench.int8scan", "--first-search", str(path)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        seconds, hits = output.split()
        assert int(hits) == 10, output
        return float(seconds)

    print(f"load before: {os.getloadavg()[0]:.2f}")
    print("| rows | first int8 search of a new process | copy beside the snapshot | none |")
    print("|---|---|---|---|")
    with_copy, without = [], []
    first_search()  # the page cache warm
    for _ in range(3):
        with_copy.append(first_search())
        names = [p.name for p in snapshot_dir.glob("int8_*.npy")]
        for name in names:
            (snapshot_dir / name).rename(aside / name)
        try:
            without.append(first_search())
        finally:
            for name in names:
                (aside / name).rename(snapshot_dir / name)
    print(
        f"| {n:,} | median of 3 | {statistics.median(with_copy):.3f} s "
        f"| {statistics.median(without):.3f} s |"
    )
    print()
    print("| rows | compaction folding 10,000 new rows in | seconds |")
    print("|---|---|---|")
    rng = np.random.default_rng(n)
    dims = corpus.DIMENSIONS
    rounds = [
        ("the store keeps no int8 copy", False, True),
        ("keeps one; the old snapshot has none (all rows quantized)", True, False),
        ("keeps one; the old snapshot has it (the new rows quantized)", True, True),
    ]
    for name, keeps, had_copy in rounds * 2:  # twice: the first compaction warms the caches
        writer = Store(path, label="bench.Int8.vector", compact_threshold=2**62, int8=keeps)
        if not had_copy:
            assert writer.read_state().snapshot.int8 is None
        keys = rng.choice(n, 10_000, replace=False)
        vectors = rng.standard_normal((10_000, dims)).astype(np.float32)
        writer.put_many(
            (corpus.key(int(key)), vectors[i], f"{i:032x}", corpus.IDENTITY)
            for i, key in enumerate(keys)
        )
        started = time.perf_counter()
        writer.compact()
        print(f"| {n:,} | {name} | {time.perf_counter() - started:.2f} |", flush=True)
    store.compact()
    print(f"load after: {os.getloadavg()[0]:.2f}")


def _memory(index: Any, settings: Any) -> str:
    started = time.perf_counter()
    copy = index.int8()
    built = time.perf_counter() - started
    n = len(index.base_keys)
    return (
        f"| {n:,} | {index.base.nbytes / 2**20:,.0f} MiB | {copy.nbytes / 2**20:,.0f} MiB "
        f"| {built:.1f} s |"
    )


def _time(index: Any, settings: Any, scan: str, queries: Any, k: int, candidates: Any) -> Any:
    settings.DJANGO_EMBEDDINGS_SCAN = scan
    search = index.search
    search(queries[0], k, identity=corpus.IDENTITY, candidates=candidates)  # warm
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        hits = search(query, k, identity=corpus.IDENTITY, candidates=candidates)
        times.append(time.perf_counter() - started)
        results.append(hits)
    return times, results


def _row(
    index: Any, settings: Any, queries: Any, n: int, label: str, candidates: Any, k: int
) -> str:
    float_times, expected = _time(index, settings, "float32", queries, k, candidates)
    int8_times, found = _time(index, settings, "int8", queries, k, candidates)
    same = all(
        [h.key for h in a] == [h.key for h in b] for a, b in zip(expected, found, strict=True)
    )
    diff = max(
        (
            abs(x.score - y.score)
            for a, b in zip(expected, found, strict=True)
            for x, y in zip(a, b, strict=False)
        ),
        default=0.0,
    )
    f32, i8 = statistics.median(float_times), statistics.median(int8_times)
    return (
        f"| {n:,} | {label} | {k} | {1000 * min(float_times):.1f} / {1000 * f32:.1f} "
        f"| {1000 * min(int8_times):.1f} / {1000 * i8:.1f} | {i8 / f32:.2f} "
        f"| {'yes' if same else 'NO'} | {diff:.1e} |"
    )


def _querysets(n: int, count: int, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["BENCH_SQLITE_PATH"] = str(directory / f"queryset-{n}.sqlite3")
    os.environ["DJANGO_EMBEDDINGS_DIR"] = str(directory / f"queryset-{n}")
    from bench import endtoend_worker as worker

    worker.setup_django()
    from django.conf import settings

    from bench.benchapp.models import Article

    if Article._meta.db_table not in _tables() or Article.objects.count() != n:
        worker.build({"n": n})
    queries = corpus.queries(count, n)
    print(f"load before: {os.getloadavg()[0]:.2f}")
    print(
        "| rows | filter | k | float32 ms (best / median) | int8 ms (best / median) | ratio "
        "| same rows, same order |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("none", "10%", "50%"):
        for k in (10, 100):
            times: dict[str, list[float]] = {"float32": [], "int8": []}
            answers: dict[str, list[Any]] = {"float32": [], "int8": []}
            for scan in times:
                settings.DJANGO_EMBEDDINGS_SCAN = scan
                worker.ours(Article, queries[0], k=k, name=name)  # warm
                for query in queries:
                    started = time.perf_counter()
                    found = worker.ours(Article, query, k=k, name=name)
                    times[scan].append(time.perf_counter() - started)
                    answers[scan].append([(obj.pk, obj.similarity) for obj in found])
            same = answers["float32"] == answers["int8"]
            f32, i8 = statistics.median(times["float32"]), statistics.median(times["int8"])
            print(
                f"| {n:,} | {name} | {k} | {1000 * min(times['float32']):.1f} / {1000 * f32:.1f} "
                f"| {1000 * min(times['int8']):.1f} / {1000 * i8:.1f} | {i8 / f32:.2f} "
                f"| {'yes' if same else 'NO'} |",
                flush=True,
            )
    print(f"load after: {os.getloadavg()[0]:.2f}")


def _tables() -> list[str]:
    from django.db import connection

    return list(connection.introspection.table_names())


if __name__ == "__main__":
    main()

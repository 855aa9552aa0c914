"""Saves while the store compacts: ``python -m bench.merges [--rows N] [--saves S]``.

A store of ``--rows`` rows (the bench corpus, 384 dimensions, one snapshot) behind the
end-to-end benchmark's ``Article`` model, in SQLite (a file). Each run starts from a
copy of that store and times ``S`` calls of ``Article.objects.create()``, one by one,
with ``DJANGO_EMBEDDINGS_COMPACT_THRESHOLD`` set so that one compaction falls due among
them (at 60 % of them), three ways, in one process each:

- ``no compaction``: a threshold above ``S``, the baseline;
- ``in the save``: ``DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND = False``: the save that makes
  it due rewrites the snapshot, holding the store's lock;
- ``in the background``: ``True`` (the default), that save starts a thread and returns.

Printed: the slowest save, p99, p50 and the ratio of each p99 to the baseline's, how
long the compaction took, how many saves it overlapped, and the bytes each run wrote
into the store directory. The provider is the bench's hash provider (a few µs a text).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = {
    "no compaction": {"threshold": None, "background": True},
    "in the save": {"threshold": "due", "background": False},
    "in the background": {"threshold": "due", "background": True},
}
KEY_BASE = 10**9  # the corpus's store keys: far above the primary keys the saves create


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    # At 1M rows a merge takes about 30 s: enough saves after 60 % of them to outlast it.
    parser.add_argument("--saves", type=int, default=40_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-merges")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one mode, in a process of its own
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(_run(args.dir, args.rows, args.saves, args.run)))
        return 0
    corpus_store = _filled(args.dir / f"corpus-{args.rows}", args.rows)
    print(f"load before: {os.getloadavg()[0]:.2f}; {args.rows:,} rows, {args.saves:,} saves")
    results = {}
    for mode in MODES:
        work = args.dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(corpus_store, work / "store")
        os.sync()  # its write-back would otherwise stall the first saves' commits
        output = subprocess.run(
            [sys.executable, "-m", "bench.merges", "--run", mode, "--dir", str(args.dir),
             "--rows", str(args.rows), "--saves", str(args.saves)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        results[mode] = json.loads(output.strip().splitlines()[-1])
    shutil.rmtree(args.dir / "work", ignore_errors=True)
    base = results["no compaction"]["p99"]
    print("| compaction | slowest save ms | p99 ms | p50 ms | p99 / no compaction "
          "| compaction s | saves during it | MB written |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        merged = r["merge_seconds"] is not None
        seconds = f"{r['merge_seconds']:.1f}" if merged else ""
        overlapped = r["overlapped"] if merged else ""
        print(
            f"| {mode} | {r['max']:.1f} | {r['p99']:.2f} | {r['p50']:.2f} | {r['p99'] / base:.2f} "
            f"| {seconds} | {overlapped} | {r['written'] / 1e6:,.0f} |"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


def _filled(path: Path, rows: int) -> Path:
    """A store of ``rows`` corpus rows in one snapshot (built once, then reused)."""
    from bench import corpus
    from django_embeddings.store import Store

    if (path / "_index.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    store = Store(path, label="benchapp.Article.embedding", compact_threshold=10**12)
    for lo, block in corpus.chunks(rows):
        store.put_many(
            (str(KEY_BASE + lo + i), block[i], f"{lo + i:032x}", corpus.IDENTITY)
            for i in range(len(block))
        )
    store.compact()
    return path


def _run(directory: Path, rows: int, saves: int, mode: str) -> dict[str, Any]:
    work = directory / "work"
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ["BENCH_SQLITE_PATH"] = str(work / "db.sqlite3")
    os.environ["DJANGO_EMBEDDINGS_DIR"] = str(work / "root")
    # Due at 60 % of the saves, it cannot fall due again before they end.
    threshold = saves * 10 if MODES[mode]["threshold"] is None else int(0.6 * saves)
    os.environ["DJANGO_EMBEDDINGS_COMPACT_THRESHOLD"] = str(threshold)
    from bench import endtoend_worker as worker

    worker.setup_django()
    from django.conf import settings

    from bench.benchapp.models import Article
    from django_embeddings.store import merging, snapshot

    settings.DJANGO_EMBEDDINGS_MERGE_IN_BACKGROUND = MODES[mode]["background"]
    worker.fresh_tables(Article)
    store = Article._meta.get_field("embedding").store
    store.path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work / "store", store.path)
    written_before = _written()
    Article.objects.create(bucket=0, text="warm up")  # loads the index, as a running site has
    version = snapshot.index_version(store.path)
    times: list[float] = []
    ends: list[float] = []
    due = installed = None  # the saves that made the compaction due, and that saw it done
    for i in range(saves):
        started = time.perf_counter()
        Article.objects.create(bucket=i % 100, text=f"new article {i}")
        ends.append(time.perf_counter())
        times.append(ends[-1] - started)
        if due is None and (merging.running(store.path) or _changed(store.path, version)):
            due = i
        if installed is None and _changed(store.path, version):
            installed = i
    merging.wait()
    merge_seconds = overlapped = None
    if due is not None:
        if installed == due:  # compacted inside that save
            merge_seconds, overlapped = times[due], 0
        else:
            done = ends[installed] if installed is not None else time.perf_counter()
            merge_seconds = done - ends[due]
            overlapped = (installed if installed is not None else saves) - due - 1
    ordered = sorted(times)
    return {
        "max": 1000 * ordered[-1],
        "p99": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
        "p50": 1000 * ordered[len(ordered) // 2],
        "merge_seconds": merge_seconds,
        "overlapped": overlapped,
        "written": _written() - written_before,
    }


def _changed(path: Path, version: int) -> bool:
    from django_embeddings.store import snapshot

    return snapshot.index_version(path) != version


def _written() -> int:
    """Bytes this process has written to storage (Linux's /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

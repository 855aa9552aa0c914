"""Measure how long a new machine takes to build its copy of a ``database`` store.

A corpus of ``--rows`` bench articles (384 dimensions, keyword terms) is stored
through the ``database`` store once per database (``setup``); then each run is
a new process with an empty ``DJANGO_EMBEDDINGS_DIR`` that times its first
``read_state()`` of the field's store (the copy built from the table), or its
first ``semantic_search()`` (that, plus loading the index), and a second search
for reference. ``--profile`` prints where the first ``read_state()`` spends its
time. ``--tree`` chooses the checkout whose ``django_embeddings`` the runs
import, to compare two versions on the same tables::

    python scripts/measure_database_rebuild.py setup --db sqlite --rows 100000
    python scripts/measure_database_rebuild.py run --db sqlite --runs 5 [--tree DIR ...]
    python scripts/measure_database_rebuild.py run --db postgres --profile

``--updates`` and ``--deletes`` (setup) change that many rows after the corpus
is stored, so the table holds superseded changes above its horizon too.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.gettempdir()) / "django-embeddings-rebuild-bench"
PG_NAME = "django_embeddings_rebuild_bench"


def environment(db: str, tree: Path, directory: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BENCH_DB=db,
        BENCH_SQLITE_PATH=str(WORK / "bench.sqlite3"),
        BENCH_PG_NAME=PG_NAME,
        DJANGO_EMBEDDINGS_DIR=str(directory),
        PYTHONPATH=str(tree),
    )
    return env


def setup_django() -> None:
    """bench.settings with the ``database`` store."""
    import django
    from django.conf import settings

    import bench.settings as base

    values = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    values["DJANGO_EMBEDDINGS_STORE"] = "database"
    settings.configure(**values)
    django.setup()


# -- in the child processes ------------------------------------------------------------------


def setup(args: dict[str, Any]) -> dict[str, Any]:
    from django.core.management import call_command
    from django.db import connection

    from bench import corpus
    from bench.benchapp.models import Article
    from django_embeddings.backfill import embed_queryset
    from django_embeddings.models import StoreChange, StoreHead

    call_command("migrate", "django_embeddings", verbosity=0)
    StoreChange.objects.all().delete()
    StoreHead.objects.all().delete()
    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        if Article._meta.db_table in existing:
            editor.delete_model(Article)
        editor.create_model(Article)
    rows = int(args["rows"])
    for lo in range(0, rows, 5_000):
        Article.objects.bulk_create(
            [
                Article(bucket=i % 100, text=corpus.row_text(i))
                for i in range(lo, min(rows, lo + 5_000))
            ]
        )
    started = time.perf_counter()
    embed_queryset(Article.objects.all(), batch_size=1_000)
    stored = time.perf_counter() - started
    # Updates give a row another corpus row's vector; deletes remove rows.
    for pk in range(1, int(args["updates"]) + 1):
        article = Article.objects.get(pk=pk * 7 % rows + 1)
        article.text = corpus.row_text((pk * 7 + rows // 2) % rows)
        article.save()
    for pk in range(1, int(args["deletes"]) + 1):
        Article.objects.filter(pk=pk * 11 % rows + 1).delete()
    if connection.vendor == "postgresql":
        # Statistics, as autovacuum would gather them (a server may run without it):
        # without them the planner sorts the rest of the table for every page.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {StoreChange._meta.db_table}")
    head = StoreHead.objects.get()
    return {
        "rows": rows,
        "table_rows": StoreChange.objects.count(),
        "version": head.version,
        "horizon": head.horizon,
        "store_seconds": stored,
    }


def cold(args: dict[str, Any]) -> dict[str, Any]:
    from django.db import connection

    from bench import corpus
    from bench.benchapp.models import Article

    connection.ensure_connection()  # a worker's connection is open before its first search
    store = Article._meta.get_field("embedding").store
    rows = Article.objects.count()
    first_query, second_query = corpus.queries(2, rows)
    result: dict[str, Any] = {"database": connection.vendor}
    if args["what"] == "profile":
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        state = store.read_state()
        profile.disable()
        result["read_state_seconds"] = time.perf_counter() - started
        stats = pstats.Stats(profile, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    elif args["what"] == "read_state":
        started = time.perf_counter()
        state = store.read_state()
        result["read_state_seconds"] = time.perf_counter() - started
    else:
        started = time.perf_counter()
        hits = list(Article.objects.semantic_search(first_query, k=10))
        result["first_search_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        list(Article.objects.semantic_search(second_query, k=10))
        result["second_search_seconds"] = time.perf_counter() - started
        assert len(hits) == 10, hits
        state = store.read_state()
    # The process's peak resident memory (KiB on Linux): building the copy dominates it.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    result["version"] = state.version
    result["snapshot_rows"] = len(state.snapshot)
    result["journal_entries"] = len(state.records)
    return result


# -- the orchestrator ----------------------------------------------------------------------------


def child(scenario: str, args: dict[str, Any], db: str, tree: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(dir=WORK, prefix="copy-"))
    try:
        output = subprocess.run(
            [sys.executable, __file__, "child", scenario, json.dumps(args)],
            env=environment(db, tree, directory),
            cwd=tree,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    if sys.argv[1] == "child":
        setup_django()
        scenario, args = sys.argv[2], json.loads(sys.argv[3])
        result = setup(args) if scenario == "setup" else cold(args)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["setup", "run"])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=0)
    parser.add_argument("--deletes", type=int, default=0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a checkout to import django_embeddings from (repeat to compare: runs alternate)",
    )
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    if options.db == "postgres":
        sys.path.insert(0, str(REPO_ROOT))
        from bench.run import private_database

        with private_database(keep=True, name=PG_NAME) as reachable:  # kept for the runs
            if not reachable:
                raise SystemExit("PostgreSQL is not reachable")
    trees = [tree.resolve() for tree in options.tree or [REPO_ROOT]]
    if options.command == "setup":
        args = {"rows": options.rows, "updates": options.updates, "deletes": options.deletes}
        print(json.dumps(child("setup", args, options.db, trees[0])))
        return
    if options.profile:
        print(json.dumps(child("cold", {"what": "profile"}, options.db, trees[0])))
        return
    for what in ("read_state", "search"):
        runs: dict[Path, list[dict[str, Any]]] = {tree: [] for tree in trees}
        for _ in range(options.runs):
            for tree in trees:
                runs[tree].append(child("cold", {"what": what}, options.db, tree))
        for tree, done in runs.items():
            print(json.dumps(summary(what, tree, done)))


def summary(what: str, tree: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    key = "read_state_seconds" if what == "read_state" else "first_search_seconds"
    times = [run[key] for run in runs]
    result = {
        "tree": str(tree),
        "what": what,
        "median_seconds": round(statistics.median(times), 3),
        "runs": [round(t, 3) for t in times],
        "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in runs),
    }
    for name in ("database", "version", "snapshot_rows", "journal_entries"):
        result[name] = runs[-1][name]
    if what == "search":
        result["second_search_seconds"] = round(runs[-1]["second_search_seconds"], 4)
    return result


if __name__ == "__main__":
    main()

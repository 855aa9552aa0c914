"""Measure what numbering a write costs a ``Model.objects.create()`` with the ``database``
store: ``UPDATE ... RETURNING`` (one round trip) against ``UPDATE`` then ``SELECT``.

One process, the bench's ``TextArticle`` (a fresh table and store), creates
alternating between the two ways of claiming versions, so both see the same
machine, table sizes and caches. The provider's time (a lookup in a seeded
corpus) is subtracted from each create. Needs a database that can return rows
from an UPDATE (PostgreSQL, SQLite)::

    python scripts/measure_database_create.py --db postgres --creates 400
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
PG_NAME = "django_embeddings_create_bench"


def setup_django(db: str, scratch: Path) -> None:
    os.environ["BENCH_DB"] = db
    os.environ["BENCH_PG_NAME"] = PG_NAME
    os.environ["BENCH_SQLITE_PATH"] = str(scratch / "bench.sqlite3")
    import django
    from django.conf import settings

    import bench.settings as base

    values = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    values["DJANGO_EMBEDDINGS_DIR"] = str(scratch / "embeddings")
    values["DJANGO_EMBEDDINGS_STORE"] = "database"
    settings.configure(**values)
    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--creates", type=int, default=400, help="timed, half each way")
    parser.add_argument("--warmup", type=int, default=40)
    options = parser.parse_args()
    from bench.run import private_database

    with contextlib.ExitStack() as stack:
        if options.db == "postgres" and not stack.enter_context(
            private_database(keep=False, name=PG_NAME)
        ):
            raise SystemExit("PostgreSQL is not reachable")
        scratch = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="django-embeddings-create-")
        )
        setup_django(options.db, Path(scratch))
        print(json.dumps(measure(options)))


def measure(options: argparse.Namespace) -> dict[str, object]:

    from django.core.management import call_command
    from django.db import connection

    from bench import providers
    from bench.benchapp.models import TextArticle
    from django_embeddings.models import StoreChange, StoreHead
    from django_embeddings.store import database

    call_command("migrate", "django_embeddings", verbosity=0)
    label = f"{TextArticle._meta.label}.embedding"
    StoreChange.objects.filter(label=label).delete()
    StoreHead.objects.filter(label=label).delete()
    with connection.schema_editor() as editor:
        if TextArticle._meta.db_table in connection.introspection.table_names():
            editor.delete_model(TextArticle)
        editor.create_model(TextArticle)

    returning = database._returns_from_update
    if not returning(connection):
        sys.exit(f"{connection.vendor} cannot return rows from an UPDATE")
    ways = {"update_returning": returning, "update_then_select": lambda connection: False}
    times: dict[str, list[float]] = {way: [] for way in ways}
    for n in range(options.warmup + options.creates):
        way = list(ways)[n % 2]
        database._returns_from_update = ways[way]  # type: ignore[assignment]
        provider_before = providers.PROVIDER_SECONDS[0]
        started = time.perf_counter()
        TextArticle.objects.create(bucket=n % 100, text=f"row {n} apple banana cherry")
        elapsed = time.perf_counter() - started
        if n >= options.warmup:
            times[way].append(elapsed - (providers.PROVIDER_SECONDS[0] - provider_before))
    database._returns_from_update = returning
    head = StoreHead.objects.get(label=label)
    assert head.version == options.warmup + options.creates, head.version
    report: dict[str, object] = {
        f"{way}_ms": round(statistics.median(values) * 1000, 3) for way, values in times.items()
    }
    saved = statistics.median(times["update_then_select"]) - statistics.median(
        times["update_returning"]
    )
    report["saved_ms"] = round(saved * 1000, 3)
    return {"database": connection.vendor, "creates": options.creates, **report}


if __name__ == "__main__":
    main()

"""The end-to-end benchmark's scenarios, one per process:
``python -m bench.endtoend_worker SCENARIO '{"n": ...}'``, printing ``RESULT <json>``.

:mod:`bench.endtoend` starts these with the environment :mod:`bench.settings`
reads. Only the public API is used: the models' ``EmbeddingField`` and
``EmbeddingManager``, ``QuerySet.semantic_search``, ``Model.objects.create``,
``django_embeddings.backfill.embed_queryset``, ``manage.py embeddings_status``,
``embeddings_compact`` and ``embeddings_move``, and settings. How the library stores
vectors is never looked at, so the scenarios measure the same thing whatever the
storage does underneath.

The corpus is ``n`` rows whose text is ``"row i"`` (primary key ``i + 1``,
``bucket = i % 100``); the ``corpus`` provider embeds that text as row ``i`` of
the seeded corpus (:mod:`bench.corpus`), the same matrix the by-hand baseline
holds in memory. The keyword and hybrid search section's scenarios are in
:mod:`bench.endtoend_text_worker`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

PROCESS_STARTED = time.perf_counter()  # as early as this module can note it

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from bench import corpus  # noqa: E402

# The filters of the search rows, on the indexed ``bucket`` column (0..99).
FILTERS: dict[str, dict[str, int]] = {
    "none": {},
    "1%": {"bucket": 0},
    "10%": {"bucket__lt": 10},
    "50%": {"bucket__lt": 50},
}
BULK_STEP = 5_000  # rows per bulk_create
BACKFILL_BATCH = 1_000  # rows per embed_queryset batch
WARMUP = 3

Pks = npt.NDArray[np.int64]


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(f"RESULT {json.dumps(payload)}\n")
    sys.stdout.flush()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def median_ms(values: list[float]) -> float:
    return ms(float(np.median(values))) if values else float("nan")


def setup_django() -> float:
    started = time.perf_counter()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    return time.perf_counter() - started


def model_named(name: str) -> Any:
    from bench.benchapp import models

    return {"cached": models.Article, "uncached": models.UncachedArticle}[name]


def fresh_tables(*models: Any) -> None:
    """(Re)create the tables of ``models``, empty: each corpus starts from nothing."""
    from django.db import connection

    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in models:
            if model._meta.db_table in existing:
                editor.delete_model(model)
            editor.create_model(model)


def load_rows(model: Any, n: int, text: Callable[[int], str] = corpus.row_text) -> float:
    """``bulk_create`` rows 0..n-1 into a fresh table (primary keys 1..n), row ``i`` with
    ``text(i)``; no embedding. Making the texts is timed too (a few µs a row)."""
    started = time.perf_counter()
    for lo in range(0, n, BULK_STEP):
        rows = range(lo, min(n, lo + BULK_STEP))
        model.objects.bulk_create([model(bucket=i % 100, text=text(i)) for i in rows])
    return time.perf_counter() - started


def status(model: Any) -> dict[str, Any]:
    """``manage.py embeddings_status --json`` for ``model``'s one field."""
    from django.core.management import call_command

    out = io.StringIO()
    call_command("embeddings_status", model._meta.label, json=True, stdout=out)
    report: dict[str, dict[str, Any]] = json.loads(out.getvalue())
    (item,) = report.values()
    return item


def provider_state() -> tuple[float, int]:
    from bench import providers

    return providers.PROVIDER_SECONDS[0], providers.PROVIDER_CALLS[0]


# -- building -------------------------------------------------------------------------------


class LastBatchDone(Exception):
    """Raised by the progress callback after a backfill's last batch."""


def build(args: dict[str, Any]) -> dict[str, Any]:
    """A corpus of ``n`` rows: ``bulk_create``, then ``embed_queryset``, which compacts the
    store at its end; ``PlainArticle`` gets the same ``n`` rows, for the create baseline.

    With ``journal``, the backfill is stopped by its ``progress`` callback after its last
    batch, before that compaction, as an interrupted backfill would be: with
    ``DJANGO_EMBEDDINGS_COMPACT_THRESHOLD`` above ``n``, every vector is then still in the
    journal (``embeddings_status`` in the ``cold`` scenario tells how many are).
    """
    from bench.benchapp.models import PlainArticle
    from django_embeddings.backfill import BackfillResult, embed_queryset

    n = int(args["n"])
    model = model_named(args.get("model", "cached"))
    fresh_tables(model, PlainArticle)
    bulk_seconds = load_rows(model, n)
    load_rows(PlainArticle, n)
    # Row i has primary key i + 1 (a fresh table numbers from 1): the by-hand side relies on it.
    assert model.objects.filter(pk=n, text=corpus.row_text(n - 1)).exists()

    progress: list[BackfillResult] = []

    def stop_after_last_batch(result: BackfillResult) -> None:
        progress.append(result)
        if args.get("journal") and result.scanned >= result.total > 0:
            raise LastBatchDone

    provider_before, _ = provider_state()
    started = time.perf_counter()
    with contextlib.suppress(LastBatchDone):
        embed_queryset(
            model.objects.all(), batch_size=BACKFILL_BATCH, progress=stop_after_last_batch
        )
    backfill_seconds = time.perf_counter() - started
    provider_seconds = provider_state()[0] - provider_before
    if progress[-1].embedded != n:
        raise RuntimeError(f"backfilled {progress[-1]!r}; expected {n} rows embedded")
    return {
        "n": n,
        "bulk_create_seconds": bulk_seconds,
        "backfill_seconds": backfill_seconds,
        "backfill_provider_seconds": provider_seconds,
    }


def move(args: dict[str, Any]) -> dict[str, Any]:
    """``manage.py embeddings_move --from files`` into the configured store (the
    ``database`` one), whose tables start empty, as a new project's first ``migrate``
    leaves them.

    On PostgreSQL the tables are then analyzed, as autovacuum does within a minute or
    so of such a load: until then the planner takes the table for a few rows, and
    reads it in an order that makes a new machine's copy far slower to build (see the
    ``store`` section's notes in :mod:`bench.endtoend`).
    """
    from django.core.management import call_command
    from django.db import connection

    from bench.benchapp.models import Article
    from django_embeddings.models import StoreChange, StoreHead

    fresh_tables(StoreChange, StoreHead)
    started = time.perf_counter()
    call_command("embeddings_move", Article._meta.label, source="files", stdout=io.StringIO())
    seconds = time.perf_counter() - started
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for model in (StoreChange, StoreHead):
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
    return {"seconds": seconds}


def compact(args: dict[str, Any]) -> dict[str, Any]:
    """``manage.py embeddings_compact`` on ``Article``'s field."""
    from django.core.management import call_command

    from bench.benchapp.models import Article

    started = time.perf_counter()
    call_command("embeddings_compact", Article._meta.label, stdout=io.StringIO())
    return {"seconds": time.perf_counter() - started}


# -- 1. semantic_search vs the same by hand ------------------------------------------------


class ByHand:
    """What a Django developer writes without the library: the normalized matrix and its
    primary keys in memory, ``np.argpartition`` over ``matrix @ query``, then
    ``filter(pk__in=ids)`` and a sort in Python by score.

    A filter is applied the way that is faster for it (chosen per filter on warm-up
    queries, see :meth:`choose`): its primary keys come from
    ``values_list("pk", flat=True)``, then either only those rows of the matrix are
    scored (``gather``), or every row is scored and the others are set to -inf (``mask``).
    """

    def __init__(self, model: Any, n: int) -> None:
        self.model = model
        self.n = n
        self.matrix = corpus.normalized(corpus.vectors(n))
        # Row i of the matrix is primary key i + 1, as build() checked.
        self.pks: Pks = np.arange(1, n + 1, dtype=np.int64)
        self.strategy: dict[str, str] = {}

    @staticmethod
    def top(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
        if k >= len(scores):
            return np.arange(len(scores))
        return np.argpartition(-scores, k - 1)[:k]

    def search(self, query: npt.NDArray[np.float32], *, k: int, name: str) -> list[Any]:
        lookups = FILTERS[name]
        if not lookups:
            scores = self.matrix @ query
            best = self.top(scores, k)
            ids, best_scores = self.pks[best], scores[best]
        else:
            allowed = np.fromiter(
                self.model.objects.filter(**lookups).values_list("pk", flat=True), dtype=np.int64
            )
            rows = np.searchsorted(self.pks, allowed)
            if self.strategy.get(name, "gather") == "gather":
                scores = self.matrix[rows] @ query
                best = self.top(scores, k)
                ids, best_scores = allowed[best], scores[best]
            else:
                every = self.matrix @ query
                scores = np.full(self.n, -np.inf, dtype=np.float32)
                scores[rows] = every[rows]
                best = self.top(scores, min(k, len(rows)))
                ids, best_scores = self.pks[best], scores[best]
        similarity = dict(zip(ids.tolist(), best_scores.tolist(), strict=True))
        objects = list(self.model.objects.filter(pk__in=list(similarity)))
        for obj in objects:
            obj.similarity = similarity[obj.pk]
        objects.sort(key=lambda obj: -obj.similarity)
        return objects

    def choose(self, queries: npt.NDArray[np.float32], names: list[str]) -> None:
        for name in names:
            lookups = FILTERS[name]
            if not lookups:
                continue
            times: dict[str, float] = {}
            for strategy in ("gather", "mask"):
                self.strategy[name] = strategy
                runs = []
                for query in queries:
                    started = time.perf_counter()
                    self.search(query, k=10, name=name)
                    runs.append(time.perf_counter() - started)
                times[strategy] = float(np.median(runs))
            self.strategy[name] = min(times, key=lambda strategy: times[strategy])


def ours(model: Any, query: npt.NDArray[np.float32], *, k: int, name: str) -> list[Any]:
    lookups = FILTERS[name]
    queryset = model.objects.filter(**lookups) if lookups else model.objects.all()
    return list(queryset.semantic_search(query, k=k))


def agree(a: list[Any], b: list[Any]) -> bool:
    """The same rows, ranked the same up to ties: scores equal to 6 digits may come in
    either order (ours orders them by primary key, the sort by hand by the float), and
    rows tied with the last one may be swapped for each other at the cut."""
    if len(a) != len(b):
        return False
    if any(abs(x.similarity - y.similarity) > 1e-5 for x, y in zip(a, b, strict=True)):
        return False
    differ = {obj.pk for obj in a} ^ {obj.pk for obj in b}
    if not differ:
        return True
    cut = min(a[-1].similarity, b[-1].similarity)
    return all(abs(obj.similarity - cut) <= 1e-5 for obj in [*a, *b] if obj.pk in differ)


def search(args: dict[str, Any]) -> dict[str, Any]:
    """Every (filter, k) row: ours and by hand on the same queries, alternating which
    goes first; medians, and whether both returned the same rows in the same order.

    A row stops after ``budget`` seconds once it has ``at_least`` queries: k=1000
    rows can take a second a call, and their medians settle early. ``filters`` names
    those of :data:`FILTERS` to run (default: all).
    """
    from django.db import connection

    from bench.benchapp.models import Article

    n, count, ks = int(args["n"]), int(args["queries"]), [int(k) for k in args["ks"]]
    budget, at_least = float(args["budget"]), int(args.get("at_least", 3))
    names = [str(name) for name in args.get("filters", FILTERS)]
    queries = corpus.queries(count + WARMUP, n)
    warm, timed = queries[:WARMUP], queries[WARMUP:]
    started = time.perf_counter()
    ours(Article, warm[0], k=10, name="none")
    first_search = time.perf_counter() - started
    hand = ByHand(Article, n)
    hand.choose(warm, names)
    rows = []
    for name in names:
        for k in ks:
            sides: dict[str, Callable[[npt.NDArray[np.float32]], list[Any]]] = {
                "ours": functools.partial(ours, Article, k=k, name=name),
                "by_hand": functools.partial(hand.search, k=k, name=name),
            }
            for run in sides.values():
                run(warm[1])
            times: dict[str, list[float]] = {side: [] for side in sides}
            same, returned = 0, []
            row_started = time.perf_counter()
            for position, query in enumerate(timed):
                order = list(sides) if position % 2 == 0 else list(reversed(sides))
                answers: dict[str, list[Any]] = {}
                for side in order:
                    started = time.perf_counter()
                    answers[side] = sides[side](query)
                    times[side].append(time.perf_counter() - started)
                same += agree(answers["ours"], answers["by_hand"])
                returned.append(len(answers["ours"]))
                if position + 1 >= at_least and time.perf_counter() - row_started > budget:
                    break
            rows.append(
                {
                    "filter": name,
                    "k": k,
                    "ours_ms": median_ms(times["ours"]),
                    "by_hand_ms": median_ms(times["by_hand"]),
                    "ours_p90_ms": ms(float(np.percentile(times["ours"], 90))),
                    "by_hand_p90_ms": ms(float(np.percentile(times["by_hand"], 90))),
                    "same": same,
                    "queries": len(times["ours"]),
                    "returned": int(np.median(returned)),
                    "strategy": hand.strategy.get(name, ""),
                }
            )
    return {
        "n": n,
        "database": connection.vendor,
        "first_search_ms": ms(first_search),
        "rows": rows,
    }


# -- 2 and 3. creates ------------------------------------------------------------------------


def create(args: dict[str, Any]) -> dict[str, Any]:
    """``Model.objects.create`` with the field (minus the time spent in the provider) and
    the same create of ``PlainArticle``, alternating; then, when asked, five creates in one
    ``transaction.atomic()`` each way, counting the provider calls they made. The rows
    created are deleted at the end: the corpus is left as it was, for the next scenario."""
    from django.db import connection, transaction

    from bench.benchapp.models import PlainArticle

    n, count, rounds = int(args["n"]), int(args["creates"]), int(args.get("transactions", 0))
    model = model_named(args.get("model", "cached"))
    assert model.objects.count() == n and PlainArticle.objects.count() == n
    numbers = itertools.count()

    def make(target: Any) -> None:
        i = next(numbers)
        # Not a "row i" text: a hash vector, a few µs in the provider, subtracted anyway.
        target.objects.create(bucket=i % 100, text=f"new article {i}")

    def timed(target: Any, creates: int) -> tuple[float, float, int]:
        """(seconds minus provider time, provider seconds, provider calls)."""
        seconds_before, calls_before = provider_state()
        started = time.perf_counter()
        if creates == 1:
            make(target)
        else:
            with transaction.atomic():  # the field's work runs at commit, inside the timing
                for _ in range(creates):
                    make(target)
        elapsed = time.perf_counter() - started
        seconds_after, calls_after = provider_state()
        spent = seconds_after - seconds_before
        return elapsed - spent, spent, calls_after - calls_before

    def compare(creates: int, repeats: int) -> dict[str, Any]:
        for _ in range(WARMUP):
            timed(model, creates)
            timed(PlainArticle, creates)
        ours_s, plain_s, provider_s, calls = [], [], [], []
        for position in range(repeats):
            order = (model, PlainArticle) if position % 2 == 0 else (PlainArticle, model)
            for target in order:
                seconds, spent, made = timed(target, creates)
                if target is model:
                    ours_s.append(seconds)
                    provider_s.append(spent)
                    calls.append(made)
                else:
                    plain_s.append(seconds)
        return {
            "creates": creates,
            "repeats": repeats,
            "ours_ms": median_ms(ours_s),
            "plain_ms": median_ms(plain_s),
            "provider_ms": median_ms(provider_s),
            "provider_calls": int(np.median(calls)),
            "provider_calls_max": max(calls),
        }

    result: dict[str, Any] = {"n": n, "database": connection.vendor, "single": compare(1, count)}
    if rounds:
        result["atomic"] = compare(5, rounds)
    # Every created row should be embedded: a dry-run backfill of them counts those that are not.
    from django_embeddings.backfill import embed_queryset

    (check,) = embed_queryset(model.objects.filter(pk__gt=n), dry_run=True)
    result["missing_after"] = check.selected
    model.objects.filter(pk__gt=n).delete()
    PlainArticle.objects.filter(pk__gt=n).delete()
    return result


# -- 4. first search in a new process ----------------------------------------------------------


def cold(args: dict[str, Any]) -> dict[str, Any]:
    """Django set up and connected to its database, then the process's first
    ``list(semantic_search(vector, k=10))``, timed alone, and a second for reference;
    with ``status``, the store's journal length after them."""
    imported = time.perf_counter()
    setup_seconds = setup_django()
    from django.db import connection

    from bench.benchapp.models import Article

    n = int(args["n"])
    first_query, second_query = corpus.queries(2, n)
    # A worker's connection is usually open before its first search; it is not ours to time.
    connection.ensure_connection()
    started = time.perf_counter()
    hits = ours(Article, first_query, k=10, name="none")
    first = time.perf_counter() - started
    started = time.perf_counter()
    ours(Article, second_query, k=10, name="none")
    second = time.perf_counter() - started
    assert len(hits) == 10, hits
    result = {
        "n": n,
        "database": connection.vendor,
        "imports_seconds": imported - PROCESS_STARTED,
        "django_setup_seconds": setup_seconds,
        "first_search_seconds": first,
        "second_search_seconds": second,
    }
    if args.get("status"):
        result["journal_entries"] = status(Article)["journal_entries"]
    return result


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": build,
    "move": move,
    "compact": compact,
    "search": search,
    "create": create,
    "cold": cold,
}
# Those that set Django up themselves, to time the rest apart.
SETS_UP_DJANGO = {"cold", "text_cold"}


def main() -> None:
    from bench import endtoend_text_worker  # its scenarios use this module's helpers

    scenarios = SCENARIOS | endtoend_text_worker.SCENARIOS
    name = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if name not in SETS_UP_DJANGO:
        setup_django()
    emit(scenarios[name](args))


if __name__ == "__main__":
    main()

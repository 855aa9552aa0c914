"""The keyword and hybrid search section's scenarios, run by :mod:`bench.endtoend_worker`
(``python -m bench.endtoend_worker text_search '{"n": ...}'``).

The corpus is ``n`` rows of ``TextArticle`` whose text is row ``i``'s of
:mod:`bench.articles` (``"row i"`` and 100-200 words; primary key ``i + 1``,
``bucket = i % 100``), embedded by the ``corpus`` provider as corpus row ``i``.
A query is three words of one row's text; the provider embeds it as a vector
near that row's (:data:`bench.providers.QUERY_VECTORS`), a dictionary lookup,
whose time is subtracted all the same. Only the public API is used.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import articles, providers
from bench.endtoend_worker import (
    BACKFILL_BATCH,
    WARMUP,
    fresh_tables,
    load_rows,
    median_ms,
    ms,
    provider_state,
    setup_django,
    status,
)

K = 10
FILTERS: dict[str, dict[str, int]] = {"none": {}, "10%": {"bucket__lt": 10}}
METHODS = ("semantic", "keyword", "hybrid")


def register(queries: list[articles.Query]) -> None:
    """Have the corpus provider embed each query text as a vector near its row."""
    for query in queries:
        providers.QUERY_VECTORS[query.text] = articles.query_vector(query)


def run(model: Any, method: str, text: str, lookups: dict[str, int]) -> list[Any]:
    """``list(qs.<method>_search(text, k=10))``, ``qs`` filtered by ``lookups``."""
    queryset = model.objects.filter(**lookups) if lookups else model.objects.all()
    found: list[Any] = list(getattr(queryset, f"{method}_search")(text, k=K))
    return found


def timed_run(
    model: Any, method: str, text: str, lookups: dict[str, int]
) -> tuple[float, float, list[Any]]:
    """(seconds minus provider time, provider seconds, the rows)."""
    before = provider_state()[0]
    started = time.perf_counter()
    found = run(model, method, text, lookups)
    elapsed = time.perf_counter() - started
    spent = provider_state()[0] - before
    return elapsed - spent, spent, found


# -- building -------------------------------------------------------------------------------


def text_build(args: dict[str, Any]) -> dict[str, Any]:
    """``n`` rows of ``TextArticle``: ``bulk_create``, then ``embed_queryset`` (vectors and
    terms; it compacts the store at its end). With ``variants``, the same rows in
    ``UnindexedTextArticle`` (backfilled too) and ``PlainTextArticle``, for the creates."""
    from bench.benchapp.models import PlainTextArticle, TextArticle, UnindexedTextArticle
    from django_embeddings.backfill import embed_queryset

    n, variants = int(args["n"]), bool(args.get("variants"))
    others = [UnindexedTextArticle, PlainTextArticle] if variants else []
    fresh_tables(TextArticle, *others)
    bulk_seconds = load_rows(TextArticle, n, articles.text)
    for model in others:
        load_rows(model, n, articles.text)
    # Row i has primary key i + 1 (a fresh table numbers from 1): the queries rely on it.
    assert TextArticle.objects.filter(pk=n, text=articles.text(n - 1)).exists()

    def backfill(model: Any) -> tuple[float, float]:
        provider_before = provider_state()[0]
        started = time.perf_counter()
        (result,) = embed_queryset(model.objects.all(), batch_size=BACKFILL_BATCH)
        seconds = time.perf_counter() - started
        if result.embedded != n:
            raise RuntimeError(f"backfilled {result!r}; expected {n} rows embedded")
        return seconds, provider_state()[0] - provider_before

    backfill_seconds, provider_seconds = backfill(TextArticle)
    after = status(TextArticle)
    out = {
        "n": n,
        "bulk_create_seconds": bulk_seconds,
        "backfill_seconds": backfill_seconds,
        "backfill_provider_seconds": provider_seconds,
        "journal_entries": after["journal_entries"],
        "keywords_missing": after["keywords_missing"],
    }
    if variants:
        seconds, spent = backfill(UnindexedTextArticle)
        out["unindexed_backfill_seconds"] = seconds
        out["unindexed_backfill_provider_seconds"] = spent
    return out


# -- search latency ----------------------------------------------------------------------------


def text_search(args: dict[str, Any]) -> dict[str, Any]:
    """For each filter, the three searches on the same text queries (of rows the filter
    selects), in turn, each going first as often, provider time subtracted; medians, and
    how often each found the row the query's words come from.

    A filter's rows stop after ``budget`` seconds once they have ``at_least`` queries."""
    from django.db import connection

    from bench.benchapp.models import TextArticle

    n, count = int(args["n"]), int(args["queries"])
    budget, at_least = float(args["budget"]), int(args.get("at_least", 3))
    first_search = 0.0
    rows = []
    for number, (name, lookups) in enumerate(FILTERS.items()):
        buckets = lookups.get("bucket__lt", 100)
        queries = articles.queries(count + WARMUP, n, buckets=buckets, seed=articles.SEED + number)
        register(queries)
        warm, timed = queries[:WARMUP], queries[WARMUP:]
        holding = articles.rows_holding(timed, n)
        if not first_search:
            # The process's first search: the vector index loaded and the keyword index built.
            started = time.perf_counter()
            run(TextArticle, "hybrid", warm[0].text, {})
            first_search = time.perf_counter() - started
        for method in METHODS:
            run(TextArticle, method, warm[1].text, lookups)
        times: dict[str, list[float]] = {method: [] for method in METHODS}
        provider_s: dict[str, list[float]] = {method: [] for method in METHODS}
        returned: dict[str, list[int]] = {method: [] for method in METHODS}
        found = dict.fromkeys(METHODS, 0)
        row_started = time.perf_counter()
        for position, query in enumerate(timed):
            turn = position % len(METHODS)
            for method in METHODS[turn:] + METHODS[:turn]:
                seconds, spent, hits = timed_run(TextArticle, method, query.text, lookups)
                times[method].append(seconds)
                provider_s[method].append(spent)
                returned[method].append(len(hits))
                found[method] += any(hit.pk == query.row + 1 for hit in hits)
            if position + 1 >= at_least and time.perf_counter() - row_started > budget:
                break
        asked = len(times["semantic"])
        rows.append(
            {
                "filter": name,
                "queries": asked,
                **{f"{method}_ms": median_ms(times[method]) for method in METHODS},
                **{
                    f"{method}_p90_ms": ms(float(np.percentile(times[method], 90)))
                    for method in METHODS
                },
                **{f"{method}_provider_ms": median_ms(provider_s[method]) for method in METHODS},
                **{f"{method}_returned": int(np.median(returned[method])) for method in METHODS},
                **{f"{method}_found": found[method] for method in METHODS},
                "rows_holding": holding[:asked],
                "rows_holding_median": float(np.median(holding[:asked])),
                "query_texts": [query.text for query in timed[:asked]],
            }
        )
    return {
        "n": n,
        "database": connection.vendor,
        "first_search_ms": ms(first_search),
        "rows": rows,
    }


# -- first search in a new process ------------------------------------------------------------


def text_cold(args: dict[str, Any]) -> dict[str, Any]:
    """Django set up and connected, then the process's first
    ``list(<method>_search(text, k=10))``, timed alone, and a second for reference."""
    setup_seconds = setup_django()
    from django.db import connection

    from bench.benchapp.models import TextArticle

    n, method = int(args["n"]), str(args["method"])
    # Not the search scenario's queries (a seed of their own), made before the timing.
    first_query, second_query = articles.queries(2, n, seed=articles.SEED + 7)
    register([first_query, second_query])
    connection.ensure_connection()
    first, _, hits = timed_run(TextArticle, method, first_query.text, {})
    second, _, _ = timed_run(TextArticle, method, second_query.text, {})
    assert hits, f"{method}_search({first_query.text!r}) found nothing"
    return {
        "n": n,
        "method": method,
        "database": connection.vendor,
        "django_setup_seconds": setup_seconds,
        "first_search_seconds": first,
        "second_search_seconds": second,
    }


# -- saves -----------------------------------------------------------------------------------


def text_create(args: dict[str, Any]) -> dict[str, Any]:
    """``create()`` of a row with a 100-200 word text: ``TextArticle`` (keyword index),
    ``UnindexedTextArticle`` (``keywords=False``) and ``PlainTextArticle`` (no field), in
    turn, the same text each; provider time subtracted. Searches first load both fields'
    indexes, as in a process that serves searches, so a save also updates them."""
    from django.db import connection

    from bench.benchapp.models import PlainTextArticle, TextArticle, UnindexedTextArticle
    from django_embeddings.backfill import embed_queryset

    n, count = int(args["n"]), int(args["creates"])
    targets = {"keywords": TextArticle, "no_keywords": UnindexedTextArticle}
    targets["plain"] = PlainTextArticle
    assert all(model.objects.count() == n for model in targets.values())
    (query,) = articles.queries(1, n)
    register([query])
    run(TextArticle, "hybrid", query.text, {})
    run(UnindexedTextArticle, "semantic", query.text, {})
    numbers = itertools.count()
    names = list(targets)

    def one_round(position: int) -> dict[str, tuple[float, float]]:
        i = next(numbers)
        # Not a "row i" text: a hash vector, a few µs in the provider, subtracted anyway.
        text = f"new article {i} {articles.body(n + i)}"
        turn = position % len(names)
        out = {}
        for name in names[turn:] + names[:turn]:
            before = provider_state()[0]
            started = time.perf_counter()
            targets[name].objects.create(bucket=i % 100, text=text)
            elapsed = time.perf_counter() - started
            spent = provider_state()[0] - before
            out[name] = (elapsed - spent, spent)
        return out

    for position in range(WARMUP):
        one_round(position)
    rounds = [one_round(position) for position in range(count)]
    result: dict[str, Any] = {"n": n, "database": connection.vendor, "creates": count}
    for name in names:
        result[f"{name}_ms"] = median_ms([each[name][0] for each in rounds])
    for name in ("keywords", "no_keywords"):
        result[f"{name}_provider_ms"] = median_ms([each[name][1] for each in rounds])
        # Every created row should be embedded: a dry-run backfill counts those that are not.
        (check,) = embed_queryset(targets[name].objects.filter(pk__gt=n), dry_run=True)
        result[f"{name}_missing_after"] = check.selected
    result["words"] = float(np.median([len(articles.body(n + i).split()) for i in range(count)]))
    return result


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "text_build": text_build,
    "text_search": text_search,
    "text_cold": text_cold,
    "text_create": text_create,
}

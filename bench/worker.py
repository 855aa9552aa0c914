"""One benchmark scenario per process: ``python -m bench.worker SCENARIO '{"n": ...}'``.

The orchestrator (:mod:`bench.run`) starts these with the environment
:mod:`bench.settings` reads. A worker prints ``RESULT <json>`` when done;
long-lived ones print ``READY <json>`` and then obey commands read from stdin,
one per line, answering each with ``RESULT <json>``.

Everything of ours is measured through public APIs: ``Store`` (``put_many``,
``put``, ``compact``), ``cache.get(store).search(...)`` and the ORM's
``semantic_search``, so the harness keeps working while internals change.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PROCESS_STARTED = time.perf_counter()  # as early as this module can note it

from bench import corpus  # noqa: E402

K = 10


def emit(tag: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def commands() -> Any:
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield line


def ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90)) if values else float("nan")


def profile(name: str, run: Callable[[], object]) -> str | None:
    """Run ``run`` under pyinstrument; write the text report to the profiles dir."""
    directory = os.environ.get("BENCH_PROFILE_DIR")
    if not directory:
        return None
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    profiler = Profiler(interval=0.0005)
    profiler.start()
    run()
    profiler.stop()
    path = Path(directory) / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return str(path)


# -- Django ---------------------------------------------------------------------------


def setup_django() -> float:
    started = time.perf_counter()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    return time.perf_counter() - started


def doc_field() -> Any:
    from bench.benchapp.models import Doc

    return Doc._meta.get_field("embedding")


def ensure_tables() -> None:
    from django.db import connection

    from bench.benchapp.models import Doc, Passage, PlainDoc

    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in (Doc, Passage, PlainDoc):
            if model._meta.db_table not in existing:
                editor.create_model(model)


# -- building ---------------------------------------------------------------------------


def build_store(args: dict[str, Any]) -> dict[str, Any]:
    """Our store of ``n`` corpus rows, through Store.put_many in big batches + Store.compact."""
    from django_embeddings.fields import content_hash
    from django_embeddings.store import Store

    n = int(args["n"])
    field_store = doc_field().store
    # The field's own store (path and file modes), but no compaction until the explicit
    # one at the end.
    store = Store(
        field_store.path,
        label=field_store.label,
        compact_threshold=2**62,
        permissions=field_store.permissions,
    )
    if args.get("reuse") and store.path.is_dir() and store.stats().vectors == n:
        return {"n": n, "reused": True, "path": str(store.path)}
    store.clear()
    batch = int(args.get("batch", 50_000))
    started = time.perf_counter()
    for lo, block in corpus.chunks(n):
        for start in range(0, len(block), batch):
            rows = block[start : start + batch]
            store.put_many(
                (
                    corpus.key(lo + start + i),
                    rows[i],
                    content_hash(f"doc {lo + start + i + 1}"),
                    corpus.IDENTITY,
                )
                for i in range(len(rows))
            )
    put_seconds = time.perf_counter() - started
    started = time.perf_counter()
    store.compact()
    compact_seconds = time.perf_counter() - started
    return {
        "n": n,
        "put_many_seconds": put_seconds,
        "put_many_rows_per_second": n / put_seconds,
        "compact_seconds": compact_seconds,
        "path": str(store.path),
    }


def build_rows(args: dict[str, Any]) -> dict[str, Any]:
    """``Doc`` rows 1..n in the configured database (bulk_create: no signals, no embedding)."""
    from django.core.management.color import no_style
    from django.db import connection

    from bench.benchapp.models import Doc

    ensure_tables()
    n = int(args["n"])
    if Doc.objects.count() == n and Doc.objects.filter(id__gt=n).count() == 0:
        return {"n": n, "reused": True}
    Doc.objects.all()._raw_delete(Doc.objects.db)  # no signals: the store is built apart
    started = time.perf_counter()
    step = 5_000
    for lo in range(0, n, step):
        Doc.objects.bulk_create(
            [
                Doc(id=pk, bucket=pk % 100, text=f"doc {pk}", embedding=corpus.DIMENSIONS)
                for pk in range(lo + 1, min(n, lo + step) + 1)
            ]
        )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for statement in connection.ops.sequence_reset_sql(no_style(), [Doc]):
                cursor.execute(statement)
    return {"n": n, "seconds": time.perf_counter() - started}


# -- warm search: ours, numpy, FAISS -------------------------------------------------------


def search(args: dict[str, Any]) -> dict[str, Any]:
    """Warm exact top-10 at ``n`` rows, ours and the peers, query by query side by side."""
    import faiss

    from django_embeddings import cache

    n, count = int(args["n"]), int(args["queries"])
    store = doc_field().store
    queries = corpus.queries(count, n)

    started = time.perf_counter()
    index = cache.get(store)
    index.search(queries[0], K, identity=corpus.IDENTITY)
    first = time.perf_counter() - started

    matrix = corpus.normalized(corpus.vectors(n))
    flat = faiss.IndexFlatIP(corpus.DIMENSIONS)
    flat.add(matrix)

    def ours(q: np.ndarray) -> list[int]:
        hits = cache.get(store).search(q, K, identity=corpus.IDENTITY)
        return [int(hit.key) - 1 for hit in hits]

    def bare_numpy(q: np.ndarray) -> list[int]:
        scores = matrix @ q
        top = np.argpartition(-scores, K)[:K]
        return [int(row) for row in top[np.argsort(-scores[top])]]

    def faiss_flat(q: np.ndarray) -> list[int]:
        _, rows = flat.search(q[None, :], K)
        return [int(row) for row in rows[0]]

    systems: dict[str, Callable[[np.ndarray], list[int]]] = {
        "ours": ours,
        "numpy": bare_numpy,
        "faiss": faiss_flat,
    }
    for q in queries[:3]:
        for run in systems.values():
            run(q)
    times: dict[str, list[float]] = {name: [] for name in systems}
    mismatches = dict.fromkeys(systems, 0)
    order = list(systems)
    for position, q in enumerate(queries):
        answers = {}
        rotated = order[position % len(order) :] + order[: position % len(order)]
        for name in rotated:
            started = time.perf_counter()
            answers[name] = systems[name](q)
            times[name].append(time.perf_counter() - started)
        truth = answers["numpy"]
        for name in systems:
            if answers[name] != truth:
                mismatches[name] += 1
    profiled = profile(f"search-{n}", lambda: [ours(q) for q in queries[:30]])
    from bench.machine import blas

    return {
        "n": n,
        "queries": count,
        "first_search_ms": ms(first),
        "median_ms": {name: ms(median(v)) for name, v in times.items()},
        "p90_ms": {name: ms(p90(v)) for name, v in times.items()},
        "mismatches_vs_numpy": mismatches,
        "bytes_scanned": int(n * corpus.DIMENSIONS * 4),
        "faiss_threads": faiss.omp_get_max_threads(),
        "blas": blas(),
        "profile": profiled,
    }


# -- filtered search through the ORM -------------------------------------------------------


def filtered(args: dict[str, Any]) -> dict[str, Any]:
    """ORM semantic_search unfiltered vs filters selecting 1 % and 50 % of the rows."""
    from django.db import connection

    from bench.benchapp.models import Doc
    from django_embeddings import cache

    n, count = int(args["n"]), int(args["queries"])
    store = doc_field().store
    queries = corpus.queries(count, n)
    matrix = corpus.normalized(corpus.vectors(n))
    pks = np.arange(1, n + 1)
    subsets = {
        "none": None,
        "1%": np.flatnonzero(pks % 100 == 0),
        "50%": np.flatnonzero(pks % 100 < 50),
    }
    querysets = {
        "none": lambda: Doc.objects.all(),
        "1%": lambda: Doc.objects.filter(bucket=0),
        "50%": lambda: Doc.objects.filter(bucket__lt=50),
    }

    def orm(name: str, q: np.ndarray) -> list[int]:
        return [doc.pk - 1 for doc in querysets[name]().semantic_search(q, k=K)]

    def truth(name: str, q: np.ndarray) -> list[int]:
        rows = subsets[name]
        scores = matrix @ q if rows is None else matrix[rows] @ q
        top = np.argsort(-scores, kind="stable")[:K]
        return [int(r) for r in (top if rows is None else rows[top])]

    def index_only(q: np.ndarray) -> list[int]:
        return [int(h.key) - 1 for h in cache.get(store).search(q, K, identity=corpus.IDENTITY)]

    for q in queries[:3]:
        for name in querysets:
            orm(name, q)
        index_only(q)
    names = [*querysets, "index"]
    times: dict[str, list[float]] = {name: [] for name in names}
    wrong = dict.fromkeys(names, 0)
    short = dict.fromkeys(names, 0)
    for position, q in enumerate(queries):
        rotated = names[position % len(names) :] + names[: position % len(names)]
        for name in rotated:
            started = time.perf_counter()
            got = index_only(q) if name == "index" else orm(name, q)
            times[name].append(time.perf_counter() - started)
            expected = truth("none" if name == "index" else name, q)
            short[name] += len(got) != K
            wrong[name] += got != expected

    def twenty(name: str) -> Callable[[], object]:
        return lambda: [orm(name, q) for q in queries[:20]]

    profiles = {
        name: profile(
            f"filter-{name.rstrip('%')}pct-{n}" if name != "none" else f"filter-none-{n}",
            twenty(name),
        )
        for name in querysets
    }
    return {
        "n": n,
        "queries": count,
        "database": connection.vendor,
        "median_ms": {name: ms(median(v)) for name, v in times.items()},
        "p90_ms": {name: ms(p90(v)) for name, v in times.items()},
        "wrong_results": wrong,
        "short_results": short,
        "profiles": profiles,
    }


# -- cold start ----------------------------------------------------------------------------


def cold(args: dict[str, Any]) -> dict[str, Any]:
    """A new process's first search: Django set-up, then load + search (one query)."""
    imported = time.perf_counter()
    setup_seconds = setup_django()
    from django_embeddings import cache

    n = int(args["n"])
    q = corpus.queries(1, n)[0]
    store = doc_field().store
    started = time.perf_counter()
    hits = cache.get(store).search(q, K, identity=corpus.IDENTITY)
    first = time.perf_counter() - started
    assert len(hits) == K, hits
    result: dict[str, Any] = {
        "n": n,
        "imports_seconds": imported - PROCESS_STARTED,
        "django_setup_seconds": setup_seconds,
        "first_search_seconds": first,
        "in_process_seconds": time.perf_counter() - PROCESS_STARTED,
    }
    if args.get("profile"):
        cache.clear()
        result["profile"] = profile(
            f"cold-{n}", lambda: cache.get(store).search(q, K, identity=corpus.IDENTITY)
        )
    return result


# -- saves ---------------------------------------------------------------------------------


def save(args: dict[str, Any]) -> dict[str, Any]:
    """Model.save() of new rows into a store of ``n`` rows, minus the provider's time;
    the same save of a model without the field, and Store.put alone, for reference.

    The database is SQLite in memory, as popoto's Redis keeps nothing on disk: the
    figure is the ORM's and the embedding machinery's cost, not the disk's.
    """
    from django.db import connection

    from bench import providers
    from bench.benchapp.models import Doc, PlainDoc
    from django_embeddings.fields import content_hash

    ensure_tables()
    n, count = int(args["n"]), int(args["saves"])
    store = doc_field().store
    Doc.objects.filter(id__gt=n).delete()  # leftovers of an interrupted run
    first_id = n + 1

    def one(pk: int) -> tuple[float, float]:
        before = providers.PROVIDER_SECONDS[0]
        started = time.perf_counter()
        Doc.objects.create(id=pk, bucket=pk % 100, text=f"new doc {pk}")
        total = time.perf_counter() - started
        return total, providers.PROVIDER_SECONDS[0] - before

    warmup = 5
    totals, provider = [], []
    for i in range(warmup + count):
        total, spent = one(first_id + i)
        if i >= warmup:
            totals.append(total)
            provider.append(spent)
    overhead = [t - p for t, p in zip(totals, provider, strict=True)]
    assert store.load_vector(str(first_id)) is not None
    plain = []
    for i in range(warmup + count):
        pk = first_id + i
        started = time.perf_counter()
        PlainDoc.objects.create(id=pk, bucket=pk % 100, text=f"new doc {pk}")
        if i >= warmup:
            plain.append(time.perf_counter() - started)

    profiled = None
    next_id = first_id + warmup + count
    if args.get("profile"):
        # Before the Store.put loop below: those puts bypass this process's index, which
        # would then catch up from the journal inside the next save.
        profiled = profile(f"save-{n}", lambda: [one(next_id + i) for i in range(30)])
        next_id += 30
    puts = []
    vectors = corpus.vectors(count, seed=corpus.SEED + 7)
    base = next_id
    for i in range(count):
        started = time.perf_counter()
        store.put(str(base + i), vectors[i], content_hash=content_hash(str(i)), identity="x")
        puts.append(time.perf_counter() - started)
    # Leave the store and the table as they were: rows removed through the ORM.
    Doc.objects.filter(id__gt=n).delete()
    store.delete_many([str(base + i) for i in range(count)])
    return {
        "n": n,
        "saves": count,
        "database": connection.vendor,
        "p50_ms": ms(median(overhead)),
        "p90_ms": ms(p90(overhead)),
        "p50_total_ms": ms(median(totals)),
        "p50_provider_ms": ms(median(provider)),
        "plain_save_p50_ms": ms(median(plain)),
        "store_put_p50_ms": ms(median(puts)),
        "profile": profiled,
    }


# -- a peer's write, then a search here ----------------------------------------------------


def peer_writer(args: dict[str, Any]) -> None:
    """Saves one new row per ``write`` command (the peer)."""
    from bench.benchapp.models import Doc

    n = int(args["n"])
    Doc.objects.filter(id__gt=n).delete()
    next_id = n + 1
    Doc.objects.create(id=next_id, bucket=1, text=f"peer doc {next_id}")  # warm up
    emit("READY", {})
    for command in commands():
        if command == "write":
            next_id += 1
            started = time.perf_counter()
            Doc.objects.create(id=next_id, bucket=next_id % 100, text=f"peer doc {next_id}")
            emit("RESULT", {"seconds": time.perf_counter() - started})
        elif command == "exit":
            Doc.objects.filter(id__gt=n).delete()
            emit("RESULT", {})
            return


def peer_searcher(args: dict[str, Any]) -> None:
    """Searches when told: ``orm`` / ``index``, answering with the time taken."""
    from bench.benchapp.models import Doc
    from django_embeddings import cache

    n = int(args["n"])
    store = doc_field().store
    queries = corpus.queries(64, n)
    position = 0

    def run(kind: str) -> float:
        nonlocal position
        q = queries[position % len(queries)]
        position += 1
        started = time.perf_counter()
        if kind == "orm":
            got = list(Doc.objects.semantic_search(q, k=K))
        else:
            got = cache.get(store).search(q, K, identity=corpus.IDENTITY)
        elapsed = time.perf_counter() - started
        assert len(got) == K
        return elapsed

    for kind in ("orm", "index") * 3:
        run(kind)
    emit("READY", {})
    for command in commands():
        if command == "exit":
            return
        kind = command
        version_before = cache.get(store, check=False).version
        seconds = run(kind)
        version_after = cache.get(store, check=False).version
        emit("RESULT", {"seconds": seconds, "caught_up": version_after > version_before})


# -- memory --------------------------------------------------------------------------------


def memory_worker(args: dict[str, Any]) -> None:
    """A worker that searched the whole store, then idles so its memory can be read."""
    from django_embeddings import cache

    n = int(args["n"])
    store = doc_field().store
    for q in corpus.queries(10, n):
        cache.get(store).search(q, K, identity=corpus.IDENTITY)
    emit("READY", {"pid": os.getpid()})
    for command in commands():
        if command == "exit":
            return


def memory_bare(args: dict[str, Any]) -> None:
    """The same Django process, set up, with nothing loaded: the baseline."""
    import django_embeddings.querysets  # noqa: F401

    emit("READY", {"pid": os.getpid()})
    for command in commands():
        if command == "exit":
            return


# -- backfill with the built-in model ---------------------------------------------------


def backfill(args: dict[str, Any]) -> dict[str, Any]:
    """embed_queryset over ``n`` bulk-created rows with the built-in static model."""
    from django.db import connection

    from bench import providers
    from bench.benchapp.models import Passage
    from django_embeddings.backfill import DEFAULT_BATCH_SIZE, embed_queryset
    from django_embeddings.providers import get_provider

    ensure_tables()
    n = int(args["n"])
    field: Any = Passage._meta.get_field("embedding")
    Passage.objects.all()._raw_delete(Passage.objects.db)
    field.store.clear()
    texts = corpus.texts(n)
    for lo in range(0, n, 5_000):
        Passage.objects.bulk_create(
            [Passage(text=text) for text in texts[lo : lo + 5_000]], batch_size=5_000
        )
    provider = get_provider("static")
    started = time.perf_counter()
    provider.embed(["warm up"], input_type="document")
    model_load = time.perf_counter() - started
    providers.PROVIDER_SECONDS[0] = 0.0
    started = time.perf_counter()
    results = embed_queryset(Passage.objects.all())
    seconds = time.perf_counter() - started
    provider_seconds = providers.PROVIDER_SECONDS[0]
    embedded = sum(result.embedded for result in results)
    assert embedded == n, (embedded, n)
    profiled = None
    if args.get("profile"):
        # 10k more rows, backfilled under the profiler: the same work as the timed run's.
        last = Passage.objects.order_by("-id").values_list("id", flat=True)[0]
        extra = corpus.texts(n + 10_000)[n:]
        Passage.objects.bulk_create([Passage(text=text) for text in extra], batch_size=5_000)
        fresh = Passage.objects.filter(id__gt=last)
        profiled = profile(f"backfill-{connection.vendor}", lambda: embed_queryset(fresh))
    return {
        "n": n,
        "database": connection.vendor,
        "seconds": seconds,
        "rows_per_second": n / seconds,
        "provider_seconds": provider_seconds,
        "rows_per_second_without_provider": n / max(seconds - provider_seconds, 1e-9),
        "provider_rows_per_second": n / max(provider_seconds, 1e-9),
        "model_load_seconds": model_load,
        "batch_size": DEFAULT_BATCH_SIZE,
        "profile": profiled,
    }


# -- popoto ---------------------------------------------------------------------------------


def _popoto() -> tuple[Any, Any, Any]:
    """popoto's EmbeddingField on a model like ours, with the bench's timed provider.

    ``REDIS_URL`` (the private redis-server) and ``POPOTO_CONTENT_PATH`` (its
    embeddings directory) come from the environment, read by popoto at import.
    """
    import popoto
    from popoto.embeddings import AbstractEmbeddingProvider
    from popoto.fields.embedding_field import EmbeddingField

    from bench import providers

    class Provider(AbstractEmbeddingProvider):  # type: ignore[misc]
        def embed(self, texts: list[str], input_type: str | None = None) -> list[list[float]]:
            started = time.perf_counter()
            try:
                return [corpus.text_vector(text).tolist() for text in texts]
            finally:
                providers.PROVIDER_SECONDS[0] += time.perf_counter() - started

        @property
        def dimensions(self) -> int:
            return corpus.DIMENSIONS

        @property
        def max_batch_size(self) -> int:
            return 128

    popoto.configure(embedding_provider=Provider())

    class BenchDoc(popoto.Model):  # type: ignore[misc]
        key = popoto.KeyField()
        text = popoto.StringField()
        embedding = EmbeddingField(source="text")

    return popoto, EmbeddingField, BenchDoc


def popoto_build(args: dict[str, Any]) -> dict[str, Any]:
    """popoto's on-disk corpus of ``n`` rows, written in its own format with its own helpers
    (one ``<sha256(redis key)>.npy`` per row and the ``_index.json`` sidecar); building it
    through ``save()`` would cost O(N^2), as every save rewrites the whole sidecar."""
    from popoto.fields import embedding_field as module

    _, field, model = _popoto()
    n = int(args["n"])
    name = model.__name__
    sample = model(key="1", text="doc 1")
    prefix = sample.db_key.redis_key[: -len("1")]
    started = time.perf_counter()
    index: dict[str, Any] = {}
    directory = Path(field._embedding_path(name, prefix + "1")).parent
    directory.mkdir(parents=True, exist_ok=True)
    for lo, block in corpus.chunks(n):
        for i, vector in enumerate(block):
            redis_key = prefix + corpus.key(lo + i)
            path = field._embedding_path(name, redis_key)
            np.save(path, vector)
            index[os.path.basename(path)] = redis_key
    module._write_index(name, index)
    matrix, keys = field.load_embeddings(model) if n <= 10_000 else (None, [])
    if matrix is not None:
        assert matrix.shape == (n, corpus.DIMENSIONS) and len(keys) == n
    return {"n": n, "seconds": time.perf_counter() - started}


def popoto_cold(args: dict[str, Any]) -> dict[str, Any]:
    """popoto in a new process: load_embeddings, then the same top-10 search popoto runs."""
    imported = time.perf_counter()
    _, field, model = _popoto()
    n = int(args["n"])
    q = corpus.queries(1, n)[0]
    started = time.perf_counter()
    matrix, keys = field.load_embeddings(model)
    loaded = time.perf_counter() - started
    scores = matrix @ q
    top = np.argpartition(-scores, K)[:K]
    [keys[int(i)] for i in top[np.argsort(-scores[top])]]
    first = time.perf_counter() - started
    assert matrix.shape == (n, corpus.DIMENSIONS)
    result = {
        "n": n,
        "imports_seconds": imported - PROCESS_STARTED,
        "load_seconds": loaded,
        "first_search_seconds": first,
        "in_process_seconds": time.perf_counter() - PROCESS_STARTED,
    }
    return result


def popoto_save(args: dict[str, Any]) -> dict[str, Any]:
    """popoto's Model.save() into a corpus of ``n`` rows, minus the provider's time."""
    from popoto.fields import embedding_field as module

    from bench import providers

    _, field, model = _popoto()
    n, count = int(args["n"]), int(args["saves"])
    name = model.__name__
    original = module._read_index(name)
    totals, provider = [], []
    warmup = 3
    for i in range(warmup + count):
        pk = n + 1 + i
        before = providers.PROVIDER_SECONDS[0]
        started = time.perf_counter()
        model(key=str(pk), text=f"new doc {pk}").save()
        total = time.perf_counter() - started
        if i >= warmup:
            totals.append(total)
            provider.append(providers.PROVIDER_SECONDS[0] - before)
    assert len(module._read_index(name)) == len(original) + warmup + count
    overhead = [t - p for t, p in zip(totals, provider, strict=True)]
    return {
        "n": n,
        "saves": count,
        "p50_ms": ms(median(overhead)),
        "p90_ms": ms(p90(overhead)),
        "p50_total_ms": ms(median(totals)),
        "p50_provider_ms": ms(median(provider)),
    }


SCENARIOS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "build_store": build_store,
    "build_rows": build_rows,
    "search": search,
    "filtered": filtered,
    "cold": cold,
    "save": save,
    "peer_writer": peer_writer,
    "peer_searcher": peer_searcher,
    "memory_worker": memory_worker,
    "memory_bare": memory_bare,
    "backfill": backfill,
    "popoto_build": popoto_build,
    "popoto_cold": popoto_cold,
    "popoto_save": popoto_save,
}


def main() -> None:
    name = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if not name.startswith("popoto") and name != "cold":
        setup_django()  # before the scenario imports models; cold times it itself
    result = SCENARIOS[name](args)
    if result is not None:
        emit("RESULT", result)


if __name__ == "__main__":
    main()

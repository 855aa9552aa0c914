"""What a user's calls cost, next to what they would write by hand: ``python -m bench.endtoend``.

``make bench`` runs this (``make bench QUICK=1`` the quick mode). Each scenario
runs in its own process (:mod:`bench.endtoend_worker`), both sides of a
comparison in the same process on the same data, and the report gives medians
and their ratio against a goal, one Markdown table per section:

1. ``list(qs.semantic_search(vector, k))``, unfiltered and filtered, vs numpy
   + the ORM by hand, on SQLite (a file) and PostgreSQL;
2. ``Model.objects.create()`` with an ``EmbeddingField`` vs without it, alone and
   five in one ``transaction.atomic()`` (with the provider calls they make);
3. a save of a ``cache=False`` field as the stored rows grow;
4. the first search of a new process, with a compacted store and with every
   vector still in the journal;
5-7. on corpora of realistic texts, ``keyword_search()`` and ``hybrid_search()``
   next to ``semantic_search()``, their first call in a new process, and what the
   keyword index adds to a ``create()`` (:mod:`bench.endtoend_text`);
8. the ``database`` store (``DJANGO_EMBEDDINGS_STORE = "database"``) next to the
   default ``files`` store on the same corpus: a new process's first search (with
   this machine's copy, and on a new machine that rebuilds it from the table),
   ``create()``, and a warm ``semantic_search(v, k=100)`` in invalidation modes
   ``none`` and ``mtime``. The store is a process-wide setting, so its two sides run
   in alternating processes rather than in one.

A private redis-server and a PostgreSQL database of the bench's own are made
for the run and removed after it. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import endtoend_text, machine
from bench.report import _ms, _n
from bench.run import RESULTS, ROOT, _last_result, log, private_database, private_redis

# Runs at the same time on one server need databases of their own.
PG_NAME = os.environ.get("BENCH_ENDTOEND_PG_NAME", "django_embeddings_endtoend")
SEARCH_GOAL = 1.3  # ours / by hand
CREATE_GOAL = 1.3  # with the field / without
FLAT_GOAL = 1.3  # a cache=False save at N rows / at the smallest N
COLD_GOALS = {5_000: 0.050, 100_000: 0.300}  # seconds for a new process's first search


@dataclass
class Plan:
    """Sizes and repetitions of one mode."""

    sizes: list[int]  # search corpora, built on each database
    ks: list[int]
    queries: int  # timed queries per search row, at most
    row_budget: float  # seconds after which a search row stops, once it has 3 queries
    create_sizes: list[int]  # corpora (of ``sizes``) that the creates go into
    creates: int
    transactions: int  # atomic() blocks of 5 creates, each way
    uncached_sizes: list[int]
    uncached_creates: int
    cold_sizes: list[int]  # of ``sizes``: first searches, compacted and journal-only
    cold_runs: int  # timed runs, after one that warms the page cache
    text_sizes: list[int]  # corpora of texts, built on each database
    text_queries: int  # timed text queries per filter, at most
    text_create_sizes: list[int]  # of ``text_sizes``: where the creates go
    text_creates: int
    text_cold_runs: int  # timed runs of each search kind
    store_sizes: list[int]  # of ``sizes``: database store vs files store
    store_rounds: int  # processes per store for each create and warm search comparison


QUICK = Plan(
    sizes=[5_000, 100_000],
    ks=[10, 100, 1000],
    queries=15,
    row_budget=3.0,
    create_sizes=[5_000, 100_000],
    creates=40,
    transactions=10,
    uncached_sizes=[1_000, 10_000],
    uncached_creates=40,
    cold_sizes=[5_000, 100_000],
    cold_runs=3,
    text_sizes=[5_000, 50_000],  # 100k: 3 more minutes, most of it building the corpora
    text_queries=15,
    text_create_sizes=[5_000],
    text_creates=40,
    text_cold_runs=2,
    store_sizes=[100_000],  # 5k too: a minute more
    store_rounds=2,
)
FULL = Plan(
    sizes=[5_000, 100_000, 1_000_000],
    ks=[10, 100, 1000],
    queries=31,
    row_budget=15.0,
    create_sizes=[5_000, 100_000],
    creates=200,
    transactions=40,
    uncached_sizes=[1_000, 10_000, 100_000],
    uncached_creates=50,
    cold_sizes=[5_000, 100_000],
    cold_runs=7,
    text_sizes=[5_000, 100_000],
    text_queries=31,
    text_create_sizes=[5_000, 100_000],
    text_creates=200,
    text_cold_runs=5,
    store_sizes=[5_000, 100_000, 1_000_000],
    store_rounds=3,
)
SECTIONS = ("search", "create", "uncached", "cold", "text", "store")
STORE_K = 100  # k of the store section's warm searches
STORE_INVALIDATIONS = ("none", "mtime")


class Runner:
    """Starts worker processes, each with its own store directory and SQLite file."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        invalidation: str,
        keep: bool,
        blas_threads: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.invalidation = invalidation
        self.keep = keep
        self.blas_threads = blas_threads
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def env(self, db: str, tag: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            PYTHONDONTWRITEBYTECODE="1",
            BENCH_DB=db,
            BENCH_SQLITE_PATH=str(self.workdir / f"{tag}.sqlite3"),
            BENCH_PG_NAME=PG_NAME,
            BENCH_REDIS_URL=self.redis_url,
            DJANGO_EMBEDDINGS_DIR=str(self.workdir / f"store-{tag}"),
            DJANGO_EMBEDDINGS_INVALIDATION=self.invalidation,
        )
        for name in ("DJANGO_EMBEDDINGS_COMPACT_THRESHOLD", "DJANGO_EMBEDDINGS_STORE"):
            env.pop(name, None)  # the default, unless extra says
        if self.blas_threads is not None:
            for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[name] = str(self.blas_threads)
        env.update(extra)
        return env

    def run(self, scenario: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        log_path = self.logs / f"{scenario}.log"
        started = time.perf_counter()
        with open(log_path, "ab") as stderr:
            completed = subprocess.run(
                [sys.executable, "-m", "bench.endtoend_worker", scenario, json.dumps(args)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                check=False,
            )
        if completed.returncode != 0:
            raise RuntimeError(
                f"bench.endtoend_worker {scenario} {args} failed ({completed.returncode}); "
                f"see {log_path}:\n{log_path.read_text()[-3000:]}"
            )
        result = _last_result(completed.stdout.decode())
        result["wall_seconds"] = time.perf_counter() - started
        return result

    @contextlib.contextmanager
    def new_machine(self, env: dict[str, str]) -> Iterator[dict[str, str]]:
        """``env`` with ``DJANGO_EMBEDDINGS_DIR`` an empty directory, as on a machine that
        has no local copy yet; removed after."""
        directory = Path(tempfile.mkdtemp(prefix="machine-", dir=self.workdir))
        try:
            yield {**env, "DJANGO_EMBEDDINGS_DIR": str(directory)}
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def discard(self, tag: str) -> None:
        """Set a corpus aside (unless --keep) for removal with the workdir once the report
        is out: unlinking a store of one file per row takes minutes on a busy disk."""
        if self.keep:
            return
        trash = self.workdir / "trash"
        trash.mkdir(exist_ok=True)
        for path in (self.workdir / f"store-{tag}", self.workdir / f"{tag}.sqlite3"):
            if path.exists():
                path.rename(trash / f"{path.name}-{time.monotonic_ns()}")


def run_all(runner: Runner, plan: Plan, dbs: list[str], wanted: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "build": {},
        "search": [],
        "create": [],
        "uncached": [],
        "cold": [],
        "store": [],
    }
    for db in dbs:
        for n in plan.sizes:
            cold_here = "cold" in wanted and n in plan.cold_sizes
            create_here = "create" in wanted and n in plan.create_sizes
            store_here = "store" in wanted and n in plan.store_sizes
            if not ("search" in wanted or cold_here or create_here or store_here):
                continue
            tag = f"{db}-{n}"
            env = runner.env(db, tag)
            if cold_here and db == "sqlite":
                # One backfill serves both stores: first left with every vector in the
                # journal (a threshold above n, and the backfill's closing compaction
                # skipped), then compacted by `manage.py embeddings_compact`.
                loading = runner.env(db, tag, DJANGO_EMBEDDINGS_COMPACT_THRESHOLD=str(2**40))
                log(f"{db}, {n:,} rows: bulk_create + embed_queryset, nothing compacted")
                build = runner.run("build", {"n": n, "journal": True}, loading)
                results["build"][tag] = build
                results["cold"].append(cold(runner, plan, loading, n, "journal"))
                log(f"{db}, {n:,} rows: manage.py embeddings_compact")
                build["compact_seconds"] = runner.run("compact", {}, env)["seconds"]
            else:
                log(f"{db}, {n:,} rows: bulk_create + embed_queryset")
                results["build"][tag] = runner.run("build", {"n": n}, env)
            if "search" in wanted:
                log(f"{db}, {n:,} rows: semantic_search vs by hand")
                args = {"n": n, "queries": plan.queries, "ks": plan.ks, "budget": plan.row_budget}
                results["search"].append(runner.run("search", args, env))
            if cold_here:
                results["cold"].append(cold(runner, plan, env, n, "compacted"))
            if store_here:
                results["store"].append(compare_stores(runner, plan, db, tag, n))
            if create_here:
                log(f"{db}, {n:,} rows: create() with and without the field")
                args = {"n": n, "creates": plan.creates, "transactions": plan.transactions}
                results["create"].append(runner.run("create", args, env))
            runner.discard(tag)
    if "uncached" in wanted:
        for n in plan.uncached_sizes:
            tag = f"uncached-{n}"
            env = runner.env("sqlite", tag)
            log(f"sqlite, {n:,} rows of a cache=False field: create()")
            results["build"][tag] = runner.run("build", {"n": n, "model": "uncached"}, env)
            args = {"n": n, "creates": plan.uncached_creates, "model": "uncached"}
            results["uncached"].append(runner.run("create", args, env))
            runner.discard(tag)
    if "text" in wanted:
        results["text"] = endtoend_text.run_text(runner, plan, dbs, results["build"])
    return results


def cold(
    runner: Runner,
    plan: Plan,
    env: dict[str, str],
    n: int,
    store: str,
    *,
    new_machine: bool = False,
) -> dict[str, Any]:
    """Medians of new processes' first searches, after one more that brings the store's
    files into the page cache and reports the store's journal length. A first search
    slower than a second is timed once: its median would not tell more.

    With ``new_machine``, each process gets an empty ``DJANGO_EMBEDDINGS_DIR`` of its
    own (a ``database`` store then rebuilds this machine's copy from the table)."""
    log(f"{env['BENCH_DB']}, {n:,} rows, {store} store: first search in new processes")

    def run(args: dict[str, Any]) -> dict[str, Any]:
        if not new_machine:
            return runner.run("cold", args, env)
        with runner.new_machine(env) as empty:
            return runner.run("cold", args, empty)

    warming = run({"n": n, "status": True})
    runs = [run({"n": n})]
    while len(runs) < plan.cold_runs and runs[-1]["first_search_seconds"] < 1.0:
        runs.append(run({"n": n}))
    keys = ("first_search_seconds", "second_search_seconds", "wall_seconds")
    summary: dict[str, Any] = medians(runs, keys)
    summary.update(
        n=n,
        database=warming["database"],
        store=store,
        runs=len(runs),
        journal_entries=warming["journal_entries"],
    )
    return summary


def compare_stores(runner: Runner, plan: Plan, db: str, tag: str, n: int) -> dict[str, Any]:
    """The ``database`` store next to the ``files`` store on corpus ``tag``: its vectors
    are moved into the tables (``embeddings_move --from files``, then
    ``embeddings_compact``, which leaves both stores compacted), then each measurement
    runs on both."""
    envs = {
        kind: runner.env(db, tag, DJANGO_EMBEDDINGS_STORE=kind) for kind in ("files", "database")
    }
    log(f"{db}, {n:,} rows: embeddings_move --from files and embeddings_compact, database store")
    moved = runner.run("move", {}, envs["database"])["seconds"]
    compacted = runner.run("compact", {}, envs["database"])["seconds"]
    first = {
        "files": cold(runner, plan, envs["files"], n, "files"),
        "database": cold(runner, plan, envs["database"], n, "database"),
        "new machine": cold(
            runner, plan, envs["database"], n, "database, no copy", new_machine=True
        ),
    }
    args: dict[str, Any] = {
        "n": n,
        "queries": plan.queries,
        "ks": [STORE_K],
        "budget": plan.row_budget,
        "filters": ["none"],
    }
    warm = {}
    for mode in STORE_INVALIDATIONS:
        log(f"{db}, {n:,} rows, invalidation {mode}: warm searches of each store")
        modal = {
            kind: {**env, "DJANGO_EMBEDDINGS_INVALIDATION": mode} for kind, env in envs.items()
        }
        warm[mode] = {
            kind: {
                **medians([run["rows"][0] for run in runs], ("ours_ms", "by_hand_ms")),
                "same": sum(run["rows"][0]["same"] for run in runs),
                "queries": sum(run["rows"][0]["queries"] for run in runs),
            }
            for kind, runs in alternating(runner, plan, modal, "search", args).items()
        }
    log(f"{db}, {n:,} rows: create() with each store")
    args = {"n": n, "creates": plan.creates, "transactions": plan.transactions}
    creates = {
        kind: {
            "single": medians([run["single"] for run in runs], ("ours_ms", "plain_ms")),
            "atomic": medians([run["atomic"] for run in runs], ("ours_ms", "plain_ms")),
            "missing_after": sum(run["missing_after"] for run in runs),
        }
        for kind, runs in alternating(runner, plan, envs, "create", args).items()
    }
    return {
        "n": n,
        "database": first["files"]["database"],
        "move_seconds": moved,
        "compact_seconds": compacted,
        "processes": plan.store_rounds,
        "cold": first,
        "search": warm,
        "create": creates,
    }


def alternating(
    runner: Runner,
    plan: Plan,
    envs: dict[str, dict[str, str]],
    scenario: str,
    args: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """``scenario`` in ``plan.store_rounds`` processes per environment of ``envs``, a
    round each, alternating which goes first: the two sides of a comparison that cannot
    share a process, through the same changes in the machine's load."""
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in envs}
    for round_ in range(plan.store_rounds):
        for kind in list(envs) if round_ % 2 == 0 else list(reversed(envs)):
            runs[kind].append(runner.run(scenario, args, envs[kind]))
    return runs


def medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in keys}


# -- the report ---------------------------------------------------------------------------------

DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
FILTER_CALLS = {
    "none": ("", ""),
    "1%": ("filter(bucket=0).", " (1 %)"),
    "10%": ("filter(bucket__lt=10).", " (10 %)"),
    "50%": ("filter(bucket__lt=50).", " (50 %)"),
}


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _head(title: str, columns: str) -> list[str]:
    """A table's title and header rows, its ``columns`` named in one string split at ``|``."""
    names = columns.split("|")
    return [title, "", _row(*names), "|" + "---|" * len(names)]


def search_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 1. `list(qs.semantic_search(vector, k))` vs the same by hand",
        "",
        _row("call", "rows", "db", "ours", "by hand", "ratio", "goal", "met", "same rows"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    met = total = 0
    for item in results["search"]:
        for row in item["rows"]:
            prefix, share = FILTER_CALLS[row["filter"]]
            ratio = row["ours_ms"] / row["by_hand_ms"]
            ok = ratio <= SEARCH_GOAL
            met, total = met + ok, total + 1
            hand = _ms(row["by_hand_ms"]) + (f" ({row['strategy']})" if row["strategy"] else "")
            lines.append(
                _row(
                    f"`{prefix}semantic_search(v, k={row['k']})`{share}",
                    _n(item["n"]),
                    DATABASES[item["database"]],
                    _ms(row["ours_ms"]),
                    hand,
                    f"{ratio:.2f}×",
                    f"≤ {SEARCH_GOAL}×",
                    _met(ok),
                    f"{row['same']}/{row['queries']}",
                )
            )
    lines += [
        "",
        f"Goal met by {met} of {total} rows. First search in each search process (index "
        "load included): "
        + "; ".join(
            f"{DATABASES[item['database']]} {_n(item['n'])} {_ms(item['first_search_ms'])}"
            for item in results["search"]
        )
        + ".",
        "",
    ]
    return lines


def create_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 2. `Model.objects.create()` with an EmbeddingField vs the same model without it",
        "",
        _row("call", "rows", "db", "ours", "by hand", "ratio", "goal", "met"),
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for item in results["create"]:
        where = (_n(item["n"]), DATABASES[item["database"]])
        for key, call in (("single", "`create()`"), ("atomic", "5 × `create()` in one `atomic()`")):
            part = item[key]
            ratio = part["ours_ms"] / part["plain_ms"]
            lines.append(
                _row(
                    call,
                    *where,
                    _ms(part["ours_ms"]),
                    _ms(part["plain_ms"]),
                    f"{ratio:.2f}×",
                    f"≤ {CREATE_GOAL}×",
                    _met(ratio <= CREATE_GOAL),
                )
            )
        calls = item["atomic"]["provider_calls"]
        lines.append(
            _row(
                "provider calls of 5 `create()` in one `atomic()`",
                *where,
                calls,
                "",
                "",
                "1 (one batch per field)",
                _met(calls == 1 and item["atomic"]["provider_calls_max"] == 1),
            )
        )
        notes.append(
            f"{where[1]} {where[0]}: {_ms(item['single']['provider_ms'])} in the provider per "
            f"create, {_ms(item['atomic']['provider_ms'])} per transaction; rows left without "
            f"an embedding: {item['missing_after']}"
        )
    lines += ["", "Provider time (excluded above): " + "; ".join(notes) + ".", ""]
    return lines


def uncached_table(results: dict[str, Any]) -> list[str]:
    items = sorted(results["uncached"], key=lambda item: item["n"])
    if not items:
        return []
    base = items[0]
    lines = [
        "### 3. `create()` of a model whose field has `cache=False`, as the stored rows grow",
        "",
        _row("call", "rows", "db", "ours", f"at {_n(base['n'])} rows", "ratio", "goal", "met"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in items:
        ratio = item["single"]["ours_ms"] / base["single"]["ours_ms"]
        first = item is base
        lines.append(
            _row(
                "`create()`, `cache=False`",
                _n(item["n"]),
                DATABASES[item["database"]],
                _ms(item["single"]["ours_ms"]),
                _ms(base["single"]["ours_ms"]),
                "(baseline)" if first else f"{ratio:.2f}×",
                "" if first else f"≈ 1× (≤ {FLAT_GOAL}×)",
                "" if first else _met(ratio <= FLAT_GOAL),
            )
        )
    lines += [
        "",
        "The same create without the field: "
        + "; ".join(f"{_ms(item['single']['plain_ms'])} at {_n(item['n'])}" for item in items)
        + ".",
        "",
    ]
    return lines


def cold_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 4. First search in a new process (page cache warm)",
        "",
        _row(
            "store",
            "rows",
            "db",
            "first search",
            "goal",
            "met",
            "second search",
            "whole process",
            "journal entries",
            "runs",
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results["cold"]:
        goal = COLD_GOALS.get(item["n"])
        first = item["first_search_seconds"]
        lines.append(
            _row(
                item["store"],
                _n(item["n"]),
                DATABASES[item["database"]],
                _ms(first * 1000),
                "" if goal is None else f"≤ {_ms(goal * 1000)}",
                "" if goal is None else _met(first <= goal),
                _ms(item["second_search_seconds"] * 1000),
                f"{item['wall_seconds']:.2f} s",
                f"{item['journal_entries']:,}",
                item["runs"],
            )
        )
    return [*lines, ""]


def store_table(results: dict[str, Any]) -> list[str]:
    columns = (
        "call|rows|db|database store|files store|ratio|same processes (database / files)"
        "|ratio, each over its processes' reference"
    )
    lines = _head('### 8. `DJANGO_EMBEDDINGS_STORE = "database"` vs the files store', columns)

    def both(sides: dict[str, Any], key: str, unit: float = 1.0) -> tuple[float, float]:
        return sides["database"][key] * unit, sides["files"][key] * unit

    notes = []
    for item in results["store"]:
        where = (_n(item["n"]), DATABASES[item["database"]])
        cold, create, search = item["cold"], item["create"], item["search"]
        # (call, (database, files), what else the processes measured, (database, files))
        rows: list[tuple[str, tuple[float, float], str, tuple[float, float]]] = []
        for call, sides in (
            ("first search in a new process", cold),
            (
                "the same on a new machine (no local copy: rebuilt from the table)",
                {"database": cold["new machine"], "files": cold["files"]},
            ),
        ):
            first, wall = (
                both(sides, "first_search_seconds", 1000),
                both(sides, "wall_seconds", 1000),
            )
            rows.append((call, first, "whole process", wall))
        for key, call in (
            ("single", "`create()` (provider time excluded)"),
            ("atomic", "5 × `create()` in one `atomic()`"),
        ):
            sides = {kind: side[key] for kind, side in create.items()}
            rows.append(
                (call, both(sides, "ours_ms"), "without the field", both(sides, "plain_ms"))
            )
        for mode in STORE_INVALIDATIONS:
            call = f"warm `list(qs.semantic_search(v, k={STORE_K}))`, invalidation `{mode}`"
            sides = search[mode]
            rows.append((call, both(sides, "ours_ms"), "by hand", both(sides, "by_hand_ms")))
        for call, (database, files), label, (database_ref, files_ref) in rows:
            # Each side over what the same processes measured of the same code on both: the
            # load each side ran under cancels out. A process's wall time includes its first
            # search, so it is shown but not divided by.
            steadied = database / database_ref / (files / files_ref)
            lines.append(
                _row(
                    call,
                    *where,
                    _ms(database),
                    _ms(files),
                    f"{database / files:.2f}×",
                    f"{label} {_ms(database_ref)} / {_ms(files_ref)}",
                    "" if label == "whole process" else f"{steadied:.2f}×",
                )
            )
        same = [f"{side['same']}/{side['queries']}" for m in search.values() for side in m.values()]
        notes.append(
            f"- {where[1]} {where[0]}: `embeddings_move --from files` took "
            f"{item['move_seconds']:.1f} s, then `embeddings_compact` "
            f"{item['compact_seconds']:.1f} s. First searches timed in "
            + "/".join(str(run["runs"]) for run in cold.values())
            + " processes (files, database, new machine); creates and warm searches in "
            f"{item['processes']} processes per store. Created rows left without an embedding: "
            + "/".join(str(side["missing_after"]) for side in create.values())
            + "; warm searches returning the same rows as by hand: "
            + ", ".join(same)
            + "."
        )
    return [*lines, "", *notes, ""]


def build_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "### Building the corpora",
        "",
        _row(
            "corpus",
            "rows",
            "bulk_create",
            "embed_queryset",
            "of it in the provider",
            "rows/s",
            "then embeddings_compact",
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for tag, item in results["build"].items():
        lines.append(
            _row(
                tag,
                _n(item["n"]),
                f"{item['bulk_create_seconds']:.1f} s",
                f"{item['backfill_seconds']:.1f} s",
                f"{item['backfill_provider_seconds']:.1f} s",
                f"{item['n'] / item['backfill_seconds']:,.0f}",
                f"{item['compact_seconds']:.1f} s" if "compact_seconds" in item else "",
            )
        )
    return [*lines, ""]


NOTES = """\
### What each row measures

- **Data.** Row `i` of the corpora of 1-4 and 8 has the text `"row i"`, `bucket = i % 100` (an
  indexed integer column) and primary key `i + 1`. The bench provider embeds `"row i"` as row `i`
  of a seeded matrix of 384-dimensional float32 vectors (`bench/corpus.py`), from a chunk it
  generates once per process: a few µs per text. Corpora are built with public APIs only:
  `bulk_create`, then `django_embeddings.backfill.embed_queryset` (which compacts the store at its
  end), in a SQLite file or a PostgreSQL database of the bench's own.
  Queries are vectors near corpus rows (a row plus noise), given to `semantic_search` as vectors.
- **1. Search.** Ours: `list(Article.objects.semantic_search(v, k=k))`, or with
  `.filter(bucket=0)` (1 % of the rows), `.filter(bucket__lt=10)` (10 %) or
  `.filter(bucket__lt=50)` (50 %) before it. By hand, in the same process: the normalized matrix
  and its primary keys held in a numpy array; `scores = matrix @ v`;
  `np.argpartition(-scores, k - 1)[:k]`; `list(Article.objects.filter(pk__in=ids))`, each row
  given its score, sorted in Python by score. A filter by hand: its primary keys from
  `values_list("pk", flat=True)` per query, mapped to matrix rows (`np.searchsorted`), then either
  only those rows are scored, `matrix[rows] @ v` (**gather**), or all rows are scored and the
  others set to -inf (**mask**), whichever was faster for that filter on warm-up queries (shown
  next to the time). Ours remembers how many rows each filter selected (for 30 s, per process),
  so after the warm-up queries it neither counts them nor, for a broad filter, reads their keys;
  the by-hand code reads them for every query. Medians over the same queries, the two sides
  alternating which goes first: each call follows one of the other side, as in a server doing
  other work between searches (a tight loop of one side alone runs faster on warm CPU caches,
  by-hand most of all).
  "Same rows": queries where both returned the same rows with the same scores position by
  position (scores equal to 6 digits may swap, and rows tied with the last one may be swapped for
  each other at the cut). A row stops early, after at least 3 queries, once
  it has taken its time budget (k=1000 rows can take a second a call).
- **2. Create.** `Article.objects.create(bucket=..., text=...)` (autocommit: the field's work
  runs at commit, inside the timing) minus the time spent inside the provider, vs
  `PlainArticle.objects.create(...)`, the same model without the EmbeddingField, with as many
  rows in its table. Then 5 creates in one `transaction.atomic()` each way, timed to the end of
  the block (commit included), and the provider calls they made.
- **3. `cache=False`.** The same create (minus provider time) of `UncachedArticle`, whose field is
  declared with `cache=False`, at each number of rows already stored; SQLite.
- **4. First search.** A new process sets Django up and opens its database connection, then
  runs one `list(Article.objects.semantic_search(v, k=10))`, timed alone (the second search is
  shown for reference; "whole process" is the subprocess's wall time). One untimed run first
  brings the files into the page cache; medians of the runs after it ("runs"; one when it took
  over a second). "journal" (SQLite):
  `DJANGO_EMBEDDINGS_COMPACT_THRESHOLD` set above the row count and the backfill stopped by its
  `progress` callback after its last batch, before its closing compaction (as an interrupted
  backfill is), so that no vector is compacted; "compacted": that store after
  `manage.py embeddings_compact` (SQLite), or the store `embed_queryset` left (PostgreSQL).
  "Journal entries" is what `manage.py embeddings_status --json` reports for the store.
- **8. Database store.** One corpus serves both stores: built with the files store as above,
  then `manage.py embeddings_move --from files` with `DJANGO_EMBEDDINGS_STORE = "database"`
  (into tables made empty for it) and `manage.py embeddings_compact`, which leaves the table and
  this machine's copy of it compacted. The store is a setting of the process, so the two sides run
  in separate processes with the same environment otherwise: first searches as in 4 (one untimed
  run first); "new machine": each process, the untimed one too, gets an empty
  `DJANGO_EMBEDDINGS_DIR`, so its first search rebuilds the copy from the table. Creates as in 2
  and warm searches as in 1 (unfiltered, k=100, ours alternating with by hand), each in a round of
  processes per store, alternating which store goes first; medians of the processes' medians.
  The creates' rows are deleted at the end of their process. "Same processes" shows what the
  processes measured besides (the process's wall time, the create without the field, the search
  by hand): when they differ as much as the two stores do, the machine's load moved in between.
  Invalidation: the run's mode for first searches and creates; `none` and `mtime` for warm
  searches (in `mtime` each search of the database store reads the table's newest version).
  On PostgreSQL the tables are analyzed after the move, as autovacuum does within a minute or so
  of a load that size (before that, the planner takes the table for a few rows, which slows the
  table's compaction).
- **BLAS.** Both sides run the same numpy in the same process, with its default threads unless
  `--blas-threads` says otherwise (shown above). On a busy machine a multi-threaded matrix product
  waits for every one of its threads to get a core: milliseconds added to both sides, which
  narrows their ratio; `--blas-threads 1` steadies the figures there.
"""


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    blas = (
        ", ".join(
            f"{b['api']} {b.get('version') or ''} kernel={b['kernel']} threads={b['threads']}"
            for b in m["blas"]
        )
        or "not listed (threadpoolctl missing)"
    )
    lines = [
        f"## django_embeddings end to end, ours vs by hand ({results['mode']} mode)",
        "",
        f"{m['date']}; {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM; "
        f"Python {m['python']}, numpy {m['numpy']}; BLAS: {blas}; "
        f"BLAS threads {results.get('blas_threads') or 'numpy default'}; "
        f"invalidation {results['invalidation']}; load average at the start "
        f"{m['load_average']}, at the end {results['load_average_end']}; "
        f"run took {results['seconds']:.0f} s.",
        "",
    ]
    if results["search"]:
        lines += search_table(results)
    if results["create"]:
        lines += create_table(results)
    lines += uncached_table(results)
    if results["cold"]:
        lines += cold_table(results)
    lines += endtoend_text.markdown(results)
    if results.get("store"):
        lines += store_table(results)
    lines += build_table(results)
    lines.append(NOTES + (endtoend_text.NOTES if results.get("text") else ""))
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.endtoend", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5k and 100k rows, a few minutes")
    parser.add_argument("--workdir", type=Path, help="where corpora go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and the database")
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument(
        "--db", default="sqlite,postgres", help="comma-separated: sqlite,postgres (default both)"
    )
    parser.add_argument(
        "--invalidation",
        default="pubsub",
        choices=("pubsub", "mtime", "none"),
        help="DJANGO_EMBEDDINGS_INVALIDATION of the processes (default: pubsub, the default)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="threads of numpy's BLAS in every process (default: numpy's own choice); "
        "1 steadies the figures on a busy machine",
    )
    options = parser.parse_args(argv)
    wanted = set(options.only.split(",")) if options.only else set(SECTIONS)
    if wanted - set(SECTIONS):
        parser.error(f"--only takes {','.join(SECTIONS)}, not {options.only!r}")
    dbs = options.db.split(",")
    if not dbs or set(dbs) - {"sqlite", "postgres"}:
        parser.error(f"--db takes sqlite,postgres, not {options.db!r}")
    plan = QUICK if options.quick else FULL
    mode = "quick" if options.quick else "full"
    # A partial or tuned run never becomes latest-endtoend-<quick|full>.md.
    if options.only:
        mode += "-only-" + "-".join(sorted(wanted))
    if set(dbs) != {"sqlite", "postgres"}:
        mode += "-" + "-".join(dbs)
    if options.blas_threads is not None:
        mode += f"-blas{options.blas_threads}"
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="django-embeddings-endtoend-"))
    workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    described = machine.describe()
    started = time.perf_counter()
    try:
        with (
            private_redis(workdir) as redis_url,
            private_database(options.keep, PG_NAME)
            if "postgres" in dbs
            else contextlib.nullcontext(False) as postgres,
        ):
            runner = Runner(
                workdir, redis_url, options.invalidation, options.keep, options.blas_threads
            )
            usable = [db for db in dbs if db == "sqlite" or postgres]
            results = run_all(runner, plan, usable, wanted)
        results.update(
            mode=mode,
            plan=asdict(plan),
            machine=described,
            invalidation=options.invalidation,
            blas_threads=options.blas_threads,
            load_average_end=[round(x, 2) for x in os.getloadavg()],
            seconds=time.perf_counter() - started,
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (RESULTS / f"{stamp}-endtoend-{mode}.json").write_text(json.dumps(results, indent=2))
        text = markdown(results)
        (RESULTS / f"{stamp}-endtoend-{mode}.md").write_text(text)
        (RESULTS / f"latest-endtoend-{mode}.md").write_text(text)
        print(text, flush=True)
        log(f"measured in {results['seconds']:.0f} s; results in {RESULTS}")
    finally:
        if not options.keep:
            log(f"removing {workdir}")
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

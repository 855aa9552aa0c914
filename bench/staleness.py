"""Cross-process staleness and catch-up cost: ``python -m bench.staleness [--quick]``.

Two real processes, A (writer) and B (searcher), share one store directory and one
SQLite database, in each invalidation mode:

1. Staleness: B searches every millisecond while A saves a row through the ORM; the
   figure is the time from A's ``save()`` returning to B's first search that
   returns the row (0 when B already saw it by then). ``none`` mode never sees it,
   by design.
2. Catch-up cost at scale: a store of N rows x 384 dimensions (built directly with
   ``Store.put_many`` + ``compact``), loaded and warm in B. A stores one row the
   way ``writer`` does (store, then publish); B's next search is timed and
   reported as a ratio to a warm search, next to the ratio of a full reload.

Prints a Markdown table; asserts nothing. Needs Redis on 127.0.0.1:6379 (or
``BENCH_REDIS_URL``) for the pubsub rows.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODES = ("pubsub", "mtime", "none")
IDENTITY = "bench-384"


# -- the peer processes ------------------------------------------------------------------


def peer_main() -> None:  # pragma: no cover - runs in the child processes
    import django

    django.setup()
    import numpy as np
    from django.core.management import call_command

    from django_embeddings import cache, invalidation
    from django_embeddings.store import Store
    from tests.testapp.models import Article, Doc

    if os.environ.get("MP_MIGRATE") == "1":
        call_command("migrate", verbosity=0, interactive=False)
    big_field = Doc._meta.get_field("embedding")
    rng = np.random.default_rng(os.getpid())

    def top_pk(text: str) -> Any:
        hits = list(Article.objects.semantic_search(text, k=1))
        return hits[0].pk if hits else None

    def big_search(query: Any) -> float:
        started = time.perf_counter()
        index = cache.get(big_field.store, check=invalidation.needs_check())
        index.search(query, 10, identity=IDENTITY)
        return time.perf_counter() - started

    def handle(command: dict[str, Any]) -> Any:
        op = command["op"]
        if op == "healthy":
            deadline = time.monotonic() + 15
            while not invalidation.listener_healthy() and time.monotonic() < deadline:
                time.sleep(0.02)
            return invalidation.listener_healthy()
        if op == "search":
            return top_pk(command["text"])
        if op == "create":
            started = time.time()
            Article.objects.create(title="t", body=command["text"])
            return [started, time.time()]
        if op == "watch":
            # Answer at once, then search until the text's row comes back.
            print(json.dumps({"ok": "watching"}), flush=True)
            deadline = time.monotonic() + command["timeout"]
            while time.monotonic() < deadline:
                pk = top_pk(command["text"])
                if pk is not None and Article.objects.filter(pk=pk, body=command["text"]).exists():
                    return time.time()
                time.sleep(0.001)  # a busy worker, not a spinning one hogging the GIL
            return None
        if op == "build":
            n, dims = command["rows"], command["dims"]
            field_store = big_field.store
            store = Store(
                field_store.path, label=field_store.label, permissions=field_store.permissions
            )
            store.clear()
            for start in range(0, n, 10_000):
                count = min(10_000, n - start)
                block = rng.standard_normal((count, dims)).astype(np.float32)
                store.put_many(
                    (f"{start + i}", block[i], f"{start + i:032x}", IDENTITY) for i in range(count)
                )
            store.compact()
            return store.version()
        if op == "big_write":
            store = big_field.store
            vector = rng.standard_normal(command["dims"]).astype(np.float32)
            entries = store.put_many([(f"new{command['n']}", vector, "0" * 32, IDENTITY)])
            cache.apply_delta(store, entries, [vector])
            invalidation.publish(store, entries, [vector])
            return entries[-1].version
        if op == "big_warm":
            query = rng.standard_normal(command["dims"]).astype(np.float32)
            big_search(query)  # load
            return statistics.median(big_search(query) for _ in range(command["repeat"]))
        if op == "big_next":
            # B's next search after A's write. In pubsub mode the listener applies the
            # write first (that is its point); wait for it so the search sees it.
            query = rng.standard_normal(command["dims"]).astype(np.float32)
            if invalidation.mode() == "pubsub":
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    index = cache.loaded(big_field.store.label)
                    if index is not None and index.version >= command["version"]:
                        break
                    time.sleep(0.0005)
            elapsed = big_search(query)
            index = cache.loaded(big_field.store.label)
            return {"seconds": elapsed, "version": index.version if index else None}
        if op == "big_reload":
            query = rng.standard_normal(command["dims"]).astype(np.float32)
            started = time.perf_counter()
            cache.reload(big_field.store).search(query, 10, identity=IDENTITY)
            return time.perf_counter() - started
        raise ValueError(f"unknown op {op!r}")

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        try:
            answer = {"ok": handle(json.loads(line))}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


class Peer:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.staleness", "--peer"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.read(120)

    def read(self, timeout: float = 600) -> Any:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("a benchmark peer did not answer")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark peer exited")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer.get("ok", answer)

    def send(self, op: str, **kwargs: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.process.stdin.flush()

    def __call__(self, op: str, **kwargs: Any) -> Any:
        self.send(op, **kwargs)
        return self.read()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- the orchestrator --------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_mode(base_env: dict[str, str], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**base_env, "DJANGO_EMBEDDINGS_INVALIDATION": mode}
    a, b = Peer(env), Peer(env)
    try:
        if mode == "pubsub" and not (a("healthy") and b("healthy")):
            return {"mode": mode, "error": "listener not healthy (is Redis running?)"}
        b("search", text="warm up")
        staleness: list[float] = []
        from_start: list[float] = []
        never = 0
        for n in range(args.writes):
            text = f"row {mode} {n} {uuid.uuid4().hex}"
            b.send("watch", text=text, timeout=0.3 if mode == "none" else 10)
            b.read()  # "watching"
            started, written = a("create", text=text)
            seen = b.read()
            if seen is None:
                never += 1
            else:
                staleness.append(max(0.0, seen - written))
                from_start.append(seen - started)
        a("build", rows=args.rows, dims=args.dims)
        # Each sample is a ratio to a warm search measured just before it, so that
        # load from other processes on the machine cancels out.
        warms, nexts, reloads, next_ratios, reload_ratios, seen_writes = [], [], [], [], [], 0
        for n in range(args.big_writes):
            warm = b("big_warm", dims=args.dims, repeat=args.repeat)
            version = a("big_write", dims=args.dims, n=n)
            result = b("big_next", dims=args.dims, version=version)
            seen_writes += result["version"] is not None and result["version"] >= version
            warm_again = b("big_warm", dims=args.dims, repeat=args.repeat)
            reload = b("big_reload", dims=args.dims)
            warms.append(warm)
            nexts.append(result["seconds"])
            reloads.append(reload)
            next_ratios.append(result["seconds"] / warm)
            reload_ratios.append(reload / warm_again)
        return {
            "mode": mode,
            "staleness": staleness,
            "from_start": from_start,
            "never": never,
            "warm": statistics.median(warms),
            "next": statistics.median(nexts),
            "next_ratio": statistics.median(next_ratios),
            "seen": seen_writes,
            "reload": statistics.median(reloads),
            "reload_ratio": statistics.median(reload_ratios),
        }
    finally:
        a.close()
        b.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.staleness", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, 20k rows")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    if args.peer:
        peer_main()
        return 0
    args.writes = 30 if args.quick else 200
    args.rows = 20_000 if args.quick else 100_000
    args.dims = 384
    args.repeat = 5 if args.quick else 9
    args.big_writes = 5 if args.quick else 20
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-staleness-") as tmp:
        base_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.multiprocess.settings",
            "MP_DATABASE": str(Path(tmp) / "db.sqlite3"),
            "MP_REDIS_URL": redis_url,
            "MP_CHANNEL": f"django_embeddings_bench_{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": str(REPO),
        }
        for mode in args.modes.split(","):
            env = {**base_env, "MP_STORE_DIR": str(Path(tmp) / f"store-{mode}")}
            migrate = Peer({**env, "DJANGO_EMBEDDINGS_INVALIDATION": "mtime", "MP_MIGRATE": "1"})
            migrate.close()
            results.append(run_mode(env, mode, args))
    print(report(results, args))
    return 0


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ms = 1000.0
    lines = [
        f"Staleness over {args.writes} writes: from A's save() starting (embedding and "
        "the SQL write included) or returning (0 when B already saw the row by then) to "
        "B's first search that returns it; B searches every millisecond. Then B's next "
        "search after one write in A at "
        f"{args.rows:,} rows x {args.dims} dims (median of {args.big_writes}), "
        "as a ratio to a warm search measured just before it. In pubsub mode B's "
        "listener thread applies the write before the search (an O(1) delta, not timed "
        "here); in mtime mode the search itself stats the journal and reads the new entry.",
        "",
        "| mode | save() start -> seen p50 / p99 | save() returned -> seen p50 / p99 "
        "| warm search | next search after a write | ratio | reload from the snapshot + search "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['mode']} | {result['error']} | | | | | | |")
            continue
        if result["staleness"]:
            start = " / ".join(
                f"{percentile(result['from_start'], q) * ms:.2f}" for q in (0.5, 0.99)
            )
            after = " / ".join(
                f"{percentile(result['staleness'], q) * ms:.2f}" for q in (0.5, 0.99)
            )
            start, after = f"{start} ms", f"{after} ms"
        else:
            start = after = "never (by design)"
        if result["never"] and result["staleness"]:
            after += f" ({result['never']} never seen)"
        next_cost = f"{result['next'] * ms:.2f} ms"
        if result["seen"] < args.big_writes:
            next_cost += f" (saw {result['seen']}/{args.big_writes} writes)"
        lines.append(
            f"| {result['mode']} | {start} | {after} | {result['warm'] * ms:.2f} ms | {next_cost} "
            f"| {result['next_ratio']:.2f}x | {result['reload'] * ms:.1f} ms "
            f"| {result['reload_ratio']:.1f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

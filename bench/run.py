"""The orchestrator: ``python -m bench [--quick]``.

Builds the corpora, starts a private redis-server (popoto's) and a private
PostgreSQL database, runs every scenario of :mod:`bench.worker` in its own
process, and prints one Markdown table of medians and ratios against the
targets, with the details below it. Results go to ``bench/results/`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PG_NAME = "django_embeddings_bench"


@dataclass
class Plan:
    """Sizes and repetitions of one mode."""

    sizes: list[int]  # corpora built for cold start and save overhead
    search_n: int
    queries: int
    filter_n: int
    peer_n: int
    peer_rounds: int
    memory_n: int
    save_sizes: list[int]
    saves: int
    popoto_save_n: int
    popoto_saves: int
    cold_sizes: list[int]  # our cold starts (each also needs a store in ``sizes``)
    popoto_sizes: list[int]  # popoto's cold starts, while within the budget
    popoto_budget: float  # seconds one popoto load may take before bigger N are skipped
    cold_runs: int
    backfill_n: int
    bandwidth_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = Plan(
    sizes=[1_000, 10_000, 50_000],
    search_n=50_000,
    queries=20,
    filter_n=50_000,
    peer_n=50_000,
    peer_rounds=10,
    memory_n=50_000,
    save_sizes=[1_000, 50_000],
    saves=40,
    popoto_save_n=10_000,
    popoto_saves=20,
    cold_sizes=[10_000, 50_000],
    popoto_sizes=[1_000, 10_000],
    popoto_budget=10.0,
    cold_runs=2,
    backfill_n=5_000,
    bandwidth_bytes=512 << 20,
)
FULL = Plan(
    sizes=[1_000, 10_000, 100_000, 1_000_000],
    search_n=1_000_000,
    queries=100,
    filter_n=100_000,
    peer_n=100_000,
    peer_rounds=30,
    memory_n=1_000_000,
    save_sizes=[1_000, 10_000, 100_000, 1_000_000],
    saves=200,
    popoto_save_n=50_000,
    popoto_saves=30,
    cold_sizes=[1_000, 10_000, 100_000, 1_000_000],
    popoto_sizes=[1_000, 10_000, 100_000, 1_000_000],
    popoto_budget=120.0,
    cold_runs=5,
    backfill_n=100_000,
    bandwidth_bytes=1 << 30,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, workdir: Path, plan: Plan, *, profile: bool, redis_url: str, reuse: bool = False
    ) -> None:
        self.workdir = workdir
        self.reuse = reuse
        self.plan = plan
        self.profile = profile
        self.redis_url = redis_url
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.profiles = RESULTS / "profiles"

    def env(self, *, n: int | None = None, db: str = "sqlite", **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            BENCH_DB=db,
            BENCH_PG_NAME=PG_NAME,
            BENCH_REDIS_URL=self.redis_url,
            REDIS_URL=self.redis_url,
            DJANGO_EMBEDDINGS_INVALIDATION=extra.pop("invalidation", "mtime"),
            PYTHONDONTWRITEBYTECODE="1",
        )
        if n is not None:
            env["DJANGO_EMBEDDINGS_DIR"] = str(self.workdir / f"store-{n}")
        if self.profile:
            env["BENCH_PROFILE_DIR"] = str(self.profiles)
        env.update(extra)
        return env

    def run(self, scenario: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        """Run one scenario to completion; returns its RESULT and the wall time."""
        log_path = self.logs / f"{scenario}-{args.get('n', '')}.log"
        started = time.perf_counter()
        with open(log_path, "ab") as stderr:
            completed = subprocess.run(
                [sys.executable, "-m", "bench.worker", scenario, json.dumps(args)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                check=False,
            )
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            raise RuntimeError(
                f"bench.worker {scenario} {args} failed ({completed.returncode}); "
                f"see {log_path}:\n{log_path.read_text()[-3000:]}"
            )
        result = _last_result(completed.stdout.decode())
        result["wall_seconds"] = wall
        return result

    @contextlib.contextmanager
    def live(self, scenario: str, args: dict[str, Any], env: dict[str, str]) -> Iterator[Worker]:
        worker = Worker(scenario, args, env, self.logs)
        try:
            worker.wait_ready()
            yield worker
        finally:
            worker.close()


class Worker:
    """A long-lived worker process driven line by line over stdin/stdout."""

    def __init__(
        self, scenario: str, args: dict[str, Any], env: dict[str, str], logs: Path
    ) -> None:
        self.log_path = logs / f"{scenario}-{args.get('n', '')}.log"
        self.stderr = open(self.log_path, "ab")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", scenario, json.dumps(args)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, tag: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                payload: dict[str, Any] = json.loads(line[len(tag) + 1 :])
                return payload
        raise RuntimeError(
            f"worker {self.process.args!r} ended without {tag}; see {self.log_path}:\n"
            f"{self.log_path.read_text()[-3000:]}"
        )

    def wait_ready(self) -> None:
        self.ready = self._read("READY")

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read("RESULT")

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.process.stdin is not None
                self.process.stdin.write("exit\n")
                self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


def _last_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"no RESULT in worker output: {stdout[-2000:]!r}")


# -- services --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of our own on a free port, keeping nothing on disk; stopped after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (popoto keeps its records in Redis).")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the private redis-server on port {port} did not start.")
            time.sleep(0.05)
        # Database 1: popoto refuses to flush database 0, and nothing else uses this server.
        yield f"redis://127.0.0.1:{port}/1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_database(keep: bool, name: str = PG_NAME) -> Iterator[bool]:
    """A PostgreSQL database of our own on the local server (dropped after unless kept)."""
    try:
        import psycopg
    except ImportError:
        log("psycopg is missing: the PostgreSQL rows are skipped")
        yield False
        return
    params: dict[str, Any] = {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
        "dbname": "postgres",
        "autocommit": True,
    }
    try:
        with psycopg.connect(**params, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        log(f"PostgreSQL is not reachable ({exc}): the PostgreSQL rows are skipped")
        yield False
        return
    try:
        yield True
    finally:
        if not keep:
            with psycopg.connect(**params) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def evict(directory: Path) -> None:
    """Drop ``directory``'s files from the page cache (their clean pages only; no root knob)."""
    for path in directory.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def du(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_blocks * 512
    return total


# -- the scenarios --------------------------------------------------------------------------


def run_all(bench: Bench, only: set[str] | None, keep: bool) -> dict[str, Any]:
    plan = bench.plan
    results: dict[str, Any] = {"plan": plan.__dict__}

    def wanted(name: str) -> bool:
        return only is None or name in only

    log("measuring memory bandwidth")
    results["machine"] = machine.describe()
    results["bandwidth_gbs"] = machine.bandwidth(plan.bandwidth_bytes)
    log(f"bandwidth: {results['bandwidth_gbs']}")

    store_sizes = sorted(
        {
            *plan.sizes,
            *(plan.save_sizes if wanted("save") else []),
            *([plan.search_n] if wanted("search") else []),
            *([plan.memory_n] if wanted("memory") else []),
            *([plan.filter_n] if wanted("filter") else []),
            *([plan.peer_n] if wanted("peer") else []),
        }
    )
    results["build"] = {}
    for n in store_sizes:
        log(f"building our store of {n:,} rows (Store.put_many + Store.compact)")
        results["build"][n] = bench.run(
            "build_store", {"n": n, "reuse": bench.reuse}, bench.env(n=n)
        )
        results["build"][n]["disk_bytes"] = du(bench.workdir / f"store-{n}")

    if wanted("search"):
        n = plan.search_n
        log(f"warm search at {n:,} rows: ours, numpy, FAISS")
        results["search"] = bench.run("search", {"n": n, "queries": plan.queries}, bench.env(n=n))

    if wanted("cold"):
        results["cold"] = cold_starts(bench)

    if wanted("memory"):
        results["memory"] = memory(bench)

    with private_database(keep) as postgres:
        if (wanted("filter") or wanted("peer")) and postgres:
            n = max(plan.filter_n, plan.peer_n)
            log(f"{n:,} rows in PostgreSQL")
            bench.run("build_rows", {"n": n}, bench.env(n=n, db="postgres"))
        if wanted("filter") and postgres:
            n = plan.filter_n
            log(f"filtered searches at {n:,} rows (PostgreSQL)")
            results["filter"] = bench.run(
                "filtered", {"n": n, "queries": plan.queries}, bench.env(n=n, db="postgres")
            )
        if wanted("peer") and postgres:
            results["peer"] = peer(bench)
        if wanted("save"):
            results["save"] = saves(bench)
        if wanted("backfill"):
            results["backfill"] = {}
            for db in ("sqlite", "postgres") if postgres else ("sqlite",):
                log(f"backfill of {plan.backfill_n:,} rows with the built-in model ({db})")
                store_dir = bench.workdir / f"backfill-{db}"  # a new store each time
                shutil.rmtree(store_dir, ignore_errors=True)
                results["backfill"][db] = bench.run(
                    "backfill",
                    {"n": plan.backfill_n, "profile": bench.profile},
                    bench.env(
                        db=db,
                        BENCH_SQLITE_PATH=str(bench.workdir / "backfill.sqlite3"),
                        DJANGO_EMBEDDINGS_DIR=str(store_dir),
                    ),
                )
    return results


def cold_starts(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    out: dict[str, Any] = {"ours": {}, "popoto": {}}
    for n in plan.cold_sizes:
        log(f"cold starts at {n:,} rows (page cache warm, then evicted)")
        store = bench.workdir / f"store-{n}"
        runs: dict[str, list[dict[str, Any]]] = {"warm": [], "evicted": []}
        for i in range(plan.cold_runs):
            for kind in ("warm", "evicted"):
                if kind == "evicted":
                    evict(store)
                runs[kind].append(
                    bench.run(
                        "cold",
                        {"n": n, "profile": bench.profile and i == 0 and kind == "warm"},
                        bench.env(n=n),
                    )
                )
        out["ours"][n] = {kind: summarize(items) for kind, items in runs.items()}
    for n in plan.popoto_sizes:
        content = bench.workdir / f"popoto-{n}"
        env = bench.env(POPOTO_CONTENT_PATH=str(content), POPOTO_EMBEDDING_INVALIDATION="pubsub")
        log(f"popoto: writing {n:,} .npy files in its format")
        build = bench.run("popoto_build", {"n": n}, env)
        runs_popoto = []
        for _ in range(max(1, plan.cold_runs // 2)):
            runs_popoto.append(bench.run("popoto_cold", {"n": n}, env))
            log(f"popoto load_embeddings at {n:,}: {runs_popoto[-1]['load_seconds']:.2f} s")
            if runs_popoto[-1]["load_seconds"] > plan.popoto_budget / 3:
                break
        out["popoto"][n] = {"warm": summarize(runs_popoto), "build_seconds": build["seconds"]}
        if n != plan.popoto_save_n:  # that one serves the save scenario next
            shutil.rmtree(content, ignore_errors=True)
        if runs_popoto[-1]["load_seconds"] * 10 > plan.popoto_budget:
            log(f"popoto: stopping at {n:,} rows (the next size would exceed the budget)")
            break
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key, value in runs[0].items() if isinstance(value, int | float)]
    summary: dict[str, Any] = {
        key: statistics.median(run[key] for run in runs) for key in keys if key != "n"
    }
    summary["runs"] = len(runs)
    profiles = [run["profile"] for run in runs if run.get("profile")]
    if profiles:
        summary["profile"] = profiles[0]
    return summary


def memory(bench: Bench) -> dict[str, Any]:
    n = bench.plan.memory_n
    log(f"memory of 4 workers searching {n:,} rows, and of 4 bare Django processes")
    out: dict[str, Any] = {"n": n, "matrix_bytes": n * 384 * 4}
    # One group at a time: shared library pages are then split among 4 processes, as in
    # a deployment of 4 workers, not among 8.
    for role in ("memory_bare", "memory_worker"):
        workers = [Worker(role, {"n": n}, bench.env(n=n), bench.logs) for _ in range(4)]
        try:
            for worker in workers:
                worker.wait_ready()
            time.sleep(0.5)
            readings = [machine.memory_of(worker.pid) for worker in workers]
        finally:
            for worker in workers:
                worker.close()
        out[role] = {
            "Rss": sum(r.get("Rss", 0) for r in readings),
            "Pss": sum(r.get("Pss", 0) for r in readings),
            "Pss_Anon": sum(r.get("Pss_Anon", 0) for r in readings),
            "Pss_File": sum(r.get("Pss_File", 0) for r in readings),
            "Shared_Clean": sum(r.get("Shared_Clean", 0) for r in readings),
            "per_process": readings,
        }
    return out


def peer(bench: Bench) -> dict[str, Any]:
    n, rounds = bench.plan.peer_n, bench.plan.peer_rounds
    log(f"a peer's write, then a search in another process ({n:,} rows, PostgreSQL, mtime)")
    env = bench.env(n=n, db="postgres")
    out: dict[str, Any] = {"n": n, "rounds": rounds, "invalidation": "mtime"}
    with (
        bench.live("peer_searcher", {"n": n}, env) as searcher,
        bench.live("peer_writer", {"n": n}, env) as writer,
    ):
        for kind in ("orm", "index"):
            after, warm, writes, caught = [], [], [], 0
            for _ in range(rounds):
                writes.append(writer.ask("write")["seconds"])
                first = searcher.ask(kind)
                after.append(first["seconds"])
                caught += bool(first["caught_up"])
                warm.append(searcher.ask(kind)["seconds"])
            out[kind] = {
                "after_write_ms": statistics.median(after) * 1000,
                "warm_ms": statistics.median(warm) * 1000,
                "writer_save_ms": statistics.median(writes) * 1000,
                "caught_up": caught,
            }
    return out


def saves(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    out: dict[str, Any] = {"ours": {}, "popoto": {}}
    for n in plan.save_sizes:
        log(f"saves into a store of {n:,} rows (Model.save, SQLite in memory, minus provider)")
        out["ours"][n] = bench.run(
            "save",
            {"n": n, "saves": plan.saves, "profile": bench.profile},
            bench.env(n=n, BENCH_SQLITE_PATH=":memory:"),
        )
    n = plan.popoto_save_n
    content = bench.workdir / f"popoto-{n}"  # left by the cold starts, when they ran
    env = bench.env(POPOTO_CONTENT_PATH=str(content))
    log(f"popoto saves into a corpus of {n:,} rows")
    if not content.is_dir():
        bench.run("popoto_build", {"n": n}, env)
    out["popoto"][n] = bench.run("popoto_save", {"n": n, "saves": plan.popoto_saves}, env)
    shutil.rmtree(content, ignore_errors=True)
    if n not in out["ours"]:
        log(f"saves into a store of {n:,} rows, for the popoto ratio")
        if not (bench.workdir / f"store-{n}").exists():
            bench.run("build_store", {"n": n}, bench.env(n=n))
        out["ours"][n] = bench.run(
            "save", {"n": n, "saves": plan.saves}, bench.env(n=n, BENCH_SQLITE_PATH=":memory:")
        )
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small corpora, under 2 minutes")
    parser.add_argument("--workdir", type=Path, help="where corpora go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and the database")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse corpora of a kept --workdir when they match"
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        help="pyinstrument runs after the timings (default: on in full mode, off in quick)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated scenarios: search,cold,memory,filter,peer,save,backfill",
    )
    options = parser.parse_args(argv)
    missing = [name for name in ("faiss", "popoto", "threadpoolctl") if not _importable(name)]
    if missing:
        parser.error(
            f"missing {', '.join(missing)}: install the bench extra "
            "(pip install -e '.[bench,test]', or `make bench`)."
        )
    plan = QUICK if options.quick else FULL
    only = set(options.only.split(",")) if options.only else None
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="django-embeddings-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    mode = "quick" if options.quick else "full"
    if only:
        mode += "-only-" + "-".join(sorted(only))  # a partial run never becomes latest-<mode>
    started = time.perf_counter()
    try:
        with private_redis(workdir) as redis_url:
            bench = Bench(
                workdir,
                plan,
                profile=not options.quick if options.profile is None else options.profile,
                redis_url=redis_url,
                reuse=options.reuse,
            )
            results = run_all(bench, only, options.keep)
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["mode"] = mode
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = time.perf_counter() - started
    from bench.report import markdown

    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}-{mode}.json").write_text(json.dumps(results, indent=2, default=str))
    text = markdown(results)
    (RESULTS / f"{stamp}-{mode}.md").write_text(text)
    (RESULTS / f"latest-{mode}.md").write_text(text)
    print(text)
    log(f"done in {results['seconds']:.0f} s; results in {RESULTS}")
    return 0

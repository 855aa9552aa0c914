"""The parent side of the multi-process scenarios, shared by the tests and the bench.

A dedicated database (``test_django_embeddings_rel_<pid>``, on MariaDB under
``DJANGO_EMBEDDINGS_TEST_DB=mariadb``, else on PostgreSQL) is created for a run and
dropped after it; child processes (:mod:`tests.reliability.worker`) run
their own Django setup against it and one store directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.databases import MARIADB_CHARSET, mariadb_connect, mariadb_problem, vendor

REPO = Path(__file__).resolve().parents[2]
PG = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
    "user": os.environ.get("PGUSER", "postgres"),
    "password": os.environ.get("PGPASSWORD", ""),
}
TABLES = (
    "testapp_article",
    "testapp_slugdoc",
    "django_embeddings_change",  # the "database" store's tables
    "django_embeddings_head",
)


class ChildFailed(AssertionError):
    pass


def rel_vendor() -> str:
    """MariaDB under DJANGO_EMBEDDINGS_TEST_DB=mariadb, else PostgreSQL (SQLite has one writer)."""
    return "mariadb" if vendor() == "mariadb" else "postgres"


def _connect(dbname: str) -> Any:
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=3, **PG)


def database_problem() -> str | None:
    """Why the server of the multi-process scenarios cannot be used, or ``None`` when it can."""
    if rel_vendor() == "mariadb":
        return mariadb_problem()
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with _connect("postgres"):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {PG['host']}:{PG['port']}: {exc}"


class Database:
    """A throwaway PostgreSQL or MariaDB database with the test apps' tables."""

    def __init__(self) -> None:
        self.vendor = rel_vendor()
        self.name = f"test_django_embeddings_rel_{os.getpid()}"

    def _execute(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        if self.vendor == "mariadb":
            connection = mariadb_connect(database)
            try:
                cursor = connection.cursor()
                cursor.execute(sql)
                return list(cursor.fetchall() or ())
            finally:
                connection.close()
        with _connect(database or "postgres") as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def create(self, scratch: Path) -> Database:
        self.drop()
        if self.vendor == "mariadb":
            self._execute(f"CREATE DATABASE `{self.name}` {MARIADB_CHARSET}")
        else:
            self._execute(f'CREATE DATABASE "{self.name}"')
        run_child(["migrate"], child_env(self, scratch), timeout=120)
        return self

    def drop(self) -> None:
        if self.vendor == "mariadb":
            self._execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        else:
            self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def truncate(self) -> None:
        if self.vendor == "mariadb":
            for table in TABLES:  # TRUNCATE also restarts AUTO_INCREMENT
                self._execute(f"TRUNCATE {table}", self.name)
        else:
            self._execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY", self.name)

    def rows(self) -> dict[int, tuple[str, str | None]]:
        rows = self._execute("SELECT id, body, embedding FROM testapp_article", self.name)
        return {pk: (body, column) for pk, body, column in rows}


def child_env(db: Database, store_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_EMBEDDINGS_", "PYTEST_", "COV_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="tests.reliability.settings",
        DJANGO_EMBEDDINGS_REL_DB=db.name,
        DJANGO_EMBEDDINGS_REL_VENDOR=db.vendor,
        DJANGO_EMBEDDINGS_REL_DIR=str(store_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def run_child(args: list[str], env: dict[str, str], *, timeout: float) -> str:
    """Run one worker command to the end; its stdout, or a failure with its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.reliability.worker", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ChildFailed(f"worker {args!r} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


class Server:
    """A ``worker serve`` child (or ``module``'s): Django set up once, commands over a pipe."""

    def __init__(
        self, env: dict[str, str], stderr_path: Path, module: str = "tests.reliability.worker"
    ) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "serve"],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def call(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise ChildFailed(f"serve died during {cmd!r}:\n{self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise ChildFailed(f"serve failed {cmd!r}: {answer.get('error')}")
        return answer

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ChildFailed, OSError, ValueError):
                    self.call("quit")
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a scenario did and found; the bench prints these, the tests assert them."""

    name: str
    faults: int = 0
    operations: int = 0
    rows_checked: int = 0
    lost: int = 0
    stale: int = 0
    details: dict[str, Any] = field(default_factory=dict)


BAD = (
    "missing",
    "stale",
    "phantom",
    "column",
    "served",
    "corrupt",
    "orphan_files",
    "temp_files",
    "gc_entries",
    "gc_files",
    "gc_command",
    "search_errors",
    "problems",
)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The non-empty problem lists of an audit report."""
    return {key: report[key] for key in BAD if report.get(key)}


def run_concurrency(
    db: Database,
    store_dir: Path,
    scratch: Path,
    *,
    workers: int = 8,
    ops: int = 250,
    shared: int = 12,
    seed: int = 0,
    extra_env: dict[str, str] | None = None,
) -> Outcome:
    """``workers`` processes writing at once; then the store must equal the database."""
    barrier = scratch / "barrier"
    barrier.mkdir(parents=True, exist_ok=True)
    env = child_env(db, store_dir, **(extra_env or {}))
    logs = []
    processes = []
    for worker in range(workers):
        log = open(scratch / f"worker-{worker}.err", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        args = [
            "mix",
            f"--worker={worker}",
            f"--workers={workers}",
            f"--ops={ops}",
            f"--shared={shared}",
            f"--seed={seed}",
            f"--barrier={barrier}",
        ]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.worker", *args],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        )
    (barrier / "go").touch()
    summaries = []
    failures = []
    try:
        for worker, process in enumerate(processes):
            out, _ = process.communicate(timeout=600)
            if process.returncode != 0:
                failures.append(
                    f"worker {worker} exited {process.returncode}: "
                    f"{(scratch / f'worker-{worker}.err').read_text()[-3000:]}"
                )
            else:
                summaries.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    if failures:
        raise ChildFailed("\n".join(failures))
    server = Server(env, scratch / "serve.err")
    try:
        report = server.call("audit", searches=60)["report"]
    finally:
        server.close()
    counts: Counter[str] = Counter()
    for summary in summaries:
        counts.update(summary["counts"])
    outcome = Outcome(
        f"{workers} concurrent writers (contention)",
        operations=sum(counts.values()),
        rows_checked=report["rows"],
    )
    outcome.lost = len(report["missing"]) + len(report["phantom"])
    outcome.stale = len(report["stale"]) + len(report["corrupt"]) + len(report["served"])
    outcome.details = {
        "counts": dict(counts),
        "errors": [e for s in summaries for e in s["errors"]],
        "cache": {s["worker"]: s["cache"] for s in summaries if s["cache"]},
        "audit": summarize(report),
        "entries": report["entries"],
    }
    return outcome


def seed_for_run() -> int:
    """A seed from DJANGO_EMBEDDINGS_RELIABILITY_SEED, else a fixed one: runs are reproducible."""
    return int(os.environ.get("DJANGO_EMBEDDINGS_RELIABILITY_SEED", "20240611"))


def _last_in_flight(ledger: Path) -> list[int]:
    """Row pks of the transaction the writer had started but not finished."""
    plan: list[list[Any]] = []
    finished = True
    if not ledger.exists():
        return []
    for line in ledger.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the kill cut this line
        if "txn" in record:
            plan, finished = record["plan"], False
        elif "done" in record:
            finished = True
    return [] if finished else [pk for op, pk in plan if op != "compact"]


def run_crashes(
    db: Database,
    store_dir: Path,
    scratch: Path,
    *,
    kills: int,
    seed: int,
    points: tuple[str, ...] | None = None,
    seed_rows: int = 40,
) -> Outcome:
    """Kill a writer ``kills`` times with SIGKILL; audit and repair after each kill.

    Even kills come from the test at a seeded random delay; odd ones are the
    writer's own SIGKILL at a named point of the write path (cycling through them).
    """
    from tests.reliability.worker import KILL_POINTS

    points = points or KILL_POINTS
    rng = random.Random(seed)
    env = child_env(db, store_dir, DJANGO_EMBEDDINGS_REL_COMPACT_THRESHOLD="8")
    server = Server(env, scratch / "serve.err")
    outcome = Outcome("crash (SIGKILL)")
    where: Counter[str] = Counter()
    violations: list[str] = []
    repairs: Counter[str] = Counter()
    window: Counter[str] = Counter()  # disagreements of in-flight rows, repaired after
    bad: Counter[str] = Counter()
    try:
        server.call("seed_rows", count=seed_rows, seed=seed)
        for kill in range(kills):
            ledger = scratch / f"ledger-{kill}"
            point = None if kill % 2 == 0 else points[(kill // 2) % len(points)]
            hit = rng.randint(1, 4)
            pid = server.call(
                "fork_writer", seed=seed + kill, ledger=str(ledger), point=point, hit=hit
            )["pid"]
            if point is None:
                time.sleep(rng.uniform(0.05, 0.5))
                os.kill(pid, signal.SIGKILL)
            else:
                _wait_exit(pid, timeout=60)
            status = server.call("reap", pid=pid)
            if status["signal"] != signal.SIGKILL:
                raise ChildFailed(
                    f"kill {kill} ({point or 'external'}): the writer ended with {status}, "
                    f"not SIGKILL:\n{server.stderr()}"
                )
            where[point or "random instant"] += 1
            outcome.faults += 1
            outcome.operations += sum(
                1 for line in ledger.read_text().splitlines() if '"txn"' in line
            )
            report = server.call("audit")["report"]
            outcome.rows_checked += report["rows"]
            in_flight = {str(pk) for pk in _last_in_flight(ledger)}
            label = f"kill {kill} ({point or 'random instant'}, seed {seed + kill})"
            # Only rows of the interrupted transaction may be pending (or orphaned); no
            # column may name another text, no pending row be served, nothing be corrupt.
            for category in ("missing", "stale", "phantom"):
                inside = set(report[category]) & in_flight
                window[category] += len(inside)
                outside = set(report[category]) - in_flight
                if outside:
                    bad["lost" if category in ("missing", "phantom") else "stale"] += len(outside)
                    violations.append(
                        f"{label}: {category} {sorted(outside)} outside the in-flight rows"
                    )
            for category in ("column", "served", "corrupt", "problems", "search_errors"):
                if report[category]:
                    bad["stale"] += len(report[category])
                    violations.append(f"{label}: {category} {report[category]}")
            repaired = server.call("repair")["repair"]
            repairs.update({k: v for k, v in repaired.items() if isinstance(v, int)})
            after = server.call("audit", searches=10)["report"]
            if summarize(after):
                bad["lost"] += len(after["missing"]) + len(after["phantom"])
                bad["stale"] += len(after["stale"]) + len(after["corrupt"]) + len(after["served"])
                violations.append(f"{label}: after repair {summarize(after)}")
    finally:
        server.close()
    outcome.lost, outcome.stale = bad["lost"], bad["stale"]
    outcome.details = {
        "where": dict(where),
        "violations": violations,
        "repairs": dict(repairs),
        "window": dict(window),
    }
    return outcome


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][0]
    except FileNotFoundError:
        return "X"


def _wait_exit(pid: int, *, timeout: float) -> None:
    """Wait for a grandchild to die (the serve child reaps it): poll its /proc entry."""
    _wait_state(pid, "ZX", timeout=timeout)


def _wait_state(pid: int, states: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(pid)
        if state in states:
            return
        if state in "ZX":
            raise ChildFailed(f"process {pid} ended before reaching its pause point")
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    raise ChildFailed(f"process {pid} did not reach state {states!r} in {timeout} s")


def wait_stopped(pid: int, *, timeout: float = 30) -> None:
    """Wait until a forked writer stopped itself at its pause point (state T)."""
    _wait_state(pid, "T", timeout=timeout)


def resume(server: Server, pid: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGCONT)
    return server.call("reap", pid=pid)


def run_same_key_race(path: Path, *, workers: int = 6, rounds: int = 60) -> Outcome:
    """``workers`` processes store one key at the same instant, round after round.

    After each round the key's stored vector must be the vector of the text its
    newest journal entry names (and exist exactly when the key is live).
    """
    import multiprocessing

    import numpy as np

    from django_embeddings.store import Store
    from tests.reliability import storeprocs
    from tests.reliability.worker import live_entries

    context = multiprocessing.get_context("spawn")
    start, end = context.Barrier(workers + 1), context.Barrier(workers + 1)
    processes = [
        context.Process(
            target=storeprocs.same_key_writer, args=(str(path), worker, rounds, start, end)
        )
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    tags = {
        storeprocs.hash_of(f"{w}-{r}"): f"{w}-{r}" for w in range(workers) for r in range(rounds)
    }
    store = Store(path, label="race.Model.field")
    outcome = Outcome("one key, 6 writers at once (contention)", faults=0)
    problems: list[str] = []
    try:
        for round_ in range(rounds):
            start.wait(timeout=60)
            end.wait(timeout=60)
            outcome.operations += workers
            outcome.rows_checked += 1
            live, journal_problems = live_entries(store)
            problems += journal_problems
            vector = store.load_vector(storeprocs.KEY)
            entry = live.get(storeprocs.KEY)
            if entry is None:
                if vector is not None:
                    problems.append(f"round {round_}: a vector with no entry")
                    outcome.stale += 1
            elif vector is None:
                problems.append(f"round {round_}: an entry with no vector")
                outcome.lost += 1
            elif not np.array_equal(vector, storeprocs.vector_of(tags[entry[0]])):
                problems.append(f"round {round_}: the entry reads another writer's vector")
                outcome.stale += 1
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
    outcome.details = {
        "problems": problems,
        "exit_codes": [process.exitcode for process in processes],
    }
    return outcome


def replay_store_ledger(ledger: Path) -> tuple[dict[str, str | None], set[str]]:
    """key -> tag of its last acknowledged put (None: deleted), and the keys in doubt.

    A key is in doubt from a killed call that touched it until a later call that
    finished: the kill may have come before or after the call's journal append.
    """
    acked: dict[str, str | None] = {}
    doubt: set[str] = set()
    pending: dict[str, Any] = {}
    for line in ledger.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the kill cut this line
        if "done" in record:
            changed = pending.get("put") or dict.fromkeys(pending.get("del", []))
            acked.update(changed)
            doubt -= set(changed)
            pending = {}
        else:
            doubt |= set(pending.get("put", {})) | set(pending.get("del", []))
            pending = record
    return acked, doubt | set(pending.get("put", {})) | set(pending.get("del", []))


def _tags_by_hash(ledger: Path) -> dict[str, str]:
    """content hash -> tag of every put the ledger records (killed calls included)."""
    from tests.reliability import storeprocs

    tags: dict[str, str] = {}
    for line in ledger.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the kill cut this line
        for tag in record.get("put", {}).values():
            tags[storeprocs.hash_of(tag)] = tag
    return tags


def run_store_crashes(
    path: Path, ledger: Path, *, kills: int, seed: int, background: bool = False
) -> Outcome:
    """A store writer (puts, deletes, compactions; ``background``: merges in a thread too)
    SIGKILLed ``kills`` times at random."""
    import multiprocessing

    import numpy as np

    from django_embeddings import cache
    from django_embeddings.store import Store
    from tests.reliability import storeprocs
    from tests.reliability.worker import live_entries

    rng = random.Random(seed)
    context = multiprocessing.get_context("spawn")
    outcome = Outcome("crash (SIGKILL), store only")
    problems: list[str] = []
    for kill in range(kills):
        process = context.Process(
            target=storeprocs.crash_store_writer,
            args=(str(path), str(ledger), rng.randrange(10**6), background),
        )
        process.start()
        before = ledger.stat().st_size if ledger.exists() else 0
        deadline = time.monotonic() + 60
        while not (ledger.exists() and ledger.stat().st_size > before + 200):
            if time.monotonic() > deadline or not process.is_alive():
                process.kill()
                process.join()
                raise ChildFailed("the store writer made no progress")
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.4))
        process.kill()
        process.join()
        outcome.faults += 1
        store = Store(path, label="crash.Model.field")
        live, journal_problems = live_entries(store)
        problems += [f"kill {kill}: {p}" for p in journal_problems]
        acked, doubt = replay_store_ledger(ledger)
        tag_of = _tags_by_hash(ledger)
        outcome.operations = sum(1 for line in ledger.read_text().splitlines() if "done" in line)
        outcome.rows_checked += len(acked)
        for key, tag in acked.items():
            if key in doubt:
                continue
            entry = live.get(key)
            if tag is None and entry is not None:
                problems.append(f"kill {kill}: {key} deleted, still indexed")
                outcome.stale += 1
            elif tag is not None and (entry is None or entry[0] != storeprocs.hash_of(tag)):
                problems.append(f"kill {kill}: {key} lost its acknowledged vector")
                outcome.lost += 1
        for key, (content_hash, _) in live.items():
            vector = store.load_vector(key)
            # Even a key in doubt has the vector its entry names, never another.
            tag = tag_of.get(content_hash)
            if vector is None:
                problems.append(f"kill {kill}: {key} indexed with no vector")
                outcome.lost += 1
            elif tag is None or not np.array_equal(vector, storeprocs.vector_of(tag)):
                problems.append(f"kill {kill}: {key} holds another vector than its entry's")
                outcome.stale += 1
        # A fresh index loads and searches the whole store.
        index = cache.FieldIndex(store, store.read_state())
        if len(index) != len(live):
            problems.append(f"kill {kill}: a fresh load has {len(index)} rows, not {len(live)}")
        if len(index):
            index.search(storeprocs.vector_of("probe"), 5, identity="id")
        store.sweep_tempfiles(max_age=0)
        garbage = store.collect_garbage(lambda keys: set(keys), min_age=0)
        if garbage.entries:
            problems.append(f"kill {kill}: gc wanted to drop live entries {garbage.entries}")
        leftovers = store.temp_files()
        if leftovers:
            problems.append(f"kill {kill}: sweep left {leftovers}")
    outcome.details = {"problems": problems}
    return outcome


@contextlib.contextmanager
def redis_admin(url: str) -> Iterator[Any]:
    """A connection of our own, to break the server with."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        yield client
    finally:
        client.close()


def wait_until(predicate: Any, timeout: float) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def healthy(peer: Server) -> bool:
    """Whether the invalidation listener of ``peer`` is subscribed."""
    return bool(peer.call("listener")["healthy"])


REDIS_FAULTS = ("debug sleep", "client pause", "kill and restart", "subscribe denied")


def run_redis_faults(
    db: Database,
    store_dir: Path,
    scratch: Path,
    redis_server: Any,
    *,
    cycles: int = 1,
    bound: float = 15.0,
) -> Outcome:
    """Writer A and reader B in pubsub mode on ``redis_server`` (a tests.conftest.RedisServer).

    Each cycle injects every fault of :data:`REDIS_FAULTS` while A writes; B must find
    each write as its best hit within ``bound`` seconds (a stale result otherwise).
    """
    env = child_env(
        db,
        store_dir,
        DJANGO_EMBEDDINGS_INVALIDATION="pubsub",
        DJANGO_EMBEDDINGS_REL_REDIS=redis_server.url,
    )
    a, b = Server(env, scratch / "a.err"), Server(env, scratch / "b.err")
    outcome = Outcome("redis faults (pub/sub)")
    problems: list[str] = []
    written = 0

    def write(text: str) -> None:
        nonlocal written
        written += 1
        pk = a.call("create", body=f"{text} n{written}")["pk"]
        outcome.operations += 1
        outcome.rows_checked += 1
        if not wait_until(lambda: b.call("top", text=f"{text} n{written}")["pk"] == pk, bound):
            outcome.stale += 1
            problems.append(f"B did not see {text!r} within {bound} s")

    def settle() -> None:
        if not wait_until(lambda: healthy(a) and healthy(b), bound):
            problems.append("a listener did not become healthy again")

    try:
        settle()
        write("before any fault about csv")
        for _ in range(cycles):
            with redis_admin(redis_server.url) as conn:
                blocker = threading.Thread(target=lambda: conn.execute_command("DEBUG", "SLEEP", 4))
                blocker.start()
                time.sleep(0.2)
                write("while redis sleeps about json")
                blocker.join(30)
            outcome.faults += 1
            settle()
            write("after the sleep about yaml")
            with redis_admin(redis_server.url) as conn:
                conn.execute_command("CLIENT", "PAUSE", "4000", "ALL")
            write("while clients are paused about toml")
            outcome.faults += 1
            settle()
            redis_server.stop()
            if not wait_until(lambda: not healthy(b), bound):
                problems.append("B's listener did not notice Redis was gone")
            write("while redis is down about ini")
            redis_server.start()
            outcome.faults += 1
            settle()
            write("after the restart about markdown")
            with redis_admin(redis_server.url) as conn:
                conn.execute_command("ACL", "SETUSER", "default", "-subscribe")
                conn.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                try:
                    if not wait_until(lambda: not healthy(b), bound):
                        problems.append("B's listener did not notice it was refused")
                    write("while subscribing is denied about xml")
                finally:
                    conn.execute_command("ACL", "SETUSER", "default", "+subscribe")
            outcome.faults += 1
            settle()
            write("after subscribing is allowed about json")
        for name, peer in (("A", a), ("B", b)):
            state = peer.call("listener")
            if state["threads"] != 1:
                problems.append(f"{name} has {state['threads']} listener threads")
        logs = {"A": a.stderr(), "B": b.stderr()}
    finally:
        a.close()
        b.close()
    outcome.details = {"problems": problems, "logs": logs}
    return outcome


def run_disk_faults(db: Database, scratch: Path, *, saves: int = 20) -> Outcome:
    """Saves into a read-only, then a full store directory; then space returns and a repair.

    A failed save must report an error naming the field (logged and sent as
    ``embedding_failed``) and leave its row pending, never served; after
    ``embeddings_backfill --missing`` the store must equal the database again.
    """
    from tests.reliability.disks import Tmpfs

    disk = Tmpfs(scratch / "disk", size_kb=1024).mount()
    outcome = Outcome("disk read-only / full")
    problems: list[str] = []
    server = Server(child_env(db, disk.path / "embeddings"), scratch / "disk.err")
    try:
        for n in range(5):
            server.call("try_create", body=f"row {n} before the fault about csv")
        for fault in ("readonly", "full"):
            if fault == "readonly":
                disk.readonly()
            else:
                disk.fill()
            for n in range(saves):
                error = server.call("try_create", body=f"row {n} while {fault} about json")["error"]
                outcome.operations += 1
                if error is not None:
                    outcome.faults += 1
                    if "testapp.Article.embedding" not in error:
                        problems.append(f"an error that does not name the field: {error}")
            if fault == "readonly":
                disk.writable()
            else:
                disk.free()
        report = server.call("audit")["report"]
        if report["column"] or report["served"] or report["corrupt"] or report["search_errors"]:
            problems.append(f"before the repair: {summarize(report)}")
        server.call("repair")
        after = server.call("audit")["report"]
        outcome.rows_checked = after["rows"]
        outcome.lost = len(after["missing"]) + len(after["phantom"])
        outcome.stale = len(after["stale"]) + len(after["corrupt"]) + len(after["served"])
        if summarize(after):
            problems.append(f"after the repair: {summarize(after)}")
    finally:
        server.close()
        disk.unmount()
    outcome.details = {"problems": problems}
    return outcome

"""Two machines: one database, one Redis, and no shared disk.

``DJANGO_EMBEDDINGS_STORE = "database"``: processes of machine A and machine B
have their own ``DJANGO_EMBEDDINGS_DIR`` (each a local copy of the tables).
Eight writers, four on each machine, create, update and delete rows at once
(their own and rows every writer shares) while one of them is SIGKILLed; then
every reader on either side must serve exactly the database's rows: its index,
its machine's copy and the changes table name each live row with its text's
hash, no deleted row, and a row's own text finds it first. Then Redis stops,
more writes come, and the readers converge by checking versions alone.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.reliability.harness import (
    REPO,
    ChildFailed,
    Database,
    Server,
    child_env,
    seed_for_run,
    wait_until,
)

pytestmark = pytest.mark.slow

MODULE = "tests.reliability.machines"
# Every reader serves the database's rows within this long after the writers are done:
# the listener's sweep (5 s) or a version check, with slack for a loaded two-core machine.
BOUND = 60.0
# Low, so the table is trimmed (and lagging copies rebuilt) during the run.
COMPACT_THRESHOLD = "40"
READERS = (("a", "pubsub"), ("a", "mtime"), ("b", "pubsub"), ("b", "mtime"))
VIEWS = ("index", "local", "table")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


class Machines:
    """Processes of two machines: a store directory each, the same database and Redis."""

    def __init__(self, db: Database, scratch: Path, redis_url: str) -> None:
        self.db, self.scratch, self.redis_url = db, scratch, redis_url
        self.dirs = {name: scratch / f"machine-{name}" for name in ("a", "b")}
        self.readers: dict[str, Server] = {}
        self.ledgers: list[Path] = []

    def env(self, machine: str, mode: str = "pubsub") -> dict[str, str]:
        return child_env(
            self.db,
            self.dirs[machine],
            DJANGO_EMBEDDINGS_REL_STORE="database",
            DJANGO_EMBEDDINGS_INVALIDATION=mode,
            DJANGO_EMBEDDINGS_REL_REDIS=self.redis_url,
            DJANGO_EMBEDDINGS_REL_COMPACT_THRESHOLD=COMPACT_THRESHOLD,
        )

    def start_readers(self) -> None:
        for machine, mode in READERS:
            name = f"{machine}-{mode}"
            self.readers[name] = Server(
                self.env(machine, mode), self.scratch / f"{name}.err", module=MODULE
            )

    def start_writers(
        self, workers: range, *, ops: int, seed: int
    ) -> dict[int, subprocess.Popen[str]]:
        """Writers ``workers`` (even: machine A, odd: machine B), released together."""
        barrier = self.scratch / f"go-{workers.start}"
        processes = {}
        for worker in workers:
            ledger = self.scratch / f"ledger-{worker}"
            self.ledgers.append(ledger)
            args = [f"--worker={worker}", f"--ops={ops}", f"--seed={seed}"]
            args += [f"--ledger={ledger}", f"--barrier={barrier}"]
            with open(self.scratch / f"writer-{worker}.err", "wb") as log:
                processes[worker] = subprocess.Popen(
                    [sys.executable, "-m", MODULE, "write", *args],
                    env=self.env("ab"[worker % 2]),
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
        barrier.touch()
        return processes

    def texts(self) -> list[str]:
        """Every text any writer wrote (or was about to write when it was killed)."""
        return [record["text"] for record in self._records() if "text" in record]

    def _records(self, ledgers: list[Path] | None = None) -> Iterator[dict[str, Any]]:
        for ledger in ledgers or self.ledgers:
            for line in ledger.read_text().splitlines():
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # the kill cut this line

    def in_flight(self, worker: int) -> set[str]:
        """The row a killed writer had started to change and not finished, as a key."""
        last: dict[str, Any] = {}
        for record in self._records([self.scratch / f"ledger-{worker}"]):
            last = record
        return {str(last["pk"])} if "pk" in last and last["pk"] else set()

    def stop(self) -> None:
        for reader in self.readers.values():
            reader.close()


@pytest.fixture
def machines(rel_db: Database, scratch: Path, redis_server: RedisServer) -> Iterator[Machines]:
    cluster = Machines(rel_db, scratch, redis_server.url)
    try:
        yield cluster
    finally:
        cluster.stop()


def finish(processes: dict[int, subprocess.Popen[str]], scratch: Path) -> list[dict[str, Any]]:
    """Wait for writers; their summaries (a killed one has none)."""
    summaries, failures = [], []
    for worker, process in processes.items():
        out, _ = process.communicate(timeout=300)
        if process.returncode == -signal.SIGKILL:
            continue
        if process.returncode != 0:
            log = (scratch / f"writer-{worker}.err").read_text()[-3000:]
            failures.append(f"writer {worker} exited {process.returncode}: {log}")
        else:
            summaries.append(json.loads(out.strip().splitlines()[-1]))
    if failures:
        raise ChildFailed("\n".join(failures))
    return summaries


def differences(report: dict[str, Any], pending: set[str]) -> dict[str, Any]:
    """What ``report`` shows beyond the rows allowed to be ``pending``."""
    found: dict[str, Any] = {}
    for view in VIEWS:
        for kind in ("missing", "extra", "stale"):
            beyond = sorted(set(report[f"{view}_{kind}"]) - pending)
            if beyond:
                found[f"{view}_{kind}"] = beyond
    if report["head"] and report["local_version"] != report["head"][0]:
        found["local_version"] = [report["local_version"], report["head"]]
    searches = [s for s in report["search"] if s.split(":")[0] not in pending]
    for name, value in (("search", searches), ("problems", report["problems"])):
        if value:
            found[name] = value
    return found


def converge(
    machines: Machines, pending: set[str], wrong: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll every reader until it serves the database's rows (but ``pending``'s) or
    ``BOUND`` passes: what is still different, by reader, and the last reports.
    Wrong vectors, seen at any poll, are collected in ``wrong``."""
    texts = machines.texts()
    left: dict[str, Any] = dict.fromkeys(machines.readers)
    reports: dict[str, Any] = {}
    deadline = time.monotonic() + BOUND
    while left and time.monotonic() < deadline:
        for name in list(left):
            report = machines.readers[name].call("verify", texts=texts, searches=25)["report"]
            reports[name] = report
            wrong += [f"{name}: {problem}" for problem in report["wrong_vector"]]
            left[name] = differences(report, pending)
            if not left[name]:
                del left[name]
        if left:
            time.sleep(0.1)
    return left, reports


def listeners(machines: Machines, mode: str) -> dict[str, dict[str, Any]]:
    return {
        name: reader.call("listener")
        for name, reader in machines.readers.items()
        if name.endswith(mode)
    }


def test_two_machines_converge_on_the_database_with_and_without_redis(
    machines: Machines, redis_server: RedisServer
) -> None:
    seed = seed_for_run()
    rng = random.Random(seed)
    machines.start_readers()
    wrong: list[str] = []
    # Each reader loads its (empty) index first: later writes reach it as news.
    assert converge(machines, set(), wrong)[0] == {}
    assert wait_until(
        lambda: all(state["healthy"] for state in listeners(machines, "pubsub").values()), BOUND
    )

    # Phase 1: eight writers, four a machine, Redis up; writer 5 (machine B) is killed.
    victim = 5
    writers = machines.start_writers(range(8), ops=40, seed=seed)
    victim_ledger = machines.scratch / f"ledger-{victim}"
    progressed = wait_until(
        lambda: victim_ledger.exists() and victim_ledger.read_text().count('"done"') >= 8,
        BOUND,
    )
    assert progressed, "the writer to kill made no progress"
    searches = 0
    kill_at = time.monotonic() + rng.uniform(0.0, 0.25)  # a seeded instant mid-run
    while writers[victim].poll() is None and time.monotonic() < kill_at:
        # Readers search while their indexes take the writers' news.
        for reader in machines.readers.values():
            reader.call("search", seed=searches)
            searches += 1
    assert writers[victim].poll() is None, "the writer to kill ended before its kill"
    writers[victim].send_signal(signal.SIGKILL)
    summaries = finish(writers, machines.scratch)
    assert writers[victim].returncode == -signal.SIGKILL
    assert len(summaries) == 7
    counts = {op: sum(s["counts"].get(op, 0) for s in summaries) for op in ("create", "update")}
    assert counts["create"] > 0 and counts["update"] > 0

    # Machine A deletes a row and trims the table up to that delete: copies that lag
    # behind are rebuilt once, and must still reach the table's version.
    machines.readers["a-mtime"].call("delete_newest")
    machines.readers["a-mtime"].call("compact")
    # The killed writer's rows are served with their vectors, or pending (its in-flight row).
    pending = machines.in_flight(victim)
    left, reports = converge(machines, pending, wrong)
    assert left == {}
    assert wrong == []
    version, horizon = reports["b-pubsub"]["head"]
    assert 0 < horizon <= version and reports["b-pubsub"]["rows"] > 0
    machines.readers["b-mtime"].call("repair")
    assert converge(machines, set(), wrong)[0] == {}
    assert wrong == []

    # Phase 2: Redis stops. Writers on both machines go on; readers check versions.
    redis_server.stop()
    assert wait_until(
        lambda: all(state["needs_check"] for state in listeners(machines, "pubsub").values()),
        BOUND,
    ), "a listener did not notice Redis was gone"
    finish(machines.start_writers(range(8, 12), ops=25, seed=seed), machines.scratch)
    left, reports = converge(machines, set(), wrong)
    assert left == {}
    assert wrong == []
    assert reports["a-pubsub"]["head"][0] > version  # phase 2 wrote
    for state in listeners(machines, "pubsub").values():
        assert state["threads"] == 1 and not state["healthy"]

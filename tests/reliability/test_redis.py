"""Redis faults under a real pub/sub deployment: two processes on a private Redis.

Writer A and reader B run their own Django setup in ``pubsub`` mode. Redis is
killed, restarted, blocked (``DEBUG SLEEP``), paused (``CLIENT PAUSE``) and
stripped of permissions (ACL) while A writes. B must see every write: at once
while its listener is healthy, through version checks while it is not; its
listener thread must survive every fault and its log stay short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.reliability.harness import (
    REDIS_FAULTS,
    Database,
    Server,
    child_env,
    healthy,
    redis_admin,
    run_redis_faults,
    wait_until,
)

pytestmark = pytest.mark.slow

# A write must reach B within this long after it committed: the listener's dead-connection
# detection (a few seconds) plus scheduling slack on a loaded two-core machine.
BOUND = 15.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis that allows DEBUG (for DEBUG SLEEP)."""
    server = RedisServer(tmp_path, "--enable-debug-command", "yes").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pair(
    rel_db: Database, store_dir: Path, scratch: Path, redis_server: RedisServer
) -> Iterator[tuple[Server, Server]]:
    env = child_env(
        rel_db,
        store_dir,
        DJANGO_EMBEDDINGS_INVALIDATION="pubsub",
        DJANGO_EMBEDDINGS_REL_REDIS=redis_server.url,
    )
    a = Server(env, scratch / "a.err")
    b = Server(env, scratch / "b.err")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def sees(b: Server, text: str, pk: int) -> bool:
    """B's best hit for ``text`` is row ``pk`` within the bound."""
    return wait_until(lambda: b.call("top", text=text)["pk"] == pk, BOUND)


def write_and_check(a: Server, b: Server, text: str) -> None:
    pk = a.call("create", body=text)["pk"]
    assert sees(b, text, pk), f"B never saw {text!r}"


def assert_listener_alive(peer: Server) -> None:
    state = peer.call("listener")
    assert state["threads"] == 1, state


def test_sleep_pause_kill_restart_and_refusal(
    rel_db: Database, store_dir: Path, scratch: Path, redis_server: RedisServer
) -> None:
    outcome = run_redis_faults(rel_db, store_dir, scratch, redis_server, cycles=1, bound=BOUND)
    assert outcome.details["problems"] == []
    assert outcome.stale == 0 and outcome.faults == len(REDIS_FAULTS)
    # One warning per outage and process, never one per retry or per write.
    for name, log in outcome.details["logs"].items():
        assert log.count("Cannot listen to DJANGO_EMBEDDINGS_REDIS") <= len(REDIS_FAULTS), name
        assert log.count("\n") < 80, log


def test_publish_denied_by_acl(pair: tuple[Server, Server], redis_server: RedisServer) -> None:
    """A may no longer PUBLISH while B's subscription stays healthy: B's listener
    still finds A's writes within its periodic sweep (SWEEP_SECONDS)."""
    a, b = pair
    assert wait_until(lambda: healthy(a) and healthy(b), BOUND)
    write_and_check(a, b, "before the acl change about csv")
    with redis_admin(redis_server.url) as conn:
        conn.execute_command("ACL", "SETUSER", "default", "-publish")
        try:
            write_and_check(a, b, "published into a refusal about json")
            write_and_check(a, b, "and once more about yaml")
        finally:
            conn.execute_command("ACL", "SETUSER", "default", "+publish")
    write_and_check(a, b, "after the acl is back about toml")
    for peer in (a, b):
        assert_listener_alive(peer)
    log = a.stderr()
    assert log.count("Could not publish") <= 2, log

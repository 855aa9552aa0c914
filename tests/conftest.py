from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from django_embeddings.store import merging
from tests.databases import mariadb_problem, vendor

ON_CI = os.environ.get("CI", "").lower() == "true"

if os.environ.get("DJANGO_EMBEDDINGS_TEST_SCAN") == "int8":
    from django_embeddings import quantized

    # The test stores are small: take them through the int8 copy all the same.
    quantized.MIN_ROWS = 0


def skip_or_fail(reason: str) -> None:
    """Skip a test that needs a missing service; under CI=true that is a failure."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: service tests must run, not skip)")
    pytest.skip(reason)


def _database_problem() -> str | None:
    """Why the database DJANGO_EMBEDDINGS_TEST_DB names cannot be used, or ``None``."""
    if vendor() == "postgres":
        host = os.environ.get("PGHOST", "127.0.0.1")
        port = int(os.environ.get("PGPORT", "5432"))
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return f"PostgreSQL is not reachable on {host}:{port}"
    elif vendor() == "mariadb":
        return mariadb_problem()
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a usable database server, its run skips (and fails under CI=true)."""
    reason = _database_problem()
    if reason is None:
        return
    if ON_CI:
        raise pytest.UsageError(f"{reason} (CI=true: database tests must run)")
    for item in items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def session_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The store directory outside any test (session fixtures), under pytest's base temp."""
    directory = tmp_path_factory.mktemp("session-embeddings")
    with override_settings(DJANGO_EMBEDDINGS_DIR=directory):
        yield directory


@pytest.fixture(autouse=True)
def store_dir(tmp_path: Path, settings) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Every test gets an empty store directory (and fresh caches, via setting_changed);
    a merge it started in the background ends with it, not in the next test."""
    directory = tmp_path / "embeddings"
    settings.DJANGO_EMBEDDINGS_DIR = directory
    yield directory
    assert merging.wait(timeout=60), "a background merge did not finish"


@pytest.fixture(params=[0o077, 0o022, 0o000], ids=["umask077", "umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each test using it runs under a private, the usual and no umask at all."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server on a free port, for tests that stop or break Redis."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail("redis-server is not installed, so no private Redis can be started")
        self.process = subprocess.Popen(
            [
                str(binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared Redis on 127.0.0.1:6379, or a private one when there is none."""
    if _ping("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, free to be stopped, paused or restricted."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()

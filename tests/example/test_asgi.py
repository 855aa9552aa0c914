"""The async JSON API under uvicorn: no request blocks the event loop.

uvicorn serves the example project in a thread of this process (so it shares the
test database). The first request is cold: the provider is built (its model
loaded, in the "cold" case) and the index is read from the store, which must all
happen off the loop.

What is asserted is the loop thread's own CPU time in each callback it runs
(``time.thread_time()`` around ``asyncio.Handle._run``): loading an index or a
model on the loop costs 30 ms or more of it, while what Django and this package
do on the loop costs 3 to 7 ms in a callback (both measured on this test).
Garbage collections the loop thread happens to run are left out: a full one
costs 100 ms and more in a test process this size (one was seen in a test
environment's run), and which thread pays for it is chance. Wall- clock time is
not asserted: on two cores shared by parallel test environments, a callback that
does nothing slow can wait 50 to 100 ms for the GIL or for the OS to run its
thread. It is printed instead, from asyncio's debug mode and from a heartbeat,
which also counts GIL waits between callbacks: how long another thread's call
into C holds the GIL is measured on a quiet machine by
``scripts/measure_cold_load.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.signals import request_finished
from django.db import connections
from django.urls import reverse

from django_embeddings import cache
from django_embeddings.providers import clear_providers, get_provider
from tests.conftest import free_port

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (the test extra) is not installed")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CPU_PER_CALLBACK = 0.020  # seconds of the loop thread's own CPU time
SLOW_CALLBACK = 0.050  # seconds of wall-clock time, reported by asyncio's debug mode


class SlowCallbacks(logging.Handler):
    """asyncio's debug-mode reports of callbacks that held the loop too long."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.messages.append(message)


class LoopCpu:
    """The loop thread's CPU time in each callback it runs, past a threshold, less the
    garbage collections it happened to trigger: a full collection costs 100 ms and more
    in a process this size, and runs in whichever thread allocates when it is due."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.thread_id: int | None = None
        self.heavy: list[tuple[float, str]] = []
        self.longest = 0.0
        self.collecting = 0.0  # seconds of the loop thread's CPU time in collections
        self._collection_started = 0.0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        run = asyncio.events.Handle._run

        def timed_run(handle: asyncio.events.Handle) -> None:
            if threading.get_ident() != self.thread_id:
                return run(handle)
            started, collected = time.thread_time(), self.collecting
            try:
                return run(handle)
            finally:
                spent = time.thread_time() - started - (self.collecting - collected)
                self.longest = max(self.longest, spent)
                if spent > self.threshold:
                    self.heavy.append((spent, repr(handle)))

        def on_collection(phase: str, info: dict[str, int]) -> None:
            if threading.get_ident() != self.thread_id:
                return
            if phase == "start":
                self._collection_started = time.thread_time()
            else:
                self.collecting += time.thread_time() - self._collection_started

        monkeypatch.setattr(asyncio.events.Handle, "_run", timed_run)
        self._on_collection = on_collection
        gc.callbacks.append(on_collection)

    def uninstall(self) -> None:
        gc.callbacks.remove(self._on_collection)


class Served:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.longest_block = 0.0  # seconds, from a heartbeat on the loop

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())


@pytest.fixture
def served(
    corpus: Any, settings: Any, request: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Served, SlowCallbacks, LoopCpu]]:
    from example_project.asgi import application

    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    # Django imports the URLconf and fills reverse()'s tables on first use, on the
    # loop: its own cold start, done here so that what is measured is this package's.
    reverse("docs:search")
    # Cold: the first request reads the index from the store again, and builds the
    # provider (and loads its model, unless the test asks for a loaded one).
    clear_providers()
    cache.clear()
    # Each request runs its ORM work in a thread of its own (Django's ASGI handler gives
    # it a ThreadSensitiveContext): close that thread's connections when it finishes.
    request_finished.connect(close_this_threads_connections, dispatch_uid=__name__)
    if getattr(request, "param", "cold") == "model loaded":
        get_provider().embed(["warm up"], "query")
    port = free_port()
    config = uvicorn.Config(
        application, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    served = Served(port)
    slow = SlowCallbacks()
    loop_cpu = LoopCpu(CPU_PER_CALLBACK)
    loop_cpu.install(monkeypatch)
    # What the test process holds so far (the other tests' objects) is left out of the
    # collections to come, so one due on the loop does not rescan it.
    gc.collect()
    gc.freeze()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(slow)

    async def heartbeat() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            served.longest_block = max(served.longest_block, time.perf_counter() - started - 0.001)

    async def main() -> None:
        loop_cpu.thread_id = threading.get_ident()
        asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK
        beat = asyncio.create_task(heartbeat())
        try:
            await server.serve()
        finally:
            beat.cancel()
            # The connections Django opened in its thread for the ORM.
            await sync_to_async(close_this_threads_connections)()

    thread = threading.Thread(target=asyncio.run, args=(main(),), kwargs={"debug": True})
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    slow.messages.clear()  # uvicorn's start-up is not a request
    loop_cpu.heavy.clear()
    loop_cpu.longest = 0.0
    try:
        yield served, slow, loop_cpu
    finally:
        server.should_exit = True
        thread.join(30)
        asyncio_logger.removeHandler(slow)
        request_finished.disconnect(dispatch_uid=__name__)
        loop_cpu.uninstall()
        gc.unfreeze()


def close_this_threads_connections(**kwargs: Any) -> None:
    """``connections.close_all()``, and also an in-memory SQLite database's connection,
    which Django never closes (the database would go with it; the test thread's own
    connection keeps it): collected unclosed, Python 3.13 warns about it."""
    for connection in connections.all(initialized_only=True):
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            if connection.connection is not None:
                connection.connection.close()
                connection.connection = None
        else:
            connection.close()


def search_a_few_times(server: Served) -> None:
    status, first = server.get("/api/async/search", q="write rows to a CSV file", k=5)
    assert status == 200
    assert first["count"] == 5
    assert "csv" in first["results"][0]["title"].lower()
    scores = [hit["score"] for hit in first["results"]]
    assert scores == sorted(scores, reverse=True)

    status, filtered = server.get("/api/async/search", q="parse a date", kind="function", k=3)
    assert status == 200 and filtered["count"] == 3
    like = first["results"][0]["id"]
    status, similar = server.get("/api/async/search", like=like, k=4)
    assert status == 200 and similar["count"] == 4
    assert like not in [hit["id"] for hit in similar["results"]]
    assert server.get("/api/async/search", like=10**9)[0] == 404
    assert server.get("/api/async/search")[0] == 400
    for _ in range(5):
        assert server.get("/api/async/search", q="compress a file with gzip")[0] == 200


@pytest.mark.parametrize("served", ["cold", "model loaded"], indirect=True)
def test_async_search_api_never_blocks_the_loop(
    served: tuple[Served, SlowCallbacks, LoopCpu],
) -> None:
    server, slow, loop_cpu = served
    search_a_few_times(server)
    # Reported, not asserted (wall-clock time depends on the machine's load).
    print(f"longest event loop block seen: {server.longest_block * 1000:.1f} ms")
    print(f"most CPU time in one callback on the loop: {loop_cpu.longest * 1000:.1f} ms")
    print(f"garbage collection on the loop (not counted): {loop_cpu.collecting * 1000:.1f} ms")
    print(f"callbacks over {SLOW_CALLBACK * 1000:.0f} ms of wall-clock time: {len(slow.messages)}")
    for message in slow.messages:
        print(f"  {message}")
    assert loop_cpu.heavy == []

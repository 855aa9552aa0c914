"""A peer process for the multi-process tests, driven by JSON lines on stdin.

Run as ``python -m tests.multiprocess.peer`` with ``DJANGO_SETTINGS_MODULE =
tests.multiprocess.settings`` and the ``MP_*`` environment variables. Each line
read is a command ``{"op": ..., ...}``; each answer is one JSON line on stdout.
``MP_MIGRATE=1`` migrates the shared database first.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from django_embeddings import cache, invalidation  # noqa: E402
from django_embeddings.coherence import listener, process  # noqa: E402
from tests.testapp.models import Article  # noqa: E402

if "MP_SWEEP_SECONDS" in os.environ:  # a test that must tell messages from the sweep
    listener.SWEEP_SECONDS = float(os.environ["MP_SWEEP_SECONDS"])


def field() -> Any:
    return Article._meta.get_field("embedding")


def top(text: str) -> list[Any] | None:
    """The best hit of a search for ``text``: ``[pk, similarity]``."""
    hits = list(Article.objects.semantic_search(text, k=1))
    return [hits[0].pk, hits[0].similarity] if hits else None


def keys() -> list[str]:
    """The rows a search sees (the cache, after the mode's own check, if any)."""
    index = cache.get(field().store, check=invalidation.needs_check())
    return sorted(index.keys())


def index_info() -> dict[str, Any] | None:
    index = cache.loaded(field().store.label)
    if index is None:
        return None
    return {
        "id": id(index),
        "version": index.version,
        "rows": len(index),
        "snapshot_rows": len(index.base_keys),
    }


def wait_healthy(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if invalidation.listener_healthy():
            return True
        invalidation.needs_check()  # starts a forked child's listener
        time.sleep(0.02)
    return invalidation.listener_healthy()


def wait_for(text: str, pk: int, timeout: float) -> bool:
    """Search until ``pk`` is the exact best hit for ``text`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        found = top(text)
        if found is not None and found[0] == pk and found[1] > 0.999:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def forked_child(conn: Connection, parent_sender: str) -> None:
    """Runs in a child forked after the parent loaded its index and started listening."""
    state = process.state
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "inherited_listener": state.listener is not None,
        "fresh_sender": state.sender != parent_sender,
        "loaded_before_search": index_info() is not None,
    }
    report["healthy"] = wait_healthy(15)
    listener = process.state.listener
    report["own_thread"] = listener is not None and listener.is_alive()
    conn.send(report)
    text, pk = conn.recv()
    report = {"seen": wait_for(text, pk, 15), "version": index_info()}
    conn.send(report)
    conn.close()


_children: list[tuple[Any, Connection]] = []


def handle(command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "create":
        return Article.objects.create(title="t", body=command["body"]).pk
    if op == "update":
        article = Article.objects.get(pk=command["pk"])
        article.body = command["body"]
        article.save()
        return True
    if op == "delete":
        Article.objects.filter(pk=command["pk"]).delete()
        return True
    if op == "top":
        return top(command["text"])
    if op == "keyword":
        return [hit.pk for hit in Article.objects.keyword_search(command["text"], k=10)]
    if op == "keys":
        return keys()
    if op == "index":
        return index_info()
    if op == "healthy":
        return invalidation.listener_healthy()
    if op == "needs_check":
        return invalidation.needs_check()
    if op == "wait_healthy":
        return wait_healthy(command.get("timeout", 15))
    if op == "wait_for":
        return wait_for(command["text"], command["pk"], command.get("timeout", 15))
    if op == "fork":
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        child = context.Process(target=forked_child, args=(child_end, process.state.sender))
        child.start()
        _children.append((child, parent_end))
        return parent_end.recv() if parent_end.poll(30) else None
    if op == "fork_wait":
        child, parent_end = _children.pop()
        parent_end.send((command["text"], command["pk"]))
        report = parent_end.recv() if parent_end.poll(30) else None
        child.join(10)
        return report
    if op == "stop":
        invalidation.stop_invalidation_listeners()
        return invalidation.listener_healthy()
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    if os.environ.get("MP_MIGRATE") == "1":
        call_command("migrate", verbosity=0, interactive=False)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = {"ok": handle(command)}
        except Exception as exc:  # reported to the test, which fails with it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

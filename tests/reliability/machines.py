"""Processes of the two-machines test: ``python -m tests.reliability.machines CMD``.

Each runs :mod:`tests.reliability.settings` with ``DJANGO_EMBEDDINGS_STORE =
"database"``: one database, one Redis, and the ``DJANGO_EMBEDDINGS_DIR`` of its
"machine" as the local copy. Commands:

- ``write``: a seeded mix of creates, updates and deletes of its own rows and of
  rows every writer shares, one transaction each, noted in a ledger (the text
  before the transaction, ``done`` after), so a SIGKILLed writer's in-flight
  row is known; prints a JSON summary.
- ``serve``: a reader answering JSON commands on stdin (``verify``: what it
  serves against the database's rows; ``search``, ``listener``,
  ``delete_newest``, ``compact``, ``repair``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import traceback
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

from tests.reliability.worker import (
    OWN_BASE,
    SHARED_BASE,
    WORDS,
    _wait_for,
    article_field,
    setup,
    text_for,
)


def write(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import DatabaseError, IntegrityError, transaction

    from tests.testapp.models import Article

    rng = random.Random(args.seed * 1009 + args.worker)
    ledger = open(args.ledger, "a", buffering=1)  # noqa: SIM115 - lives as long as the writer
    own: list[int] = []
    counts: Counter[str] = Counter()
    _wait_for(Path(args.barrier), deadline=120)
    for n in range(args.ops):
        text = text_for(rng, f"w{args.worker}n{n}")
        choice = rng.random()
        if choice < 0.3 or not own:
            op, pk = "create", (args.worker + 1) * OWN_BASE + n
        elif choice < 0.5:
            op, pk = "update", rng.choice(own)
        elif choice < 0.6:
            op, pk = "delete", own.pop(rng.randrange(len(own)))
        elif choice < 0.85:
            op, pk = "shared_upsert", rng.randint(SHARED_BASE, args.shared)
        elif choice < 0.98:
            op, pk = "shared_delete", rng.randint(SHARED_BASE, args.shared)
        else:
            op, pk = "compact", 0
        ledger.write(json.dumps({"n": n, "op": op, "pk": pk, "text": text}) + "\n")
        try:
            with transaction.atomic():
                if op == "create":
                    Article.objects.create(pk=pk, title=op, body=text)
                    own.append(pk)
                elif op in ("update", "shared_upsert"):
                    obj = Article.objects.filter(pk=pk).first() or Article(pk=pk, title=op)
                    obj.body = text
                    obj.save()
                elif op in ("delete", "shared_delete"):
                    Article.objects.filter(pk=pk).delete()
            if op == "compact":
                article_field().store.compact()
            counts[op] += 1
        except (IntegrityError, DatabaseError):
            counts["db_conflicts"] += 1  # both machines created one shared row; one lost
        ledger.write(json.dumps({"done": n}) + "\n")
    return {"worker": args.worker, "counts": dict(counts)}


def local_copy(store: Any) -> tuple[dict[str, str], int, list[str]]:
    """key -> content hash of this machine's copy (caught up first), its version, and
    what is wrong with it: a key twice in its snapshot, versions out of order. (A copy
    rebuilt from a compacted table skips the versions compaction removed: gaps are no
    problem.)"""
    import numpy as np

    state = store.read_state()
    snap = state.snapshot
    raw = np.asarray(snap.keys)  # sorted as the store sorts (integer keys as integers)
    keys = [str(key) for key in raw]
    problems = [f"{keys[n]!r} out of order" for n in np.flatnonzero(raw[:-1] >= raw[1:])]
    live = {key: bytes(digest).hex() for key, digest in zip(keys, snap.hashes, strict=True)}
    last = snap.version
    for entry in state.tail:
        if entry.version <= last:
            problems.append(f"journal version {entry.version} after {last}")
        last = entry.version
        if entry.op == "put":
            live[entry.key] = entry.hash
        else:
            live.pop(entry.key, None)
    return live, state.version, problems


def verify(texts: list[str], searches: int) -> dict[str, Any]:
    """What this process serves, against the database's rows.

    ``index_*``: the index a search uses now (after this mode's own check);
    ``local_*``: this machine's copy; ``table_*``: the changes table replayed.
    ``missing`` (a row with text and no entry), ``extra`` (an entry of no row:
    a deleted row), ``stale`` (an entry of another text than the row's).
    ``wrong_vector``: an entry whose vector is not the embedding of the text its
    hash names (``texts``: every text written); that must never happen.
    """
    from django_embeddings import cache, invalidation
    from django_embeddings.fields import content_hash
    from django_embeddings.models import StoreChange, StoreHead
    from tests.testapp.models import Article

    field = article_field()
    store = field.store
    provider = field.get_provider()
    index = cache.get(store, check=invalidation.needs_check())
    truth: dict[str, tuple[str, str]] = {}
    for pk, body in Article.objects.values_list("pk", "body"):
        text = field.source_text(Article(body=body))
        if text.strip():
            truth[field.key(pk)] = (content_hash(text), text)
    # Hashes and vectors read under the index's lock, as one view: the listener
    # thread applies peers' changes meanwhile.
    with index.lock:
        indexed = index.keys()
        served = {key: meta[0] for key in indexed if (meta := index.meta(key)) is not None}
        held = {key: index.vector(key) for key in served}
    local, local_version, problems = local_copy(store)
    table: dict[str, str] = {}
    changes = StoreChange.objects.filter(label=store.label).order_by("version")
    for op, key, digest in changes.values_list("op", "key", "content_hash"):
        if op == "put":
            table[key] = digest
        else:
            table.pop(key, None)
    head = StoreHead.objects.filter(label=store.label).values_list("version", "horizon").first()
    report: dict[str, Any] = {
        "rows": len(truth),
        "version": index.version,
        "head": head,
        "local_version": local_version,
        "changes": changes.count(),
        "problems": problems,
    }
    views = {"index": served, "local": local, "table": table}
    for name, view in views.items():
        report[f"{name}_missing"] = sorted(set(truth) - set(view))
        report[f"{name}_extra"] = sorted(set(view) - set(truth))
        report[f"{name}_stale"] = sorted(
            k for k in set(view) & set(truth) if view[k] != truth[k][0]
        )
    by_hash = {content_hash(text): text for text in texts}
    by_hash.update(dict(truth.values()))
    known = [(key, by_hash[digest]) for key, digest in served.items() if digest in by_hash]
    wrong = [f"{key}: a hash no writer wrote" for key, d in served.items() if d not in by_hash]
    if known:
        expected = provider.embed([text for _, text in known])
        for (key, _), vector in zip(known, expected, strict=True):
            if held[key] is None or _cosine(held[key], vector) < 0.9999:
                wrong.append(f"{key}: not the vector of its text")
    report["wrong_vector"] = wrong
    # A row's own text finds it first; searched through the public API.
    failed = []
    for key in random.Random(len(truth)).sample(sorted(truth), min(searches, len(truth))):
        hit = Article.objects.semantic_search(truth[key][1], k=1).first()
        if hit is None or field.key(hit.pk) != key:
            failed.append(f"{key}: found {hit and hit.pk!r}")
    report["search"] = failed
    return report


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / ((np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))


def serve() -> None:
    from django.core.management import call_command

    from django_embeddings import invalidation
    from tests.testapp.models import Article

    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        try:
            answer: dict[str, Any] = {"ok": True}
            if command == "quit":
                _answer(answer)
                return
            if command == "verify":
                answer["report"] = verify(request.get("texts", []), request.get("searches", 20))
            elif command == "search":
                words = random.Random(request["seed"]).sample(WORDS, 4)
                answer["pks"] = [hit.pk for hit in Article.objects.semantic_search(" ".join(words))]
            elif command == "listener":
                needs = invalidation.needs_check()  # first use starts the listener
                names = [t.name for t in threading.enumerate()]
                answer.update(
                    healthy=invalidation.listener_healthy(),
                    needs_check=needs,
                    threads=names.count("django_embeddings.invalidation"),
                )
            elif command == "delete_newest":
                Article.objects.order_by("pk").last().delete()  # type: ignore[union-attr]
            elif command == "compact":  # trims the table to this machine's version
                article_field().store.compact()
            elif command == "repair":  # what an operator runs after a crash
                out, label = StringIO(), article_field().label
                call_command("embeddings_gc", label, min_age=0, stdout=out)
                call_command("embeddings_backfill", label, "--missing", stdout=out)
                answer["output"] = out.getvalue()
            else:
                answer = {"ok": False, "error": f"unknown command {command!r}"}
            _answer(answer)
        except Exception:
            _answer({"ok": False, "error": traceback.format_exc()})


def _answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.machines")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    writer = sub.add_parser("write")
    writer.add_argument("--worker", type=int, required=True)
    writer.add_argument("--ops", type=int, required=True)
    writer.add_argument("--shared", type=int, default=12)
    writer.add_argument("--seed", type=int, default=0)
    writer.add_argument("--ledger", required=True)
    writer.add_argument("--barrier", required=True)
    args = parser.parse_args(argv)
    setup()
    if args.command == "serve":
        serve()
    else:
        print(json.dumps(write(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

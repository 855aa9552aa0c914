"""The child processes of the reliability tests: ``python -m tests.reliability.worker CMD``.

Each runs its own ``django.setup()`` with :mod:`tests.reliability.settings`
(PostgreSQL database and store directory from the environment). Commands:

- ``migrate``: create the tables of the dedicated database.
- ``mix``: one of the concurrent writers: a seeded mix of creates, updates and
  deletes of its own rows and of rows every worker shares; prints a JSON summary.
- ``serve``: a long-lived helper reading JSON commands on stdin (audit, repair,
  fork a crash writer, reap it...) and answering one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django

_VOCABULARY = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu csv json "
    "yaml django vector search index store journal snapshot cache"
)
WORDS = tuple(_VOCABULARY.split())

SHARED_BASE = 1  # shared rows have pks 1..shared
OWN_BASE = 1_000_000  # worker w creates pks (w + 1) * OWN_BASE + n


def text_for(rng: random.Random, tag: str) -> str:
    """A unique text (the tag) plus random words, so each row has its own vector."""
    return f"{tag} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


def setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.reliability.settings")
    django.setup()


# -- audit and repair (shared by serve and the concurrent writers) ---------------------------


def article_field() -> Any:
    from tests.testapp.models import Article

    return Article._meta.get_field("embedding")


def live_entries(store: Any) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """key -> (content hash, identity) replayed from snapshot + journal, and problems seen."""
    import numpy as np

    state = store.read_state()
    snap = state.snapshot
    problems = []
    raw = np.asarray(snap.keys)
    if len(raw) > 1 and not bool(np.all(raw[:-1] < raw[1:])):
        problems.append(f"keys of {snap.name} are not strictly increasing (a duplicate?)")
    keys = [str(key) for key in raw]
    live = {
        key: (bytes(digest).hex(), snap.identity_names[int(ident)])
        for key, digest, ident in zip(keys, snap.hashes, snap.identities, strict=True)
    }
    expected = snap.version + 1
    for entry in state.tail:
        if entry.version != expected:
            problems.append(f"journal version {entry.version} where {expected} was due")
        expected = entry.version + 1
        if entry.op == "put":
            live[entry.key] = (entry.hash, entry.identity)
        else:
            live.pop(entry.key, None)
    return live, problems


def audit(*, searches: int = 40) -> dict[str, Any]:
    """Compare the store with the database, row by row.

    Categories: ``missing`` (row with text, no entry: pending), ``stale`` (entry of
    another text than the row's: pending), ``phantom`` (entry of no row, or of a row
    with no text), ``column`` (the column does not record the hash of the row's
    text), ``served`` (a search returned a pending row for the vector of its older
    text), ``corrupt`` (entry of the right text whose vector is not that text's
    embedding), ``orphan_files``, ``temp_files``. ``column``, ``served`` and
    ``corrupt`` must never happen, not even in a crash's window.
    """
    from io import StringIO

    import numpy as np
    from django.core.management import call_command

    from django_embeddings import cache
    from django_embeddings.fields import content_hash
    from django_embeddings.store import files, journal, vectorlog
    from tests.testapp.models import Article

    field = article_field()
    store = field.store
    provider = field.get_provider()
    rows = {
        field.key(pk): (body, column)
        for pk, body, column in Article.objects.values_list("pk", "body", "embedding")
    }
    report: dict[str, Any] = {
        "rows": len(rows),
        "missing": [],
        "stale": [],
        "phantom": [],
        "column": [],
        "served": [],
        "corrupt": [],
        "problems": [],
    }
    if not store.path.is_dir():
        report["missing"] = sorted(k for k, (body, _) in rows.items() if body.strip())
        report.update(entries=0, orphan_files=[], temp_files=[], gc_entries=[], gc_files=[])
        report["gc_command"] = []
        report["search_errors"] = []
        return report
    live, problems = live_entries(store)
    report["problems"] = problems
    report["entries"] = len(live)
    fresh: list[str] = []
    for key in sorted(set(rows) | set(live)):
        row, entry = rows.get(key), live.get(key)
        if row is None:
            report["phantom"].append(key)
            continue
        body, column = row
        wanted = field.source_text(Article(body=body))
        if not wanted.strip():
            if entry is not None:
                report["phantom"].append(key)
            elif column is not None:
                report["column"].append(key)
            continue
        if column != content_hash(wanted):
            # Saves write the column in their own statement: it always names the text.
            report["column"].append(key)
            continue
        if entry is None:
            report["missing"].append(key)
            continue
        if entry != (column, provider.identity):
            report["stale"].append(key)
            continue
        fresh.append(key)
    if fresh:
        texts = [field.source_text(Article(body=rows[key][0])) for key in fresh]
        expected = provider.embed(texts)
        for key, vector in zip(fresh, expected, strict=True):
            stored = store.load_vector(key)
            if stored is None or not np.array_equal(stored, vector):
                report["corrupt"].append(key)
    names = os.listdir(store.path)
    # No per-row file is written any more, and only the current journal's log is read.
    current = journal.last_base(store.path)
    report["orphan_files"] = sorted(
        n
        for n in names
        if files.VECTOR_NAME.match(n) or vectorlog.base_of(n) not in (None, current)
    )
    report["temp_files"] = sorted(store.temp_files())  # as embeddings_status counts them
    garbage = store.collect_garbage(_is_live, min_age=0, dry_run=True)
    report["gc_entries"] = garbage.entries
    report["gc_files"] = garbage.files
    out = StringIO()
    call_command("embeddings_gc", field.label, "--dry-run", "--min-age=0", stdout=out)
    report["gc_command"] = [] if "Would remove 0 " in out.getvalue() else [out.getvalue()]
    # A fresh load must answer searches, and a row's own text must find it first.
    cache.clear()
    report["search_errors"] = []
    sample = random.Random(len(fresh)).sample(fresh, min(searches, len(fresh)))
    for key in sample:
        text = field.source_text(Article(body=rows[key][0]))
        try:
            hit = Article.objects.semantic_search(text, k=1).first()
        except Exception as exc:
            report["search_errors"].append(f"{key}: {exc!r}")
            continue
        if hit is None or field.key(hit.pk) != key:
            report["search_errors"].append(f"{key}: found {hit and hit.pk!r}")
    # A pending row is never served: searching by the vector of its older text (which
    # is its own nearest neighbour) must not return it.
    for key in report["stale"]:
        vector = store.load_vector(key)
        if vector is None or not np.any(vector):
            continue
        try:
            hits = Article.objects.semantic_search(vector, k=3)
            if key in {field.key(hit.pk) for hit in hits}:
                report["served"].append(key)
        except Exception as exc:
            report["search_errors"].append(f"{key}: {exc!r}")
    return report


def _is_live(keys: list[str]) -> set[str]:
    from tests.testapp.models import Article

    field = article_field()
    pks = [field.pk_from_key(key) for key in keys]
    return {field.key(pk) for pk in Article.objects.filter(pk__in=pks).values_list("pk", flat=True)}


def repair() -> dict[str, Any]:
    """What an operator runs after a crash: backfill --missing, gc, sweep (the commands)."""
    import re
    from io import StringIO

    from django.core.management import call_command

    label = article_field().label
    out = StringIO()
    before = audit(searches=0)
    call_command("embeddings_gc", label, min_age=0, stdout=out)
    backfill = StringIO()
    call_command("embeddings_backfill", label, "--missing", stdout=backfill)
    call_command("embeddings_sweep", label, max_age=0, stdout=out)
    embedded = re.search(r"Embedded (\d+) of", backfill.getvalue())
    return {
        "backfilled": int(embedded.group(1)) if embedded else 0,
        "pending": len(set(before["missing"]) | set(before["stale"])),
        "gc_entries": len(before["gc_entries"]),
        "gc_files": len(before["gc_files"]),
        "swept": len(before["temp_files"]),
        "output": backfill.getvalue() + out.getvalue(),
    }


def cache_matches_store() -> list[str]:
    """Differences between this process's cached index and a fresh load of the store."""
    import numpy as np

    from django_embeddings import cache
    from django_embeddings.cache import FieldIndex

    store = article_field().store
    mine = cache.get(store, check=True)
    fresh = FieldIndex(store, store.read_state())
    differences = []
    if sorted(mine.keys()) != sorted(fresh.keys()):
        differences.append(
            f"keys: cached-only {sorted(set(mine.keys()) - set(fresh.keys()))[:5]}, "
            f"store-only {sorted(set(fresh.keys()) - set(mine.keys()))[:5]}"
        )
    for key in sorted(fresh.keys()):
        a, b = mine.vector(key), fresh.vector(key)
        if a is None or b is None or not np.allclose(a, b, atol=1e-6):
            differences.append(f"vector of {key}")
        elif mine.meta(key) != fresh.meta(key):
            differences.append(f"meta of {key}")
    return differences


# -- the concurrent writer --------------------------------------------------------------------


def mix(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import DatabaseError, IntegrityError, transaction

    from django_embeddings.exceptions import EmbeddingsError
    from tests.testapp.models import Article

    rng = random.Random(args.seed * 1009 + args.worker)
    store = article_field().store
    own: list[int] = []
    counts = {"create": 0, "update": 0, "delete": 0, "shared_update": 0, "shared_delete": 0}
    counts.update(compact=0, db_conflicts=0)
    errors: list[str] = []
    _wait_for(Path(args.barrier) / "go", deadline=120)
    for n in range(args.ops):
        tag = f"w{args.worker}n{n}"
        choice = rng.random()
        try:
            with transaction.atomic():
                if choice < 0.25 or not own:
                    pk = (args.worker + 1) * OWN_BASE + n
                    Article.objects.create(pk=pk, title=tag, body=text_for(rng, tag))
                    own.append(pk)
                    counts["create"] += 1
                elif choice < 0.45:
                    obj = Article.objects.get(pk=rng.choice(own))
                    obj.body = text_for(rng, tag)
                    obj.save()
                    counts["update"] += 1
                elif choice < 0.55:
                    pk = own.pop(rng.randrange(len(own)))
                    Article.objects.get(pk=pk).delete()
                    counts["delete"] += 1
                elif choice < 0.85:
                    pk = rng.randint(SHARED_BASE, args.shared)
                    obj = Article.objects.filter(pk=pk).first() or Article(pk=pk, title=tag)
                    obj.body = text_for(rng, tag)
                    obj.save()
                    counts["shared_update"] += 1
                elif choice < 0.99:
                    pk = rng.randint(SHARED_BASE, args.shared)
                    obj = Article.objects.filter(pk=pk).first()
                    if obj is not None:
                        obj.delete()
                    counts["shared_delete"] += 1
                else:
                    store.compact()
                    counts["compact"] += 1
        except (IntegrityError, DatabaseError):
            counts["db_conflicts"] += 1  # two workers created one shared row; one lost
        except EmbeddingsError as exc:
            errors.append(f"{tag}: {exc!r}")
        except Exception:
            errors.append(f"{tag}: {traceback.format_exc()}")
    done = Path(args.barrier) / f"done-{args.worker}"
    done.touch()
    for other in range(args.workers):
        _wait_for(Path(args.barrier) / f"done-{other}", deadline=300)
    return {
        "worker": args.worker,
        "counts": counts,
        "errors": errors,
        "cache": cache_matches_store(),
    }


def _wait_for(path: Path, *, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear in {deadline} s")
        time.sleep(0.01)


# -- the crash writer (forked by serve, killed by the test) -----------------------------------

KILL_POINTS = (
    "in-transaction",  # saves done, COMMIT not sent: nothing may change
    "after-commit",  # committed, the on_commit store write not started
    "before-append",  # vectors in the log, no journal entry yet
    "after-append",  # journal entry written, column and cache not updated
    "compact-before-index",  # new snapshot directory complete, _index.json not switched
    "compact-before-journal",  # _index.json switched, the old journal still in place
    "compact-before-log-removal",  # new journal in place, the old vector log still there
)


class Ledger:
    """What the writer is about to do, appended before each transaction.

    A killed writer's page-cache writes survive (only a machine crash loses them),
    so the parent learns which rows were in flight at the kill.
    """

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the writer

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")


def _arm(point: str, hit: int, action: str = "kill") -> None:
    """SIGKILL (or SIGSTOP) this process the ``hit``-th time execution reaches ``point``.

    The points wrap the app's own functions, so everything runs for real; the only
    thing added is the signal, at an instant of the test's choosing. A stopped
    process is resumed by the test with SIGCONT, as if the scheduler had paused it.
    """
    from django_embeddings import writer
    from django_embeddings.store import journal, snapshot, vectorlog

    counts: dict[str, int] = {}
    wanted = dict.fromkeys(point.split(","), hit)

    def maybe_stop(name: str) -> None:
        if name not in wanted:
            return
        counts[name] = counts.get(name, 0) + 1
        if counts[name] == wanted[name]:
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)

    def wrap(owner: Any, attr: str, before: str | None, after: str | None = None) -> None:
        original: Callable[..., Any] = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before:
                maybe_stop(before)
            result = original(*args, **kwargs)
            if after:
                maybe_stop(after)
            return result

        setattr(owner, attr, wrapper)

    wrap(writer.Batch, "flush", "after-commit")
    wrap(writer, "_recheck", "before-reread")
    wrap(writer, "remove", "after-commit" if action == "kill" else "before-remove")
    wrap(vectorlog, "append", None, "before-append")
    wrap(journal, "append", None, "after-append")
    wrap(snapshot, "write_atomic", "compact-before-index")
    wrap(journal, "create", "compact-before-journal")
    wrap(vectorlog, "remove_others", "compact-before-log-removal")
    global _in_transaction_hook
    _in_transaction_hook = lambda: maybe_stop("in-transaction")  # noqa: E731


_in_transaction_hook: Callable[[], None] = lambda: None  # noqa: E731


def crash_writer(seed: int, ledger_path: Path, point: str | None, hit: int) -> None:
    """Write forever (until killed): transactions of 1-3 creates, updates and deletes."""
    from django.db import transaction

    from tests.testapp.models import Article

    if point is not None:
        _arm(point, hit)
    rng = random.Random(seed)
    ledger = Ledger(ledger_path)
    store = article_field().store
    txn = 0
    next_pk = (seed % 1000 + 1) * OWN_BASE
    while True:
        txn += 1
        existing = list(Article.objects.values_list("pk", flat=True))
        plan = []
        for _ in range(rng.randint(1, 3)):
            choice = rng.random()
            if choice < 0.35 or len(existing) < 10:
                next_pk += 1
                plan.append(("create", next_pk))
            elif choice < 0.75:
                plan.append(("update", rng.choice(existing)))
            elif choice < 0.95:
                plan.append(("delete", rng.choice(existing)))
            else:
                plan.append(("compact", 0))
        ledger.write({"txn": txn, "plan": plan})
        with transaction.atomic():
            for op, pk in plan:
                tag = f"s{seed}t{txn}p{pk}"
                if op == "create":
                    Article.objects.create(pk=pk, title=tag, body=text_for(rng, tag))
                elif op == "update":
                    obj = Article.objects.filter(pk=pk).first()
                    if obj is not None:
                        obj.body = text_for(rng, tag)
                        obj.save()
                elif op == "delete":
                    Article.objects.filter(pk=pk).delete()
                # compact runs after commit, below
            _in_transaction_hook()
        for op, _ in plan:
            if op == "compact":
                store.compact()
        ledger.write({"done": txn})


def run_ops(ops: list[list[Any]]) -> None:
    """Run scripted row operations, each in its own transaction (as a view would)."""
    from tests.testapp.models import Article

    for op, pk, *rest in ops:
        if op == "create":
            Article.objects.create(pk=pk, title=f"row {pk}", body=rest[0])
        elif op == "update":
            obj = Article.objects.get(pk=pk)
            obj.body = rest[0]
            obj.save()
        elif op == "delete":
            Article.objects.get(pk=pk).delete()
        else:
            raise ValueError(f"unknown op {op!r}")


def try_create(body: str) -> str | None:
    """Create a row; the error its embedding failed with after commit, if any."""
    from django_embeddings.signals import embedding_failed
    from tests.testapp.models import Article

    # A failure after commit is not raised: it is logged and sent as embedding_failed.
    reported: list[str] = []

    def on_failure(sender: Any, exception: Exception, **kwargs: Any) -> None:
        reported.append(str(exception))

    embedding_failed.connect(on_failure, weak=False)
    try:
        Article.objects.create(title="r", body=body)
    finally:
        embedding_failed.disconnect(on_failure)
    return reported[0] if reported else None


# -- serve ------------------------------------------------------------------------------------


def serve() -> None:
    """Answer JSON commands from stdin, one JSON line each, until EOF or ``quit``."""

    from tests.testapp.models import Article

    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        try:
            if command == "quit":
                _answer(out, {"ok": True})
                return
            if command == "seed_rows":
                rng = random.Random(request.get("seed", 0))
                for n in range(request["count"]):
                    tag = f"seed{n}"
                    Article.objects.create(title=tag, body=text_for(rng, tag))
                _answer(out, {"ok": True})
            elif command == "audit":
                _answer(out, {"ok": True, "report": audit(searches=request.get("searches", 40))})
            elif command == "repair":
                _answer(out, {"ok": True, "repair": repair()})
            elif command == "fork_writer":
                _answer(out, {"ok": True, "pid": _fork(_crash_writer, request)})
            elif command == "ops":
                run_ops(request["ops"])
                _answer(out, {"ok": True})
            elif command == "fork_ops":
                _answer(out, {"ok": True, "pid": _fork(_paused_ops, request)})
            elif command == "create":
                article = Article.objects.create(title="r", body=request["body"])
                _answer(out, {"ok": True, "pk": article.pk})
            elif command == "try_create":
                _answer(out, {"ok": True, "error": try_create(request["body"])})
            elif command == "top":
                hit = Article.objects.semantic_search(request["text"], k=1).first()
                _answer(out, {"ok": True, "pk": hit and hit.pk})
            elif command == "listener":
                from django_embeddings import invalidation

                needs = invalidation.needs_check()  # first use starts the listener
                names = [t.name for t in threading.enumerate()]
                _answer(
                    out,
                    {
                        "ok": True,
                        "healthy": invalidation.listener_healthy(),
                        "needs_check": needs,
                        "threads": names.count("django_embeddings.invalidation"),
                    },
                )
            elif command == "reap":
                _, status = os.waitpid(request["pid"], 0)
                _answer(
                    out,
                    {
                        "ok": True,
                        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    },
                )
            else:
                _answer(out, {"ok": False, "error": f"unknown command {command!r}"})
        except Exception:
            _answer(out, {"ok": False, "error": traceback.format_exc()})


def _fork(work: Callable[[dict[str, Any]], None], request: dict[str, Any]) -> int:
    """The pid of a child that runs ``work(request)`` on connections of its own, then exits."""
    from django.db import connections

    from django_embeddings import cache

    connections.close_all()  # the child opens its own connection
    cache.clear()
    pid = os.fork()
    if pid:
        return pid
    code = 0  # pragma: no cover - the child never returns
    try:
        sys.stdin.close()
        work(request)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _crash_writer(request: dict[str, Any]) -> None:
    crash_writer(
        request["seed"], Path(request["ledger"]), request.get("point"), request.get("hit", 1)
    )


def _paused_ops(request: dict[str, Any]) -> None:
    _arm(request["pause"], 1, action="stop")
    run_ops(request["ops"])


def _answer(out: Any, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate")
    sub.add_parser("serve")
    mixer = sub.add_parser("mix")
    mixer.add_argument("--worker", type=int, required=True)
    mixer.add_argument("--workers", type=int, required=True)
    mixer.add_argument("--ops", type=int, default=250)
    mixer.add_argument("--shared", type=int, default=12)
    mixer.add_argument("--seed", type=int, default=0)
    mixer.add_argument("--barrier", required=True)
    args = parser.parse_args(argv)
    setup()
    if args.command == "migrate":
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
    elif args.command == "serve":
        serve()
    else:
        print(json.dumps(mix(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

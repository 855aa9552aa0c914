"""``manage.py load_stdlib_docs``: load the standard library's documentation as Documents.

The documents are collected by ``example_project/docs/corpus.py`` in a child
process of the same interpreter (importing modules runs their code; see that
module). Loading is an upsert keyed on (kind, name): a second run changes
nothing and takes about a second; after an interpreter upgrade it adds, updates
and removes only what differs. Rows are written with ``bulk_create`` and
``bulk_update``, which send no signals, so new and changed rows are left
without an embedding for ``manage.py embeddings_backfill`` to fill in batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from example_project.docs import corpus
from example_project.docs.models import Document

FIELDS = ["title", "module", "signature", "body"]
BATCH_SIZE = 500
TIMEOUT = 300
CHILD_ENVIRONMENT = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "SYSTEMROOT"}


class Command(BaseCommand):
    help = "Load the documentation of this Python's standard library (no download)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--modules",
            metavar="NAME,NAME",
            help="Only these top-level modules (and no language topics), e.g. json,csv.",
        )
        parser.add_argument(
            "--python",
            default=sys.executable,
            help="The interpreter whose standard library to document (default: this one).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        records = collect(options["python"])
        if options["modules"]:
            wanted = {name.strip() for name in options["modules"].split(",") if name.strip()}
            records = [r for r in records if r["module"].split(".")[0] in wanted]
            if not records:
                raise CommandError(f"No documents found for --modules {options['modules']!r}.")
        created, updated, deleted = upsert(records)
        seconds = time.perf_counter() - started
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"{len(records)} documents from the standard library in {seconds:.1f} s: "
                f"{created} new, {updated} changed, {deleted} removed."
            )


def collect(python: str) -> list[dict[str, str]]:
    """Run the collector in a child process and read its records."""
    with tempfile.TemporaryDirectory(prefix="stdlib-docs-") as directory:
        output = Path(directory) / "documents.jsonl"
        try:
            # -I: no current directory, user site or PYTHON* variables in the child,
            # and an environment of only what locating programs and decoding need,
            # so the modules imported there see no secret.
            process = subprocess.run(
                [python, "-I", corpus.__file__, str(output)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                cwd=directory,
                env={k: v for k, v in os.environ.items() if k in CHILD_ENVIRONMENT},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CommandError(
                f"Could not collect the documentation with {python!r}: {exc}"
            ) from exc
        if process.returncode != 0:
            raise CommandError(
                f"Collecting the documentation with {python!r} failed "
                f"(exit code {process.returncode}):\n{process.stderr.strip()}"
            )
        with output.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]


def upsert(records: list[dict[str, str]]) -> tuple[int, int, int]:
    """Make the table hold exactly ``records``; returns (created, updated, deleted)."""
    wanted: dict[tuple[str, str], dict[str, str]] = {}
    for record in records:
        wanted.setdefault((record["kind"], record["name"]), record)
    existing = {
        (doc.kind, doc.name): doc for doc in Document.objects.only("pk", *FIELDS, "kind", "name")
    }
    new = [
        Document(kind=kind, name=name, **{f: record[f] for f in FIELDS})
        for (kind, name), record in wanted.items()
        if (kind, name) not in existing
    ]
    changed: list[Document] = []
    for key, doc in existing.items():
        fresh = wanted.get(key)
        if fresh is not None and any(getattr(doc, f) != fresh[f] for f in FIELDS):
            for f in FIELDS:
                setattr(doc, f, fresh[f])
            doc.embedding = None  # bulk_update sends no signal: backfill re-embeds it
            changed.append(doc)
    gone = [doc.pk for key, doc in existing.items() if key not in wanted]
    with transaction.atomic():
        Document.objects.bulk_create(new, batch_size=BATCH_SIZE)
        Document.objects.bulk_update(changed, [*FIELDS, "embedding"], batch_size=BATCH_SIZE)
        if gone:
            # A real delete, so the signals remove the vectors too (after commit).
            Document.objects.filter(pk__in=gone).delete()
    return len(new), len(changed), len(gone)

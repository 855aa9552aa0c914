"""``manage.py embeddings_sweep``: remove temp files left by interrupted writes.

Every write goes to a ``tmp*`` file first and is renamed into place; a process
killed in between leaves the temp file. Only files older than ``--max-age`` are
removed, so writes in flight are never touched.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_embeddings.management.commands._common import add_labels, fields_for


class Command(BaseCommand):
    help = "Remove temporary files of interrupted writes from the embedding stores."

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)
        parser.add_argument(
            "--max-age",
            type=float,
            default=3600,
            metavar="SECONDS",
            help="Remove temp files older than this (default: 3600).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        labels: list[str] = options["labels"]
        fields = fields_for(labels)
        max_age: float = options["max_age"]
        if max_age < 0:
            raise CommandError(f"--max-age should be 0 or more seconds, not {max_age!r}.")
        for field in fields:
            removed = field.store.sweep_tempfiles(max_age)
            if options["verbosity"] >= 1:
                self.stdout.write(f"Removed {len(removed)} temporary files for {field.label}.")

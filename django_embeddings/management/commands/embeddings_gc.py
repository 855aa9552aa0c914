"""``manage.py embeddings_gc``: remove the vectors of rows that no longer exist.

Rows deleted by ``QuerySet.delete()`` are cleaned up by signals; rows deleted by
raw SQL, a restored backup or a crash between commit and clean-up leave vectors
behind. Files younger than ``--min-age`` are kept: a save may have written its
vector before its row became visible to this process.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_embeddings import writer
from django_embeddings.backfill import existing_keys
from django_embeddings.fields import EmbeddingField
from django_embeddings.management.commands._common import add_database, add_labels, fields_for

# A store this large next to an empty table more likely means the wrong database
# (a fresh test database, a typo in DATABASES) than that every row was deleted.
GUARD_VECTORS = 1000


class Command(BaseCommand):
    help = "Remove stored embeddings whose row no longer exists."

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be removed; remove nothing."
        )
        parser.add_argument(
            "--min-age",
            type=float,
            default=300,
            metavar="SECONDS",
            help="Keep orphans younger than this (default: 300), as a save may be in flight.",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Collect even when a table is empty but its store holds many vectors.",
        )
        add_database(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        labels: list[str] = options["labels"]
        fields = fields_for(labels)
        min_age: float = options["min_age"]
        if min_age < 0:
            raise CommandError(f"--min-age should be 0 or more seconds, not {min_age!r}.")
        using: str = options["database"]
        dry_run: bool = options["dry_run"]
        if not options["force"]:
            for field in fields:
                self._refuse_if_table_looks_wrong(field, using)
        for field in fields:
            report = writer.collect_garbage(
                field.store_for(using),
                lambda keys, field=field: existing_keys(field, keys, using=using),  # type: ignore[misc]
                min_age=min_age,
                dry_run=dry_run,
            )
            removed = len(report.entries) + len(report.files)
            if options["verbosity"] >= 1:
                verb = "Would remove" if dry_run else "Removed"
                self.stdout.write(f"{verb} {removed} orphaned embeddings for {field.label}.")
                if report.skipped_recent:
                    self.stdout.write(
                        f"Kept {report.skipped_recent} orphaned embeddings of {field.label} "
                        f"younger than {min_age:g} seconds."
                    )

    def _refuse_if_table_looks_wrong(self, field: EmbeddingField, using: str) -> None:
        if field.model._base_manager.using(using).exists():
            return
        vectors = field.store_for(using).stats().vectors
        if vectors >= GUARD_VECTORS:
            raise CommandError(
                f"Refusing to collect {field.label}: table {field.model._meta.db_table!r} "
                f"in database {using!r} is empty, but the store holds {vectors} vectors. "
                "Check DATABASES and DJANGO_EMBEDDINGS_DIR; if the table really is empty, "
                "run again with --force."
            )

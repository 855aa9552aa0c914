"""``manage.py embeddings_compact``: fold the journal into a new snapshot now.

Writers compact on their own once the journal holds
``DJANGO_EMBEDDINGS_COMPACT_THRESHOLD`` entries; compacting after a large
backfill makes the next cold start memory-map one matrix instead of replaying
the journal.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_embeddings.management.commands._common import add_labels, fields_for


class Command(BaseCommand):
    help = "Compact the embedding stores: fold their journals into new snapshots."

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        labels: list[str] = options["labels"]
        for field in fields_for(labels):
            version = field.store.compact()
            if options["verbosity"] >= 1:
                self.stdout.write(f"Compacted {field.label} at version {version}.")

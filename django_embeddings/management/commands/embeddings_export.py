"""``manage.py embeddings_export``: write each field's vectors to a portable file.

One ``<app_label>.<ModelName>.<field>.npz`` per field in ``--output`` (default:
the current directory), to travel with ``dumpdata`` or go into a backup;
``embeddings_import`` reads them back. See :mod:`django_embeddings.transfer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_embeddings.checks import read_only_check_tags
from django_embeddings.management.commands._common import add_labels, fields_for
from django_embeddings.transfer import export_field, filename_for


class Command(BaseCommand):
    help = "Export stored embeddings, one .npz file per field."

    @property
    def requires_system_checks(self) -> list[str]:  # type: ignore[override]
        # Reading needs no write access: every check runs but E003 (store not writable).
        return read_only_check_tags()

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)
        parser.add_argument(
            "-o",
            "--output",
            default=".",
            metavar="DIRECTORY",
            help="Directory for the files (default: the current directory).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        labels: list[str] = options["labels"]
        directory = Path(options["output"])
        for field in fields_for(labels):
            path = directory / filename_for(field)
            count = export_field(field, path)
            if options["verbosity"] >= 1:
                self.stdout.write(f"Exported {count} embeddings of {field.label} to {path}.")

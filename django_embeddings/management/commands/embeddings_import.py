"""``manage.py embeddings_import``: store vectors from ``embeddings_export`` files.

Each file names its field. Vectors are stored for the rows that exist in the
database (others are skipped), the rows' column is set and peer processes are
told, so nothing needs embedding again. Directories are searched for ``*.npz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.management.commands._common import add_database
from django_embeddings.transfer import import_file


class Command(BaseCommand):
    help = "Import embeddings exported by embeddings_export."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "paths", nargs="+", metavar="PATH", help="Export files, or directories of them."
        )
        add_database(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        paths: list[str] = options["paths"]
        files: list[Path] = []
        for name in paths:
            path = Path(name)
            if path.is_dir():
                files.extend(sorted(path.glob("*.npz")))
            elif path.is_file():
                files.append(path)
            else:
                raise CommandError(f"{name!r} is neither an export file nor a directory.")
        if not files:
            raise CommandError(f"No .npz export files found in {list(paths)!r}.")
        for path in files:
            try:
                result = import_file(path, using=options["database"])
            except EmbeddingsError as exc:
                raise CommandError(str(exc)) from exc
            if options["verbosity"] < 1:
                continue
            line = f"Imported {result.imported} of {result.total} embeddings into {result.label}"
            if result.skipped:
                line += f" ({result.skipped} skipped: no such row)"
            self.stdout.write(line + ".")
            if result.other_identity:
                self.stdout.write(
                    f"{result.other_identity} of them were made by another provider than "
                    f"{result.label}'s; run embeddings_backfill {result.label} --stale."
                )

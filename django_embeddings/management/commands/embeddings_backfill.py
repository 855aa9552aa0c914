"""``manage.py embeddings_backfill``: embed the rows that signals never saw.

A thin wrapper around :func:`django_embeddings.backfill.embed_queryset`. Each
batch is one provider call and commits on its own, so the command can be
stopped (Ctrl-C) or crash at any point and simply be run again: rows already
done are skipped.

The progress bar is written to the command's own stdout (no dependency): it
shows rows done, rows per second and the time left, and appears only on a
terminal at verbosity 1 or more. Elsewhere (a log, a CI job, ``call_command``)
only the summary line per field is printed.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db.models import QuerySet

from django_embeddings import writer
from django_embeddings.backfill import DEFAULT_BATCH_SIZE, BackfillResult, embed_queryset
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import EmbeddingField
from django_embeddings.management.commands._common import add_database, add_labels, fields_for


class Command(BaseCommand):
    help = (
        "Embed rows with no embedding (--missing, the default), with an outdated one "
        "(--stale), or every row again (--all)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)
        modes = parser.add_mutually_exclusive_group()
        modes.add_argument(
            "--missing",
            dest="mode",
            action="store_const",
            const="missing",
            help="Rows with a NULL column or no stored vector (the default).",
        )
        modes.add_argument(
            "--stale",
            dest="mode",
            action="store_const",
            const="stale",
            help="Missing rows, and rows embedded by another provider or from an older text.",
        )
        modes.add_argument(
            "--all",
            dest="mode",
            action="store_const",
            const="all",
            help="Every row, even when its vector is current.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"Rows per provider call and per commit (default: {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count the rows that need work; embed nothing."
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="With --all: delete every stored vector first (needed when the provider's "
            "dimension count changed).",
        )
        add_database(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        labels: list[str] = options["labels"]
        fields = fields_for(labels)
        mode: str = options["mode"] or "missing"
        batch_size: int = options["batch_size"]
        dry_run: bool = options["dry_run"]
        verbosity: int = options["verbosity"]
        if batch_size < 1:
            raise CommandError(f"--batch-size should be a positive number, not {batch_size!r}.")
        if options["reset"] and mode != "all":
            raise CommandError(
                "--reset deletes every stored vector, so it needs --all to embed every row again."
            )
        for field in fields:
            if options["reset"]:
                if dry_run:
                    self._say(verbosity, f"Would delete every stored vector of {field.label}.")
                else:
                    writer.clear_vectors(field.store_for(options["database"]))
                    self._say(verbosity, f"Deleted every stored vector of {field.label}.")
            queryset = field.model._base_manager.using(options["database"]).all()
            result = self._backfill(queryset, field, mode, batch_size, dry_run, verbosity)
            self._summary(result, verbosity)

    def _backfill(
        self,
        queryset: QuerySet[Any],
        field: EmbeddingField,
        mode: str,
        batch_size: int,
        dry_run: bool,
        verbosity: int,
    ) -> BackfillResult:
        bar = ProgressBar(self.stdout) if verbosity >= 1 and self.stdout.isatty() else None
        seen: list[BackfillResult] = []

        def progress(result: BackfillResult) -> None:
            seen[:] = [result]
            if bar is not None:
                bar(result)

        try:
            (result,) = embed_queryset(
                queryset,
                batch_size=batch_size,
                field=field,
                mode=mode,
                progress=progress,
                dry_run=dry_run,
            )
        except KeyboardInterrupt:
            if bar is not None:
                bar.finish()
            done = f" after embedding {seen[0].embedded} rows" if seen else ""
            raise CommandError(
                f"Interrupted while embedding {field.label}{done}. Every finished batch "
                "is saved: run the command again to continue.",
                returncode=130,
            ) from None
        except EmbeddingsError as exc:
            if bar is not None:
                bar.finish()
            raise CommandError(str(exc)) from exc
        if bar is not None:
            bar.finish()
        return result

    def _summary(self, result: BackfillResult, verbosity: int) -> None:
        if result.dry_run:
            line = f"Would embed {result.selected} of {result.scanned} rows of {result.label}"
        else:
            line = f"Embedded {result.embedded} of {result.scanned} rows of {result.label}"
        if result.terms:
            line += f"; indexed the keywords of {result.terms} more (no provider call)"
        self._say(verbosity, f"{line} (--{result.mode}).")
        if verbosity >= 2:
            self.stdout.write(
                f"  {result.scanned} rows in {result.seconds:.2f} s ({result.rate:.0f} rows/s)."
            )

    def _say(self, verbosity: int, message: str) -> None:
        if verbosity >= 1:
            self.stdout.write(message)


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most ten times a second."""

    WIDTH = 28

    def __init__(self, out: OutputWrapper, *, interval: float = 0.1) -> None:
        self.out = out
        self.interval = interval
        self.drawn = 0.0
        self.length = 0
        self.last: BackfillResult | None = None

    def __call__(self, result: BackfillResult) -> None:
        self.last = result
        now = time.monotonic()
        if now - self.drawn < self.interval and result.scanned < result.total:
            return
        self.drawn = now
        self.draw(result)

    def draw(self, result: BackfillResult) -> None:
        total = max(result.total, result.scanned)
        fraction = result.scanned / total if total else 1.0
        filled = int(self.WIDTH * fraction)
        rate = result.rate
        if result.scanned >= total:
            eta = "done"
        elif rate > 0:
            eta = "ETA " + _duration((total - result.scanned) / rate)
        else:
            eta = "ETA --:--"
        line = (
            f"{result.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{fraction:4.0%} {result.scanned}/{total} rows, {rate:.{1 if rate < 10 else 0}f} "
            f"rows/s, {eta}"
        )
        padding = " " * max(0, self.length - len(line))
        self.length = len(line)
        self.out.write("\r" + line + padding, ending="")
        self.out.flush()

    def finish(self) -> None:
        if self.last is not None:
            self.draw(self.last)
        if self.length:
            self.out.write("")  # end the bar's line
            self.length = 0


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"

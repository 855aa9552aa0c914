"""``manage.py embeddings_status``: how far each field's store is from its table.

Per field: rows in the table; rows embedded by the current provider; rows
missing (pending: the store has no vector of the text their column names, as
after ``bulk_create``, a failed provider call, a crash after commit or a
deferred task that has not run yet, or rows with a text but a NULL column, from
raw SQL or from before the field existed); rows with no text to embed; rows stale
(embedded by another provider identity);
orphans (vectors of rows that no longer exist, and vector files with no index
entry); temp files; the store's version, journal length and dimensions.
Nothing is written. Rows whose text changed behind the ORM's back are not
counted as stale here (that needs every text): ``embeddings_backfill --stale
--dry-run`` counts them.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser

from django_embeddings import cache
from django_embeddings.backfill import is_pending, keys_with_text
from django_embeddings.checks import read_only_check_tags
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import EmbeddingField
from django_embeddings.management.commands._common import add_database, add_labels, fields_for

BATCH = 2000


class Command(BaseCommand):
    help = "Show, per EmbeddingField, how many rows are embedded, missing or stale."

    @property
    def requires_system_checks(self) -> list[str]:  # type: ignore[override]
        # Reading needs no write access: every check runs but E003 (store not writable).
        return read_only_check_tags()

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)
        parser.add_argument("--json", action="store_true", help="Print JSON, keyed by label.")
        add_database(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        labels: list[str] = options["labels"]
        using = options["database"]
        report = {field.label: field_status(field, using) for field in fields_for(labels)}
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
            return
        for label, status in report.items():
            self.stdout.write(label)
            provider = status["provider"]
            if status["identity"] is not None:
                provider += f" ({status['identity']})"
            else:
                provider += f" (unavailable: {status['provider_error']})"
            dimensions = str(status["dimensions"])
            if status["stored_dimensions"] not in (None, status["dimensions"]):
                dimensions += f" (store: {status['stored_dimensions']})"
            lines = [
                ("rows", status["rows"]),
                ("embedded", status["embedded"]),
                ("missing", status["missing"]),
                ("empty", status["empty"]),
                ("stale", status["stale"]),
                (
                    "keywords",
                    "off"
                    if status["keywords_missing"] is None
                    else f"{status['keywords_missing']} rows without terms",
                ),
                ("orphans", status["orphans"]),
                ("temp files", status["temp_files"]),
                ("store", status["store"]),
                ("version", status["version"]),
                ("journal", status["journal_entries"]),
                ("provider", provider),
                ("dimensions", dimensions),
                ("deferred", "yes" if status["deferred"] else "no"),
            ]
            for name, value in lines:
                self.stdout.write(f"  {name:<12}{value}")


def field_status(field: EmbeddingField, using: str = "default") -> dict[str, Any]:
    """The counts ``embeddings_status`` prints for ``field``, as a JSON-ready dict."""
    identity: str | None = None
    dimensions: int | None = None
    error: str | None = None
    try:
        provider = field.get_provider()
        identity, dimensions = provider.identity, provider.dimensions
    except (ImproperlyConfigured, EmbeddingsError, ImportError) as exc:
        error = str(exc)
    store = field.store_for(using)
    stats = store.stats()
    index = cache.get(store, keep=False)
    rows = embedded = missing = stale = empty = indexed_rows = without_terms = 0
    manager = field.model._base_manager.using(using)
    last: Any = None
    while True:
        page = manager.all() if last is None else manager.filter(pk__gt=last)
        batch = list(page.order_by("pk").values_list("pk", field.attname)[:BATCH])
        if not batch:
            break
        last = batch[-1][0]
        unrecorded: list[Any] = []
        current: list[str] = []  # rows whose vector is of their text
        for pk, column in batch:
            rows += 1
            meta = index.meta(field.key(pk))
            if meta is not None:
                indexed_rows += 1
            if column is None and meta is None:
                unrecorded.append(pk)  # an empty text, or one no save has recorded
            elif is_pending(column, meta):
                missing += 1
            elif identity is not None and meta is not None and meta[1] != identity:
                stale += 1
            else:
                embedded += 1
                current.append(field.key(pk))
        if field.keywords:
            without_terms += len(index.without_terms(current))
        if unrecorded:
            # Rows from raw SQL or from before the field existed have a text but a NULL
            # column: pending, as embeddings_backfill --missing finds them.
            with_text = len(keys_with_text(field, unrecorded, using=using))
            missing += with_text
            empty += len(unrecorded) - with_text
    return {
        "rows": rows,
        "embedded": embedded,
        "missing": missing,
        "empty": empty,
        "stale": stale,
        # Embedded rows whose keyword terms the store lacks (stored before the field
        # kept any): embeddings_backfill adds them without calling the provider.
        "keywords_missing": without_terms if field.keywords else None,
        # Counted from the same read as the rows, so a concurrent write cannot skew it.
        "orphans": max(0, len(index) - indexed_rows) + stats.unindexed_files,
        "temp_files": stats.temp_files,
        "store": store.kind,
        "version": stats.version,
        "snapshot_version": stats.snapshot_version,
        "journal_entries": stats.journal_entries,
        "vectors": stats.vectors,
        "identities": stats.identities,
        "provider": field.provider_alias,
        "identity": identity,
        "provider_error": error,
        "dimensions": dimensions,
        "stored_dimensions": stats.dimensions,
        "deferred": field.deferred,
    }

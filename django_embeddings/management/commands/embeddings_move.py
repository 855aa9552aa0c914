"""``manage.py embeddings_move --from files``: copy vectors into the configured store.

Switching ``DJANGO_EMBEDDINGS_STORE`` (``"files"`` <-> ``"database"``) starts from an
empty store; this copies each field's vectors, content hashes, provider identities
and keyword terms from the other kind of store of the same database, with no
provider call. The source is left as it was, so going back is a settings change;
delete it once you are sure. See :mod:`django_embeddings.store.database`.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_embeddings.checks import STORES
from django_embeddings.conf import conf
from django_embeddings.management.commands._common import add_database, add_labels, fields_for
from django_embeddings.transfer import copy_store


class Command(BaseCommand):
    help = "Copy stored embeddings from the other kind of store into the configured one."

    def add_arguments(self, parser: CommandParser) -> None:
        add_labels(parser)
        add_database(parser)
        parser.add_argument(
            "--from",
            dest="source",
            required=True,
            choices=STORES,
            help="The kind of store to copy from (the other one than DJANGO_EMBEDDINGS_STORE).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source_kind: str = options["source"]
        if source_kind == conf.STORE:
            raise CommandError(
                f"DJANGO_EMBEDDINGS_STORE is {conf.STORE!r} already: --from names the store "
                "to copy from, the other one."
            )
        using: str = options["database"]
        for field in fields_for(options["labels"]):
            source = field.store_for(using, source_kind)
            target = field.store_for(using)
            count = copy_store(source, target)
            if options["verbosity"] >= 1:
                self.stdout.write(f"Copied {count} embeddings of {field.label} from {source!r}.")

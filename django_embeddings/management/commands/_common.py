"""What the ``embeddings_*`` commands share: the label argument and its parsing.

Django skips modules whose name starts with an underscore when it looks for
commands, so this is not a command itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.management.base import CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from django_embeddings.fields import EmbeddingField
from django_embeddings.labels import LabelError, resolve


def add_labels(parser: CommandParser) -> None:
    parser.add_argument(
        "labels",
        nargs="*",
        metavar="app_label.ModelName[.field]",
        help="Models or fields to work on (default: every EmbeddingField).",
    )


def add_database(parser: CommandParser) -> None:
    parser.add_argument(
        "--database",
        default=DEFAULT_DB_ALIAS,
        help='The database whose rows count (default: "default").',
    )


def fields_for(labels: Sequence[str]) -> list[EmbeddingField]:
    """The fields ``labels`` name; ``CommandError`` naming a bad label."""
    try:
        return resolve(labels)
    except LabelError as exc:
        raise CommandError(str(exc)) from exc

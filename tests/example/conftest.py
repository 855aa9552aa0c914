"""Fixtures for the example project's tests: a small real corpus, embedded.

These tests need the example app installed, which ``tests.settings`` does not
do: under any other settings module they are not collected (``make test`` runs
them in their own pytest invocation with ``--ds=tests.example.settings``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

EXAMPLE_SETTINGS = "tests.example.settings"

if os.environ.get("DJANGO_SETTINGS_MODULE") != EXAMPLE_SETTINGS:
    collect_ignore_glob = ["test_*.py"]

# A few modules whose documents the tests can reason about on any Python 3.11+.
MODULES = "csv,json,difflib,gzip,datetime"


@pytest.fixture(scope="session")
def stdlib_records() -> list[dict[str, str]]:
    """The documentation of MODULES and the language topics, collected once."""
    from example_project.docs.management.commands.load_stdlib_docs import collect

    wanted = set(MODULES.split(","))
    return [
        record
        for record in collect(sys.executable)
        if record["module"].split(".")[0] in wanted
        or (record["kind"] == "topic" and record["name"] in ("assert", "for", "with"))
    ]


@pytest.fixture
def corpus(stdlib_records: list[dict[str, str]], db: Any) -> Any:
    """The small corpus, loaded and embedded; returns the Document model."""
    from django_embeddings.backfill import embed_queryset
    from example_project.docs.management.commands.load_stdlib_docs import upsert
    from example_project.docs.models import Document

    upsert(stdlib_records)
    embed_queryset(Document.objects.all())
    return Document

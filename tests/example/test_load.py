"""Collecting and loading the standard library's documentation; the demo's other commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from django_embeddings.backfill import embed_queryset
from example_project.docs import corpus as corpus_module
from example_project.docs.management.commands.load_stdlib_docs import collect, upsert
from example_project.docs.models import Document
from tests.utils import is_embedded

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


class TestCollect:
    def test_records(self, stdlib_records: list[dict[str, str]]) -> None:
        by_name = {(r["kind"], r["name"]): r for r in stdlib_records}
        dumps = by_name[("function", "json.dumps")]
        assert dumps["title"] == "json.dumps"
        assert dumps["module"] == "json"
        assert dumps["signature"].startswith("(obj, *, skipkeys=False")
        assert dumps["body"].startswith("Serialize ``obj`` to a JSON formatted ``str``.")
        # Re-exported where the documentation puts them, not where they are defined.
        assert ("class", "json.JSONDecoder") in by_name
        assert ("method", "json.JSONDecoder.decode") in by_name
        topic = by_name[("topic", "assert")]
        assert topic["title"] == 'The "assert" statement'
        assert topic["module"] == ""
        assert not topic["body"].startswith("*")
        for record in stdlib_records:
            assert set(record) == {"kind", "name", "title", "module", "signature", "body"}
            assert record["body"].strip()

    def test_whole_library(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("EXAMPLE_SECRET_TOKEN", "s3cr3t-t0ken")
        records = collect(sys.executable)
        # Defaults such as cgi.parse(environ=os.environ) never show the environment.
        assert not any("s3cr3t-t0ken" in json.dumps(r) for r in records)
        assert not any(sys.executable in r["signature"] for r in records)
        cgi_parse = [r for r in records if r["name"] == "cgi.parse"]  # gone in 3.13
        assert all("environ=os.environ" in r["signature"] for r in cgi_parse)
        assert len(records) > 3000
        names = {r["name"] for r in records}
        assert {"os.path.join", "str.split", "asyncio.Task", "subprocess.run", "len"} <= names
        modules = {r["module"].split(".")[0] for r in records}
        assert not modules & {"antigravity", "this", "tkinter", "idlelib", "test", "turtle"}
        assert not any(".test" in r["module"] or "__main__" in r["name"] for r in records)
        assert not any(" at 0x" in r["signature"] for r in records)
        assert len({(r["kind"], r["name"]) for r in records}) == len(records)
        assert {r["kind"] for r in records} == {k for k, _ in Document.Kind.choices}

    def test_skips_modules_with_side_effects(self) -> None:
        assert corpus_module._skipped("antigravity")
        assert corpus_module._skipped("this")
        assert corpus_module._skipped("tkinter.ttk")
        assert corpus_module._skipped("idlelib.pyshell")
        assert corpus_module._skipped("test.support")
        assert corpus_module._skipped("unittest.test")
        assert corpus_module._skipped("asyncio.__main__")
        assert corpus_module._skipped("_thread")
        assert not corpus_module._skipped("json.decoder")

    def test_collector_fails_loudly(self) -> None:
        with pytest.raises(CommandError, match="Could not collect the documentation"):
            collect("/nonexistent/python")

    def test_collector_usage(self) -> None:
        process = subprocess.run(
            [sys.executable, "-I", corpus_module.__file__], capture_output=True, text=True
        )
        assert process.returncode == 2
        assert "usage:" in process.stderr


@pytest.mark.django_db
class TestLoadCommand:
    def test_load_then_reload(self) -> None:
        output = run("load_stdlib_docs", modules="json,gzip")
        count = Document.objects.count()
        assert count > 20
        assert f"{count} documents from the standard library" in output
        assert f"{count} new, 0 changed, 0 removed." in output
        assert set(Document.objects.values_list("module", flat=True)) <= {
            "json",
            "json.decoder",
            "json.encoder",
            "json.scanner",
            "json.tool",
            "gzip",
        }
        # bulk_create embeds nothing: the rows are pending until embeddings_backfill.
        (pending,) = embed_queryset(Document.objects.all(), dry_run=True)
        assert pending.selected == count
        assert not any(is_embedded(doc) for doc in Document.objects.all())

        assert "0 new, 0 changed, 0 removed." in run("load_stdlib_docs", modules="json,gzip")

    def test_backfill_embeds_the_loaded_rows(self) -> None:
        run("load_stdlib_docs", modules="gzip")
        output = run("embeddings_backfill", "docs.Document")
        total = Document.objects.count()
        assert f"Embedded {total} of {total} rows of docs.Document.embedding" in output
        assert all(is_embedded(doc) for doc in Document.objects.all())
        top = Document.objects.semantic_search("compress bytes", k=1).get()
        assert top.module == "gzip"

    def test_upsert_updates_and_removes(self, stdlib_records: list[dict[str, str]]) -> None:
        records = [r for r in stdlib_records if r["module"] == "gzip"]
        assert upsert(records) == (len(records), 0, 0)
        call_command("embeddings_backfill", "docs.Document", verbosity=0)

        changed = {**records[0], "body": "A new text."}
        assert upsert([changed, *records[1:-1]]) == (0, 1, 1)
        doc = Document.objects.get(kind=changed["kind"], name=changed["name"])
        assert doc.body == "A new text."
        assert doc.embedding is None  # embeddings_backfill embeds it again
        assert not is_embedded(doc)
        (pending,) = embed_queryset(Document.objects.all())
        assert pending.embedded == 1
        assert is_embedded(doc)
        assert not Document.objects.filter(name=records[-1]["name"]).exists()

    def test_unknown_modules(self) -> None:
        with pytest.raises(CommandError, match="No documents found for --modules 'nosuch'"):
            run("load_stdlib_docs", modules="nosuch")


@pytest.mark.django_db
class TestDemoUser:
    def test_created_once(self) -> None:
        assert run("demo_user") == "Admin user created: username 'admin', password 'admin'.\n"
        user = get_user_model().objects.get(username="admin")
        assert user.is_superuser and user.is_staff and user.check_password("admin")
        assert run("demo_user") == "Admin user exists: username 'admin', password 'admin'.\n"

    def test_changed_password_is_not_reset(self) -> None:
        run("demo_user")
        user = get_user_model().objects.get(username="admin")
        user.set_password("s3cret-and-long")
        user.save()
        assert run("demo_user") == "Admin user exists: username 'admin', with your own password.\n"
        user.refresh_from_db()
        assert user.check_password("s3cret-and-long")


def test_project_settings_pass_the_system_checks() -> None:
    """``example_project/manage.py check`` with the project's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    process = subprocess.run(
        [sys.executable, str(REPO / "example_project" / "manage.py"), "check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO.parent,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert "System check identified no issues" in process.stdout

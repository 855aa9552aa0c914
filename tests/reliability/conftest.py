"""Fixtures of the reliability tests: a dedicated database for child processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.reliability.harness import Database, Server, child_env, database_problem


@pytest.fixture(scope="session")
def rel_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """``test_django_embeddings_rel_<pid>``, migrated once, dropped at the end of the session."""
    problem = database_problem()
    if problem is not None:
        skip_or_fail(problem)
    db = Database().create(tmp_path_factory.mktemp("rel-migrate"))
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def rel_db(rel_database: Database) -> Database:
    """The dedicated database, emptied for this test."""
    rel_database.truncate()
    return rel_database


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """Logs, ledgers and barriers of this test's child processes."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def server(rel_db: Database, store_dir: Path, scratch: Path) -> Iterator[Server]:
    """A ``worker serve`` child on the dedicated database and this test's store."""
    helper = Server(child_env(rel_db, store_dir), scratch / "serve.err")
    try:
        yield helper
    finally:
        helper.close()

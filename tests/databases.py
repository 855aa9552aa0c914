"""The tests' PostgreSQL connection, shared by every settings module (no side effects)."""

from __future__ import annotations

import os


def postgres_database(name: str) -> dict[str, object]:
    """Database ``name`` on the tests' PostgreSQL server (PG* variables, else 127.0.0.1:5432)."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "NAME": name,
    }

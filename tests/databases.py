"""The tests' database servers, shared by every settings module and fixture.

Importing this module has no side effects: settings modules import it in every
child process. PostgreSQL is reached with the PG* variables, MariaDB with the
MARIADB_* ones (else 127.0.0.1:3306 as ``django_embeddings``, a user that
:func:`mariadb_problem` creates through root's UNIX socket when it can).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from typing import Any

# Every database a test creates on MariaDB starts with this prefix: the test user's
# grants cover these databases and no other.
MARIADB_PREFIX = "test_"
# utf8mb4 (all of Unicode) and a case-insensitive collation, as most sites have.
MARIADB_CHARSET = "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"


def vendor() -> str:
    """``postgres``, ``mariadb`` or ``sqlite``: the database DJANGO_EMBEDDINGS_TEST_DB names."""
    name = os.environ.get("DJANGO_EMBEDDINGS_TEST_DB", "sqlite")
    return "mariadb" if name == "mysql" else name


def mysqlclient_installed() -> bool:
    return importlib.util.find_spec("MySQLdb") is not None


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


def mariadb_params() -> dict[str, Any]:
    """How the tests reach MariaDB over TCP (MARIADB_* variables, else the defaults)."""
    return {
        "host": os.environ.get("MARIADB_HOST", "127.0.0.1"),
        "port": int(os.environ.get("MARIADB_PORT", "3306")),
        "user": os.environ.get("MARIADB_USER", "django_embeddings"),
        "password": os.environ.get("MARIADB_PASSWORD", "django_embeddings"),
    }


def mariadb_database(name: str, test_name: str | None = None) -> dict[str, object]:
    """Database ``name`` (``test_name`` under Django's test runner) on MariaDB, in utf8mb4."""
    params = mariadb_params()
    return {
        "ENGINE": "django.db.backends.mysql",
        "HOST": params["host"],
        "PORT": str(params["port"]),
        "USER": params["user"],
        "PASSWORD": params["password"],
        "NAME": name,
        # Django's default on MySQL/MariaDB, spelled out: the package must hold under it.
        "OPTIONS": {"charset": "utf8mb4", "isolation_level": "read committed"},
        "TEST": {"NAME": test_name, "CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
    }


def mariadb_connect(database: str | None = None) -> Any:
    """A MySQLdb connection as the test user (autocommit), to create and drop databases."""
    import MySQLdb

    params = mariadb_params()
    extra = {"database": database} if database else {}
    connection = MySQLdb.connect(
        **params, charset="utf8mb4", connect_timeout=3, autocommit=True, **extra
    )
    return connection


def _grants(user: str, password: str) -> list[str]:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    pattern = MARIADB_PREFIX.replace("_", "\\_") + "%"  # `_` alone matches any character
    statements = []
    for host in ("127.0.0.1", "localhost"):
        account = f"'{user}'@'{host}'"
        statements += [
            f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{quoted}'",
            f"ALTER USER {account} IDENTIFIED BY '{quoted}'",
            # Django's test runner creates and drops test_<name> databases; the
            # multi-process tests create test_mp_* and test_django_embeddings_rel_*.
            f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO {account}",
        ]
    return statements


def mariadb_setup_sql() -> str:
    """The statements that create the test user, for a message telling how to run them."""
    params = mariadb_params()
    return "; ".join(_grants(params["user"], params["password"]))


def mariadb_problem() -> str | None:
    """Why the tests cannot use MariaDB, or ``None`` once the test user can log in.

    Creates the test user when it cannot log in yet, as root over the local UNIX
    socket (root's usual passwordless login on Debian); idempotent.
    """
    if not mysqlclient_installed():
        return (
            "mysqlclient is not installed (pip install mysqlclient; it builds against "
            "the MariaDB client headers: apt-get install libmariadb-dev pkg-config)"
        )
    import MySQLdb

    params = mariadb_params()
    try:
        socket.create_connection((params["host"], params["port"]), timeout=1).close()
    except OSError:
        return f"MariaDB is not reachable on {params['host']}:{params['port']}"
    try:
        mariadb_connect().close()
        return None
    except MySQLdb.Error:
        pass
    try:
        root = MySQLdb.connect(
            user=os.environ.get("MARIADB_ROOT_USER", "root"),
            unix_socket=os.environ.get("MARIADB_SOCKET", "/run/mysqld/mysqld.sock"),
            connect_timeout=3,
            autocommit=True,
        )
        try:
            cursor = root.cursor()
            for statement in _grants(params["user"], params["password"]):
                cursor.execute(statement)
        finally:
            root.close()
        mariadb_connect().close()
    except MySQLdb.Error as exc:
        return (
            f"the MariaDB test user {params['user']!r} cannot log in and could not be "
            f"created as root over the UNIX socket ({exc}); as root, run: {mariadb_setup_sql()}"
        )
    return None

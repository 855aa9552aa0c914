"""The tox environments ``make test`` runs: those whose services this machine has.

Prints the environments of ``sys.argv[1]`` (comma-separated) that can run, and on
stderr a line for each one left out and why: a MariaDB environment needs the
MariaDB client headers (to build mysqlclient) and a server, a PostgreSQL one a
server. Under ``CI=true`` nothing is left out: a missing service fails the run.
Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _has_mariadb_headers() -> bool:
    if os.environ.get("MYSQLCLIENT_CFLAGS"):  # mysqlclient's own override of pkg-config
        return True
    if shutil.which("pkg-config") is None:
        return False
    return any(
        subprocess.run(["pkg-config", "--exists", name], check=False).returncode == 0
        for name in ("mysqlclient", "mariadb", "libmariadb")
    )


def problem(env: str) -> str | None:
    """Why ``env`` cannot run on this machine, or ``None``."""
    factors = env.split("-")
    if "mariadb" in factors:
        if not _has_mariadb_headers():
            return (
                "the MariaDB client headers are missing, so mysqlclient cannot be built "
                "(Debian: apt-get install libmariadb-dev pkg-config)"
            )
        host = os.environ.get("MARIADB_HOST", "127.0.0.1")
        port = int(os.environ.get("MARIADB_PORT", "3306"))
        if not _reachable(host, port):
            return f"no MariaDB server on {host}:{port}"
    if "postgres" in factors:
        host = os.environ.get("PGHOST", "127.0.0.1")
        port = int(os.environ.get("PGPORT", "5432"))
        if not _reachable(host, port):
            return f"no PostgreSQL server on {host}:{port}"
    return None


def main() -> int:
    envs = [env for env in sys.argv[1].split(",") if env]
    on_ci = os.environ.get("CI", "").lower() == "true"
    chosen = []
    for env in envs:
        reason = None if on_ci else problem(env)
        if reason is None:
            chosen.append(env)
        else:
            print(f"SKIPPED {env}: {reason}", file=sys.stderr)
    print(",".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Eight processes writing at once into one store and one database lose nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.reliability.harness import (
    Database,
    Server,
    resume,
    run_concurrency,
    run_same_key_race,
    seed_for_run,
    summarize,
    wait_stopped,
)

pytestmark = pytest.mark.slow

# Operations per writer; DJANGO_EMBEDDINGS_SOAK=1 runs a longer soak.
OPS = 1500 if os.environ.get("DJANGO_EMBEDDINGS_SOAK") == "1" else 250


def test_eight_writers_leave_the_store_equal_to_the_database(
    rel_db: Database, store_dir: Path, scratch: Path
) -> None:
    outcome = run_concurrency(rel_db, store_dir, scratch, workers=8, ops=OPS, seed=seed_for_run())
    details = outcome.details
    assert details["errors"] == []
    # Exactly the embedded rows, each with its current text's exact vector; gc finds nothing.
    assert details["audit"] == {}, details["audit"]
    assert outcome.lost == 0 and outcome.stale == 0
    # Every process's in-memory index, after its last check, equals a fresh load.
    assert details["cache"] == {}
    assert details["entries"] == outcome.rows_checked > 0
    counts = details["counts"]
    assert counts["shared_update"] > 0 and counts["shared_delete"] > 0 and counts["delete"] > 0


def test_one_key_stored_by_six_processes_at_once_keeps_file_and_entry_together(
    tmp_path: Path,
) -> None:
    """The vector file of a key is always the vector of its newest journal entry.

    Six processes store the same key at the same instant, round after round; after
    each round the entry that won must name the text whose vector is in the file.
    (Renaming files outside the lock let one writer's file land under another's
    entry, in about a third of the rounds.)
    """
    outcome = run_same_key_race(tmp_path / "race.Model" / "field", workers=6, rounds=60)
    assert outcome.details["problems"] == []
    assert outcome.details["exit_codes"] == [0] * 6


def paused(server: Server, ops: list[list[object]], pause: str) -> int:
    """Fork a process that runs ``ops`` and stops itself at ``pause``; its pid."""
    pid = int(server.call("fork_ops", ops=ops, pause=pause)["pid"])
    wait_stopped(pid)
    return pid


def assert_consistent(server: Server) -> dict[str, object]:
    report = server.call("audit")["report"]
    assert summarize(report) == {}
    return report


class TestInterleavings:
    """Writers paused (SIGSTOP) at chosen instants while another process writes the row."""

    def test_delete_then_recreate_while_the_delete_is_still_removing(self, server: Server) -> None:
        server.call("ops", ops=[["create", 5, "first text about kilo"]])
        pid = paused(server, [["delete", 5]], "before-remove")  # committed, not removed
        server.call("ops", ops=[["create", 5, "second text about lima"]])
        assert resume(server, pid)["code"] == 0
        report = assert_consistent(server)
        assert report["entries"] == 1

    def test_update_then_delete_while_the_update_is_storing(self, server: Server) -> None:
        server.call("ops", ops=[["create", 6, "text about mike"]])
        pid = paused(server, [["update", 6, "newer text about oscar"]], "after-commit")
        server.call("ops", ops=[["delete", 6]])
        assert resume(server, pid)["code"] == 0
        report = assert_consistent(server)
        assert report["entries"] == 0 and report["rows"] == 0

    def test_two_updates_finishing_in_the_opposite_order(self, server: Server) -> None:
        server.call("ops", ops=[["create", 7, "text about papa"]])
        pid = paused(server, [["update", 7, "older text about quebec"]], "after-commit")
        server.call("ops", ops=[["update", 7, "newest text about romeo"]])
        assert resume(server, pid)["code"] == 0
        assert_consistent(server)

    def test_row_recreated_while_a_store_is_removing_it_as_gone(self, server: Server) -> None:
        """sync stored the row, found it deleted, and is removing it when it comes back."""
        server.call("ops", ops=[["create", 8, "text about sierra"]])
        pid = paused(server, [["update", 8, "text about tango"]], "before-reread,before-remove")
        server.call("ops", ops=[["delete", 8]])
        os.kill(pid, signal.SIGCONT)  # re-reads, finds the row gone, stops before removing it
        wait_stopped(pid)
        server.call("ops", ops=[["create", 8, "text about uniform"]])
        assert resume(server, pid)["code"] == 0
        report = assert_consistent(server)
        assert report["entries"] == 1

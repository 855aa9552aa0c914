"""SIGKILL at any instant: the store still loads, agrees with the database, and repairs.

The write path commits the database first (each row's column records the hash
of its text, in the save's own statement) and writes the store in
``transaction.on_commit``. A process killed between the two leaves rows pending:
a store entry missing (a new row) or of the old text (an updated row: never
served, since a search checks the entry's hash against the column), or an
orphaned entry (a deleted row). That is the documented window:
``embeddings_backfill --missing`` embeds the pending rows, ``embeddings_gc``
removes orphans and ``embeddings_sweep`` the temp files of interrupted writes.
What must never happen: a disagreement on any other row, a column that does not
name its row's text, a pending row served by a search, an entry whose vector is
not its text's embedding, a store that fails to load.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.harness import Database, run_crashes, run_store_crashes, seed_for_run
from tests.reliability.worker import KILL_POINTS

pytestmark = pytest.mark.slow

SOAK = os.environ.get("DJANGO_EMBEDDINGS_SOAK") == "1"


def test_writer_killed_at_every_point_and_at_random_instants(
    rel_db: Database, store_dir: Path, scratch: Path
) -> None:
    kills = 200 if SOAK else 2 * 2 * len(KILL_POINTS)  # each point twice, as many random
    seed = seed_for_run()
    outcome = run_crashes(rel_db, store_dir, scratch, kills=kills, seed=seed)
    details = outcome.details
    assert details["violations"] == [], f"seed {seed}"
    assert outcome.lost == 0 and outcome.stale == 0
    assert outcome.faults == kills
    assert set(details["where"]) == {*KILL_POINTS, "random instant"}
    # The window was really exercised, and repaired by embeddings_backfill --missing.
    assert details["window"].get("missing", 0) + details["window"].get("stale", 0) > 0
    assert details["repairs"]["backfilled"] > 0


@pytest.mark.parametrize("merges", ["in the save", "in the background"])
def test_store_writer_killed_during_puts_deletes_and_compactions(
    tmp_path: Path, merges: str
) -> None:
    """Store level: every acknowledged write survives a kill; only the call in flight may
    not. A merge killed at any point loses nothing either."""
    outcome = run_store_crashes(
        tmp_path / "crash.Model" / "field",
        tmp_path / "ledger",
        kills=30 if SOAK else 8,
        seed=seed_for_run(),
        background=merges == "in the background",
    )
    assert outcome.details["problems"] == []
    assert outcome.lost == 0 and outcome.stale == 0
    assert outcome.rows_checked > 0

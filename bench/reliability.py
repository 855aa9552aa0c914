"""``python -m bench.reliability [--quick]``: the fault scenarios of tests/reliability, larger.

Runs each scenario (concurrent writers, one key raced by six processes, SIGKILLed
writers at the field and the store level, read-only and full disks, Redis
faults) against a throwaway PostgreSQL database and store directory, and prints
a Markdown table: faults injected, operations done, rows checked, lost rows and
stale results. It only reports; the tests assert.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.reliability import harness
from tests.reliability.disks import mount_problem
from tests.reliability.harness import Database, Outcome

SCALES = {
    # scenario: (quick, full)
    "writers": (150, 1000),  # operations per process, 8 processes
    "race": (30, 300),  # rounds of 6 processes storing one key
    "kills": (14, 100),  # SIGKILLs of a Django writer
    "store_kills": (5, 40),  # SIGKILLs of a store-only writer
    "disk": (10, 60),  # saves per disk fault
    "redis": (1, 4),  # cycles of every Redis fault
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    parser.add_argument("--seed", type=int, default=harness.seed_for_run())
    args = parser.parse_args(argv)
    size = {name: scale[0 if args.quick else 1] for name, scale in SCALES.items()}
    problem = harness.database_problem()
    if problem is not None:
        print(f"Cannot run: {problem}", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    db = Database().create(root / "migrate")
    rows: list[tuple[Outcome, float]] = []
    try:
        scenarios: list[tuple[str, Callable[[Path], Outcome]]] = [
            ("writers", lambda d: harness.run_concurrency(
                db, d / "store", d, workers=8, ops=size["writers"], seed=args.seed)),
            ("race", lambda d: harness.run_same_key_race(
                d / "race.Model" / "field", workers=6, rounds=size["race"])),
            ("kills", lambda d: harness.run_crashes(
                db, d / "store", d, kills=size["kills"], seed=args.seed)),
            ("store_kills", lambda d: harness.run_store_crashes(
                d / "crash.Model" / "field", d / "ledger", kills=size["store_kills"],
                seed=args.seed)),
            ("disk", lambda d: harness.run_disk_faults(db, d, saves=size["disk"])),
            ("redis", lambda d: _redis(db, d, size["redis"])),
        ]  # fmt: skip
        for name, scenario in scenarios:
            if name == "disk" and mount_problem() is not None:
                print(f"skipping the disk faults: {mount_problem()}", file=sys.stderr)
                continue
            directory = root / name
            directory.mkdir()
            db.truncate()
            print(f"running {name}...", file=sys.stderr, flush=True)
            started = time.monotonic()
            outcome = scenario(directory)
            rows.append((outcome, time.monotonic() - started))
            for problem_text in _problems(outcome)[:5]:
                print(f"  {name}: {problem_text}", file=sys.stderr)
    finally:
        db.drop()
        shutil.rmtree(root, ignore_errors=True)
    print(_table(rows, quick=args.quick, seed=args.seed))
    return 0


def _redis(db: Database, directory: Path, cycles: int) -> Outcome:
    from tests.conftest import RedisServer

    server = RedisServer(directory, "--enable-debug-command", "yes").start()
    try:
        return harness.run_redis_faults(db, directory / "store", directory, server, cycles=cycles)
    finally:
        server.stop()


def _problems(outcome: Outcome) -> list[str]:
    details = outcome.details
    found: list[str] = []
    for key in ("problems", "violations", "errors"):
        found += [str(item) for item in details.get(key, [])]
    if details.get("audit"):
        found.append(f"audit: {details['audit']}")
    if details.get("cache"):
        found.append(f"cached indexes differ: {details['cache']}")
    return found


def _table(rows: list[tuple[Outcome, float]], *, quick: bool, seed: int) -> str:
    lines = [
        f"Reliability ({'quick' if quick else 'full'} run, seed {seed})",
        "",
        "| scenario | faults injected | operations | rows checked | lost | stale results "
        "| problems | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for outcome, seconds in rows:
        lines.append(
            f"| {outcome.name} | {outcome.faults} | {outcome.operations} | "
            f"{outcome.rows_checked} | {outcome.lost} | {outcome.stale} | "
            f"{len(_problems(outcome))} | {seconds:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

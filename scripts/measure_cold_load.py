"""Measure the longest GIL hold while the built-in static model loads.

A heartbeat thread sleeps 1 ms in a loop and records how late it wakes; another
thread loads the model and embeds one query, as an async view's first request
does in its worker thread. The heartbeat's worst lateness is the longest the
loading thread kept every other thread, an event loop included, from running.

Each load runs on a fresh provider, so on a fresh model: ``--runs`` of them
with the shipped files (``vocab.txt``, ``wordpiece.json``), and as many on a
copy without them, which builds tokenizers' own model as before those files.

    python scripts/measure_cold_load.py [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from django_embeddings.providers import wordpiece  # noqa: E402
from django_embeddings.providers.static import DEFAULT_PATH, StaticModelProvider  # noqa: E402


class Heartbeat:
    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - started - 0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def cold_load(path: Path) -> tuple[float, float]:
    """(seconds the load took, the heartbeat's worst lateness in seconds)."""
    provider = StaticModelProvider(path=path)
    provider.dimensions  # noqa: B018 - config.json, read before the timed load
    time.sleep(0.05)
    beat = Heartbeat()
    time.sleep(0.02)
    beat.worst = 0.0
    loader = threading.Thread(target=provider.embed, args=(["read a csv file"], "query"))
    started = time.perf_counter()
    loader.start()
    loader.join()
    took = time.perf_counter() - started
    time.sleep(0.01)
    beat.stop()
    return took, beat.worst


def report(label: str, path: Path, runs: int) -> None:
    results = [cold_load(path) for _ in range(runs)]
    worst = [late * 1000 for _, late in results]
    took = [seconds * 1000 for seconds, _ in results]
    print(
        f"{label:<34} load {statistics.median(took):6.1f} ms (median); longest GIL hold: "
        f"median {statistics.median(worst):5.1f} ms, max {max(worst):5.1f} ms "
        f"({', '.join(f'{w:.1f}' for w in worst)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    report("shipped files (vocab.txt)", DEFAULT_PATH, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "model"
        shutil.copytree(DEFAULT_PATH, bare)
        (bare / wordpiece.VOCAB_FILE).unlink()
        (bare / wordpiece.INDEX_FILE).unlink()
        report("tokenizers' model (no vocab.txt)", bare, args.runs)


if __name__ == "__main__":
    main()

"""What the machine is and how fast it can stream memory: the floor of an exact scan."""

from __future__ import annotations

import datetime
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def describe() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = 0
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(memory / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas(),
        "openblas_env": {
            name: os.environ[name]
            for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")
            if name in os.environ
        },
    }


def blas() -> list[dict[str, Any]]:
    """The BLAS/OpenMP libraries numpy (and FAISS, once imported) run, and their kernels
    (none listed without threadpoolctl, which the bench extra installs)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []

    return [
        {
            "api": info.get("internal_api"),
            "kernel": info.get("architecture"),
            "threads": info.get("num_threads"),
            "version": info.get("version"),
        }
        for info in threadpool_info()
    ]


def bandwidth(size_bytes: int = 1 << 30, repeats: int = 9) -> dict[str, float]:
    """Best streaming-read rate in GB/s, with one thread and with every core.

    A read-only reduction (``max``) over an array far larger than the caches,
    split across threads that release the GIL: the rate an exact scan of a
    matrix cannot beat.
    """
    data = np.ones(size_bytes // 4, dtype=np.float32)
    threads = os.cpu_count() or 1
    parts = np.array_split(data, threads)
    rates: dict[str, float] = {}
    with ThreadPoolExecutor(threads) as pool:
        for name, run in (
            ("one_thread", lambda: data.max()),
            ("all_threads", lambda: list(pool.map(np.max, parts))),
        ):
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - started)
            rates[name] = data.nbytes / best / 1e9
    return rates


def memory_of(pid: int) -> dict[str, int]:
    """Rss, Pss and their parts (bytes) from /proc/<pid>/smaps_rollup."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out

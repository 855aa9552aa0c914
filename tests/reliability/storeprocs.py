"""Targets of store-level child processes (no Django: the store knows nothing of it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from django_embeddings.store import Store

KEY = "shared"


def vector_of(tag: str, dims: int = 8) -> Any:
    seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def hash_of(tag: str) -> str:
    return hashlib.blake2b(tag.encode(), digest_size=16).hexdigest()


def same_key_writer(path: str, worker: int, rounds: int, start: Any, end: Any) -> None:
    """Each round, every worker stores (or worker 0 sometimes deletes) the same key at once."""
    store = Store(Path(path), label="race.Model.field", compact_threshold=50)
    for round_ in range(rounds):
        start.wait(timeout=60)
        tag = f"{worker}-{round_}"
        if worker == 0 and round_ % 4 == 1:
            store.delete_many([KEY])
        else:
            store.put_many([(KEY, vector_of(tag), hash_of(tag), "id")])
        end.wait(timeout=60)


def crash_store_writer(path: str, ledger: str, seed: int, background: bool = False) -> None:
    """Put, delete and compact until killed, logging each call before and after it;
    ``background``: saves leave compactions to a thread, and the writer merges too."""
    import json
    import random

    rng = random.Random(seed)
    store = Store(
        Path(path), label="crash.Model.field", compact_threshold=400, merge_in_background=background
    )
    with open(ledger, "a", buffering=1) as log:
        step = 0
        while True:
            step += 1
            choice = rng.random()
            if choice < 0.7:
                keys = [str(rng.randrange(3000)) for _ in range(rng.randint(1, 50))]
                keys = list(dict.fromkeys(keys))
                tags = {key: f"{seed}-{step}-{key}" for key in keys}
                log.write(json.dumps({"step": step, "put": tags}) + "\n")
                store.put_many((k, vector_of(t), hash_of(t), "id") for k, t in tags.items())
            elif choice < 0.9:
                keys = list(dict.fromkeys(str(rng.randrange(3000)) for _ in range(10)))
                log.write(json.dumps({"step": step, "del": keys}) + "\n")
                store.delete_many(keys)
            else:
                log.write(json.dumps({"step": step, "compact": True}) + "\n")
                store.merge() if background else store.compact()
            log.write(json.dumps({"done": step}) + "\n")

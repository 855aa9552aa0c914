"""How many rows a search's filter selected, remembered for a while per filter.

A filtered semantic search first learns how many rows its filter selects: few
enough and it reads their keys and scores only those rows; else it scores every
row and asks the database to check the best. Learning that costs a query that
visits every selected row (reading the keys with a LIMIT, or a COUNT). Sites
search with the same few filters over and over (a tenant, a category, published
rows), so the answer is kept here for :data:`SECONDS`, per process.

Only the path and the first batch of candidates depend on it, never the result:
a count that is out of date costs a search some speed (more rounds of candidates,
or keys read and then found too many), and is corrected by that search.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["ENTRIES", "SECONDS", "clear", "recall", "remember"]

SECONDS = 30.0  # how long a count is trusted: rows come and go
ENTRIES = 256  # filters remembered (the least recently used go first)

_counts: OrderedDict[Hashable, tuple[int, float]] = OrderedDict()
_lock = threading.Lock()


def recall(key: Hashable) -> int | None:
    """The count remembered for ``key``, if it is recent enough."""
    with _lock:
        found = _counts.get(key)
        if found is None:
            return None
        count, at = found
        if time.monotonic() - at > SECONDS:
            del _counts[key]
            return None
        _counts.move_to_end(key)
        return count


def remember(key: Hashable, count: int) -> None:
    with _lock:
        _counts[key] = (count, time.monotonic())
        _counts.move_to_end(key)
        while len(_counts) > ENTRIES:
            _counts.popitem(last=False)


def clear() -> None:
    with _lock:
        _counts.clear()

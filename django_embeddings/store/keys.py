"""Row keys as a sorted array: int64 when every key is a canonical integer, else unicode.

Integer keys (the common ``AutoField`` case) take 8 bytes each, sort and search fast,
and map a million rows in a blink; any other key (UUIDs, slugs) is kept as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Keys = npt.NDArray[np.int64] | npt.NDArray[np.str_]

_INT64 = np.iinfo(np.int64)


def as_int(key: str) -> int | None:
    """``int(key)`` if ``key`` is exactly how that integer prints, else ``None``."""
    digits = key[1:] if key.startswith("-") else key
    if not (digits.isascii() and digits.isdigit()) or len(key) > 20:
        return None
    value = int(key)
    if str(value) != key or not _INT64.min <= value <= _INT64.max:
        return None
    return value


def pack(keys: Sequence[str]) -> Keys:
    """An array of ``keys`` (unsorted), integer-typed when they all allow it."""
    numbers = [as_int(key) for key in keys]
    if all(number is not None for number in numbers):
        return np.array(numbers, dtype=np.int64)
    return np.array(keys, dtype=str)


def concat(first: npt.NDArray[Any], second: Keys) -> Keys:
    if first.dtype.kind == second.dtype.kind == "i":
        return np.concatenate([first, second])
    return np.concatenate([first.astype(str), second.astype(str)])


def rows_of(keys: Keys, wanted: Sequence[str]) -> npt.NDArray[np.intp]:
    """Rows of ``wanted`` in the sorted ``keys``; -1 for keys not there."""
    if not len(keys) or not len(wanted):
        return np.full(len(wanted), -1, dtype=np.intp)
    if keys.dtype.kind == "i":
        numbers = [as_int(key) for key in wanted]
        known = np.array([n is not None for n in numbers], dtype=bool)
        probe: npt.NDArray[np.generic] = np.array(
            [n if n is not None else 0 for n in numbers], dtype=np.int64
        )
    else:
        known = np.ones(len(wanted), dtype=bool)
        probe = np.asarray(wanted, dtype=str)
    rows = np.searchsorted(keys, probe)
    inside = rows < len(keys)
    found = np.zeros(len(wanted), dtype=bool)
    found[inside] = np.asarray(keys[rows[inside]]) == probe[inside]
    return np.where(found & known, rows, -1)


def rows_of_ints(keys: Keys, wanted: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """:func:`rows_of` for integer keys given as an int64 array (vectorized throughout)."""
    if not len(keys) or not len(wanted):
        return np.full(len(wanted), -1, dtype=np.intp)
    if keys.dtype.kind != "i":
        return rows_of(keys, [str(number) for number in wanted.tolist()])
    rows = np.searchsorted(keys, wanted)
    inside = rows < len(keys)
    found = np.zeros(len(wanted), dtype=bool)
    found[inside] = np.asarray(keys[rows[inside]]) == wanted[inside]
    return np.where(found, rows, -1)


def find(keys: Keys, key: str) -> int | None:
    """The row of one key (a save's lookup: no array is built for it)."""
    if not len(keys):
        return None
    probe: int | str | None = as_int(key) if keys.dtype.kind == "i" else key
    if probe is None:
        return None
    row = int(np.searchsorted(keys, probe))
    return row if row < len(keys) and keys[row] == probe else None

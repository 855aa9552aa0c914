"""The append-only journal of index entries.

Every put or delete appends one JSON line carrying the next version. Appends
happen under a short exclusive ``flock`` so concurrent writer processes never
lose or duplicate each other's entries, and cost O(1) whatever the store's size
(popoto rewrote the whole ``_index.json`` per save and lost entries under races).

The first line is a header ``{"base": N}``: the snapshot version the journal
continues. Compaction replaces the journal with a new file whose base is the new
snapshot's version; a reader that sees a base newer than the snapshot it read
knows it raced a compaction and reads again, so readers never take a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

JOURNAL = "_journal"
LOCK = "_lock"
_TAIL_PROBE = 4096


@dataclass(frozen=True)
class Entry:
    """One index change: ``op`` is ``"put"`` or ``"del"``."""

    version: int
    op: str
    key: str
    hash: str = ""
    identity: str = ""

    def to_line(self) -> bytes:
        record: dict[str, object] = {"v": self.version, "op": self.op, "k": self.key}
        if self.op == "put":
            record["h"] = self.hash
            record["i"] = self.identity
        return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


@dataclass(frozen=True)
class Position:
    """Where a reader stopped: the journal file's identity and a byte offset."""

    inode: int
    offset: int


@dataclass(frozen=True)
class Tail:
    base: int
    entries: list[Entry]
    position: Position


def parse_entry(line: bytes) -> Entry | None:
    try:
        record = json.loads(line)
        op = record["op"]
        if op not in ("put", "del"):
            return None
        version = record["v"]
        key = record["k"]
        if not isinstance(version, int) or not isinstance(key, str):
            return None
        return Entry(version, op, key, str(record.get("h", "")), str(record.get("i", "")))
    except (ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the store's exclusive writer lock (a separate file, so journal swaps keep it)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def create(directory: Path, base: int) -> None:
    """Start a new journal continuing snapshot ``base``; the caller holds the lock."""
    from django_embeddings.store.files import write_atomic

    write_atomic(directory / JOURNAL, json.dumps({"base": base}).encode("ascii") + b"\n")


def append(directory: Path, entries: list[Entry]) -> None:
    """Append entries; the caller holds the lock and numbered them from :func:`last_version`."""
    path = directory / JOURNAL
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        payload = b"".join(entry.to_line() for entry in entries)
        if _ends_without_newline(fd):
            # A writer killed mid-line left a fragment: close it so ours stays parseable.
            payload = b"\n" + payload
        # One write per batch; readers stop at the last full line. A full disk can take
        # part of it: write on until the rest fails, so the caller learns of it (a short
        # write taken as complete would hand out versions the journal does not hold).
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def last_version(directory: Path) -> int | None:
    """The version of the last complete entry (or the header's base); O(1) in the size."""
    path = directory / JOURNAL
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_PROBE)
            while True:
                handle.seek(start)
                lines = handle.read(size - start).split(b"\n")
                # lines[0] may be cut by the probe window; the last may be a torn fragment.
                candidates = lines[1:] if start else lines
                for line in reversed(candidates):
                    entry = parse_entry(line) if line else None
                    if entry is not None:
                        return entry.version
                if start == 0:
                    return _read_base(lines[0])
                start = max(0, start - _TAIL_PROBE * 16)
    except FileNotFoundError:
        return None


def read(directory: Path, position: Position | None = None) -> Tail | None:
    """Read complete entries from ``position`` (or from the start).

    Returns ``None`` when the journal was replaced since ``position`` (a compaction):
    the caller must reload the snapshot.
    """
    path = directory / JOURNAL
    offset = position.offset if position else 0
    try:
        with open(path, "rb") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            if position is not None and position.inode != inode:
                return None
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n") + 1  # a torn last line is left for the next read
    lines = data[:end].split(b"\n")[:-1]
    base = -1
    if offset == 0:
        if not lines:
            return None
        base = _read_base(lines[0])
        lines = lines[1:]
    entries = []
    for line in lines:
        entry = parse_entry(line)
        if entry is None:
            if line.strip():
                logger.warning("Skipping a damaged line in %s: %r", path, line[:80])
            continue
        entries.append(entry)
    return Tail(base, entries, Position(inode, offset + end))


def unreadable(directory: Path) -> bool:
    """Does the journal exist without one complete line (so not even its header)?"""
    try:
        with open(directory / JOURNAL, "rb") as handle:
            return b"\n" not in handle.read(1 << 16)
    except FileNotFoundError:
        return False


def _read_base(line: bytes) -> int:
    try:
        base = json.loads(line)["base"]
    except (ValueError, KeyError, TypeError):
        return -1
    return base if isinstance(base, int) else -1


def _ends_without_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"

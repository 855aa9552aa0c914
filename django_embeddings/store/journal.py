"""The append-only journal of index entries.

Every put or delete appends one JSON line carrying the next version. Appends
happen under a short exclusive ``flock`` so concurrent writer processes never
lose or duplicate each other's entries, and cost O(1) whatever the store's size
(popoto rewrote the whole ``_index.json`` per save and lost entries under races).

The first line is a header ``{"base": N, "id": "..."}``: the snapshot version the
journal continues, and a random id. Compaction replaces the journal with a new
file whose base is the new snapshot's version; a reader that sees a base newer
than the snapshot it read knows it raced a compaction and reads again, so readers
never take a lock. A reader that goes on from a :class:`Position` checks the file
is still the same journal by its inode and header (the id: a new journal may get
the inode of the one it replaced).

Entries are JSON arrays of nine values, by position, and a put whose row's terms
are known (:mod:`django_embeddings.keywords.terms`) has a tenth, its bag of terms::

    [version, "put", key, content hash, provider identity, offset, dimensions, checksum, time]
    [version, "put", key, ..., time, "handshake tls:2 timeout"]
    [version, "del", key, "", "", -1, 0, -1, 0]

``offset`` and ``dimensions`` locate a put's vector in the vector log of the
journal's generation (:mod:`.vectorlog`); ``checksum`` is of its bytes, so a log
damaged after the fact (a power loss, a file cut or replaced) never yields
another vector; ``time`` (seconds) is when it was stored, for garbage
collection's age guard. A whole journal of such lines is decoded and checked in
one call to msgspec, in C: a cold start reads thousands of entries in a few
milliseconds. Lines written by 0.1.0 are objects (``{"v": 1, "op": "put", "k":
...}``) naming no offset; their vector is a per-row ``.npy`` file (:mod:`.files`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from django_embeddings.store.permissions import DEFAULT, Permissions
from django_embeddings.typing import Vector

logger = logging.getLogger(__name__)

JOURNAL = "_journal"
LOCK = "_lock"
_TAIL_PROBE = 4096
_HEADER_PROBE = 128
NO_OFFSET = -1
NO_CHECKSUM = -1


@dataclass(frozen=True)
class Entry:
    """One index change: ``op`` is ``"put"`` or ``"del"``.

    ``offset``, ``dimensions`` and ``checksum`` locate a put's vector in the vector
    log of the journal it was read from (``offset`` ``None``: a per-row file, or not
    known, e.g. an entry received from a peer). They are not part of its identity.
    ``terms`` is the encoded bag of the row's text (``None``: not known).
    """

    version: int
    op: str
    key: str
    hash: str = ""
    identity: str = ""
    offset: int | None = field(default=None, compare=False)
    dimensions: int = field(default=0, compare=False)
    checksum: int | None = field(default=None, compare=False)
    terms: str | None = field(default=None, compare=False)

    def to_line(self, stamp: int = 0) -> bytes:
        """The journal line; ``stamp`` (seconds since the epoch) dates a put for GC's age guard."""
        return line(
            self.version,
            self.op,
            self.key,
            self.hash,
            self.identity,
            NO_OFFSET if self.offset is None else self.offset,
            self.dimensions,
            NO_CHECKSUM if self.checksum is None else self.checksum,
            stamp,
            self.terms,
        )


def line(
    version: int,
    op: str,
    key: str,
    content_hash: str,
    identity: str,
    offset: int,
    dimensions: int,
    checksum: int,
    stamp: int,
    terms: str | None,
) -> bytes:
    """One journal line from its fields (:data:`NO_OFFSET`, :data:`NO_CHECKSUM`: none)."""
    record: list[object]
    if op == "put":
        record = [version, "put", key, content_hash, identity]
        record += [offset, dimensions if offset != NO_OFFSET else 0, checksum, stamp]
        if terms is not None:
            # Only then: a store without keywords writes the lines it always wrote.
            record.append(terms)
    else:
        record = [version, op, key, "", "", NO_OFFSET, 0, NO_CHECKSUM, 0]
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def is_bag(bag: str) -> bool:
    """Is ``bag`` a bag of terms as :func:`~django_embeddings.keywords.terms.encode` writes
    them? Checked where bags come in (a put, a peer's message, an imported file), so a
    compaction never meets one it cannot keep: a snapshot's vocabulary is one token a
    line, its counts 32-bit."""
    return _BAG.fullmatch(bag) is not None


# Tokens hold no space, no colon and no line break; a count past 1 has at most nine
# digits (a text is cut long before a token could occur a billion times).
_ITEM = r"[^\s:]++(?::[1-9][0-9]{0,8})?+"
_BAG = re.compile(rf"(?:{_ITEM}(?: {_ITEM})*+)?+")


@dataclass(frozen=True)
class Position:
    """Where a reader stopped: the journal file's identity (inode and header) and an offset."""

    inode: int
    offset: int
    header: bytes = b""

    def same_journal(self, inode: int, header: bytes) -> bool:
        return self.inode == inode and self.header == header


@dataclass
class Records:
    """Journal entries as columns: parsing thousands of lines builds no object per line.

    ``offsets`` holds :data:`NO_OFFSET` for deletes and for puts whose vector is a
    per-row file; ``checksums`` :data:`NO_CHECKSUM` where there is none; ``times``
    the put's date in seconds (0: unknown); ``terms`` the put's bag of terms
    (``None``: not known, and for deletes).
    """

    versions: list[int] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    dimensions: list[int] = field(default_factory=list)
    checksums: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    terms: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.versions)

    def entry(self, row: int) -> Entry:
        offset, checksum = self.offsets[row], self.checksums[row]
        return Entry(
            self.versions[row],
            self.ops[row],
            self.keys[row],
            self.hashes[row],
            self.identities[row],
            None if offset == NO_OFFSET else offset,
            self.dimensions[row],
            None if checksum == NO_CHECKSUM else checksum,
            self.terms[row],
        )

    def entries(self) -> list[Entry]:
        return [self.entry(row) for row in range(len(self))]

    def since(self, version: int) -> Records:
        """The entries newer than ``version`` (all of them, in the usual case)."""
        if not self.versions or min(self.versions) > version:
            return self
        rows = [row for row, v in enumerate(self.versions) if v > version]
        return Records(*([column[row] for row in rows] for column in self._columns()))

    def extend(self, other: Records) -> None:
        for mine, theirs in zip(self._columns(), other._columns(), strict=True):
            mine.extend(theirs)

    def _columns(self) -> tuple[list[Any], ...]:
        return (
            self.versions,
            self.ops,
            self.keys,
            self.hashes,
            self.identities,
            self.offsets,
            self.dimensions,
            self.checksums,
            self.times,
            self.terms,
        )


class Tail:
    """The entries of the journal of generation ``base`` read up to ``position``."""

    def __init__(self, base: int, records: Records, position: Position) -> None:
        self.base = base
        self.records = records
        self.position = position
        # Aligned with ``entries`` when the store read them (None: a delete, or lost).
        self.vectors: list[Vector | None] | None = None

    @functools.cached_property
    def entries(self) -> list[Entry]:
        return self.records.entries()


def parse_entry(line: bytes) -> Entry | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    fields = _fields(record)
    if fields is None:
        return None
    version, op, key, content_hash, identity, offset, dimensions, checksum, _, terms = fields
    return Entry(
        version,
        op,
        key,
        content_hash,
        identity,
        None if offset == NO_OFFSET else offset,
        dimensions,
        None if checksum == NO_CHECKSUM else checksum,
        terms,
    )


_Fields = tuple[int, str, str, str, str, int, int, int, int, str | None]


def _fields(record: object) -> _Fields | None:
    """The columns of one decoded line, or ``None`` if it is not an entry."""
    terms = None
    if isinstance(record, list) and len(record) in (_WIDTH, _WIDTH + 1):
        if len(record) > _WIDTH:
            terms = record[_WIDTH]
            if terms is not None and not isinstance(terms, str):
                return None  # as the whole-journal decode refuses it
        record = dict(zip(_NAMES, record[:_WIDTH], strict=True))
    if not isinstance(record, dict):
        return None
    version, op, key = record.get("v"), record.get("op"), record.get("k")
    if type(version) is not int or op not in ("put", "del") or not isinstance(key, str):
        return None
    if op == "del":
        return version, op, key, "", "", NO_OFFSET, 0, NO_CHECKSUM, 0, None
    offset, dimensions, stamp = record.get("o"), record.get("d"), record.get("t")
    checksum = record.get("c", NO_CHECKSUM)
    if not (type(offset) is int and offset >= 0 and type(dimensions) is int and dimensions > 0):
        offset, dimensions = NO_OFFSET, 0
    if not (type(checksum) is int and 0 <= checksum < 1 << 32):
        checksum = NO_CHECKSUM
    return (
        version,
        op,
        key,
        str(record.get("h", "")),
        str(record.get("i", "")),
        offset,
        dimensions,
        checksum,
        stamp if type(stamp) is int and stamp > 0 else 0,
        terms,
    )


_NAMES = ("v", "op", "k", "h", "i", "o", "d", "c", "t")  # the positions, as 0.1.0 named them
_WIDTH = len(_NAMES)


class _Line(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """A line as :meth:`Entry.to_line` writes it, with the bounds the columns must keep.

    Decoded in C: no bools or floats for ints, no other op, a tenth value only if it
    is a string (or null), no eleventh. ``gc=False`` (it holds no containers) leaves
    100k of them out of the cycle collector's scans.
    """

    version: Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
    op: Literal["put", "del"]
    key: str
    hash: str
    identity: str
    offset: Annotated[int, msgspec.Meta(ge=NO_OFFSET)]
    dimensions: Annotated[int, msgspec.Meta(ge=0)]
    checksum: Annotated[int, msgspec.Meta(ge=NO_CHECKSUM, lt=1 << 32)]
    time: Annotated[int, msgspec.Meta(ge=0)]
    terms: str | None = None


_DECODER = msgspec.json.Decoder(_Line)


def parse(data: bytes, path: Path | str = JOURNAL) -> Records:
    """The entries of ``data``: complete lines, each ending with a newline, no header.

    Lines as :meth:`Entry.to_line` writes them are decoded all at once (:func:`_typed`);
    anything else (0.1.0 lines, a damaged line, a torn fragment closed by a later
    write) falls back to one line at a time, skipping what is not an entry.
    """
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    if not len(ends):
        return Records()
    records = _typed(data, ends)
    if records is not None:
        return records
    records = Records()
    columns = records._columns()
    for line in data.split(b"\n")[:-1]:
        try:
            fields = _fields(json.loads(line))
        except ValueError:
            fields = None
        if fields is None:
            if line.strip():
                logger.warning("Skipping a damaged line in %s: %r", path, line[:80])
            continue
        for column, value in zip(columns, fields, strict=True):
            column.append(value)
    return records


def _typed(data: bytes, ends: npt.NDArray[np.intp]) -> Records | None:
    """Columns of the lines of ``data`` (ending at ``ends``) when all are well-formed entries,
    else ``None``.

    ``decode_lines`` reads values separated by any whitespace, so each line must hold
    exactly one: every newline but the last is ``"]\\n["`` (JSON escapes a newline in
    a string, and no value can go on past ``]`` to a ``[`` without a comma), hence
    no blank line and no value spanning two, and there are as many values as lines.
    Versions must increase, as :func:`append` writes them. A journal that breaks any
    of this is read one line at a time.
    """
    count = len(ends)
    raw = np.frombuffer(data, dtype=np.uint8)
    inner = ends[(ends > 0) & (ends < len(raw) - 1)]  # newlines with a byte either side
    joins = np.count_nonzero((raw[inner - 1] == ord("]")) & (raw[inner + 1] == ord("[")))
    if joins != count - 1:
        return None
    try:
        lines = _DECODER.decode_lines(data)
    except msgspec.DecodeError:
        return None
    if len(lines) != count:
        return None
    # Comprehensions read the fields through the interpreter's fast slot access:
    # a third cheaper than one attrgetter call per value.
    versions = [line.version for line in lines]
    if not bool(np.all(np.diff(np.fromiter(versions, dtype=np.int64, count=count)) > 0)):
        return None
    return Records(
        versions,
        [line.op for line in lines],
        [line.key for line in lines],
        [line.hash for line in lines],
        [line.identity for line in lines],
        [line.offset for line in lines],
        [line.dimensions for line in lines],
        [line.checksum for line in lines],
        [line.time for line in lines],
        [line.terms for line in lines],
    )


@contextlib.contextmanager
def locked(directory: str | Path, permissions: Permissions = DEFAULT) -> Iterator[None]:
    """Hold the store's exclusive writer lock (a separate file, so journal swaps keep it)."""
    # Opened for writing: on NFS, flock() is an fcntl() lock, which needs a writable fd.
    fd = permissions.open_or_create(os.path.join(directory, LOCK), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def create(
    directory: Path, base: int, permissions: Permissions = DEFAULT, lines: bytes = b""
) -> None:
    """Start a new journal continuing snapshot ``base``, holding ``lines`` (whole
    journal lines) from the start; the caller holds the lock."""
    from django_embeddings.store.files import write_atomic

    first = {"base": base, "id": os.urandom(8).hex()}
    header = json.dumps(first).encode("ascii") + b"\n"
    write_atomic(directory / JOURNAL, header + lines, permissions)


def open_for_append(directory: str | Path) -> int:
    """A descriptor to :func:`append` through; ``FileNotFoundError`` if there is no journal."""
    return os.open(os.path.join(directory, JOURNAL), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)


def append(fd: int, entries: Sequence[Entry], *, stamp: int = 0, close_line: bool = False) -> int:
    """Append entries through ``fd``; returns the bytes written.

    The caller holds the lock and numbered the entries after the last one. With
    ``close_line``, a fragment left by a writer killed mid-line is ended first, so
    our lines stay parseable.
    """
    payload = b"".join(entry.to_line(stamp) for entry in entries)
    if close_line:
        payload = b"\n" + payload
    # One write per batch; readers stop at the last full line. A full disk can take
    # part of it: write on until the rest fails, so the caller learns of it (a short
    # write taken as complete would hand out versions the journal does not hold).
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
    return len(payload)


def header(fd: int) -> bytes:
    """The first line of the journal open at ``fd`` (without its newline)."""
    head = os.pread(fd, _HEADER_PROBE, 0)
    return head.split(b"\n", 1)[0]


def read_base(line: bytes) -> int:
    """The base version a header line names; -1 if it is not a header."""
    try:
        base = json.loads(line)["base"]
    except (ValueError, KeyError, TypeError):
        return -1
    return base if type(base) is int else -1


def last_version_in(fd: int, start: int, end: int) -> int | None:
    """The version of the last complete entry between byte ``start`` and ``end``; O(1) in size.

    ``start`` must be a line's start. ``None`` when no complete entry lies there.
    """
    entry = last_entry_in(fd, start, end)
    return None if entry is None else entry.version


def last_entry_in(fd: int, start: int, end: int) -> Entry | None:
    """The last complete entry between byte ``start`` (a line's start) and ``end``."""
    probe = max(start, end - _TAIL_PROBE)
    while True:
        lines = os.pread(fd, end - probe, probe).split(b"\n")
        # lines[0] may be cut by the probe window; the last may be a torn fragment.
        for line in reversed(lines[1:] if probe > start else lines):
            entry = parse_entry(line) if line else None
            if entry is not None:
                return entry
        if probe == start:
            return None
        probe = max(start, probe - _TAIL_PROBE * 16)


def _open(directory: Path) -> int | None:
    """The current journal opened for reading (``None``: no journal); the caller closes it."""
    try:
        return os.open(directory / JOURNAL, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def identity(directory: Path) -> tuple[int, bytes] | None:
    """The current journal's inode and header line (``None``: no journal)."""
    fd = _open(directory)
    if fd is None:
        return None
    try:
        return os.fstat(fd).st_ino, header(fd)
    finally:
        os.close(fd)


def last_base(directory: Path) -> int | None:
    """The base version of the current journal (-1: a damaged header; ``None``: no journal)."""
    fd = _open(directory)
    if fd is None:
        return None
    try:
        return read_base(header(fd))
    finally:
        os.close(fd)


def last_version(directory: Path) -> int | None:
    """The version of the last complete entry (or the header's base); O(1) in the size."""
    fd = _open(directory)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        first = header(fd)
        start = min(size, len(first) + 1)
        last = last_version_in(fd, start, size)
        return last if last is not None else read_base(first)
    finally:
        os.close(fd)


def read(directory: Path, position: Position | None = None) -> Tail | None:
    """Read complete entries from ``position`` (or from the start).

    Returns ``None`` when the journal was replaced since ``position`` (a compaction):
    the caller must reload the snapshot.
    """
    path = directory / JOURNAL
    offset = position.offset if position else 0
    fd = _open(directory)
    if fd is None:
        return None
    try:
        inode = os.fstat(fd).st_ino
        first = header(fd)
        if position is not None and not position.same_journal(inode, first):
            return None
        with open(fd, "rb", closefd=False) as handle:
            handle.seek(offset)
            data = handle.read()
    finally:
        os.close(fd)
    end = data.rfind(b"\n") + 1  # a torn last line is left for the next read
    if offset == 0:
        if not end:
            return None
        start = data.find(b"\n") + 1  # after the header
    else:
        start = 0
    records = parse(data[start:end], path)
    return Tail(read_base(first), records, Position(inode, offset + end, first))


def unreadable(directory: Path) -> bool:
    """Does the journal exist without one complete line (so not even its header)?"""
    try:
        with open(directory / JOURNAL, "rb") as handle:
            return b"\n" not in handle.read(1 << 16)
    except FileNotFoundError:
        return False

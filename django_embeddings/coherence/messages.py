"""The pub/sub wire format: msgpack, signed, size-limited and validated.

A message tells peers about one committed write to one store::

    HMAC-SHA256 (32 bytes) || msgpack {
        "f": 1,                      # format
        "l": "app_label.Model.field",  # the store's label
        "s": "<pid>-<token>",        # the sender, so it can skip its own messages
        "v": 42,                     # the store's version after the write
        "e": [[version, op, key, content hash, provider identity, float32 bytes | None], ...],
    }

When a put in the message has its row's terms (:mod:`django_embeddings.keywords.terms`),
every entry has a seventh value, the encoded bag of terms or ``None``; peers of
releases before keywords read only six, and re-read the journal instead.

An empty ``"e"`` is a hint: "the store is at version ``v`` or later; read the
journal". Writers send one when the entries (or their vectors) would not fit in
:data:`MAX_MESSAGE_BYTES`; entries without their vectors carry no terms either.

The signature is keyed by ``SECRET_KEY`` (``SECRET_KEY_FALLBACKS`` verify too), so
anyone else who can PUBLISH on the channel cannot put vectors into a cache. A
message that fails any check raises :class:`InvalidMessage`; when its label can
still be read, the receiver may re-read that store's journal, which is always safe.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from django.utils.crypto import salted_hmac

from django_embeddings.store import Entry
from django_embeddings.store.journal import is_bag
from django_embeddings.typing import Vector

__all__ = [
    "MAC_BYTES",
    "MAX_MESSAGE_BYTES",
    "InvalidMessage",
    "Message",
    "decode",
    "encode",
    "vector_of",
]

FORMAT = 1
MAX_MESSAGE_BYTES = 1 << 20
MAX_DIMENSIONS = 1 << 16
MAC_BYTES = 32
_MAX_KEY = 10_000
_MAX_TEXT = 1_000
_MAX_VERSION = (1 << 63) - 1
_OPS = frozenset({"put", "del"})
# app_label.ModelName.field: three Python identifiers, as Django requires of each part.
# app_label.Model.field, then "@alias" for a store of another database than the default.
LABEL = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*(@[A-Za-z0-9_-]+)?\Z"
)


class InvalidMessage(ValueError):
    """A message that must not be applied. ``label`` is set when it could be read."""

    def __init__(self, reason: str, label: str | None = None) -> None:
        super().__init__(reason)
        self.label = label


@dataclass(frozen=True)
class Message:
    label: str
    sender: str
    version: int
    entries: list[Entry]
    vectors: list[bytes | None]  # aligned with entries; None: read the file


def encode(
    label: str,
    sender: str,
    version: int,
    entries: Sequence[Entry],
    vectors: Sequence[Vector | None] | None,
    *,
    secret: str,
    channel: str,
) -> bytes:
    """The signed message for a write, within :data:`MAX_MESSAGE_BYTES`.

    Vectors are left out (peers read the files) when they would not fit, and the
    entries too (peers read the journal) when even those would not.
    """
    raw: list[bytes | None] = [None] * len(entries)
    if vectors is not None:
        raw = [None if vector is None else _vector_bytes(vector) for vector in vectors]
    rows: list[list[Any]] = [
        [entry.version, entry.op, entry.key, entry.hash, entry.identity, raw[n]]
        for n, entry in enumerate(entries)
    ]
    if any(entry.terms is not None for entry in entries):
        for row, entry in zip(rows, entries, strict=True):
            row.append(entry.terms)
    for attempt in range(3):
        if attempt == 1:
            # Peers read the vectors from the journal's log, and the terms with them.
            rows = [[*row[:5], None] for row in rows]
        elif attempt == 2:
            rows = []
        body: bytes = msgpack.packb(
            {"f": FORMAT, "l": label, "s": sender, "v": version, "e": rows}, use_bin_type=True
        )
        if len(body) + MAC_BYTES <= MAX_MESSAGE_BYTES:
            break
    return _mac(body, secret, channel) + body


def decode(data: object, *, secrets: Sequence[str], channel: str) -> Message:
    """Check and parse a received message; raises :class:`InvalidMessage`."""
    if not isinstance(data, bytes):
        raise InvalidMessage(f"payload of type {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"payload of {len(data)} bytes is over the limit")
    if len(data) <= MAC_BYTES:
        raise InvalidMessage("payload too short")
    mac, body = data[:MAC_BYTES], data[MAC_BYTES:]
    signed = any(hmac.compare_digest(mac, _mac(body, secret, channel)) for secret in secrets)
    record = _unpack(body)
    label = record.get("l") if isinstance(record, dict) else None
    if not isinstance(label, str) or len(label) > 300 or not LABEL.match(label):
        label = None
    if not signed:
        raise InvalidMessage("bad signature", label)
    if label is None or not isinstance(record, dict):
        raise InvalidMessage("no valid label")
    if record.get("f") != FORMAT:
        raise InvalidMessage(f"unknown format {record.get('f')!r}", label)
    sender, version, rows = record.get("s"), record.get("v"), record.get("e")
    if not isinstance(sender, str) or not 0 < len(sender) <= 100:
        raise InvalidMessage("bad sender", label)
    if not _is_version(version):
        raise InvalidMessage("bad version", label)
    if not isinstance(rows, list):
        raise InvalidMessage("bad entries", label)
    entries: list[Entry] = []
    vectors: list[bytes | None] = []
    size: int | None = None
    for row in rows:
        entry, vector = _entry(row, label)
        if entries and entry.version != entries[-1].version + 1:
            raise InvalidMessage("entries out of order", label)
        if vector is not None:
            if size is not None and len(vector) != size:
                raise InvalidMessage("vectors of different sizes", label)
            size = len(vector)
        entries.append(entry)
        vectors.append(vector)
    if entries and entries[-1].version != version:
        raise InvalidMessage("version does not match the entries", label)
    return Message(label, sender, int(version), entries, vectors)  # type: ignore[arg-type]


def vector_of(raw: bytes, dimensions: int) -> Vector | None:
    """The float32 vector in ``raw`` if it has ``dimensions`` finite values, else ``None``."""
    if len(raw) != 4 * dimensions:
        return None
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        return None
    return vector


def _mac(body: bytes, secret: str, channel: str) -> bytes:
    # Part of the wire format, like the layout above: peers of other releases
    # verify with the same salt, so it never changes.
    salt = f"django_embeddings.messages:{channel}"
    return salted_hmac(salt, body, secret=secret, algorithm="sha256").digest()


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException):
        return None  # includes ExtraData, FormatError, StackError, bad UTF-8


def _is_version(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_VERSION


def _entry(row: object, label: str) -> tuple[Entry, bytes | None]:
    if not isinstance(row, list) or len(row) not in (6, 7):
        raise InvalidMessage("bad entry", label)
    version, op, key, content_hash, identity, vector = row[:6]
    terms = row[6] if len(row) == 7 else None
    if not _is_version(version) or version == 0 or op not in _OPS:
        raise InvalidMessage("bad entry version or op", label)
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY or "\0" in key:
        raise InvalidMessage("bad entry key", label)
    for text in (content_hash, identity):
        if not isinstance(text, str) or len(text) > _MAX_TEXT:
            raise InvalidMessage("bad entry hash or identity", label)
    if vector is not None:
        if op == "del" or not isinstance(vector, bytes):
            raise InvalidMessage("bad entry vector", label)
        if not 0 < len(vector) <= 4 * MAX_DIMENSIONS or len(vector) % 4:
            raise InvalidMessage("bad entry vector size", label)
    if op == "del" and (content_hash or identity):
        raise InvalidMessage("a delete with a hash", label)
    if terms is not None and (op == "del" or not isinstance(terms, str) or not is_bag(terms)):
        raise InvalidMessage("bad entry terms", label)
    return Entry(version, op, key, content_hash, identity, terms=terms), vector


def _vector_bytes(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()

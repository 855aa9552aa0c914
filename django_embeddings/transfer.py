"""Moving a field's vectors between stores: one portable ``.npz`` file per field.

``dumpdata``/``loaddata`` carry the rows (and the column: the hash of each row's text),
but not the vectors, which live in the store. :func:`export_field` writes them
to ``<app_label>.<ModelName>.<field>.npz``; :func:`import_file` stores them in
another deployment, for the rows that exist there, so nothing is embedded
again. Files hold only numeric and string arrays and are read with
``np.load(..., allow_pickle=False)``:

- ``keys`` (str, n): the rows' primary keys as strings;
- ``vectors`` (float32, n x d): the vectors, normalized to unit length as searches use them;
- ``hashes`` (str, n): content hashes of the texts they were made from;
- ``identities`` (uint16, n), indexing ``identity_names`` (str): provider identities;
- ``meta`` (a JSON string): ``format``, ``label``, ``dimensions``, ``count``;
- when some rows' bags of terms are known (:mod:`django_embeddings.keywords.terms`),
  those as a snapshot keeps them: ``terms_ptr`` (int64, n + 1), ``terms_ids`` (int32),
  ``terms_counts`` (uint32), ``terms_known`` (bool, n) and ``terms_vocab`` (uint8: the
  UTF-8 of the tokens, one a line). Files without them (written before keywords)
  import with the terms not known, and releases before keywords ignore them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from django_embeddings import __version__, cache
from django_embeddings.backfill import existing_keys
from django_embeddings.exceptions import EmbeddingsError
from django_embeddings.fields import EmbeddingField
from django_embeddings.keywords.terms import Terms
from django_embeddings.labels import LabelError, resolve_one
from django_embeddings.store import Snapshot, Store, files
from django_embeddings.store.journal import is_bag
from django_embeddings.store.snapshot import TERMS_ARRAYS
from django_embeddings.typing import Vector
from django_embeddings.writer import put_vectors

__all__ = [
    "FORMAT",
    "ImportResult",
    "TransferError",
    "copy_store",
    "export_field",
    "import_file",
    "stored_rows",
]

logger = logging.getLogger(__name__)

FORMAT = 1
IMPORT_CHUNK = 1000


class TransferError(EmbeddingsError):
    """An export file is not one this version can import."""


@dataclass
class ImportResult:
    label: str
    total: int  # vectors in the file
    imported: int = 0
    skipped: int = 0  # rows that do not exist in this database
    other_identity: int = 0  # imported, but made by another provider than the field's


def filename_for(field: EmbeddingField) -> str:
    return f"{field.label}.npz"


def export_field(field: EmbeddingField, path: Path) -> int:
    """Write every stored vector of ``field`` to ``path``; returns how many.

    The file is written to a temp file and renamed, so a reader never sees half. It
    and the directories created for it get ``DJANGO_EMBEDDINGS_FILE_PERMISSIONS`` and
    ``DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS``.
    """
    kept: list[str] = []
    vectors: list[Any] = []
    hashes: list[str] = []
    bags: list[str | None] = []
    identity_ids: list[int] = []
    identity_names: list[str] = []
    for key, vector, content_hash, identity, bag in stored_rows(field.store):
        if identity not in identity_names:
            identity_names.append(identity)
        kept.append(key)
        vectors.append(vector)
        hashes.append(content_hash)
        identity_ids.append(identity_names.index(identity))
        bags.append(bag)
    dimensions = len(vectors[0]) if vectors else 0
    meta_json = json.dumps(
        {
            "format": FORMAT,
            "label": field.label,
            "dimensions": dimensions,
            "count": len(kept),
            "version": __version__,
        }
    )
    arrays = {
        "keys": np.array(kept, dtype=str),
        "vectors": np.array(vectors, dtype=np.float32).reshape(len(kept), dimensions),
        "hashes": np.array(hashes, dtype=str),
        "identities": np.array(identity_ids, dtype=np.uint16),
        "identity_names": np.array(identity_names, dtype=str),
        "meta": np.array(meta_json),
    }
    if any(bag is not None for bag in bags):
        terms = Terms.from_bags(bags)
        arrays.update({f"terms_{name}": getattr(terms, name) for name in TERMS_ARRAYS})
        arrays["terms_vocab"] = np.frombuffer("\n".join(terms.vocab).encode("utf-8"), np.uint8)
    path = Path(path)
    # The file holds the store's vectors: it gets the store's modes, as its directories do.
    permissions = field.store.permissions
    files.ensure_dir(path.parent, permissions)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            permissions.chmod_file(fd)
            # Only numeric and str arrays: nothing here is ever pickled.
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(kept)


def stored_rows(store: Store) -> Iterator[tuple[str, Vector, str, str, str | None]]:
    """Every row ``store`` holds, by key: ``(key, normalized vector, content hash,
    provider identity, bag of terms or None)``; unreadable vectors are left out."""
    index = cache.get(store, keep=False)
    stored_terms = _StoredTerms(store)
    for key in sorted(index.keys()):
        meta = index.meta(key)
        vector = index.vector(key)
        if meta is None or vector is None:
            logger.warning("%s: the vector of row %r is unreadable; left out", store.label, key)
            continue
        content_hash, identity = meta
        yield key, vector, content_hash, identity, stored_terms.of(key, content_hash)


def copy_store(source: Store, target: Store) -> int:
    """Store every row of ``source`` in ``target`` (told to peers, as saves are), with
    no provider call; returns how many. ``source`` is left as it was."""
    copied = 0
    rows = stored_rows(source)
    with target.bulk():
        while chunk := list(itertools.islice(rows, IMPORT_CHUNK)):
            put_vectors(
                target,
                [(key, vector, digest, identity) for key, vector, digest, identity, _ in chunk],
                terms=[bag for *_, bag in chunk],
            )
            copied += len(chunk)
    return copied


def import_file(path: Path, *, using: str = "default") -> ImportResult:
    """Store the vectors of an export file for the rows that exist in ``using``.

    Tells peer processes, as a save does. Rows that do not exist are skipped; a row
    is searchable when its column (loaded with its data, e.g. by ``loaddata``)
    records the text the vector was made from, and pending otherwise. Vectors made
    by another provider are imported all the same; searches leave them out until
    ``embeddings_backfill --stale``.
    """
    data = _read(Path(path))
    try:
        field = resolve_one(data["label"])
    except LabelError as exc:
        raise TransferError(f"{str(path)!r} is for a field not found here: {exc}") from exc
    keys: list[str] = data["keys"]
    vectors = data["vectors"]
    result = ImportResult(field.label, total=len(keys))
    provider_identity = _provider_identity(field)
    store = field.store_for(using)
    with store.bulk():
        for start in range(0, len(keys), IMPORT_CHUNK):
            chunk = keys[start : start + IMPORT_CHUNK]
            live = existing_keys(field, chunk, using=using)
            rows = [start + offset for offset, key in enumerate(chunk) if key in live]
            result.skipped += len(chunk) - len(rows)
            if not rows:
                continue
            identities = [data["identity_names"][data["identities"][row]] for row in rows]
            put_vectors(
                store,
                [
                    (keys[row], vectors[row], data["hashes"][row], identity)
                    for row, identity in zip(rows, identities, strict=True)
                ],
                terms=None if data["terms"] is None else [data["terms"][row] for row in rows],
            )
            result.imported += len(rows)
            if provider_identity is not None:
                result.other_identity += sum(1 for i in identities if i != provider_identity)
    return result


def _provider_identity(field: EmbeddingField) -> str | None:
    try:
        return str(field.get_provider().identity)
    except Exception:  # an unconfigured provider must not stop an import of finished vectors
        logger.warning("%s: cannot build its provider to compare identities", field.label)
        return None


class _StoredTerms:
    """The rows' bags of terms as the store holds them, for an export of its index.

    Read after the index was: a bag is given for a row only where the store has
    the content hash the index has, so it is the bag of the text of the vector.
    """

    def __init__(self, store: Store) -> None:
        state = store.read_state()
        self.snapshot: Snapshot = state.snapshot
        records = state.records
        self.tail = {
            key: (records.hashes[row], records.terms[row] if records.ops[row] == "put" else None)
            for key, row in state.newest().items()
        }

    def of(self, key: str, content_hash: str) -> str | None:
        if key in self.tail:
            stored_hash, bag = self.tail[key]
            return bag if stored_hash == content_hash else None
        snap = self.snapshot
        row = snap.find(key) if snap.terms is not None else None
        if snap.terms is None or row is None or bytes(snap.hashes[row]).hex() != content_hash:
            return None
        return snap.terms.bag(row)


# The arrays of the rows' terms in a file, as a snapshot keeps them, and the vocabulary.
_TERMS_FILE_ARRAYS = {f"terms_{name}": dtype for name, dtype in TERMS_ARRAYS.items()}
_TERMS_FILE_ARRAYS["terms_vocab"] = np.dtype(np.uint8)


def _read_terms(path: Path, arrays: dict[str, Any], count: int) -> list[str | None] | None:
    """Each row's bag of terms (``None``: not known), or ``None`` if the file has none."""
    if not any(name in arrays for name in _TERMS_FILE_ARRAYS):
        return None
    problem = f"{str(path)!r} has keyword terms that do not fit its rows"
    for name, dtype in _TERMS_FILE_ARRAYS.items():
        if name not in arrays or arrays[name].ndim != 1 or arrays[name].dtype != dtype:
            raise TransferError(f"{problem}: {name} is absent or not a 1-D array of {dtype}.")
    try:
        text = arrays["terms_vocab"].tobytes().decode("utf-8")
        terms = Terms(
            text.split("\n") if text else [],
            **{name: arrays[f"terms_{name}"] for name in TERMS_ARRAYS},
        )
        terms.check(count)
        bags = [terms.bag(row) for row in range(count)]
    except ValueError as exc:  # bad UTF-8 too
        raise TransferError(f"{problem}: {exc}") from exc
    if not all(bag is None or is_bag(bag) for bag in bags):
        raise TransferError(f"{problem}: some are not bags of terms.")
    return bags


def _read(path: Path) -> dict[str, Any]:
    """Load and validate an export file; ``TransferError`` says what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise TransferError(f"{str(path)!r} is not an embeddings export file: {exc}") from exc
    wanted = ("keys", "vectors", "hashes", "identities", "identity_names", "meta")
    absent = [name for name in wanted if name not in arrays]
    if absent:
        raise TransferError(f"{str(path)!r} is not an embeddings export file: no {absent!r}.")
    try:
        meta = json.loads(str(arrays["meta"][()]))
    except ValueError as exc:
        raise TransferError(f"{str(path)!r} has unreadable metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise TransferError(f"{str(path)!r} has export format {found!r}; expected {FORMAT}.")
    keys, vectors = arrays["keys"], arrays["vectors"]
    hashes, identities, names = arrays["hashes"], arrays["identities"], arrays["identity_names"]
    count = len(keys)
    if (
        keys.ndim != 1
        or keys.dtype.kind != "U"
        or vectors.ndim != 2
        or vectors.dtype.kind != "f"
        or len(vectors) != count
        or hashes.shape != (count,)
        or identities.shape != (count,)
        or identities.dtype.kind != "u"
        or (count and int(identities.max()) >= len(names))
    ):
        raise TransferError(f"{str(path)!r} has arrays of inconsistent shapes or types.")
    if count and (vectors.shape[1] == 0 or not np.isfinite(vectors).all()):
        raise TransferError(f"{str(path)!r} holds empty, NaN or infinite vectors.")
    label = meta.get("label")
    if not isinstance(label, str):
        raise TransferError(f"{str(path)!r} names no field (label {label!r}).")
    return {
        "label": label,
        "terms": _read_terms(path, arrays, count),
        "keys": [str(key) for key in keys],
        "vectors": vectors.astype(np.float32, copy=False),
        "hashes": [str(value) for value in hashes],
        "identities": [int(value) for value in identities],
        "identity_names": [str(name) for name in names],
    }

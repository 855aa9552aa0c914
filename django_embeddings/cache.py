"""Per-process search indexes: one normalized matrix per store, kept in step in place.

A :class:`FieldIndex` is the memory-mapped snapshot plus the journal tail: the rows
read at load stay in the vector log's pages, their scores scaled by each row's
length; rows written after are held normalized in memory. Changes (this process's
writes, a peer's published delta, or journal entries read on a version check) are
applied in place: a replaced or deleted snapshot row is masked out and the new
vector goes to the tail, so a write costs O(changed rows), never a reload of all N.
This module knows nothing of Redis.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from django_embeddings.keywords.bm25 import BM25Index
from django_embeddings.keywords.terms import Terms
from django_embeddings.keywords.terms import decode as decode_terms
from django_embeddings.quantized import Int8Matrix
from django_embeddings.ranking import Ranking
from django_embeddings.store import Entry, State, Store, merging, normalize
from django_embeddings.store import keys as row_keys
from django_embeddings.store.journal import Tail
from django_embeddings.typing import Matrix, Vector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    key: str
    score: float


class FieldIndex:
    """The searchable, in-memory view of one store at ``version``."""

    def __init__(self, store: Store, state: State) -> None:
        self.store = store
        self.lock = threading.RLock()
        snap = state.snapshot
        # Plain ndarray views of the memory maps: the same pages, without np.memmap's
        # per-operation overhead (a matrix product on the memmap object costs 2x).
        self.base: Matrix = np.asarray(snap.vectors)
        self.base_keys: row_keys.Keys = np.asarray(snap.keys)  # type: ignore[assignment]
        self.base_alive = np.ones(len(snap), dtype=bool)
        self.base_hashes = np.asarray(snap.hashes)
        self.base_identities = np.asarray(snap.identities)
        self.identity_names = list(snap.identity_names)
        self.dimensions: int | None = snap.dimensions
        # The tail's rows, each to be multiplied by its ``tail_scale``: 1 for the
        # normalized vectors of applied writes; 1/length for the rows read at load,
        # kept as stored (the log's own pages when it holds them back to back), so a
        # cold start copies no matrix.
        self.tail: Matrix = np.zeros((0, self.dimensions or 0), dtype=np.float32)
        self.tail_scale = np.zeros(0, dtype=np.float32)
        self.tail_keys: list[str] = []
        self.tail_alive = np.zeros(0, dtype=bool)
        # Per tail row, aligned with ``tail_keys``: its content hash, and its provider
        # identity as a number into ``identity_names`` (columns, not an object per row).
        self.tail_hashes: list[str] = []
        self.tail_identities = np.zeros(0, dtype=np.int32)
        self._tail_rows: dict[str, int] | None = {}
        # Each row's bag of terms (None: not known), for the keyword index: the
        # snapshot's as arrays, the tail's encoded, aligned with ``tail_keys``.
        self.base_terms: Terms | None = snap.terms
        self.tail_terms: list[str | None] = []
        # Built on the first keyword search, then kept in step by apply().
        self._keywords: BM25Index | None = None
        # The snapshot's int8 copy (DJANGO_EMBEDDINGS_SCAN = "int8"): the snapshot's own,
        # else built on the first search that needs it; the rows never change, only
        # their masks.
        self._int8: Int8Matrix | None = snap.int8
        self._int8_lock = threading.Lock()  # not self.lock: writes go on while it is built
        self.version = snap.version
        self.position = state.position
        # Unknown until the first catch-up: a stat taken now, after the state was
        # read, could already include a write the state does not.
        self.journal_stat: Hashable = None  # the store's change mark this index has read to
        self._valid_cache: dict[str, tuple[int, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]] = {}
        self._changes = 0
        self._length = (-1, 0)
        self._warned_stale = False
        self._load_tail(state)

    def _load_tail(self, state: State) -> None:
        """Take in the journal tail at load time: its net rows, gathered by the store at once.

        Column work only: the store checks and measures the vectors in one pass over
        the log, searches scale their scores, and the key -> row map is built on first
        need (a plain search needs none).
        """
        rows = state.rows(norms=True)
        if rows.changed and len(self.base_keys):
            found = row_keys.rows_of(self.base_keys, rows.changed)
            self.base_alive[found[found >= 0]] = False
        count = len(rows.keys)
        if count:
            if self.dimensions is None:
                self.dimensions = int(rows.vectors.shape[1])
            norms = rows.norms
            if norms is None:
                norms = np.linalg.norm(rows.vectors, axis=-1).astype(np.float32)
            # No room to grow: the first write after a load copies the rows (doubling).
            self.tail = rows.vectors
            self.tail_scale = (1 / np.where(norms == 0, 1, norms)).astype(np.float32)
            capacity = count
            self.tail_alive = np.zeros(capacity, dtype=bool)
            self.tail_alive[:count] = True
            self.tail_keys = list(rows.keys)
            self.tail_hashes = list(rows.hashes)
            self.tail_terms = list(rows.terms)
            self.tail_identities = np.zeros(capacity, dtype=np.int32)
            self.tail_identities[:count] = self._identity_numbers(rows.identities)
            self._tail_rows = None
        self._changes = len(rows.changed)
        self.version = state.version

    def _identity_numbers(self, identities: Sequence[str]) -> npt.NDArray[np.int32]:
        """The numbers of ``identities`` in ``identity_names``, adding the new ones."""
        names = self.identity_names
        distinct = set(identities)
        for name in sorted(distinct - set(names)):
            names.append(name)
        if len(distinct) == 1:
            return np.full(len(identities), names.index(next(iter(distinct))), dtype=np.int32)
        numbers = {name: n for n, name in enumerate(names)}
        return np.array([numbers[name] for name in identities], dtype=np.int32)

    @property
    def tail_rows(self) -> dict[str, int]:
        """key -> its tail row; built on first use after a load (a cold search needs none)."""
        rows = self._tail_rows
        if rows is None:
            with self.lock:
                rows = self._tail_rows
                if rows is None:
                    rows = dict(zip(self.tail_keys, range(len(self.tail_keys)), strict=True))
                    self._tail_rows = rows
        return rows

    def tail_hash(self, row: int) -> str | None:
        """The content hash of a live tail row (``None``: deleted since)."""
        with self.lock:
            return self.tail_hashes[row] if self.tail_alive[row] else None

    def _tail_meta(self, key: str) -> tuple[str, str] | None:
        row = self.tail_rows.get(key)
        if row is None or not self.tail_alive[row]:
            return None
        return self.tail_hashes[row], self.identity_names[int(self.tail_identities[row])]

    # -- changes -------------------------------------------------------------------

    def apply(
        self, entries: Iterable[Entry], vectors: Sequence[Vector | None] | None = None
    ) -> bool:
        """Apply entries newer than our version, in order.

        ``vectors`` (aligned with ``entries``) spares reading the files when the
        caller already has them. Returns ``False`` on a gap in the versions: the
        caller must catch up from the journal instead.
        """
        entries = list(entries)
        with self.lock:
            for position, entry in enumerate(entries):
                if entry.version <= self.version:
                    continue
                if entry.version != self.version + 1:
                    return False
                vector = vectors[position] if vectors is not None else None
                if not self._apply_one(entry, vector):
                    return False
                self.version = entry.version
        return True

    def _apply_one(self, entry: Entry, vector: Vector | None) -> bool:
        """Apply one entry; ``False`` for a put without its vector (a gap to catch up on)."""
        if entry.op == "put" and vector is None:
            # Its vector is in the store's log: reading the journal from our position
            # brings it (with the entries of any other gap) in one pass.
            return False
        row = _find(self.base_keys, entry.key)
        if row is not None:
            self.base_alive[row] = False
            self._forget_terms(row)
        tail_row = self.tail_rows.get(entry.key)
        if tail_row is not None:
            self.tail_alive[tail_row] = False
            self._forget_terms(len(self.base_keys) + tail_row)
        self._changes += 1
        if entry.op == "del":
            return True
        assert vector is not None  # a put without its vector returned above
        if self.dimensions is None:
            self.dimensions = int(vector.shape[0])
            self.tail = np.zeros((0, self.dimensions), dtype=np.float32)
        if vector.shape != (self.dimensions,):
            logger.warning("%s: ignoring row %r of another size", self.store.label, entry.key)
            return True
        number = self._identity_numbers([entry.identity])[0]
        if tail_row is not None and self.tail.flags.writeable:
            self.tail[tail_row] = normalize(vector)
            self.tail_scale[tail_row] = 1
            self.tail_hashes[tail_row] = entry.hash
            self.tail_identities[tail_row] = number
            self.tail_alive[tail_row] = True
            self.tail_terms[tail_row] = entry.terms
            self._index_terms(len(self.base_keys) + tail_row, entry.terms)
            return True
        self._append(entry.key, normalize(vector), entry.hash, number)
        self.tail_terms.append(entry.terms)
        self._index_terms(len(self.base_keys) + len(self.tail_keys) - 1, entry.terms)
        return True

    # -- the keyword index ---------------------------------------------------------

    def keyword_index(self) -> BM25Index:
        """BM25 over the live rows whose terms are known, at their positions (snapshot
        row ``r``: ``r``; tail row ``t``: ``len(snapshot) + t``); built on first use."""
        keywords = self._keywords
        if keywords is not None:
            return keywords
        with self.lock:
            if self._keywords is None:
                self._keywords = self._build_keywords()
            return self._keywords

    def _build_keywords(self) -> BM25Index:
        """The snapshot's rows in one load of its postings (in term order already), less
        the rows replaced or deleted since; then the tail's live rows, decoded."""
        nbase = len(self.base_keys)
        base = self.base_terms
        if base is None or len(base) != nbase:
            base = Terms.empty(nbase)
        keywords = BM25Index.from_terms(
            np.arange(nbase, dtype=np.int64), base, alive=self.base_alive
        )
        used = len(self.tail_keys)
        tail_rows = np.flatnonzero(self.tail_alive[:used])
        tail = Terms.from_bags([self.tail_terms[row] for row in tail_rows.tolist()])
        keywords.add_many(nbase + tail_rows, tail)
        return keywords

    def without_terms(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` that are live rows with no known bag of terms (stored before
        their field had a keyword index; ``embeddings_backfill`` adds them)."""
        out = []
        with self.lock:
            for key in keys:
                tail_row = self.tail_rows.get(key)
                if tail_row is not None:
                    if self.tail_alive[tail_row] and self.tail_terms[tail_row] is None:
                        out.append(key)
                    continue
                row = _find(self.base_keys, key)
                if row is None or not self.base_alive[row]:
                    continue
                if self.base_terms is None or not self.base_terms.known[row]:
                    out.append(key)
        return out

    def _forget_terms(self, position: int) -> None:
        if self._keywords is not None and position in self._keywords:
            self._keywords.remove(position)

    def _index_terms(self, position: int, bag: str | None) -> None:
        if self._keywords is None or bag is None:
            return
        try:
            counts = decode_terms(bag)
        except ValueError:
            logger.warning("%s: ignoring a damaged bag of terms %r", self.store.label, bag[:80])
            return
        self._keywords.replace(position, counts)

    def _append(self, key: str, unit: Vector, content_hash: str, identity: int) -> None:
        used = len(self.tail_keys)
        if used == len(self.tail):
            # Grow by doubling into new arrays, so a search holding the old ones is unaffected.
            capacity = max(16, used * 2)
            grown = np.zeros((capacity, self.dimensions or 0), dtype=np.float32)
            grown[:used] = self.tail[:used]
            alive = np.zeros(capacity, dtype=bool)
            alive[:used] = self.tail_alive[:used]
            identities = np.zeros(capacity, dtype=np.int32)
            identities[:used] = self.tail_identities[:used]
            scale = np.zeros(capacity, dtype=np.float32)
            scale[:used] = self.tail_scale[:used]
            self.tail, self.tail_alive, self.tail_identities = grown, alive, identities
            self.tail_scale = scale
        self.tail[used] = unit
        self.tail_scale[used] = 1
        self.tail_alive[used] = True
        self.tail_identities[used] = identity
        self.tail_rows[key] = used
        self.tail_hashes.append(content_hash)
        self.tail_keys.append(key)

    def int8(self) -> Int8Matrix:
        """The int8 copy of the snapshot's rows, quantized on first use."""
        copy = self._int8
        if copy is None:
            with self._int8_lock:
                copy = self._int8
                if copy is None:
                    copy = self._int8 = Int8Matrix.of(self.base)
                    logger.debug("%s: int8 copy of %d rows", self.store.label, len(copy.codes))
        return copy

    # -- reads ---------------------------------------------------------------------

    def meta(self, key: str) -> tuple[str, str] | None:
        """``(content hash, provider identity)`` of a live row, or ``None``."""
        with self.lock:
            meta = self._tail_meta(key)
            if meta is not None:
                return meta
            row = _find(self.base_keys, key)
            if row is None or not self.base_alive[row]:
                return None
            identity = self.identity_names[int(self.base_identities[row])]
            return bytes(self.base_hashes[row]).hex(), identity

    def hashes(self, keys: Sequence[str]) -> list[str | None]:
        """The content hash of each of ``keys``' live rows (``None`` where there is
        none): :meth:`meta` for many keys at once, with one search of the snapshot."""
        with self.lock:
            rows = row_keys.rows_of(self.base_keys, keys)
            found = None
            if len(rows) and len(self.base_keys):
                found = np.asarray(self.base_hashes[np.where(rows >= 0, rows, 0)])
            result: list[str | None] = []
            for position, key in enumerate(keys):
                meta = self._tail_meta(key)
                row = int(rows[position])
                if meta is not None:
                    result.append(meta[0])
                elif row >= 0 and self.base_alive[row] and found is not None:
                    result.append(found[position].tobytes().hex())
                else:
                    result.append(None)
            return result

    def vector(self, key: str) -> Vector | None:
        """The normalized vector of a live row."""
        with self.lock:
            tail_row = self.tail_rows.get(key)
            if tail_row is not None and self.tail_alive[tail_row]:
                row = self.tail[tail_row]
                # Normalized as a write would have (scale 1: it was; a unit row's own scale is 1).
                return np.array(row) if self.tail_scale[tail_row] == 1 else normalize(row)
            row = _find(self.base_keys, key)
            if row is not None and self.base_alive[row]:
                return np.array(self.base[row])
        return None

    def __len__(self) -> int:
        """Live rows (of any provider identity)."""
        with self.lock:
            if self._length[0] != self._changes:
                alive = np.count_nonzero(self.base_alive)
                alive += np.count_nonzero(self.tail_alive[: len(self.tail_keys)])
                self._length = (self._changes, int(alive))
            return self._length[1]

    def keys(self) -> list[str]:
        with self.lock:
            base = [str(k) for k in np.asarray(self.base_keys)[self.base_alive]]
            alive = self.tail_alive[: len(self.tail_keys)]
            tail = [key for key, ok in zip(self.tail_keys, alive, strict=True) if ok]
        return base + tail

    def search(
        self,
        query: Vector,
        k: int,
        *,
        identity: str,
        candidates: Sequence[str] | npt.NDArray[np.int64] | None = None,
        exclude: str | None = None,
    ) -> list[Hit]:
        """Exact top-``k`` by cosine similarity among live rows made by ``identity``.

        ``candidates`` restricts the search to those keys (a filtered queryset).
        Ties are broken by key (integers numerically), so the order is deterministic.
        """
        ranking = self.ranking(query, identity=identity, candidates=candidates, exclude=exclude)
        if ranking is None or k <= 0:
            return []
        top = ranking.top(k)
        return [Hit(str(key), score) for key, score in zip(top.keys, top.scores, strict=True)]

    def ranking(
        self,
        query: Vector,
        *,
        identity: str,
        candidates: Sequence[str] | npt.NDArray[np.int64] | None = None,
        exclude: str | None = None,
    ) -> Ranking | None:
        """``query`` scored once against every row :meth:`search` would consider, for
        callers that may ask for more hits; ``None`` while the store holds no vector."""
        if self.dimensions is None:
            return None
        if query.shape != (self.dimensions,):
            raise ValueError(
                f"{self.store.label}: the query has {query.shape[-1]} dimensions, "
                f"the stored vectors {self.dimensions}."
            )
        return Ranking(self, query, identity=identity, candidates=candidates, exclude=exclude)

    def without(
        self, base_ok: npt.NDArray[np.bool_], tail_ok: npt.NDArray[np.bool_], keys: Iterable[str]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Copies of the masks with ``keys`` cleared."""
        base_ok, tail_ok = base_ok.copy(), tail_ok.copy()
        _clear(base_ok, tail_ok, self.base_keys, self.tail_rows, keys)
        return base_ok, tail_ok

    def restricted(
        self,
        base_ok: npt.NDArray[np.bool_],
        tail_ok: npt.NDArray[np.bool_],
        candidates: Sequence[str] | npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """The snapshot rows of ``candidates`` that ``base_ok`` allows, and the tail mask
        narrowed to them. Candidates are string keys, or integer keys as an int64 array
        (what a filtered queryset of an integer-keyed model gives, with no string per
        row); the work is in the candidates' number, not the store's."""
        if isinstance(candidates, np.ndarray):
            rows = row_keys.rows_of_ints(self.base_keys, candidates)
        else:
            rows = row_keys.rows_of(self.base_keys, candidates)
        rows = rows[rows >= 0]
        rows = rows[base_ok[rows]]
        tail_mask = np.zeros_like(tail_ok)
        if not self.tail_rows:  # no writes since the snapshot: the candidates need no scan
            return rows, tail_mask
        if isinstance(candidates, np.ndarray):
            wanted = set(candidates.tolist())
            for key, row in self.tail_rows.items():
                if row < len(tail_mask) and row_keys.as_int(key) in wanted:
                    tail_mask[row] = True
        else:
            for key in candidates:
                found = self.tail_rows.get(key)
                if found is not None and found < len(tail_mask):
                    tail_mask[found] = True
        return rows, tail_ok & tail_mask

    def valid_rows(self, identity: str) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Live rows made by ``identity``: rows from another model are not comparable."""
        cached = self._valid_cache.get(identity)
        if cached is not None and cached[0] == self._changes:
            return cached[1], cached[2]
        used = len(self.tail_keys)
        if identity in self.identity_names:
            same = self.base_identities == self.identity_names.index(identity)
        else:
            same = np.zeros(len(self.base_keys), dtype=bool)
        base_ok = self.base_alive & same
        tail_ok = self.tail_alive[:used].copy()
        if identity in self.identity_names:
            same_tail = self.tail_identities[:used] == self.identity_names.index(identity)
        else:
            same_tail = np.zeros(used, dtype=bool)
        stale = int((self.base_alive & ~same).sum()) + int((tail_ok & ~same_tail).sum())
        tail_ok &= same_tail
        if stale and not self._warned_stale:
            self._warned_stale = True
            logger.warning(
                "%s: %d rows were embedded by another provider than %r and are left out of "
                "searches; run embeddings_backfill --stale.",
                self.store.label,
                stale,
                identity,
            )
        self._valid_cache = {identity: (self._changes, base_ok, tail_ok)}
        return base_ok, tail_ok


def _find(keys: row_keys.Keys, key: str) -> int | None:
    return row_keys.find(keys, key)


def _clear(
    base_ok: npt.NDArray[np.bool_],
    tail_ok: npt.NDArray[np.bool_],
    base_keys: row_keys.Keys,
    tail_rows: dict[str, int],
    keys: Iterable[str],
) -> None:
    for key in keys:
        row = _find(base_keys, key)
        if row is not None:
            base_ok[row] = False
        tail_row = tail_rows.get(key)
        if tail_row is not None and tail_row < len(tail_ok):
            tail_ok[tail_row] = False


def _stat(store: Store) -> Hashable:
    return store.change_mark()


# -- the process-wide registry -----------------------------------------------------

_indexes: dict[str, FieldIndex] = {}
_registry_lock = threading.Lock()


def get(store: Store, *, check: bool = True, keep: bool = True) -> FieldIndex:
    """The index of ``store``, loaded on a miss.

    ``check`` makes it catch up with the store first (a stat of the journal, and
    reading only new entries when it grew). ``keep=False`` builds a throwaway index
    (fields declared with ``cache=False``).
    """
    if not keep:
        return FieldIndex(store, store.read_state())
    key = str(store.path)
    index = _indexes.get(key)
    if index is None:
        with _registry_lock:
            index = _indexes.get(key)
            if index is None:
                index = FieldIndex(store, store.read_state())
                _indexes[key] = index
                logger.debug("%s: loaded %d rows", store.label, len(index))
        return index
    if check:
        index = catch_up(index)
    return index


def catch_up(index: FieldIndex, *, force: bool = False) -> FieldIndex:
    """Bring ``index`` to the store's current version, reading only what changed.

    ``force`` skips the stat pre-check, for callers that know a newer version
    exists (a peer said so) while the stat may not show it yet (NFS attribute caching).
    """
    stat = _stat(index.store)
    if stat == index.journal_stat and not force:
        return index
    with index.lock:
        tail = index.store.read_tail(index.position)
        if tail is None and merging.just_installed(index.store.path):
            tail = _rebased(index)
        if tail is not None and index.apply(tail.entries, tail.vectors):
            index.position = tail.position
            index.journal_stat = stat
            return index
    return reload(index.store)


def _rebased(index: FieldIndex) -> Tail | None:
    """The new journal of a merge this process has just installed, if ``index`` holds
    every row its snapshot does: then it reads on from there, keeping its old snapshot
    for the moment, and the merging thread loads the new one (``writer.merged``), so the
    save or search that got here does not wait for a load of every row."""
    tail = index.store.read_tail(None, after=index.version)
    if tail is None or tail.base > index.version:
        return None  # the index lacks rows the new snapshot folded in
    return tail


def reload(store: Store) -> FieldIndex:
    """Replace the index of ``store`` with a fresh load (after a compaction or a gap)."""
    index = FieldIndex(store, store.read_state())
    with _registry_lock:
        _indexes[str(store.path)] = index
    logger.debug("%s: reloaded %d rows", store.label, len(index))
    return index


def refresh(store: Store) -> None:
    """Load the snapshot a merge of this process just installed into its index of
    ``store``, if it has one, then read what was written while it loaded (a write
    applied meanwhile may have gone to the index it replaces).

    Runs in the merging thread and reads only the store's files: a ``database`` store's
    local copy is not synced from the table here (that thread opens no connection to
    the database); the next check of the index does that, as usual.
    """
    if _indexes.get(str(store.path)) is None:
        return
    index = FieldIndex(store, Store.read_state(store))
    with _registry_lock:
        _indexes[str(store.path)] = index
    with index.lock:
        tail = Store.read_tail(store, index.position)
        if tail is not None and index.apply(tail.entries, tail.vectors):
            index.position = tail.position
    logger.debug("%s: loaded the merged snapshot, %d rows", store.label, len(index))


def apply_delta(
    store: Store, entries: Sequence[Entry], vectors: Sequence[Vector | None] | None = None
) -> None:
    """Apply a write (ours or a peer's) to the loaded index of ``store``, if any.

    On a version gap the index catches up from the journal instead.
    """
    index = _indexes.get(str(store.path))
    if index is None:
        return  # not loaded here: the next search loads the current state
    if not index.apply(entries, vectors):
        catch_up(index)
        return
    # Our own append: the index now holds the journal up to its end, so the next
    # version check reads on from there instead of reading these entries back.
    mark = store.appended_through(entries[-1].version) if entries else None
    if mark is not None:
        position, stat = mark
        with index.lock:
            if index.version == entries[-1].version and index.position.same_journal(
                position.inode, position.header
            ):
                index.position, index.journal_stat = position, stat


def loaded(label: str) -> FieldIndex | None:
    """The loaded index of the store labelled ``label``, if any."""
    for index in loaded_indexes():
        if index.store.label == label:
            return index
    return None


def loaded_indexes() -> list[FieldIndex]:
    """Every index this process holds (to catch them all up after missed news)."""
    with _registry_lock:
        return list(_indexes.values())


def clear(label: str | None = None) -> None:
    """Forget loaded indexes (all of them, or those of the stores labelled ``label``)."""
    with _registry_lock:
        for key, index in list(_indexes.items()):
            if label is None or index.store.label == label:
                del _indexes[key]


def forget_under(root: Path) -> None:
    """Forget the indexes of every store below ``root`` (its files are going away)."""
    with _registry_lock:
        for key, index in list(_indexes.items()):
            if index.store.path.is_relative_to(root):
                del _indexes[key]

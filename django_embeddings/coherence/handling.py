"""Receiving: a peer's message applied to this process's indexes.

A message is decoded and checked (:mod:`~django_embeddings.coherence.messages`),
its label mapped to a store, and its entries applied in place to the index this
process has loaded. Whatever cannot be applied (a gap in the versions, a hint,
a vector of the wrong size, a message that cannot be trusted) makes the index
re-read the journal from where it stopped, which is always safe.
"""

from __future__ import annotations

import logging
import time

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.connection import ConnectionDoesNotExist

from django_embeddings import cache
from django_embeddings.coherence import LOGGER_NAME, messages, process, publisher
from django_embeddings.conf import conf
from django_embeddings.store import Store
from django_embeddings.typing import Vector

__all__ = [
    "catch_up",
    "catch_up_everything",
    "handle_message",
    "note_version",
    "reconcile",
    "store_for_label",
]

logger = logging.getLogger(LOGGER_NAME)

CATCH_UP_SECONDS = 10.0  # how long to keep trying to reach a version a peer announced


def handle_message(data: object) -> None:
    """Apply one received payload; anything wrong is dropped, never raised.

    A message that cannot be trusted but names a real store makes that store's
    index re-read the journal, which is always safe and reads only new entries.
    """
    if publisher.is_own(data):
        return  # our own write, applied when it was made: not worth verifying
    try:
        message = messages.decode(data, secrets=conf.SIGNING_KEYS, channel=conf.CHANNEL)
    except messages.InvalidMessage as exc:
        logger.debug("Dropping a pub/sub message: %s", exc)
        if exc.label is not None:
            store = store_for_label(exc.label)
            if store is not None:
                catch_up(store)
        return
    if message.sender == process.state.sender:
        return  # our own write, applied when it was made
    store = store_for_label(message.label)
    if store is None:
        logger.debug("Dropping a pub/sub message for unknown store %r", message.label)
        return
    with process.state.apply_lock:
        note_version(store, message.version)
        index = cache.loaded(store.label)
        if index is None or index.store.path != store.path:
            return  # not loaded here: a later load reads the current state
        if not message.entries:
            cache.catch_up(index, force=True)
            return
        vectors: list[Vector | None] = []
        for raw in message.vectors:
            vector = None
            if raw is not None and index.dimensions is not None:
                vector = messages.vector_of(raw, index.dimensions)
                if vector is None:
                    logger.debug("%s: a vector of the wrong size in a message", store.label)
                    cache.catch_up(index, force=True)
                    return
            vectors.append(vector)
        cache.apply_delta(store, message.entries, vectors)


def store_for_label(label: str) -> Store | None:
    """The store of the EmbeddingField named ``app_label.Model.field``, or ``None``.

    Only labels of real, cached EmbeddingFields map to a store; anything else
    (a forged or foreign label) is ``None``.
    """
    if not messages.LABEL.match(label):
        return None
    # Imported here, not at the top: fields leads to the writer, which imports this package.
    from django_embeddings.fields import embedding_fields

    name, _, alias = label.partition("@")
    app_label, model_name, field_name = name.split(".")
    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        return None
    for field in embedding_fields(model):
        if field.name == field_name and field.label == name and field.cache:
            try:
                store = field.store_for(alias) if alias else field.store
            except (ImproperlyConfigured, ConnectionDoesNotExist):
                return None
            return store if store.label == label else None
    return None


def catch_up(store: Store) -> None:
    """Make ``store``'s index, if loaded here, read what it missed from the journal."""
    with process.state.apply_lock:
        index = cache.loaded(store.label)
        if index is not None and index.store.path == store.path:
            cache.catch_up(index, force=True)


def note_version(store: Store, version: int) -> None:
    """Remember a version a peer announced, so an index loaded or reloaded
    concurrently with the message is still brought up to it (see :func:`reconcile`)."""
    key = str(store.path)
    latest = process.state.latest
    known = latest.get(key)
    if known is None or known[1] < version:
        latest[key] = (store, version, time.monotonic() + CATCH_UP_SECONDS)


def reconcile() -> None:
    """Catch up indexes that are behind a version a peer announced.

    A message can arrive while its store is being loaded or reloaded (the load
    read the journal just before the write); the index then registers one
    version behind. Checking here bounds that staleness by the poll interval.
    """
    now = time.monotonic()
    latest = process.state.latest
    for key, (store, version, until) in list(latest.items()):
        index = cache.loaded(store.label)
        if index is not None and index.store.path == store.path:
            if index.version >= version:
                latest.pop(key, None)
                continue
            with process.state.apply_lock:
                try:
                    cache.catch_up(index, force=True)
                except Exception:
                    logger.debug("Could not catch up %s", store.label, exc_info=True)
        if now > until:
            latest.pop(key, None)


def catch_up_everything(*, force: bool = True) -> None:
    """Read what every loaded index missed: all journals after a (re)subscribe
    (``force``), or only those whose ``stat`` changed for the periodic sweep."""
    for index in cache.loaded_indexes():
        with process.state.apply_lock:
            try:
                cache.catch_up(index, force=force)
            except Exception:
                logger.exception("Could not catch up %s", index.store.label)

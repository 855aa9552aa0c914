"""Keeping every process's cached indexes in step with the store.

Modes (``DJANGO_EMBEDDINGS_INVALIDATION``; the environment variable wins):

- ``pubsub`` (the default when Redis is configured): after each committed write a
  process PUBLISHes the journal entries and vectors
  (:mod:`~django_embeddings.coherence.messages`); one daemon thread per process,
  on one Redis connection, applies its peers' writes to the cached indexes in
  place (its own messages come back to it too, and are known by their signature
  and dropped unread). While that listener is healthy a search costs nothing
  extra: no stat. A
  peer's write becomes visible after Redis' round trip plus the time to apply it,
  a few milliseconds. While the listener is not connected (Redis down, refusing,
  restarting), searches fall back to the ``mtime`` check, so a process can be slow
  to see a peer's write but never stale for good.
- ``mtime``: before each search, stat the store's journal; when it changed, read
  only the new entries. No Redis.
- ``none``: never look; for a single process. No thread, no connection, no stat.

Versions repair every loss: a message whose version does not follow the cached
one, a reconnect, or a process forked after its parent loaded an index all end in
reading the journal from where the index stopped, never in a full reload.

The listener is fork-safe: nothing of it (thread, connection, locks) is used in a
child; a child that wants one starts its own on first use.

Modules, one job each (the public entry point is :mod:`django_embeddings.invalidation`):

- ``modes``: the three modes as classes with one interface, chosen by the setting;
- ``publisher``: sending a committed write to peers, and resending after a failure;
- ``outbox``: the PUBLISH connection, whose replies are read after the save returns;
- ``listener``: the thread that subscribes, pings and reconnects with backoff;
- ``handling``: a received message applied to this process's indexes, gaps caught up;
- ``messages``: the wire format;
- ``process``: this process's state, and what a fork does to it.
"""

from __future__ import annotations

# Every module logs under the public module's name: one logger covers the package.
LOGGER_NAME = "django_embeddings.invalidation"

"""The public entry point of cache coherence between processes.

Writers call :func:`publish` and :func:`announce`, searches :func:`needs_check`,
``AppConfig.ready`` :func:`start`. The modes, the wire format, the publisher and
the listener live in :mod:`django_embeddings.coherence`.
"""

from __future__ import annotations

from django_embeddings.coherence.handling import handle_message, store_for_label
from django_embeddings.coherence.listener import stop_invalidation_listeners
from django_embeddings.coherence.modes import (
    announce,
    listener_healthy,
    mode,
    needs_check,
    publish,
    restart,
    start,
)

__all__ = [
    "announce",
    "handle_message",
    "listener_healthy",
    "mode",
    "needs_check",
    "publish",
    "restart",
    "start",
    "stop_invalidation_listeners",
    "store_for_label",
]

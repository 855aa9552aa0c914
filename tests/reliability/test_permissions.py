"""Stored vectors are private: files 0600 and directories 0700, whatever the umask.

Embeddings can be inverted back to approximate text, so no other local user may
read them: every kind of file the store writes is checked, under umask 000.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testapp.models import Article, Product

pytestmark = pytest.mark.django_db(transaction=True)

KINDS = {
    "vector log": lambda name: name.startswith("_vectors-"),
    "journal": lambda name: name == "_journal",
    "lock": lambda name: name == "_lock",
    "index": lambda name: name == "_index.json",
    "dimensions": lambda name: name == "_dimensions",
    "snapshot array": lambda name: (
        name in {"vectors.npy", "keys.npy", "hashes.npy", "identities.npy", "raw.npy", "times.npy"}
    ),
    "snapshot meta": lambda name: name == "meta.json",
}


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_every_file_and_directory_is_private(store_dir: Path, open_umask: None) -> None:
    articles = [Article.objects.create(title=f"{n}", body=f"text {n} about csv") for n in range(4)]
    Product.objects.create(name="lamp", description="a desk lamp")
    articles[0].delete()
    Article._meta.get_field("embedding").store.compact()  # type: ignore[union-attr]
    Article.objects.create(title="after", body="written after the compaction")
    seen: dict[str, int] = {}
    exposed = []
    for directory, subdirs, names in os.walk(store_dir):
        for name in subdirs:
            mode = stat.S_IMODE(os.stat(Path(directory) / name).st_mode)
            if mode & 0o077:
                exposed.append(f"directory {name}: {oct(mode)}")
        for name in names:
            mode = stat.S_IMODE(os.stat(Path(directory) / name).st_mode)
            kind = next((k for k, match in KINDS.items() if match(name)), f"unknown {name!r}")
            seen[kind] = seen.get(kind, 0) + 1
            if mode & 0o077:
                exposed.append(f"{kind} {name}: {oct(mode)}")
    store_mode = stat.S_IMODE(os.stat(store_dir).st_mode)
    if store_mode & 0o077:
        exposed.append(f"DJANGO_EMBEDDINGS_DIR: {oct(store_mode)}")
    assert exposed == []
    assert set(seen) == set(KINDS), seen

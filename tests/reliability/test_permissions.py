"""Every file and directory a store creates gets the permission settings, whatever the umask.

Embeddings can be inverted back to approximate text: by default no user outside
the owner's group may read them. The umasks are a private one (077), the usual one
(022) and none at all (000): the modes must be the settings' in every case. Every
kind of file the store writes is seen, through saves, deletes, a compaction, an
export and an import.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from django.core.management import call_command

from django_embeddings.store import files, permissions
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
        or (name.startswith("int8_") and name.endswith(".npy"))  # DJANGO_EMBEDDINGS_SCAN="int8"
    ),
    "snapshot meta": lambda name: name == "meta.json",
    "snapshot keyword arrays": lambda name: (
        name.startswith("terms_") and name.endswith((".npy", ".txt"))
    ),
}


def modes(top: Path) -> tuple[dict[str, set[int]], set[int]]:
    """The modes of each kind of file under ``top``, and of every directory (``top`` too)."""
    kinds: dict[str, set[int]] = {}
    directories = {stat.S_IMODE(os.stat(top).st_mode)}
    for directory, subdirs, names in os.walk(top):
        for name in subdirs:
            directories.add(stat.S_IMODE(os.stat(Path(directory) / name).st_mode))
        for name in names:
            kind = next((k for k, match in KINDS.items() if match(name)), f"unknown {name!r}")
            mode = stat.S_IMODE(os.stat(Path(directory) / name).st_mode)
            kinds.setdefault(kind, set()).add(mode)
    return kinds, directories


def fill_and_compact() -> None:
    articles = [Article.objects.create(title=f"{n}", body=f"text {n} about csv") for n in range(4)]
    Product.objects.create(name="lamp", description="a desk lamp")
    articles[0].delete()
    Article._meta.get_field("embedding").store.compact()  # type: ignore[union-attr]
    Article.objects.create(title="after", body="written after the compaction")


@pytest.mark.parametrize(
    ("file_mode", "directory_mode"),
    [(None, None), (0o600, 0o700), (0o660, 0o770)],
    ids=["defaults", "private", "group-writable"],
)
def test_every_file_and_directory_gets_the_settings(
    store_dir: Path,
    settings,  # type: ignore[no-untyped-def]
    umask: int,
    file_mode: int | None,
    directory_mode: int | None,
) -> None:
    if file_mode is None:
        file_mode, directory_mode = permissions.FILE_PERMISSIONS, permissions.DIRECTORY_PERMISSIONS
        assert (file_mode, directory_mode) == (0o640, 0o750)
    else:
        settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = file_mode
        settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = directory_mode
    fill_and_compact()
    kinds, directories = modes(store_dir)
    assert set(kinds) == set(KINDS), kinds
    assert kinds == {kind: {file_mode} for kind in KINDS}
    assert directories == {directory_mode}


def test_export_and_import_files_get_the_settings(
    store_dir: Path,
    tmp_path: Path,
    settings,  # type: ignore[no-untyped-def]
    umask: int,
) -> None:
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o660
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o770
    fill_and_compact()
    output = tmp_path / "exports" / "nightly"  # two directories to create
    call_command("embeddings_export", "testapp.Article", output=str(output), verbosity=0)
    exported = output / "testapp.Article.embedding.npz"
    assert stat.S_IMODE(os.stat(exported).st_mode) == 0o660
    for directory in (output, output.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o770

    settings.DJANGO_EMBEDDINGS_DIR = tmp_path / "restored"  # a new store, made by the import
    call_command("embeddings_import", str(exported), verbosity=0)
    kinds, directories = modes(tmp_path / "restored")
    assert {"vector log", "journal", "lock", "index", "dimensions"} <= set(kinds)
    assert set().union(*kinds.values()) == {0o660}
    assert directories == {0o770}


def test_existing_files_and_directories_keep_their_modes(
    store_dir: Path,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    """A store made under other settings is not chmod-ed: only new files get the new modes."""
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o600
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o700
    Article.objects.create(title="a", body="first text")
    settings.DJANGO_EMBEDDINGS_FILE_PERMISSIONS = 0o640
    settings.DJANGO_EMBEDDINGS_DIRECTORY_PERMISSIONS = 0o750
    Article.objects.create(title="b", body="second text")
    store = Article._meta.get_field("embedding").store  # type: ignore[union-attr]
    for name in ("_lock", "_vectors-0"):  # opened again, never replaced: kept as they were
        assert stat.S_IMODE(os.stat(store.path / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    store.compact()  # a new snapshot, index and journal: new files, the new mode
    for name in ("_journal", "_index.json", f"snapshot-{store.version()}/vectors.npy"):
        assert stat.S_IMODE(os.stat(store.path / name).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(store.path / f"snapshot-{store.version()}").st_mode) == 0o750
    assert not [name for name in os.listdir(store.path) if files.TEMP_NAME.match(name)]

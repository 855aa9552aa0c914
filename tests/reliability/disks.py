"""Real disk faults: a size-limited tmpfs that can be remounted read-only or filled up.

Tests run as root, and chmod does not stop root, so a read-only mount is the
honest way to make the store directory unwritable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def mount_problem() -> str | None:
    """Why tmpfs mounts cannot be used here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    with tempfile.TemporaryDirectory() as probe:
        result = _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe)
        if result.returncode != 0:
            return f"cannot mount a tmpfs: {result.stderr.strip()}"
        _run("umount", "-l", probe)
    return None


class Tmpfs:
    """A tmpfs of ``size_kb`` at ``path``."""

    def __init__(self, path: Path, size_kb: int) -> None:
        self.path = path
        self.size_kb = size_kb
        self.filler = path / "filler"

    def mount(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        self._check(
            "mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k,mode=0700", "tmpfs", str(self.path)
        )
        return self

    def readonly(self) -> None:
        self._check("mount", "-o", "remount,ro", str(self.path))

    def writable(self) -> None:
        self._check("mount", "-o", "remount,rw", str(self.path))

    def fill(self) -> int:
        """Take every free byte (the store's next write gets ENOSPC); returns bytes taken."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (65536, 4096, 512, 64, 8, 1):
                while True:
                    try:
                        written += os.write(fd, b"\0" * chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def unmount(self) -> None:
        _run("umount", "-l", str(self.path))

    def _check(self, *args: str) -> None:
        result = _run(*args)
        if result.returncode != 0:
            raise OSError(f"{' '.join(args)} failed: {result.stderr.strip()}")

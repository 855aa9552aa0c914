"""The modes of the files and directories a store creates, whatever the umask.

As Django does for ``FILE_UPLOAD_PERMISSIONS``: a new file or directory gets its
mode by an explicit ``chmod``, so the umask of whoever runs the process (a web
worker, a deploy user, root in ``docker exec``) never decides who can read the
store. A file is published only once it has its mode (a temp file chmod-ed, then
renamed or linked into place), so no reader ever sees it with another one. The
umask is never changed: it is process-wide, and other threads create files too.

Only what is created gets a mode: existing files and directories keep theirs.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Group members may read, nobody else: a deploy user in the web workers' group can
# share the store (with 0o660 / 0o770 for writes), and other local users see nothing.
FILE_PERMISSIONS = 0o640
DIRECTORY_PERMISSIONS = 0o750

TEMP_PREFIX = "tmp"  # leftovers of crashed writes: embeddings_sweep removes them


@dataclass(frozen=True)
class Permissions:
    """``file``: the mode of new files; ``directory``: of new directories."""

    file: int = FILE_PERMISSIONS
    directory: int = DIRECTORY_PERMISSIONS

    def chmod_file(self, fd: int) -> None:
        os.fchmod(fd, self.file)

    def chmod_directory(self, path: str | Path) -> None:
        """Give a directory just created its mode, keeping a setgid bit it inherited.

        In a setgid directory (a group shared by several users) new entries take its
        group and new directories its setgid bit; a plain chmod would clear that bit
        and stop the group from passing to the directories below.
        """
        inherited = os.stat(path).st_mode & stat.S_ISGID
        os.chmod(path, self.directory | inherited)

    def make_directory(self, path: Path) -> None:
        """Create ``path`` with its mode; ``FileExistsError`` if it exists."""
        # Created with the mode (the umask can only take bits away), then chmod-ed.
        path.mkdir(mode=self.directory & 0o777)
        self.chmod_directory(path)

    def open_or_create(self, path: str | Path, flags: int) -> int:
        """Open ``path``; create it first, with its mode, if it does not exist.

        A new file appears under its name already chmod-ed: it is made as a temp file
        and hard-linked into place, so a process that opens it (another user's, for
        the lock) never finds it with mkstemp's 0600.
        """
        while True:
            try:
                return os.open(path, flags | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=TEMP_PREFIX)
            try:
                self.chmod_file(fd)
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: open theirs
            except OSError:
                # No hard links here (some network and FUSE file systems): create it in
                # place, with its mode narrowed by the umask at worst until the chmod.
                return self._create_in_place(path, flags)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _create_in_place(self, path: str | Path, flags: int) -> int:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file & 0o777)
        except FileExistsError:
            return os.open(path, flags | os.O_CLOEXEC)
        try:
            self.chmod_file(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd


DEFAULT = Permissions()

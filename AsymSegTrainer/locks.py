"""Advisory file locks: one run per output folder, and short critical sections between processes.

The operating system releases an advisory lock when its process dies (even by SIGKILL), so a
crashed run never leaves a folder locked. ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on
Windows; all of the engine's OS-specific locking is here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator, Optional

from .errors import InputError

LOCK_FILE = ".asymseg.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _try_lock(f: IO, blocking: bool) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        else:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
    except OSError:
        if blocking:
            raise
        return False
    return True


def _unlock(f: IO) -> None:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    else:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed), waiting for other holders."""
    with open(path, "a+") as f:
        _try_lock(f, blocking=True)
        try:
            yield
        finally:
            _unlock(f)


class FolderLock:
    """One engine command per output folder: ``acquire`` fails at once (InputError) while another holds it.

    The holder's process id is written into the lock file so the error can name it. The lock
    file stays after release (deleting it would race with a process that just opened it).
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._file: Optional[IO] = None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        if not _try_lock(f, blocking=False):
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise InputError(f"The output folder {self.path.parent} is in use by process {holder}.",
                             "Wait for that run to finish (or cancel it), or choose another output folder; "
                             "nothing was changed.")
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            _unlock(self._file)
            self._file.close()
            self._file = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

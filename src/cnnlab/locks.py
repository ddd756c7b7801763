"""File locks shared by processes on one machine (study workers, data downloads)."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Self


class FileLock:
    """An exclusive ``flock`` on a file; released by the kernel if the process dies.

    Local study workers take one per run, so a run is never trained twice at
    once even if the queue hands it out twice; ``cnnlab data get`` takes one per
    data set, so two downloads of it never write over each other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

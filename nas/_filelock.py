"""One exclusive advisory file lock, shared by the study and the tracking store."""

from __future__ import annotations

import contextlib
import fcntl
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Serialises processes on one machine (SQLite stores are one-machine stores too).

    Raises:
        OSError: ``path`` cannot be created (its folder is missing or read-only).
    """
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

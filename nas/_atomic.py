"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A crash (SIGKILL, power loss, a full disk) during the write leaves the previous file in
place, never a half-written one: ``os.replace`` is atomic on POSIX within one file system.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "front.csv") as tmp:
    ...     _ = tmp.write_text("a,b\\n")
    >>> (d / "front.csv").read_text(), sorted(p.name for p in d.iterdir())
    ('a,b\\n', ['front.csv'])
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer the format
    from it still work); on success it replaces ``path``, on any exception it is removed.

    Raises:
        OSError: the folder cannot be written (the message names ``path``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)

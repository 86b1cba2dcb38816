"""Atomic file writes: the target is either the old file or the complete new one.

Every writer of :mod:`torchlean.io` goes through here. The new content is written to a
temporary file in the target's folder, flushed and ``fsync``-ed, then moved over the
target with :func:`os.replace` (atomic on POSIX and Windows); the folder is ``fsync``-ed
so the rename itself survives a crash. On any failure the temporary file is removed and
the previous file is left exactly as it was.

Reading map:
- :func:`atomic_path` -- a context manager that yields a temporary path to write to.
- :func:`atomic_write_bytes` -- write a ``bytes`` object atomically.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target``; on success move it over ``target``.

    The caller writes the whole new file to the yielded path (by any means). When the
    ``with`` block ends without an exception the file is synced and renamed onto
    ``target``; when it raises, the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    folder = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_folder(folder)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`). Cost: O(len)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        _write_all(f.fileno(), data)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 1 << 30])
        view = view[written:]


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse to sync folders
        pass
    finally:
        os.close(fd)

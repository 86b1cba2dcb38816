"""Atomic file writes: the target is either the old file or the complete new one.

Every writer of :mod:`torchlean.io` goes through here. The new content is written to a
file in a fresh temporary folder ``.<name>.<pid>-<random>.tmp`` beside the target (so
that a writer's own helper files, such as the ``.tmpXXXXXX`` file safetensors' Rust
writer makes beside its output, stay inside it), flushed and ``fsync``-ed, then moved over the
target with :func:`os.replace` (atomic on POSIX and Windows); the folder is ``fsync``-ed
so the rename itself survives a crash. The file replaced is held open across the rename
and closed on a thread of its own, so freeing its blocks does not delay the save. On
any failure the temporary file is removed and
the previous file is left exactly as it was, and an :class:`OSError` of the same class
(``PermissionError``, ...) and ``errno`` is raised with ``filename`` set to the target.

Only regular files are replaced. A target that exists and is anything else (a device
such as ``/dev/null``, a FIFO, a socket, a directory) is refused before anything is
written, with an :class:`OSError` naming it: a rename would put a regular file in its
place. A symlink to a regular file (or a dangling one) is followed: the file it leads
to is replaced and the link stays a link.

A process killed with SIGKILL mid-write cannot remove its temporary folder
``.<name>.<pid>-<random>.tmp``. Such a folder never harms a later save (every save picks
a fresh random name), and the next successful save of the same target removes the ones
whose writer process is gone and that are older than the current process's start
(POSIX; on Windows, where a process cannot be probed safely, they are left).

Reading map:
- :func:`atomic_path` -- a context manager that yields a temporary path to write to.
- :func:`atomic_write_bytes` -- write a ``bytes`` object atomically.
- :func:`stale_temporaries` -- the leftovers of killed writers of a target.
- :func:`save_target` -- the regular file a save of a path replaces (symlinks followed).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "file_kind",
    "publish_folder",
    "save_target",
    "stale_temporaries",
]

_STARTED = time.time()


def _reset_start() -> None:
    global _STARTED
    _STARTED = time.time()


if hasattr(os, "register_at_fork"):  # a forked child is a new process: it starts now
    os.register_at_fork(after_in_child=_reset_start)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh path in a temporary folder beside ``target``; on success move the
    file there over ``target``.

    The caller writes the whole new file to the yielded path (by any means). When the
    ``with`` block ends without an exception the file is synced and renamed onto
    ``target``; when it raises, the temporary file is removed and ``target`` is untouched.
    An :class:`OSError` from any step is raised again naming ``target`` (see module doc).
    """
    shown = os.fspath(target)
    target = save_target(target)
    folder = target.parent
    try:
        box = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=folder)
        )
        tmp = box / target.name
        tmp.touch()
    except OSError as e:
        if "box" in locals():
            shutil.rmtree(box, ignore_errors=True)
        raise _naming(e, Path(shown)) from e
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(target))
        old = _hold(target)
        try:
            os.replace(tmp, target)
        finally:
            _release(old)
    except BaseException as e:
        shutil.rmtree(box, ignore_errors=True)
        cause = _os_error_in(e)
        if cause is not None:
            raise _naming(cause, Path(shown)) from e
        raise
    shutil.rmtree(box, ignore_errors=True)
    _sync_folder(folder)
    for stale in stale_temporaries(target):
        _remove(stale)


#: Threads closing the replaced files (see :func:`_release`); joined by tests.
RELEASING: list[threading.Thread] = []


def _hold(target: Path) -> int | None:
    """A descriptor of the file ``target`` names now (POSIX), or ``None``: held across
    the rename, the replaced file is freed when it is closed, not in the rename."""
    if os.name != "posix":
        return None
    try:
        return os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # no file yet (or not one to hold): nothing to free later


def _release(fd: int | None) -> None:
    """Close ``fd`` on a thread of its own: freeing a replaced file's blocks (tens of
    milliseconds for a few hundred MB on ext4) is not the caller's to wait for."""
    if fd is None:
        return
    RELEASING[:] = [t for t in RELEASING if t.is_alive()]
    thread = threading.Thread(target=os.close, args=(fd,), name="torchlean-release", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread to be had (interpreter shutting down)
        os.close(fd)
        return
    RELEASING.append(thread)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`). Cost: O(len)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        _write_all(f.fileno(), data)


def save_target(target: str | os.PathLike[str]) -> Path:
    """The path a save of ``target`` writes: ``target`` itself, or the file its symlinks
    lead to (the links are kept). A target that exists and is not a regular file is
    refused with an :class:`OSError` (``EINVAL``, ``filename`` the target) that says
    what it is. Cost: O(symlinks followed)."""
    path = Path(target)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        # a new file, or a dangling symlink: create what the link names
        return Path(os.path.realpath(path)) if os.path.islink(path) else path
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refusal(path, "a symlink loop") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(path, file_kind(st.st_mode))
    if not os.path.islink(path):
        return path
    real = Path(os.path.realpath(path))
    try:
        same = os.path.samestat(os.stat(real), st)
    except OSError:
        same = False
    if not same:  # e.g. /dev/stdout -> /proc/self/fd/1 -> a deleted file
        raise _refusal(path, "a link to a file that has no name to replace")
    return real


def file_kind(mode: int) -> str:
    """``"a directory"``, ``"a FIFO"``, ``"a device"``, ... for an ``st_mode``."""
    return (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a regular file"
        if stat.S_ISREG(mode)
        else "not a regular file"
    )


def _refusal(path: Path, kind: str) -> OSError:
    err = OSError(
        errno.EINVAL,
        f"is {kind}, not a regular file; a save writes a new regular file and would"
        " replace it, so nothing was written",
    )
    err.filename = os.fspath(path)
    return err


def stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Temporary folders (or files) of ``target`` left by writers that were killed: their process
    (the pid in the name) no longer runs and they are older than this process.

    Cost: O(files in the target's folder).
    """
    target = Path(target)
    head = f".{target.name}."
    found = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    for name in names:
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        pid_text = name[len(head) :].partition("-")[0]
        if not pid_text.isdigit() or _running(int(pid_text)):
            continue
        path = target.parent / name
        try:
            if path.stat().st_mtime >= _STARTED:
                continue
        except OSError:
            continue
        found.append(path)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":
        # on Windows os.kill(pid, 0) would terminate the process: never clean there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or a name we do not understand): keep
    return True


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: ``e`` itself, one in its ``__cause__``/``__context__``
    chain (torch.save raises a RuntimeError while handling one), or one named in the
    message as ``(os error N)`` (the Rust writer of safetensors)."""
    seen: set[int] = set()
    at: BaseException | None = e
    while at is not None and id(at) not in seen:
        if isinstance(at, OSError):
            return at
        seen.add(id(at))
        at = at.__cause__ or at.__context__
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is not None and isinstance(e, Exception):
        number = int(found.group(1))
        return OSError(number, os.strerror(number))
    return None


def _naming(e: OSError, target: Path) -> OSError:
    """``e`` as the same OSError class and errno, naming ``target`` instead of a
    temporary file, and saying that the previous file is unchanged."""
    what = e.strerror or str(e) or type(e).__name__
    message = f"could not save ({what}); the previous file is unchanged"
    try:
        err = type(e)(e.errno, message)
    except TypeError:  # an OSError subclass with its own constructor
        err = OSError(e.errno, message)
    err.filename = os.fspath(target)
    return err


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 1 << 30])
        view = view[written:]


def _mode_for(target: Path) -> int:
    """The permission bits a plain ``open(target, "w")`` would give: the old file's bits
    when it exists, else 0o666 less the process umask (mkstemp's own 0o600 is private)."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it elsewhere
    os.umask(mask)
    return mask


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


def publish_folder(partial: str, target: str, layout_name: str, layout: dict[str, Any]) -> None:
    """Write ``layout`` as JSON into the folder ``partial`` (fsynced), then put the folder
    in place of ``target``: an older ``target`` is moved aside first and removed last, and
    the parent folder is fsynced, so a reader finds the old folder, the new one, or (for
    a moment) none, never a partial one. For the folder formats' last process.
    Cost: O(layout) plus the removal of the old folder."""
    with open(os.path.join(partial, layout_name), "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    old = None
    if os.path.lexists(target):
        old = f"{target}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(partial, target)
    fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

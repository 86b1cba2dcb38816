"""How the CLI reads and writes checkpoints: through :mod:`torchlean.io`.

``show`` and ``check`` never load a safetensors file (or a sharded checkpoint) whole:
they read its header with :func:`torchlean.io.inspect`, the blocks a preview needs
(:meth:`_FileSource.block`: the 10x12 corner of a wide matrix), and for statistics a
bounded sample made of evenly spaced contiguous blocks of the tensor
(:func:`torchlean.widgets._sources.sample_blocks` over
:meth:`~torchlean.io.FileSummary.blocks`, which reads blocks from disk where the format
can). Other formats are read whole by ``inspect`` and sampled in memory. Nothing here
knows a file format: that is :mod:`torchlean.io`'s.

Reading map:
- :func:`load`, :func:`save`, :func:`inspect` -- ``torchlean.io.load`` /
  ``save`` / ``inspect``.
- :func:`summary` -- the :class:`~torchlean.widgets.Summary` of a file (lazy).
- :func:`shapes` -- names to shapes of a file's visible variables (header only).
- :func:`check_format` -- a format name or a path's suffix, checked;
  :func:`output_format` -- the same for ``convert``'s OUT (``--max-shard-size`` too).
- :func:`written` -- write for ``convert``, put in place when the read-back agrees.
- :func:`metadata` -- a file's own metadata (safetensors' ``__metadata__``), or None.
- :func:`nested` -- ``key=``/``flatten=`` for a file whose format takes them.
- :class:`UsageError` -- a command line that asks for something impossible.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from torchlean._text import format_bytes, printable
from torchlean.errors import TorchLeanError
from torchlean.io._atomic import atomic_path
from torchlean.io._format import registered
from torchlean.widgets import Summary, summarize_sources
from torchlean.widgets._build import SAMPLE_LIMIT
from torchlean.widgets._sources import sample_blocks

__all__ = [
    "OutOfMemoryError",
    "UsageError",
    "check_format",
    "inspect",
    "load",
    "metadata",
    "naming_target",
    "nested",
    "output_format",
    "save",
    "shapes",
    "summary",
    "written",
]


class UsageError(TorchLeanError, ValueError):
    """A command line that asks for something impossible (exit code 2)."""


def _exists(path: str | os.PathLike[str]) -> Path:
    """``path``, which must exist (a folder too: a format that reads folders takes it,
    the others refuse it)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    return p


def _reads_folders(format: str) -> bool:
    from torchlean.io._format import registered

    return any(f.name == format and f.directory for f in registered())


def check_format(path: str | os.PathLike[str], fmt: str | None) -> str:
    """The format ``fmt`` names, or the one ``path``'s suffix implies; a user's error
    (unknown format, unknown suffix) becomes a :class:`UsageError`."""
    from torchlean import io

    try:
        return io.format_of(path, fmt)
    except TorchLeanError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None


def nested(
    fmt: str, key: str | None = None, flatten: bool = False, *, strict: bool = True
) -> dict[str, Any]:
    """``key=``/``flatten=`` as keyword arguments for ``io.load``/``io.inspect`` of a
    file in format ``fmt``: none when neither is asked for, or (``strict=False``, for
    ``diff``) when the format has no nested state dicts."""
    if key is None and not flatten:
        return {}
    record = next(f for f in registered() if f.name == fmt)
    if not record.nested and not strict:
        return {}
    return {"key": key, "flatten": flatten}


def load(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    key: str | None = None,
    flatten: bool = False,
    strict: bool = True,
    native: bool = False,
) -> Any:
    """The context stored in ``path``: numpy arrays, or (``native=True``) the arrays
    the format builds without a copy (its ``native_backend``). A file bigger than the
    memory left is a one-line error naming it, not a MemoryError. Cost: O(file)."""
    from torchlean import io

    p = _exists(path)
    name = check_format(p, fmt)
    backend = "numpy"
    if native:
        backend = next(f for f in registered() if f.name == name).native_backend or backend
    with _memory(p):
        return io.load(p, format=name, backend=backend, **nested(name, key, flatten, strict=strict))


@contextlib.contextmanager
def _memory(path: Path) -> Iterator[None]:
    """A MemoryError while reading ``path`` as a one-line :class:`OutOfMemoryError`."""
    try:
        yield
    except MemoryError:
        raise OutOfMemoryError(
            f"{path}: not enough memory to read it ({format_bytes(path.stat().st_size)} on"
            " disk); `torchlean show` and `torchlean check` read a safetensors file without"
            " loading it"
        ) from None


def save(
    ctx: Any,
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``ctx`` to ``path`` (atomically, as ``io.save`` does). Cost: O(bytes)."""
    from torchlean import io

    io.save(ctx, Path(path), format=check_format(path, fmt), metadata=metadata)


def output_format(path: str | os.PathLike[str], fmt: str | None, max_shard_size: str | None) -> str:
    """The format ``convert`` writes ``path`` in: :func:`check_format`'s, or with
    ``--max-shard-size`` sharded safetensors (``path`` a folder or an index), the size
    checked before anything is read."""
    from torchlean.io import sharded

    if max_shard_size is None:
        return check_format(path, fmt)
    try:
        sharded.parse_size(max_shard_size)
    except ValueError as e:
        raise UsageError(f"--max-shard-size: {e}") from None
    name = sharded.FORMAT.name
    got = name if fmt is None and Path(path).suffix.lower() in ("", ".json") else None
    got = got or check_format(path, fmt)
    if got != name:
        raise UsageError(
            f"--max-shard-size writes sharded safetensors (a folder or a"
            f" *{sharded.INDEX_SUFFIX}), not {got}"
        )
    return name


@contextlib.contextmanager
def written(
    ctx: Any,
    path: str | os.PathLike[str],
    *,
    fmt: str,
    max_shard_size: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Iterator[Path]:
    """Write ``ctx`` for ``path`` in format ``fmt`` somewhere temporary and yield where
    (to read it back); put it in place only when the ``with`` block ends well. Sharded
    safetensors are staged as a whole folder (:func:`torchlean.io.sharded.staged`)."""
    from torchlean.io import sharded

    if fmt == sharded.FORMAT.name:
        size = sharded.DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size
        with sharded.staged(ctx, Path(path), max_shard_size=size) as index:
            yield index
        return
    if _reads_folders(fmt):  # another folder format: staged as a whole folder
        target = Path(path)
        box = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            tmp = box / target.name
            save(ctx, tmp, fmt=fmt)
            yield tmp
            old = box / "old"
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(box, ignore_errors=True)
        return
    with atomic_path(path) as tmp, naming_target(tmp, Path(path)):
        save(ctx, tmp, fmt=fmt, metadata=metadata)
        yield tmp


@contextlib.contextmanager
def naming_target(tmp: Path, dst: Path) -> Iterator[None]:
    """An error raised while writing or reading back the temporary file ``tmp`` names
    ``dst`` instead (a user never sees a temporary name)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and os.fspath(e.filename) == os.fspath(tmp):
            e.filename = os.fspath(dst)
        raise
    except TorchLeanError as e:
        text = str(e)
        if os.fspath(tmp) in text:
            try:
                renamed = type(e)(text.replace(os.fspath(tmp), os.fspath(dst)))
            except TypeError:  # an error class with its own constructor
                raise e from None
            raise renamed from None
        raise


def metadata(path: str | os.PathLike[str], *, fmt: str | None = None) -> dict[str, str] | None:
    """The file's own metadata (safetensors' ``__metadata__`` less torchlean's layout),
    or None for a format that has none. Cost: O(header)."""
    name = check_format(path, fmt)
    record = next(f for f in registered() if f.name == name)
    if not record.metadata:
        return None
    found = _inspect(path, name).metadata
    return None if found is None else dict(found)


def inspect(path: str | os.PathLike[str], fmt: str | None = None) -> Any:
    """``torchlean.io.inspect`` of ``path`` (the header only where the format can).
    Cost: O(header) for a header-only format, else O(file)."""
    return _inspect(path, fmt)


def _inspect(
    path: str | os.PathLike[str], fmt: str | None, key: str | None = None, flatten: bool = False
) -> Any:
    from torchlean import io

    p = _exists(path)
    name = check_format(p, fmt)
    with _memory(p):
        return io.inspect(p, format=name, **nested(name, key, flatten))


class OutOfMemoryError(TorchLeanError, MemoryError):
    """A file too big for the memory left (exit code 2, one line)."""


def summary(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    sample_limit: int = SAMPLE_LIMIT,
    key: str | None = None,
    flatten: bool = False,
) -> Summary:
    """The summary of the checkpoint in ``path``, entries in the file's order.

    Cost: for safetensors, the header plus O(sample_limit) elements per tensor read from
    disk, whatever the file's size; for other formats, O(file).
    """
    fs = _inspect(path, fmt, key, flatten)
    # entries that share one tensor (a layout may point thousands at one) share what
    # was read: each distinct tensor is read and sampled once
    # (only those are remembered: a sample of every tensor would add up)
    uses: dict[tuple[str, str], int] = {}
    for e in fs.entries:
        uses[e.registry, e.key] = uses.get((e.registry, e.key), 0) + 1
    cache: dict[tuple[Any, ...], Any] = {}

    def source(e: Any) -> _FileSource:
        return _FileSource(fs, e, cache if uses[e.registry, e.key] > 1 else None)

    variables = [(printable(e.name), source(e)) for e in fs.variables]
    gradients = [(printable(e.name), source(e)) for e in fs.gradients]
    n_v, n_g = len(variables), len(gradients)
    p = Path(path)
    # a format of several files (shards) says the bytes of its tensors, not of one file
    size = fs.nbytes if _reads_folders(fs.format) else p.stat().st_size
    title = f"{printable(p.name)} ({fs.format}, {format_bytes(size)}):"
    title += f" {n_v} variable{'s' if n_v != 1 else ''}"
    if n_g:
        title += f", {n_g} gradient{'s' if n_g != 1 else ''}"
    return summarize_sources(
        title,
        variables,
        gradients,
        sample_limit=sample_limit,
        next_id=fs.next_id,
        oldest_first=True,
    )


def shapes(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    key: str | None = None,
    flatten: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Names to shapes of the visible variables in ``path``, in the file's order.

    Cost: the header only for safetensors, else O(file).
    """
    fs = _inspect(path, fmt, key, flatten)
    visible = [e for e in fs.variables if not e.shadowed]
    return {e.name: tuple(e.shape) for e in reversed(visible)}


class _FileSource:
    """A :class:`~torchlean.widgets.TensorSource` over one entry of an inspected file."""

    __slots__ = ("_cache", "_fs", "_info")

    def __init__(self, fs: Any, info: Any, cache: dict[tuple[Any, ...], Any] | None = None) -> None:
        self._fs = fs
        self._info = info
        self._cache = cache

    def _once(self, what: str, n: object, read: Any) -> Any:
        """``read()``, remembered for every source over the same stored tensor (when
        this source has a cache: its tensor is shared by several entries)."""
        if self._cache is None:
            return read()
        key = (self._info.registry, self._info.key, what, n)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = read()
        return found

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self._info.shape)

    @property
    def dtype(self) -> str:
        return str(self._info.dtype)

    @property
    def device(self) -> str:
        return "cpu"

    def head(self, n: int) -> np.ndarray[Any, Any]:
        return self._once("head", n, lambda: self._head(n))  # type: ignore[no-any-return]

    def _head(self, n: int) -> np.ndarray[Any, Any]:
        return np.asarray(self._fs.read(self._info, n)).reshape(-1)[:n]

    def block(self, index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        """``tensor[index]`` (a tuple of slices): from the file alone where the format
        can slice (safetensors reads only the block's rows, so a preview of a wide
        matrix reads its corner); else sliced from the tensor ``inspect`` holds."""
        return self._once("block", repr(index), lambda: self._block(index))  # type: ignore[no-any-return]

    def _block(self, index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        if self._fs.sliceable:
            with self._fs.blocks(self._info) as read:
                return np.asarray(read(index))
        return np.asarray(np.asarray(self._fs.read(self._info))[index])

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        return self._once("sample", limit, lambda: self._sample(limit))  # type: ignore[no-any-return]

    def _sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        shape = self.dims
        numel = math.prod(shape)
        if numel <= limit:
            return np.asarray(self._fs.read(self._info)).reshape(-1), False
        if self._fs.sliceable:
            with self._fs.blocks(self._info) as read:
                return sample_blocks(read, shape, limit), True
        flat = np.asarray(self._fs.read(self._info)).reshape(-1)
        return flat[:: -(-numel // limit)], True

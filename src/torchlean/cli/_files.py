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
- :func:`load`, :func:`save` -- ``torchlean.io.load`` / ``torchlean.io.save``.
- :func:`summary` -- the :class:`~torchlean.widgets.Summary` of a file (lazy).
- :func:`shapes` -- names to shapes of a file's visible variables (header only).
- :func:`check_format` -- a format name or a path's suffix, checked;
  :func:`output_format` -- the same for ``convert``'s OUT (``--max-shard-size`` too).
- :func:`written` -- write for ``convert``, put in place when the read-back agrees.
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

from torchlean._text import format_bytes
from torchlean.errors import TorchLeanError
from torchlean.io._atomic import atomic_path
from torchlean.widgets import Summary, summarize_sources
from torchlean.widgets._build import SAMPLE_LIMIT
from torchlean.widgets._sources import sample_blocks

__all__ = [
    "UsageError",
    "check_format",
    "load",
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


def load(path: str | os.PathLike[str], *, fmt: str | None = None) -> Any:
    """The context stored in ``path`` (numpy arrays). Cost: O(file)."""
    from torchlean import io

    p = _exists(path)
    return io.load(p, format=check_format(p, fmt), backend="numpy")


def save(ctx: Any, path: str | os.PathLike[str], *, fmt: str | None = None) -> None:
    """Write ``ctx`` to ``path`` (atomically, as ``io.save`` does). Cost: O(bytes)."""
    from torchlean import io

    io.save(ctx, Path(path), format=check_format(path, fmt))


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
    ctx: Any, path: str | os.PathLike[str], *, fmt: str, max_shard_size: str | None = None
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
    with atomic_path(path) as tmp:
        save(ctx, tmp, fmt=fmt)
        yield tmp


def _inspect(path: str | os.PathLike[str], fmt: str | None) -> Any:
    from torchlean import io

    p = _exists(path)
    return io.inspect(p, format=check_format(p, fmt))


def summary(
    path: str | os.PathLike[str], *, fmt: str | None = None, sample_limit: int = SAMPLE_LIMIT
) -> Summary:
    """The summary of the checkpoint in ``path``, entries in the file's order.

    Cost: for safetensors, the header plus O(sample_limit) elements per tensor read from
    disk, whatever the file's size; for other formats, O(file).
    """
    fs = _inspect(path, fmt)
    variables = [(e.name, _FileSource(fs, e)) for e in fs.variables]
    gradients = [(e.name, _FileSource(fs, e)) for e in fs.gradients]
    n_v, n_g = len(variables), len(gradients)
    p = Path(path)
    # a format of several files (shards) says the bytes of its tensors, not of one file
    size = fs.nbytes if _reads_folders(fs.format) else p.stat().st_size
    title = f"{p.name} ({fs.format}, {format_bytes(size)}):"
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


def shapes(path: str | os.PathLike[str], *, fmt: str | None = None) -> dict[str, tuple[int, ...]]:
    """Names to shapes of the visible variables in ``path``, in the file's order.

    Cost: the header only for safetensors, else O(file).
    """
    fs = _inspect(path, fmt)
    visible = [e for e in fs.variables if not e.shadowed]
    return {e.name: tuple(e.shape) for e in reversed(visible)}


class _FileSource:
    """A :class:`~torchlean.widgets.TensorSource` over one entry of an inspected file."""

    __slots__ = ("_fs", "_info")

    def __init__(self, fs: Any, info: Any) -> None:
        self._fs = fs
        self._info = info

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
        return np.asarray(self._fs.read(self._info, n)).reshape(-1)[:n]

    def block(self, index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        """``tensor[index]`` (a tuple of slices): from the file alone where the format
        can slice (safetensors reads only the block's rows, so a preview of a wide
        matrix reads its corner); else sliced from the tensor ``inspect`` holds."""
        if self._fs.sliceable:
            with self._fs.blocks(self._info) as read:
                return np.asarray(read(index))
        return np.asarray(np.asarray(self._fs.read(self._info))[index])

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        shape = self.dims
        numel = math.prod(shape)
        if numel <= limit:
            return np.asarray(self._fs.read(self._info)).reshape(-1), False
        if self._fs.sliceable:
            with self._fs.blocks(self._info) as read:
                return sample_blocks(read, shape, limit), True
        flat = np.asarray(self._fs.read(self._info)).reshape(-1)
        return flat[:: -(-numel // limit)], True

"""How the CLI reads and writes checkpoints: through :mod:`torchlean.io`.

``show`` and ``check`` never load a safetensors file whole: they read its header with
:func:`torchlean.io.inspect`, the first elements a preview needs, and for statistics a
bounded sample made of evenly spaced contiguous blocks of the tensor
(:func:`torchlean.widgets._sources.sample_blocks` over
:meth:`~torchlean.io.FileSummary.blocks`, which reads blocks from disk where the format
can). Other formats are read whole by ``inspect`` and sampled in memory. Nothing here
knows a file format: that is :mod:`torchlean.io`'s.

Reading map:
- :func:`load`, :func:`save` -- ``torchlean.io.load`` / ``torchlean.io.save``.
- :func:`summary` -- the :class:`~torchlean.widgets.Summary` of a file (lazy).
- :func:`shapes` -- names to shapes of a file's visible variables (header only).
- :func:`check_format` -- a format name or a path's suffix, checked.
- :class:`UsageError` -- a command line that asks for something impossible.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from torchlean._text import format_bytes
from torchlean.errors import TorchLeanError
from torchlean.widgets import Summary, summarize_sources
from torchlean.widgets._build import SAMPLE_LIMIT
from torchlean.widgets._sources import sample_blocks

__all__ = [
    "UsageError",
    "check_format",
    "load",
    "save",
    "shapes",
    "summary",
]


class UsageError(TorchLeanError, ValueError):
    """A command line that asks for something impossible (exit code 2)."""


def _exists(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(p))
    return p


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
    title = f"{p.name} ({fs.format}, {format_bytes(p.stat().st_size)}):"
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

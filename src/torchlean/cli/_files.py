"""How the CLI reads and writes checkpoints: through :mod:`torchlean.io` only.

Reading map:
- :func:`load`, :func:`save` -- ``torchlean.io.load`` / ``torchlean.io.save``.
- :func:`summary` -- the :class:`~torchlean.widgets.Summary` of a file.
- :func:`shapes` -- names to shapes of a file's variables.
- :class:`UsageError` -- a command line that asks for something impossible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchlean.errors import TorchLeanError
from torchlean.widgets._summary import Summary, format_bytes, source_of, summarize_sources

__all__ = ["UsageError", "load", "save", "shapes", "summary"]


class UsageError(TorchLeanError, ValueError):
    """A command line that asks for something impossible (exit code 2)."""


def _exists(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(p))
    return p


def load(path: str | os.PathLike[str], *, fmt: str | None = None) -> Any:
    """The context stored in ``path`` (numpy arrays)."""
    from torchlean import io

    return io.load(_exists(path), format=fmt, backend="numpy")


def save(ctx: Any, path: str | os.PathLike[str], *, fmt: str | None = None) -> None:
    """Write ``ctx`` to ``path``."""
    from torchlean import io

    io.save(ctx, Path(path), format=fmt)


def summary(path: str | os.PathLike[str], *, fmt: str | None = None) -> Summary:
    """The summary of the checkpoint in ``path``, entries in the order they were
    registered (for a file: the file's order)."""
    p = _exists(path)
    ctx = load(p, fmt=fmt)
    return summary_of_context(ctx, p)


def summary_of_context(ctx: Any, p: Path) -> Summary:
    """The summary of a context read from ``p``, oldest entry first."""
    variables = [(n, source_of(at)) for n, at in ctx._v.entries()]
    gradients = [(n, source_of(at)) for n, at in ctx._g.entries()]
    title = _title(p, len(variables), len(gradients))
    return summarize_sources(title, variables, gradients, oldest_first=True)


def _title(p: Path, n_v: int, n_g: int) -> str:
    title = f"{p.name} ({format_bytes(p.stat().st_size)}): {n_v} variable{'s' if n_v != 1 else ''}"
    if n_g:
        title += f", {n_g} gradient{'s' if n_g != 1 else ''}"
    return title


def shapes(path: str | os.PathLike[str], *, fmt: str | None = None) -> dict[str, tuple[int, ...]]:
    """Names to shapes of the visible variables in ``path``, in first-registered order."""
    ctx = load(path, fmt=fmt)
    return {name: at.dims for name, at in ctx._v.visible()}

"""Argument checks shared by the public functions: one clear ``TypeError`` or
``ValueError`` that names the function and the argument, before any work is done.

Reading map:
- :func:`require_path` -- a ``str`` or ``os.PathLike``.
- :func:`require_int` -- an ``int`` (not a bool) of at least a minimum.
- :func:`require_bool`, :func:`require_callable`, :func:`require_str`.
- :func:`require_save_arguments` -- a writer's context and path.
- (:func:`torchlean.runtime.context.require_context` checks a context.)
"""

from __future__ import annotations

import os

from torchlean._text import short_repr

__all__ = [
    "require_bool",
    "require_callable",
    "require_int",
    "require_path",
    "require_save_arguments",
    "require_str",
]


def _show(value: object) -> str:
    return short_repr(value)


def require_path(value: object, where: str, argument: str = "path") -> None:
    """``value`` must be a ``str`` or an ``os.PathLike`` (a ``pathlib.Path``)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{where}: {argument} must be a str or os.PathLike, got"
            f" {type(value).__name__} {_show(value)}"
        )


def require_int(value: object, where: str, argument: str, minimum: int = 0) -> None:
    """``value`` must be an ``int`` (numpy integers too, not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(
            f"{where}: {argument} must be an int, got {type(value).__name__} {_show(value)}"
        )
    if value.__index__() < minimum:
        raise ValueError(f"{where}: {argument} must be >= {minimum}, got {value}")


def require_bool(value: object, where: str, argument: str) -> None:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{where}: {argument} must be a bool, got {type(value).__name__} {_show(value)}"
        )


def require_str(value: object, where: str, argument: str) -> None:
    """``value`` must be a ``str``."""
    if not isinstance(value, str):
        raise TypeError(
            f"{where}: {argument} must be a str, got {type(value).__name__} {_show(value)}"
        )


def require_callable(value: object, where: str, argument: str) -> None:
    """``value`` must be callable."""
    if not callable(value):
        raise TypeError(
            f"{where}: {argument} must be callable, got {type(value).__name__} {_show(value)}"
        )


def require_save_arguments(ctx: object, path: object, where: str) -> None:
    """The arguments of a writer: a context and a path."""
    from torchlean.runtime.context import require_context

    require_context(ctx, where)
    require_path(path, where)

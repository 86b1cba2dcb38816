"""``save``, ``load`` and ``inspect``: the format from the suffix, then its record.

Every format is a :class:`~torchlean.io._format.Format` in one table; nothing here
knows a format by name. ``load`` strips prefixes and checks expectations the same way
for every format, before reading tensor data when the format's ``inspect`` reads only
a header.

Reading map:
- :func:`save`, :func:`load`, :func:`inspect` -- the public entry points.
- :func:`format_of` -- the format of a path (``"safetensors"``, ``"json"``, ...).
- :func:`strip_names` -- a context with a prefix removed from every name.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Final, Literal, overload

from torchlean._validate import require_bool, require_path, require_str
from torchlean.io._common import check_backend
from torchlean.io._format import (
    Format,
    by_suffix,
    check_input,
    for_path,
    registered,
    summarize_loaded,
)
from torchlean.io._summary import FileSummary
from torchlean.io.expect import ExpectReport, compare
from torchlean.runtime.context import RuntimeContext, with_roles

__all__ = ["FORMATS", "format_of", "inspect", "load", "save", "strip_names"]

#: The built-in formats, in the order they are registered (:func:`register_format`
#: adds more).
FORMATS: Final = ("safetensors", "json", "torch", "npz", "sharded")


def _record(path: str | os.PathLike[str], format: str | None) -> Format:
    table = {fmt.name: fmt for fmt in registered()}
    if format is not None:
        found = table.get(format) if isinstance(format, str) else None
        if found is None:
            raise ValueError(f"format must be one of {', '.join(table)}, got {format!r}")
        return found
    suffix = Path(path).suffix.lower()
    suffixes = by_suffix()
    fmt = for_path(path)
    if fmt is None:
        raise ValueError(
            f"{os.fspath(path)}: cannot tell the format from the suffix {suffix or '(none)'};"
            f" use one of {', '.join(suffixes)} or pass format= ({', '.join(table)})"
        )
    return fmt


def format_of(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format named by ``format`` or, when it is ``None``, by the path's suffix."""
    require_path(path, "format_of")
    return _record(path, format).name


def save(
    ctx: RuntimeContext[Any], path: str | os.PathLike[str], *, format: str | None = None
) -> None:
    """Write ``ctx`` to ``path`` atomically: the old file stays intact on any failure.

    ``format`` defaults to the suffix's (``.safetensors``, ``.json``, ``.pt``/``.pth``,
    ``.npz``, or a registered format's). Cost: O(total bytes).
    """
    if not isinstance(ctx, RuntimeContext):
        raise TypeError(f"save expects a RuntimeContext, got {type(ctx).__name__}")
    require_path(path, "save")
    fmt = _record(path, format)
    if os.path.isdir(path) and not fmt.directory:
        raise IsADirectoryError(
            errno.EISDIR, "is a folder; save needs a file name", os.fspath(path)
        )
    fmt.save(ctx, path)


@overload
def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = ...,
    backend: str = ...,
    expect: Any = ...,
    dtypes: bool = ...,
    strip_prefix: str | None = ...,
    strict: Literal[True] = ...,
) -> RuntimeContext[Any]: ...


@overload
def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = ...,
    backend: str = ...,
    expect: Any = ...,
    dtypes: bool = ...,
    strip_prefix: str | None = ...,
    strict: Literal[False],
) -> tuple[RuntimeContext[Any], ExpectReport]: ...


def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    backend: str = "numpy",
    expect: Any = None,
    dtypes: bool = False,
    strip_prefix: str | None = None,
    strict: bool = True,
) -> Any:
    """Read a context from ``path``.

    ``backend`` (``"numpy"``, ``"torch"`` or ``"jax"``) is the array library of the
    loaded tensors. ``expect`` (a mapping of name to shape or ``(shape, dtype)``, a
    context, or an ``nn.Module``) is checked against the most recent variable of each
    name -- before any tensor data is read for safetensors -- and every problem is
    reported in one :class:`~torchlean.errors.ExpectationError` (``dtypes=True`` also
    compares dtypes). ``strict=False`` returns ``(ctx, report)`` instead, the
    :class:`~torchlean.io.ExpectReport` listing what is missing, unexpected or
    mismatched (never silent: the report is part of the result). A tied weight's second
    name (an ``nn.Module``'s ``lm_head.weight``) is not missing when the name it is tied
    to is there. ``strip_prefix`` removes a prefix such as ``"module."`` from every name
    that has it. Bad files raise :class:`~torchlean.errors.FormatError`.
    Cost: O(total bytes).
    """
    require_path(path, "load")
    check_backend(backend)
    require_bool(dtypes, "load", "dtypes")
    require_bool(strict, "load", "strict")
    if strip_prefix is not None:
        require_str(strip_prefix, "load", "strip_prefix")
    fmt = _record(path, format)
    check_input(fmt, path)
    where = os.fspath(path)
    report = None
    if expect is not None and fmt.header_only_inspect:
        summary = _inspect(path, fmt)
        have = {
            _strip(e.name, strip_prefix): (e.shape, e.dtype)
            for e in summary.variables
            if not e.shadowed
        }
        report = compare(have, expect, dtypes=dtypes, source=where)
        if strict:
            report.raise_if_bad()
    ctx = fmt.load(path, backend=backend)
    if strip_prefix:
        ctx = strip_names(ctx, strip_prefix)
    if expect is not None and not fmt.header_only_inspect:
        report = compare(ctx, expect, dtypes=dtypes, source=where)
        if strict:
            report.raise_if_bad()
    if strict:
        return ctx
    return ctx, report if report is not None else ExpectReport(source=where)


def _strip(name: str, prefix: str | None) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def strip_names(ctx: RuntimeContext[Any], prefix: str) -> RuntimeContext[Any]:
    """``ctx`` with ``prefix`` removed from every variable and gradient name that has it.

    Cost: O(n log n).
    """

    def rename(registry: tuple[tuple[str, Any], ...], kind: str) -> list[tuple[str, Any]]:
        entries = [(_strip(n, prefix), at) for n, at in registry]
        origin: dict[str, str] = {}
        for (new, _), (old, _) in zip(entries, registry, strict=True):
            if origin.setdefault(new, old) != old:
                raise ValueError(
                    f"strip_prefix={prefix!r} would give {kind}s `{origin[new]}` and"
                    f" `{old}` the same name `{new}`"
                )
        return entries

    new = RuntimeContext.from_registries(
        rename(ctx.var_registry, "variable"),
        rename(ctx.gradients, "gradient"),
        next_id=ctx.next_id,
        dtype=ctx.dtype,
    )
    buffers, aliases = ctx.buffers(), ctx.aliases()
    if not buffers and not aliases:
        return new
    return with_roles(
        new,
        buffers=[_strip(n, prefix) for n in buffers],
        aliases={_strip(a, prefix): _strip(c, prefix) for a, c in aliases.items()},
    )


def inspect(path: str | os.PathLike[str], *, format: str | None = None) -> FileSummary:
    """A summary of a saved file: every entry's name, registry, shadowing, shape, dtype
    and byte size, with lazy access to one tensor.

    For safetensors only the header is read (milliseconds, whatever the file's size);
    other formats are loaded whole. Cost: O(header) for safetensors, else O(file).
    """
    require_path(path, "inspect")
    fmt = _record(path, format)
    check_input(fmt, path)
    return _inspect(path, fmt)


def _inspect(path: str | os.PathLike[str], fmt: Format) -> FileSummary:
    if fmt.inspect is not None:
        return fmt.inspect(path)
    return summarize_loaded(path, fmt, fmt.load(path, backend="numpy"))

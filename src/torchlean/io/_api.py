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

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal, overload

from torchlean._validate import require_bool, require_path, require_str
from torchlean.errors import FormatError
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
FORMATS: Final = ("safetensors", "json", "torch", "npz", "sharded", "dcp")


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
    ctx: RuntimeContext[Any],
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    metadata: Mapping[str, str] | None = None,
    distributed: bool = False,
) -> None:
    """Write ``ctx`` to ``path`` atomically: the old file stays intact on any failure.

    ``format`` defaults to the suffix's (``.safetensors``, ``.json``, ``.pt``/``.pth``,
    ``.npz``, or a registered format's). ``metadata`` (str to str) is written into a
    safetensors header's ``__metadata__``; other formats have no place for it and
    refuse it. Only a regular file is replaced (a symlink to one is followed); a
    device, FIFO or folder is refused. What the format could not read back (a dtype it
    lacks, a name it cannot store) is refused before anything is written.
    ``distributed=True``, called on every process of a process group, writes a
    checkpoint folder in which each process writes its own shards (the ``distributed``
    format, ``"dcp"``: see docs/distributed.md).
    Cost: O(total bytes).
    """
    if not isinstance(ctx, RuntimeContext):
        raise TypeError(f"save expects a RuntimeContext, got {type(ctx).__name__}")
    require_path(path, "save")
    require_bool(distributed, "save", "distributed")
    if distributed:
        fmt = _distributed(format, path)
        fmt.save(ctx, path)
        return
    fmt = _record(path, format)
    if os.path.isdir(path) and not fmt.directory:
        raise IsADirectoryError(
            errno.EISDIR, "is a folder; save needs a file name", os.fspath(path)
        )
    if metadata is None:
        fmt.save(ctx, path)
        return
    if not fmt.metadata:
        raise ValueError(
            f"save: metadata= is written by formats with a metadata header"
            f" ({', '.join(f.name for f in registered() if f.metadata)}); format"
            f" {fmt.name!r} has none"
        )
    fmt.save(ctx, path, metadata=metadata)


def _distributed(format: str | None, path: str | os.PathLike[str]) -> Format:
    """The format ``distributed=True`` writes: ``format``'s if given, else the
    distributed format the path names (``x.orbax``, an existing folder of one), else
    the first registered ``distributed`` format."""
    choices = [fmt for fmt in registered() if fmt.distributed]
    if format is not None:
        choices = [fmt for fmt in choices if fmt.name == format]
    else:
        named = for_path(path)
        if named is not None and named.distributed:
            return named
    if not choices:
        raise ValueError(
            f"save: distributed=True needs a distributed format, got format={format!r}"
            f" (distributed formats: {', '.join(f.name for f in registered() if f.distributed)})"
        )
    return choices[0]


@overload
def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = ...,
    backend: str = ...,
    expect: Any = ...,
    dtypes: bool = ...,
    strip_prefix: str | None = ...,
    dtype: str | None = ...,
    lean: bool = ...,
    key: str | None = ...,
    flatten: bool = ...,
    like: RuntimeContext[Any] | None = ...,
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
    dtype: str | None = ...,
    lean: bool = ...,
    key: str | None = ...,
    flatten: bool = ...,
    like: RuntimeContext[Any] | None = ...,
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
    dtype: str | None = None,
    lean: bool = False,
    key: str | None = None,
    flatten: bool = False,
    like: RuntimeContext[Any] | None = None,
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
    that has it. ``dtype`` (tensors whose file names no dtype) and ``lean`` (read as
    TorchLean's Lean importer does) are TorchLean JSON's options
    (:func:`torchlean.io.torchlean_json.load_json`). ``key`` (PyTorch files) picks a
    nested state dict -- ``"model"``, ``"state_dict_ema"``, dotted for deeper levels --
    and ``flatten=True`` reads nested mappings as dotted names. Bad files raise
    :class:`~torchlean.errors.FormatError`. The file is opened once and everything is
    read from it, so a save that replaces ``path`` meanwhile is never mixed in; the
    arrays are read into memory, never left mapped to the file. ``like`` (a context;
    distributed formats only, called on every process) loads each entry laid out as the
    template's entry of its name (a DTensor's mesh and placements), on any number of
    processes. Cost: O(total bytes).
    """
    require_path(path, "load")
    check_backend(backend)
    require_bool(dtypes, "load", "dtypes")
    require_bool(strict, "load", "strict")
    if strip_prefix is not None:
        require_str(strip_prefix, "load", "strip_prefix")
    fmt = _record(path, format)
    nested = _nested_options(fmt, key, flatten, "load")
    options: dict[str, Any] = {
        k: v for k, v in (("dtype", dtype), ("lean", lean)) if v is not None and v is not False
    }
    refused = [k for k in options if k not in fmt.load_options]
    if refused:
        raise ValueError(f"load: {'= and '.join(refused)}= do not apply to format {fmt.name!r}")
    check_input(fmt, path)
    where = os.fspath(path)
    if like is not None:
        if not isinstance(like, RuntimeContext):
            raise TypeError(f"load: like must be a RuntimeContext, got {type(like).__name__}")
        if not fmt.distributed:
            raise ValueError(
                f"load: like= needs a distributed format (a checkpoint folder), and"
                f" {where} is {fmt.name}"
            )
        options["like"] = like
    report = None
    with _lfs_hint(path):
        if expect is not None and fmt.header_only_inspect:
            summary = _inspect(path, fmt, nested)
            have = {
                _strip(e.name, strip_prefix): (e.shape, e.dtype)
                for e in summary.variables
                if not e.shadowed
            }
            report = compare(have, expect, dtypes=dtypes, source=where)
            if strict:
                report.raise_if_bad()
        ctx = fmt.load(path, backend=backend, **nested, **options)
    if strip_prefix:
        ctx = strip_names(ctx, strip_prefix)
    if expect is not None and (strict or not fmt.header_only_inspect):
        # (again for header-only formats: the file may have been replaced meanwhile)
        report = compare(ctx, expect, dtypes=dtypes, source=where)
        if strict:
            report.raise_if_bad()
    if strict:
        return ctx
    return ctx, report if report is not None else ExpectReport(source=where)


def _nested_options(fmt: Format, key: Any, flatten: Any, function: str) -> dict[str, Any]:
    """``key=``/``flatten=`` checked, as keyword arguments for a format that takes them."""
    if key is not None:
        require_str(key, function, "key")
        if not key:
            raise ValueError(f"{function}: key must not be empty")
    require_bool(flatten, function, "flatten")
    if key is None and not flatten:
        return {}
    if not fmt.nested:
        takes = ", ".join(f.name for f in registered() if f.nested)
        raise ValueError(
            f"{function}: key= and flatten= pick a nested state dict, which formats"
            f" {takes} have; format {fmt.name!r} has none"
        )
    return {"key": key, "flatten": flatten}


_LFS_MAGIC: Final = b"version https://git-lfs.github.com/spec/"


@contextlib.contextmanager
def _lfs_hint(path: str | os.PathLike[str]) -> Iterator[None]:
    """A FormatError about a file that is a Git LFS pointer says so, and what to run."""
    try:
        yield
    except FormatError as e:
        try:
            with open(path, "rb") as f:
                head = f.read(len(_LFS_MAGIC))
        except OSError:
            raise e from None
        if head != _LFS_MAGIC:
            raise
        raise FormatError(
            f"{os.fspath(path)}: this looks like a Git LFS pointer, not the file itself;"
            " run `git lfs pull` (in the repository it came from) to fetch the content"
        ) from e


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


def inspect(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    key: str | None = None,
    flatten: bool = False,
) -> FileSummary:
    """A summary of a saved file: every entry's name, registry, shadowing, shape, dtype
    and byte size, with lazy access to one tensor.

    For safetensors only the header is read (milliseconds, whatever the file's size),
    and its ``__metadata__`` is in :attr:`FileSummary.metadata`; a PyTorch file is
    mapped (``torch.load(mmap=True)``), so only what is looked at is read; other
    formats are loaded whole. ``key`` and ``flatten`` as for :func:`load`.
    Cost: O(header) for safetensors, O(pickle) for PyTorch, else O(file).
    """
    require_path(path, "inspect")
    fmt = _record(path, format)
    nested = _nested_options(fmt, key, flatten, "inspect")
    check_input(fmt, path)
    with _lfs_hint(path):
        return _inspect(path, fmt, nested)


def _inspect(path: str | os.PathLike[str], fmt: Format, nested: dict[str, Any]) -> FileSummary:
    if fmt.inspect is not None:
        return fmt.inspect(path, **nested)
    return summarize_loaded(path, fmt, fmt.load(path, backend="numpy", **nested))

"""``save``, ``load`` and ``inspect``: the format from the suffix, then its module.

Reading map:
- :func:`save`, :func:`load`, :func:`inspect` -- the public entry points.
- :func:`format_of` -- the format of a path (``"safetensors"``, ``"json"``, ...).
- :func:`strip_names` -- a context with a prefix removed from every name.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any, Final

from torchlean._validate import require_bool, require_path, require_str
from torchlean.errors import FormatError
from torchlean.io._summary import FileSummary, TensorInfo
from torchlean.runtime.context import RuntimeContext

__all__ = ["FORMATS", "format_of", "inspect", "load", "save", "strip_names"]

FORMATS: Final = ("safetensors", "json", "torch", "npz")
_SUFFIXES: Final = {
    ".safetensors": "safetensors",
    ".json": "json",
    ".pt": "torch",
    ".pth": "torch",
    ".npz": "npz",
}


def format_of(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format named by ``format`` or, when it is ``None``, by the path's suffix."""
    require_path(path, "format_of")
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    found = _SUFFIXES.get(suffix)
    if found is None:
        raise ValueError(
            f"{os.fspath(path)}: cannot tell the format from the suffix {suffix or '(none)'};"
            f" use one of {', '.join(_SUFFIXES)} or pass format= ({', '.join(FORMATS)})"
        )
    return found


def save(
    ctx: RuntimeContext[Any], path: str | os.PathLike[str], *, format: str | None = None
) -> None:
    """Write ``ctx`` to ``path`` atomically: the old file stays intact on any failure.

    ``format`` defaults to the suffix's (``.safetensors``, ``.json``, ``.pt``/``.pth``,
    ``.npz``). Cost: O(total bytes).
    """
    if not isinstance(ctx, RuntimeContext):
        raise TypeError(f"save expects a RuntimeContext, got {type(ctx).__name__}")
    require_path(path, "save")
    fmt = format_of(path, format)
    if os.path.isdir(path):
        raise IsADirectoryError(
            errno.EISDIR, "is a folder; save needs a file name", os.fspath(path)
        )
    if fmt == "safetensors":
        from torchlean.io.safetensors import save_safetensors

        save_safetensors(ctx, path)
    elif fmt == "json":
        from torchlean.io.torchlean_json import save_json

        save_json(ctx, path)
    elif fmt == "npz":
        from torchlean.io.npz import save_npz

        save_npz(ctx, path)
    else:
        from torchlean.io.torch import save_pt

        save_pt(ctx, path)


def load(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    backend: str = "numpy",
    expect: Any = None,
    dtypes: bool = False,
    strip_prefix: str | None = None,
) -> RuntimeContext[Any]:
    """Read a context from ``path``.

    ``backend`` (``"numpy"``, ``"torch"`` or ``"jax"``) is the array library of the
    loaded tensors. ``expect`` (a mapping of name to shape or ``(shape, dtype)``, a
    context, or an ``nn.Module``) is checked against the most recent variable of each
    name -- before any tensor data is read for safetensors -- and every problem is
    reported in one :class:`~torchlean.errors.ExpectationError` (``dtypes=True`` also
    compares dtypes). ``strip_prefix`` removes a prefix such as ``"module."`` from
    every name that has it. Bad files raise :class:`~torchlean.errors.FormatError`.
    Cost: O(total bytes).
    """
    from torchlean.io._common import check_backend, check_regular_file
    from torchlean.io.expect import check_expected

    require_path(path, "load")
    check_backend(backend)
    require_bool(dtypes, "load", "dtypes")
    if strip_prefix is not None:
        require_str(strip_prefix, "load", "strip_prefix")
    fmt = format_of(path, format)
    check_regular_file(path)
    where = os.fspath(path)
    if fmt == "safetensors":
        from torchlean.io.safetensors import inspect_safetensors, load_safetensors

        if expect is not None:
            summary = inspect_safetensors(path)
            have = {
                _strip(e.name, strip_prefix): (e.shape, e.dtype)
                for e in summary.variables
                if not e.shadowed
            }
            check_expected(have, expect, dtypes=dtypes, source=where)
            expect = None
        ctx = load_safetensors(path, backend=backend)
    elif fmt == "json":
        from torchlean.io.torchlean_json import load_json

        ctx = load_json(path, backend=backend)
    elif fmt == "npz":
        from torchlean.io.npz import load_npz

        ctx = load_npz(path, backend=backend)
    else:
        from torchlean.io.torch import load_pt

        ctx = load_pt(path, backend=backend, strip_prefix=strip_prefix)
        strip_prefix = None
    if strip_prefix:
        ctx = strip_names(ctx, strip_prefix)
    if expect is not None:
        check_expected(ctx, expect, dtypes=dtypes, source=where)
    return ctx


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

    return RuntimeContext.from_registries(
        rename(ctx.var_registry, "variable"),
        rename(ctx.gradients, "gradient"),
        next_id=ctx.next_id,
        dtype=ctx.dtype,
    )


def inspect(path: str | os.PathLike[str], *, format: str | None = None) -> FileSummary:
    """A summary of a saved file: every entry's name, registry, shadowing, shape, dtype
    and byte size, with lazy access to one tensor.

    For safetensors only the header is read (milliseconds, whatever the file's size);
    other formats are loaded whole. Cost: O(header) for safetensors, else O(file).
    """
    require_path(path, "inspect")
    from torchlean.io._common import check_regular_file

    fmt = format_of(path, format)
    check_regular_file(path)
    if fmt == "safetensors":
        from torchlean.io.safetensors import inspect_safetensors

        return inspect_safetensors(path)
    ctx = load(path, format=fmt)
    from torchlean.io._common import to_numpy

    entries: list[TensorInfo] = []
    arrays: dict[tuple[str, int], Any] = {}
    for registry, pairs in (("variable", ctx.var_registry), ("gradient", ctx.gradients)):
        seen: set[str] = set()
        for i, (name, at) in enumerate(pairs):
            a = to_numpy(at)
            arrays[(registry, i)] = a
            entries.append(
                TensorInfo(
                    name=name,
                    registry=registry,  # type: ignore[arg-type]
                    position=i,
                    shadowed=name in seen,
                    shape=at.dims,
                    dtype=at.dtype,
                    nbytes=math.prod(at.dims) * a.dtype.itemsize,
                    key=f"{registry}/{i}",
                )
            )
            seen.add(name)

    def read(info: TensorInfo, n: int | None) -> Any:
        a = arrays[(info.registry, info.position)]
        return a if n is None else a.reshape(-1)[:n]

    keeps_layout = fmt in ("npz",)
    if fmt not in FORMATS:  # pragma: no cover
        raise FormatError(f"{os.fspath(path)}: unknown format {fmt}")
    return FileSummary(
        path=os.fspath(path),
        format=fmt,
        entries=tuple(entries),
        next_id=ctx.next_id if keeps_layout else None,
        dtype=ctx.dtype,
        layout="torchlean" if keeps_layout else None,
        _read=read,
    )

"""Whole contexts in safetensors files: the default checkpoint format.

Layout (see docs/io.md and :mod:`torchlean.io._layout`, shared with ``.npz``): the most
recent variable of each name is stored under its own name, so any safetensors reader
(``safetensors.torch.load_file``) sees a usable ``state_dict``; everything else lives
under the reserved key prefix ``__torchlean__/``. The header's ``__metadata__`` holds
``"torchlean"``: the layout JSON object (``version``, ``next_id``, ``dtype`` and the
registries as ``[name, key]`` pairs). Entries that hold one and the same tensor share
one key, so a name shadowed after ``set_variable`` costs no extra bytes.

Reading map:
- :func:`save_safetensors` -- write a context (atomically).
- :func:`load_safetensors` -- read a context; without a ``torchlean`` entry in the
  metadata, a plain safetensors file loads as variables in the file's offset order.
- :func:`inspect_safetensors` -- a header-only :class:`~torchlean.io.FileSummary`.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.
- :data:`PREFIX`, :data:`LAYOUT_VERSION`, :func:`check_layout` -- from
  :mod:`torchlean.io._layout`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from torchlean._validate import require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._atomic import atomic_path
from torchlean.io._common import build_context, check_backend, numpy_dtype, to_numpy
from torchlean.io._format import Format
from torchlean.io._layout import (
    LAYOUT_VERSION,
    PREFIX,
    apply_roles,
    check_layout,
    layout_object,
    plan,
)
from torchlean.io._summary import Block, FileSummary, TensorInfo
from torchlean.runtime.context import RuntimeContext

__all__ = [
    "FORMAT",
    "LAYOUT_VERSION",
    "PREFIX",
    "check_layout",
    "inspect_safetensors",
    "load_safetensors",
    "save_safetensors",
]

_META_KEY: Final = "torchlean"

_DTYPES: Final = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def save_safetensors(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write the whole context to ``path`` in the layout above, atomically.

    Cost: O(total bytes); torch and jax tensors are copied to host memory once.
    """
    require_save_arguments(ctx, path, "save_safetensors")
    from safetensors import TensorSpec, serialize_file

    tensors, variables, gradients = plan(ctx)
    layout = layout_object(ctx, variables, gradients)
    metadata = {"format": "pt", _META_KEY: json.dumps(layout, separators=(",", ":"))}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    specs = {}
    for key, at in tensors.items():
        a = to_numpy(at)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        arrays[key] = a  # keeps the buffer alive while it is written
        specs[key] = TensorSpec(
            dtype=a.dtype.name, shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes
        )
    with atomic_path(path) as tmp:
        serialize_file(specs, tmp, metadata=metadata)


def _open(path: str | os.PathLike[str]) -> Any:
    from safetensors import safe_open

    with contextlib.suppress(ImportError):  # registers bfloat16 with numpy for safe_open
        import ml_dtypes  # noqa: F401
    where = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
    if size < 8:
        raise FormatError(
            f"{where}: not a valid safetensors file: header too small ({size} bytes; the"
            " header's length alone takes 8)"
        )
    if n > size - 8:
        raise FormatError(
            f"{where}: not a valid safetensors file: the header's length says {n} bytes"
            f" but only {size - 8} follow"
        )
    try:
        return safe_open(where, framework="numpy")
    except Exception as e:
        raise FormatError(f"{where}: not a valid safetensors file: {e}") from None


def _layout(
    path: str | os.PathLike[str], handle: Any
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int, str | None, dict[str, Any] | None]:
    """The registries as ``(name, key)`` pairs, ``next_id``, the pin, and the file's
    torchlean layout object (None without one); validates the layout against the keys."""
    meta = handle.metadata() or {}
    keys = list(handle.offset_keys())
    text = meta.get(_META_KEY)
    if text is None:
        pairs = [(k, k) for k in reversed(keys)]
        return pairs, [], len(pairs), None, None
    variables, gradients, next_id, pin, layout = check_layout(os.fspath(path), text, keys)
    return variables, gradients, next_id, pin, layout


def _read_numpy(path: str | os.PathLike[str], keys: set[str]) -> dict[str, np.ndarray[Any, Any]]:
    """The tensors ``keys`` of a file that safe_open has validated, as numpy arrays that
    are views of one fresh buffer (one read, no copy per tensor, no memory map)."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        spans = {k: header[k] for k in keys}
        start = min((s["data_offsets"][0] for s in spans.values()), default=0)
        stop = max((s["data_offsets"][1] for s in spans.values()), default=0)
        buf = np.empty(stop - start, dtype=np.uint8)
        f.seek(8 + n + start)
        view = buf.data
        got = 0
        while got < len(buf):
            k = f.readinto(view[got:])
            if not k:
                raise FormatError(f"{where}: truncated while reading tensor data")
            got += k
    out: dict[str, np.ndarray[Any, Any]] = {}
    for key, spec in spans.items():
        code = spec["dtype"]
        name = _DTYPES.get(code)
        if name is None:
            raise FormatError(f"{where}: tensor `{key}` has dtype {code}, which numpy cannot hold")
        dtype = numpy_dtype(name).newbyteorder("<")
        begin, end = spec["data_offsets"]
        out[key] = buf[begin - start : end - start].view(dtype).reshape(spec["shape"])
    return out


def load_safetensors(
    path: str | os.PathLike[str], *, backend: str = "numpy"
) -> RuntimeContext[Any]:
    """Read a context written by :func:`save_safetensors` (or any safetensors file).

    safetensors validates the header; the tensors are then read with one read into one
    fresh buffer, as numpy arrays that the ``backend``'s ``from_numpy`` takes without a
    copy where it can (numpy, torch). Every tensor is read once, even when several
    entries share it. Cost: O(total bytes).
    """
    check_backend(backend)
    with _open(path) as f:
        variables, gradients, next_id, pin, layout = _layout(path, f)
    arrays = _read_numpy(path, {k for _, k in variables} | {k for _, k in gradients})
    v = [(name, arrays[key]) for name, key in variables]
    g = [(name, arrays[key]) for name, key in gradients]
    ctx = build_context(v, g, next_id=next_id, pin=pin, backend=backend, path=path)
    return apply_roles(os.fspath(path), ctx, layout)


def inspect_safetensors(path: str | os.PathLike[str]) -> FileSummary:
    """A summary of ``path`` from its header only; tensors are read on request.

    Cost: O(header size); the tensor data is not touched.
    """
    where = os.fspath(path)
    entries: list[TensorInfo] = []
    with _open(path) as f:
        variables, gradients, next_id, pin, layout = _layout(path, f)
        has_layout = layout is not None
        specs: dict[str, tuple[tuple[int, ...], str]] = {}
        for key in {k for _, k in variables} | {k for _, k in gradients}:
            s = f.get_slice(key)
            code = s.get_dtype()
            specs[key] = (tuple(int(d) for d in s.get_shape()), _DTYPES.get(code, code))
            if pin is not None and specs[key][1] != pin:
                raise FormatError(
                    f"{where}: tensor `{key}` has dtype {specs[key][1]} but the file says"
                    f" the context holds {pin} only"
                )
    for registry, pairs in (("variable", variables), ("gradient", gradients)):
        seen: set[str] = set()
        for i, (name, key) in enumerate(pairs):
            shape, dtype = specs[key]
            try:
                itemsize = numpy_dtype(dtype).itemsize
            except TypeError:
                itemsize = 0
            entries.append(
                TensorInfo(
                    name=name,
                    registry=registry,  # type: ignore[arg-type]
                    position=i,
                    shadowed=name in seen,
                    shape=shape,
                    dtype=dtype,
                    nbytes=math.prod(shape) * itemsize,
                    key=key,
                )
            )
            seen.add(name)

    def read(info: TensorInfo, n: int | None) -> np.ndarray[Any, Any]:
        if info.dtype not in _DTYPES.values():
            raise FormatError(
                f"{where}: tensor `{info.key}` has dtype {info.dtype}, which numpy cannot hold"
            )
        with _open(where) as f:
            try:
                if n is None:
                    return np.asarray(f.get_tensor(info.key)).reshape(info.shape)
                return _head(f.get_slice(info.key), info.shape, n)
            except Exception as e:  # the file changed or was damaged since inspect
                raise FormatError(f"{where}: cannot read tensor `{info.key}`: {e}") from None

    @contextlib.contextmanager
    def blocks(info: TensorInfo) -> Iterator[Block]:
        with _open(where) as f:
            view = f.get_slice(info.key)

            def block(index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
                try:
                    return np.asarray(view[index])
                except Exception as e:  # a corrupt file found while reading
                    raise FormatError(f"{where}: cannot read tensor `{info.key}`: {e}") from None

            yield block

    return FileSummary(
        path=where,
        format="safetensors",
        entries=tuple(entries),
        next_id=next_id if has_layout else None,
        dtype=pin,
        layout="torchlean" if has_layout else None,
        _read=read,
        _blocks=blocks,
    )


def _head(view: Any, shape: tuple[int, ...], n: int) -> np.ndarray[Any, Any]:
    """The first ``n`` flat elements of a lazily sliced tensor, reading few bytes."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not shape:
        return np.asarray(view[...]).reshape(-1)[:n]
    # Fix the leading axes to 0 while the trailing block still holds n elements.
    j = 0
    while j < len(shape) - 1 and math.prod(shape[j + 1 :]) >= n and shape[j] > 0:
        j += 1
    inner = math.prod(shape[j + 1 :])
    rows = shape[j] if inner == 0 else min(shape[j], -(-n // inner))
    index = (0,) * j + (slice(0, rows),)
    return np.asarray(view[index]).reshape(-1)[:n]


#: The safetensors format: the whole context, exactly; ``inspect`` reads the header only.
FORMAT: Final = Format(
    name="safetensors",
    suffixes=(".safetensors",),
    save=save_safetensors,
    load=load_safetensors,
    inspect=inspect_safetensors,
    whole_context=True,
    header_only_inspect=True,
)

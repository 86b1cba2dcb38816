"""Contexts in numpy ``.npz`` archives (never with pickles).

The most recent variable of each name is stored under its own name, as
``np.load(path)[name]`` expects. When a context has more (shadowed entries, gradients,
a pinned dtype, ``next_id``), the same keys as in a safetensors file hold the extra
entries (``__torchlean__/v/<i>``, ``__torchlean__/g/<j>``) and ``__torchlean__/layout``
holds the layout JSON as bytes (:mod:`torchlean.io._layout`). ``bfloat16`` and other
``ml_dtypes`` types are stored as unsigned integers of their width with the dtype named
in the layout.

Reading map:
- :func:`save_npz` -- write a context (atomically, uncompressed).
- :func:`load_npz` -- read one; a plain archive loads as variables in archive order.
- :func:`_read_member` -- one bounded ``.npy`` read, after the zip-bomb guard of
  :mod:`torchlean.io._zip` checked the directory.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib
from typing import Any, Final

import numpy as np

from torchlean._validate import require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._atomic import atomic_path
from torchlean.io._common import (
    build_context,
    check_backend,
    check_savable,
    numpy_dtype,
    open_regular,
    to_numpy,
)
from torchlean.io._format import Format
from torchlean.io._layout import PREFIX, apply_roles, check_layout, layout_object, plan
from torchlean.io._zip import check_zip_directory
from torchlean.runtime.context import RuntimeContext
from torchlean.runtime.dtypes import EXTENDED_FLOATS

__all__ = ["FORMAT", "load_npz", "save_npz"]

LAYOUT_KEY: Final = PREFIX + "layout"


def save_npz(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write the whole context to an ``.npz`` archive, atomically.

    Names with NUL or a lone surrogate and dtypes that are not numbers (strings, dates)
    are refused before anything is written: the archive could not hold or give them
    back. Cost: O(total bytes)."""
    require_save_arguments(ctx, path, "save_npz")
    check_savable(ctx, path, format="npz", nul=False)
    tensors, variables, gradients = plan(ctx)
    dtypes: dict[str, str] = {}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for key, at in tensors.items():
        a = to_numpy(at)
        if a.dtype.name in EXTENDED_FLOATS or a.dtype.kind == "V":
            # numpy writes an ml_dtypes type under a descriptor it cannot read back
            # (float8_e5m2 as '<f1'): store the bits, name the dtype in the layout
            dtypes[key] = a.dtype.name
            a = a.view(f"u{a.dtype.itemsize}")
        arrays[key] = a
    layout = layout_object(ctx, variables, gradients) | {"dtypes": dtypes}
    arrays[LAYOUT_KEY] = np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)


_NUMERIC_KINDS: Final = "biufc"


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray[Any, Any]:
    """One ``.npy`` member as an array, reading no more than its header promises."""
    what = f"member `{info.filename}`"
    with zf.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise FormatError(f"{where}: {what} has .npy version {version}, not 1.0 or 2.0")
        header = m.tell()
        if dtype.hasobject:
            raise FormatError(
                f"{where}: {what} is an object array, which only a pickle can hold;"
                " refused (allow_pickle stays off)"
            )
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
            raise FormatError(f"{where}: {what} has dtype {dtype.str}, not a tensor's dtype")
        if len(shape) > 64 or any(d < 0 for d in shape):
            raise FormatError(f"{where}: {what} has an impossible shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header + nbytes:
            raise FormatError(
                f"{where}: {what} holds {info.file_size - header} data bytes but its header"
                f" says shape {shape} of {dtype.name}, which is {nbytes} bytes"
            )
        # one immutable bytes object (numpy refuses to make arrays over it writeable);
        # the size was checked against the directory, itself bounded by the archive
        data = m.read(nbytes)
        if len(data) != nbytes:
            raise FormatError(f"{where}: {what} ends after {len(data)} of {nbytes} data bytes")
        if m.read(1):  # reaching the end also checks the CRC
            raise FormatError(f"{where}: {what} has bytes after its data")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_archive(path: str | os.PathLike[str], where: str) -> dict[str, np.ndarray[Any, Any]]:
    """Every member of the archive as an array; nothing in it is unpickled, and no
    member is inflated past the size its ``.npy`` header implies. Cost: O(total bytes)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    with os.fdopen(open_regular(path), "rb") as f:  # opened once, read from this file only
        size = os.fstat(f.fileno()).st_size
        try:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                check_zip_directory(infos, size, where)
                for info in infos:
                    arrays[info.filename[: -len(".npy")]] = _read_member(zf, info, where)
        except FormatError:
            raise
        except (
            ValueError,
            OSError,
            EOFError,
            zipfile.BadZipFile,
            zlib.error,
            NotImplementedError,
            RuntimeError,
            RecursionError,
            SyntaxError,
            struct.error,
        ) as e:
            text = " ".join(str(e).split("\n", 1)[0].split()) or type(e).__name__
            raise FormatError(f"{where}: not a valid .npz archive: {text}") from None
    return arrays


def load_npz(path: str | os.PathLike[str], *, backend: str = "numpy") -> RuntimeContext[Any]:
    """Read an ``.npz`` archive as a context; nothing in it is unpickled.

    The zip directory is checked before anything is inflated (see
    :func:`check_zip_directory`), and each member is read up to the size its ``.npy``
    header implies, so memory is bounded by what the headers declare, and that by
    1032 times the archive's size. Cost: O(total bytes).
    """
    check_backend(backend)
    where = os.fspath(path)
    arrays = _read_archive(path, where)
    raw = arrays.pop(LAYOUT_KEY, None)
    if raw is None:
        pairs = list(arrays.items())
        return build_context(
            pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path
        )
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise FormatError(f"{where}: the torchlean layout in this archive is not a byte string")
    variables, gradients, next_id, pin, layout = check_layout(where, raw.tobytes(), list(arrays))
    dtypes = layout.get("dtypes", {})
    if not isinstance(dtypes, dict):
        raise FormatError(f"{where}: the torchlean layout's `dtypes` is not an object")
    for key, name in dtypes.items():
        if key not in arrays:
            raise FormatError(f"{where}: the layout gives a dtype to `{key}`, not in the archive")
        try:
            dtype = numpy_dtype(name) if isinstance(name, str) else None
        except TypeError:
            dtype = None
        if dtype is None or dtype.name != name:
            raise FormatError(f"{where}: the layout gives `{key}` an unknown dtype {name!r}")
        try:
            arrays[key] = arrays[key].view(dtype)
        except ValueError as e:
            raise FormatError(f"{where}: tensor `{key}` cannot be read as {name}: {e}") from None
    v = [(n, arrays[k]) for n, k in variables]
    g = [(n, arrays[k]) for n, k in gradients]
    ctx = build_context(v, g, next_id=next_id, pin=pin, backend=backend, path=path)
    return apply_roles(where, ctx, layout)


#: The ``.npz`` format: the whole context, exactly (the safetensors layout).
FORMAT: Final = Format(
    name="npz", suffixes=(".npz",), save=save_npz, load=load_npz, whole_context=True
)

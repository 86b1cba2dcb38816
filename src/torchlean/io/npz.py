"""Contexts in numpy ``.npz`` archives (never with pickles).

The most recent variable of each name is stored under its own name, as
``np.load(path)[name]`` expects. When a context has more (shadowed entries, gradients,
a pinned dtype, ``next_id``), the same keys as in a safetensors file hold the extra
entries (``__torchlean__/v/<i>``, ``__torchlean__/g/<j>``) and ``__torchlean__/layout``
holds the layout JSON as bytes. ``bfloat16`` and other ``ml_dtypes`` types are stored
as unsigned integers of their width with the dtype named in the layout.

Reading map:
- :func:`save_npz` -- write a context (atomically, uncompressed).
- :func:`load_npz` -- read one; a plain archive loads as variables in archive order.
- :func:`check_zip_directory` -- what the zip directory must satisfy before anything is
  inflated (the zip-bomb guard); :func:`_read_member` -- one bounded ``.npy`` read.
"""

from __future__ import annotations

import itertools
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
from torchlean.io._common import build_context, check_backend, numpy_dtype, to_numpy
from torchlean.io.safetensors import LAYOUT_VERSION, PREFIX, _plan, check_layout
from torchlean.runtime.context import RuntimeContext

__all__ = ["load_npz", "save_npz"]

LAYOUT_KEY: Final = PREFIX + "layout"


def save_npz(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write the whole context to an ``.npz`` archive, atomically. Cost: O(total bytes)."""
    require_save_arguments(ctx, path, "save_npz")
    tensors, variables, gradients = _plan(ctx)
    dtypes: dict[str, str] = {}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for key, at in tensors.items():
        a = to_numpy(at)
        if a.dtype.kind == "V" or type(a.dtype).__module__.startswith("ml_dtypes"):
            dtypes[key] = a.dtype.name
            a = a.view(f"u{a.dtype.itemsize}")
        arrays[key] = a
    layout = {
        "version": LAYOUT_VERSION,
        "next_id": ctx.next_id,
        "dtype": ctx.dtype,
        "variables": variables,
        "gradients": gradients,
        "dtypes": dtypes,
    }
    arrays[LAYOUT_KEY] = np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)


# Deflate cannot inflate one byte to more than 1032; a member that claims more (or a
# compressed size no deflate stream of its size needs) has a directory that lies.
_DEFLATE_MAX_RATIO: Final = 1032
_METHODS: Final = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_METHOD_NAMES: Final = {
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
_NUMERIC_KINDS: Final = "biufc"
_CHUNK: Final = 1 << 24


def check_zip_directory(
    infos: list[zipfile.ZipInfo], size: int, where: str, *, npy: bool = True
) -> None:
    """Refuse what numpy and torch never write and what a zip bomb needs, from the zip
    directory alone (before anything is inflated): exotic compression, encryption,
    sizes no stored or deflated member can have, members beyond the archive's end,
    overlapping members, repeated names, and (``npy=True``) names that are not
    ``.npy``. Used for ``.npz`` and for torch's zip files. Cost: O(members)."""
    names: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.filename
        what = f"member `{name}`"
        if npy and not name.endswith(".npy"):
            raise FormatError(f"{where}: {what} is not a .npy array (an .npz holds only those)")
        if name in names:
            raise FormatError(f"{where}: two members are named `{name}`")
        names.add(name)
        if info.flag_bits & 0x1:
            raise FormatError(f"{where}: {what} is encrypted")
        method = _METHODS.get(info.compress_type)
        if method is None:
            shown = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise FormatError(
                f"{where}: {what} is compressed with {shown}; only stored or deflated"
                " members are read (what numpy and torch write)"
            )
        packed, full = info.compress_size, info.file_size
        if method == "stored" and packed != full:
            raise FormatError(
                f"{where}: {what} is stored (not compressed) but the zip directory gives it"
                f" {packed} bytes in the archive and {full} bytes unpacked"
            )
        if method == "deflated" and (
            full > _DEFLATE_MAX_RATIO * packed + 1024 or packed > full + full // 1000 + 1024
        ):
            raise FormatError(
                f"{where}: {what} claims {packed} compressed bytes inflate to {full} bytes,"
                f" which deflate cannot do (at most {_DEFLATE_MAX_RATIO}:1); the zip"
                " directory lies (a zip bomb?)"
            )
        end = info.header_offset + 30 + len(name.encode()) + packed
        if end > size:
            raise FormatError(
                f"{where}: {what} claims {packed} bytes at offset {info.header_offset},"
                f" past the end of the {size}-byte archive (truncated?)"
            )
        spans.append((info.header_offset, end, name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise FormatError(
                f"{where}: members `{first}` and `{second}` overlap in the archive (a zip bomb?)"
            )


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
        buf = np.empty(nbytes, dtype=np.uint8)
        got = 0
        while got < nbytes:
            chunk = m.read(min(_CHUNK, nbytes - got))
            if not chunk:
                raise FormatError(f"{where}: {what} ends after {got} of {nbytes} data bytes")
            buf[got : got + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            got += len(chunk)
        if m.read(1):  # reaching the end also checks the CRC
            raise FormatError(f"{where}: {what} has bytes after its data")
    array = buf.view(dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_archive(path: str | os.PathLike[str], where: str) -> dict[str, np.ndarray[Any, Any]]:
    """Every member of the archive as an array; nothing in it is unpickled, and no
    member is inflated past the size its ``.npy`` header implies. Cost: O(total bytes)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    with open(path, "rb") as f:
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
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
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
    return build_context(v, g, next_id=next_id, pin=pin, backend=backend, path=path)

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
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Final

import numpy as np

from torchlean._validate import require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._atomic import atomic_path
from torchlean.io._common import build_context, check_backend, numpy_dtype, to_numpy
from torchlean.io.safetensors import LAYOUT_VERSION, PREFIX, _plan
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


def load_npz(path: str | os.PathLike[str], *, backend: str = "numpy") -> RuntimeContext[Any]:
    """Read an ``.npz`` archive as a context (``allow_pickle`` stays off).

    Cost: O(total bytes).
    """
    check_backend(backend)
    where = os.fspath(path)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    try:
        # open the file here: np.load leaks its own handle when the zip is bad
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            for key in z.files:
                arrays[key] = z[key]
    except (
        ValueError,
        OSError,
        zipfile.BadZipFile,
        EOFError,
        KeyError,
        TypeError,
        AttributeError,
    ) as e:
        raise FormatError(f"{where}: not a valid .npz archive: {e}") from None
    raw = arrays.pop(LAYOUT_KEY, None)
    if raw is None:
        pairs = list(arrays.items())
        return build_context(
            pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path
        )
    try:
        layout = json.loads(raw.tobytes())
        assert isinstance(layout, dict) and layout.get("version") == LAYOUT_VERSION
        dtypes = layout.get("dtypes", {})
        for key, name in dtypes.items():
            arrays[key] = arrays[key].view(numpy_dtype(name))
        v = [(n, arrays[k]) for n, k in layout["variables"]]
        g = [(n, arrays[k]) for n, k in layout["gradients"]]
        next_id = layout["next_id"]
        pin = layout["dtype"]
        assert type(next_id) is int and next_id >= 0
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(
            f"{where}: the torchlean layout in this archive is damaged ({e!r})"
        ) from None
    return build_context(v, g, next_id=next_id, pin=pin, backend=backend, path=path)

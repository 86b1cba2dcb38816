"""What every format shares: dtypes, arrays in and out of a context, error texts.

Every conversion between array libraries goes through the backends' ``to_numpy`` and
``from_numpy`` (:mod:`torchlean.runtime.backends`); none is written here.

Reading map:
- :func:`to_numpy` -- a stored tensor as a C-contiguous numpy array.
- :func:`numpy_dtype` -- a numpy dtype from a canonical dtype name (``"bfloat16"`` too).
- :func:`build_context` -- a context from entries read from a file (arrays of any
  library), in the array library asked for, without copying the arrays a reader just
  made.
- :func:`check_backend` -- refuse a ``backend=`` that names no array library.
- :func:`check_regular_file` -- refuse directories, FIFOs, devices before reading.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from typing import Any

import numpy as np

from torchlean.errors import BackendError, FormatError
from torchlean.runtime import dtypes
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.backends import backend_named, backend_of, libraries
from torchlean.runtime.context import RuntimeContext
from torchlean.runtime.dtypes import dtype_name

__all__ = ["build_context", "check_backend", "check_regular_file", "numpy_dtype", "to_numpy"]


Entry = tuple[str, Any]


def to_numpy(at: AnyTensor[Any]) -> np.ndarray[Any, Any]:
    """The tensor of ``at`` as a C-contiguous numpy array (a view where possible)."""
    a = np.asarray(at.library.to_numpy(at.t))
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else np.array(a, order="C")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a canonical dtype name; ``TypeError("unknown dtype ...")``."""
    try:
        return dtypes.numpy_dtype(name)
    except TypeError as e:
        if "ml_dtypes" in str(e):
            raise BackendError(str(e)) from None
        raise TypeError(f"unknown dtype {name!r}") from None


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse a path that is not a regular file (a directory, a FIFO, a device such as
    ``/dev/zero``, a symlink loop) before any reader opens it: such a path would block
    or never end. A missing file raises FileNotFoundError."""
    where = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such file or directory", where) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FormatError(f"{where}: a symlink loop, not a file") from None
        raise
    if stat.S_ISREG(mode):
        return
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise FormatError(f"{where}: is {kind}, not a regular file")


def check_backend(backend: str) -> None:
    if backend not in libraries():
        raise ValueError(f"backend must be one of {', '.join(libraries())}, got {backend!r}")


def build_context(
    variables: Sequence[Entry],
    gradients: Sequence[Entry],
    *,
    next_id: int,
    pin: str | None,
    backend: str,
    path: str | os.PathLike[str],
) -> RuntimeContext[Any]:
    """A context whose registries are ``variables`` and ``gradients`` (most recent first).

    The arrays (numpy, or any library's, fresh: the context takes them over) become
    arrays of ``backend``; those of another library go through numpy. Entries that share
    one array (``is``) share one tensor in the context. Cost: O(n log n) plus one
    conversion per distinct array of another library.
    """
    library = backend_named(backend)
    converted: dict[int, Any] = {}

    def convert(kind: str, name: str, array: Any) -> Any:
        value = converted.get(id(array))
        if value is None:
            got = dtype_name(array.dtype)
            if pin is not None and got != pin:
                raise FormatError(
                    f"{os.fspath(path)}: {kind} `{name}` has dtype {got} but"
                    f" the file says the context holds {pin} only"
                )
            source = backend_of(array)
            if source is not library:
                array = library.from_numpy(source.to_numpy(array), f"{kind} `{name}`")
            value = library.adopt(array)
            converted[id(array)] = value
        return value

    v = [(n, convert("variable", n, a)) for n, a in variables]
    g = [(n, convert("gradient", n, a)) for n, a in gradients]
    return RuntimeContext.from_registries(v, g, next_id=next_id, dtype=pin, adopt=True)

"""What every format shares: dtypes, arrays in and out of a context, error texts.

Reading map:
- :func:`to_numpy` -- a stored tensor as a numpy array (bf16 through ``ml_dtypes``).
- :func:`numpy_dtype` -- a numpy dtype from a canonical dtype name (``"bfloat16"`` too).
- :func:`build_context` -- a context from entries read from a file, in the array library
  asked for, without copying the arrays a reader just made.
- :func:`convert` -- one numpy array into the array library asked for.
- :data:`BACKENDS` -- the accepted ``backend=`` values.
- :func:`check_regular_file` -- refuse directories, FIFOs, devices before reading.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from torchlean.errors import BackendError, FormatError
from torchlean.runtime._backends import NUMPY, Backend, backend_of, dtype_name
from torchlean.runtime._registry import EMPTY
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.context import RuntimeContext

__all__ = ["BACKENDS", "build_context", "convert", "numpy_dtype", "to_numpy"]

BACKENDS: Final = ("numpy", "torch", "jax")

Entry = tuple[str, np.ndarray[Any, Any]]


def to_numpy(at: AnyTensor[Any]) -> np.ndarray[Any, Any]:
    """The tensor of ``at`` as a C-contiguous numpy array (a view where possible)."""
    a = np.asarray(at._backend.to_numpy(at.t))
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return a if a.flags.c_contiguous else np.array(a, order="C")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a canonical dtype name; ``bfloat16`` and friends via ml_dtypes."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    except (ValueError, SyntaxError):  # a malformed comma string such as "f4,x"
        raise TypeError(f"unknown dtype {name!r}") from None
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - installed with jax
        raise BackendError(f"dtype {name} needs the ml_dtypes package: {e}") from e
    try:
        return np.dtype(getattr(ml_dtypes, name))  # type: ignore[no-any-return]
    except (AttributeError, TypeError):
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
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def convert(array: np.ndarray[Any, Any], backend: str, what: str) -> tuple[Any, Backend]:
    """``array`` (owned by the caller, who gives it up) in the array library ``backend``."""
    if backend == "numpy":
        return _seal(array), NUMPY
    if backend == "torch" and _is_torch_tensor(array):
        b = backend_of(array)
        return b.adopt(array), b
    if backend == "torch":
        import torch

        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C", copy=True)
        if array.dtype.name == "bfloat16":
            t = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(array)
        b = backend_of(t)
        return b.adopt(t), b
    import jax
    import jax.numpy as jnp

    x64 = jax.config.read("jax_enable_x64")  # type: ignore[no-untyped-call]
    if array.dtype.itemsize == 8 and not x64:
        raise BackendError(
            f"{what} has dtype {array.dtype.name} but JAX is running without 64-bit"
            " types and would silently cast it; enable them first with"
            ' jax.config.update("jax_enable_x64", True), or load with backend="numpy"'
        )
    x = jnp.asarray(array)
    b = backend_of(x)
    return b.freeze(x), b


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _seal(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A read-only view of a fresh array nobody else holds, without a copy.

    Every ndarray in its base chain is made read-only, so the view can never be made
    writeable again; memory owned by something other than an array or an immutable
    ``bytes`` (a memory map, a bytearray) is copied instead.
    """
    chain = [array]
    while isinstance(chain[-1].base, np.ndarray):
        chain.append(chain[-1].base)
    owner = chain[-1].base
    if owner is not None and not isinstance(owner, bytes):
        return NUMPY.freeze(array)
    for a in chain:
        a.setflags(write=False)
    return array.view()


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

    Entries that share one numpy array (``is``) share one tensor in the context. Cost:
    O(n log n) plus one conversion per distinct array (none for numpy).
    """
    converted: dict[int, AnyTensor[Any]] = {}

    def wrap(kind: str, name: str, array: np.ndarray[Any, Any]) -> AnyTensor[Any]:
        at = converted.get(id(array))
        if at is None:
            got = dtype_name(array.dtype)
            if pin is not None and got != pin:
                raise FormatError(
                    f"{os.fspath(path)}: {kind} `{name}` has dtype {got} but"
                    f" the file says the context holds {pin} only"
                )
            value, b = convert(array, backend, f"{kind} `{name}`")
            at = AnyTensor._make(tuple(int(d) for d in value.shape), value, b)
            converted[id(array)] = at
        return at

    v = [(n, wrap("variable", n, a)) for n, a in variables]
    g = [(n, wrap("gradient", n, a)) for n, a in gradients]
    ctx: RuntimeContext[Any] = RuntimeContext()
    new = ctx._derive(EMPTY.push_many(v[::-1]), EMPTY.push_many(g[::-1]), next_id)
    if pin is not None:
        new._pin = (pin, backend if (v or g) else None)
    return new

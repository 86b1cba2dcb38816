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
- :func:`open_regular` -- open a file once, without blocking, and refuse what is not
  a regular file; every loader reads everything from that one descriptor.
- :func:`descriptor_path` -- a path that opens the very file a descriptor holds (for
  libraries that want a name), whatever happens to the name meanwhile.
- :class:`Descriptor` -- a file kept open for lazy reads at offsets; :func:`read_block`
  -- a block of a C-ordered tensor from reads of flat element ranges.
- :func:`check_savable` -- refuse, before writing, what a format could write but not
  read back (names that are not valid Unicode, NUL in names, dtypes it lacks).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np

from torchlean._text import printable
from torchlean.errors import BackendError, FormatError
from torchlean.io._atomic import file_kind
from torchlean.runtime import dtypes
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.backends import backend_named, backend_of, libraries
from torchlean.runtime.backends.numpy import is_immutable
from torchlean.runtime.context import RuntimeContext
from torchlean.runtime.dtypes import bits_dtype, dtype_name, is_extended_float

__all__ = [
    "SAVABLE_DTYPES",
    "Descriptor",
    "build_context",
    "check_backend",
    "check_regular_file",
    "check_savable",
    "descriptor_path",
    "numpy_dtype",
    "open_regular",
    "read_block",
    "to_numpy",
]


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
    raise FormatError(f"{where}: is {file_kind(mode)}, not a regular file")


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of ``path``, opened once and without blocking (a FIFO put
    there after a check cannot hang the reader); anything but a regular file is refused
    with the error :func:`check_regular_file` gives. The caller closes it. Reading
    everything from this one descriptor means a file replaced meanwhile (an atomic
    save renames a new file over the name) is never mixed with the old one."""
    where = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such file or directory", where) from None
    except IsADirectoryError:
        raise FormatError(f"{where}: is a directory, not a regular file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FormatError(f"{where}: a symlink loop, not a file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FormatError(f"{where}: is {file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def descriptor_path(fd: int, path: str | os.PathLike[str]) -> str:
    """A name that opens the file ``fd`` holds: ``/proc/self/fd/N`` (Linux) or
    ``/dev/fd/N`` (macOS, the BSDs), so a library that opens files by name reads the
    same file as ``fd`` even when ``path`` is replaced meanwhile. Where neither
    exists (Windows) it is ``path`` itself, and a save that replaces ``path`` during
    the read can still be seen there."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        candidate = f"{folder}/{fd}"
        try:
            if os.path.samestat(os.stat(candidate), os.fstat(fd)):
                return candidate
        except OSError:
            continue
    return os.fspath(path)


def read_block(
    shape: tuple[int, ...],
    index: tuple[slice, ...],
    elements: Callable[[int, int], np.ndarray[Any, Any]],
) -> np.ndarray[Any, Any]:
    """``tensor[index]`` (``index`` slices with positive steps over the leading axes)
    of a C-ordered tensor of ``shape``, reading only the elements from the block's first
    to its last: ``elements(first, count)``. Cost: O(that span)."""
    if len(index) > len(shape):
        raise IndexError(f"too many indices for a tensor of {len(shape)} dimensions")
    full = tuple(index) + (slice(None),) * (len(shape) - len(index))
    ranges = []
    for s, d in zip(full, shape, strict=True):
        if not isinstance(s, slice):
            raise TypeError(f"a block index is a tuple of slices, got {s!r}")
        r = range(*s.indices(d))
        if r.step < 0:
            raise ValueError("a block index needs positive steps")
        ranges.append(r)
    sizes = tuple(len(r) for r in ranges)
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    if 0 in sizes:
        return elements(0, 0).reshape(sizes)
    first = sum(r[0] * st for r, st in zip(ranges, strides, strict=True))
    last = sum(r[-1] * st for r, st in zip(ranges, strides, strict=True))
    span = elements(first, last - first + 1)
    step_bytes = tuple(r.step * st * span.itemsize for r, st in zip(ranges, strides, strict=True))
    # as_strided goes through the array interface, which cannot name the ml_dtypes
    # floats (float8's '<f1'): stride over same-width integers, then view back
    raw = span.view(bits_dtype(span.itemsize)) if is_extended_float(span.dtype.name) else span
    block = np.lib.stride_tricks.as_strided(raw, sizes, step_bytes, writeable=False).copy()
    return block.view(span.dtype) if raw is not span else block


class Descriptor:
    """A file opened once with :func:`open_regular`, kept open for lazy reads (a
    :class:`~torchlean.io.FileSummary` holds one): reads at offsets, closed by
    :meth:`close` or when garbage-collected."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.where = os.fspath(path)
        self.fd = open_regular(path)
        self._close = weakref.finalize(self, os.close, self.fd)

    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (one ``bytes`` object); FormatError when
        the file ends first."""
        if hasattr(os, "pread") and n <= 1 << 24:
            data = os.pread(self.fd, n, offset)
        else:
            with open(self.fd, "rb", closefd=False) as f:  # one buffered read, one allocation
                f.seek(offset)
                data = f.read(n)
        if len(data) != n:
            raise FormatError(
                f"{self.where}: truncated while reading: {len(data)} of {n} bytes at offset"
                f" {offset} (the file changed while it was read?)"
            )
        return data

    def read_into(self, offset: int, view: memoryview) -> int:
        """Read at most ``len(view)`` bytes at ``offset`` into ``view`` (no allocation);
        the number read, 0 at the end of the file."""
        if hasattr(os, "preadv"):
            return os.preadv(self.fd, [view], offset)
        with open(self.fd, "rb", closefd=False) as f:
            f.seek(offset)
            return f.readinto(view) or 0

    def close(self) -> None:
        self._close()


def check_savable(
    ctx: RuntimeContext[Any],
    path: str | os.PathLike[str],
    *,
    format: str,
    allowed: frozenset[str] | None = None,
    nul: bool = True,
    unicode: bool = True,
    everything: bool = True,
) -> None:
    """Refuse, before anything is written, a context that ``format`` would write but
    could not read back: a name that is not valid Unicode (a lone surrogate; refused
    when ``unicode``), a name holding NUL (when not ``nul``), a dtype outside
    ``allowed`` (the format's dtype names; ``None``: any numeric dtype). Checks every entry
    when ``everything``, else the latest variable of each name. Every problem is listed
    in one :class:`~torchlean.errors.FormatError`. Cost: O(entries)."""
    where = os.fspath(path)
    problems: list[str] = []
    entries = (
        [("variable", n, at) for n, at in ctx.var_registry]
        + [("gradient", n, at) for n, at in ctx.gradients]
        if everything
        else [("variable", n, at) for n, at in ctx.latest_variables()]
    )
    known = SAVABLE_DTYPES
    seen: set[tuple[str, str, str]] = set()
    for kind, name, at in entries:
        if (kind, name, at.dtype) in seen:  # shadowed entries: each problem once
            continue
        seen.add((kind, name, at.dtype))
        shown = printable(name)
        if unicode:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError as e:
                problems.append(
                    f"{kind} `{shown}` has a name that is not valid Unicode (a lone"
                    f" surrogate at index {e.start})"
                )
                continue
        if not nul and "\x00" in name:
            problems.append(
                f"{kind} `{shown}` has a NUL character in its name, which {format} cannot"
                " store (a zip member name ends at NUL)"
            )
        dtype = _WIDENED.get(at.dtype, at.dtype)  # what to_numpy gives the format
        if dtype not in (known if allowed is None else allowed):
            problems.append(f"{kind} `{shown}` has dtype {dtype}, which {format} cannot store")
    if problems:
        head = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FormatError(f"{where}: cannot save: {head}{more}; nothing was written")


# dtypes numpy lacks that the torch backend's to_numpy widens (convert notes it)
_WIDENED: Final = {"complex32": "complex64"}

_NUMERIC: Final = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
)


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
    arrays of ``backend``; those of another library go through numpy, unless ``backend``
    stores them as they are (DTensors asked as torch,
    :meth:`~torchlean.runtime.backends.Backend.stores_as_is`). numpy arrays end
    up over an immutable ``bytes`` object (a copy unless the reader made them so), so
    numpy refuses to make them writeable again. Entries that share
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
            owner = source if library.stores_as_is(source) else library
            if owner is not source:
                array = library.from_numpy(source.to_numpy(array), f"{kind} `{name}`")
            value = owner.adopt(array)
            if isinstance(value, np.ndarray) and not is_immutable(value):
                # a reader's own buffer: copy it into immutable bytes, so that no one
                # can make the loaded array writeable again (setflags up the base chain)
                value = library.freeze(value)
            converted[id(array)] = value
        return value

    v = [(n, convert("variable", n, a)) for n, a in variables]
    g = [(n, convert("gradient", n, a)) for n, a in gradients]
    try:
        return RuntimeContext.from_registries(v, g, next_id=next_id, dtype=pin, adopt=True)
    except ValueError as e:  # a name no context holds (a lone surrogate)
        raise FormatError(f"{os.fspath(path)}: {e}") from None


#: The dtypes every whole-context format stores: numpy's numeric ones and the narrow
#: floats of :data:`torchlean.runtime.dtypes.EXTENDED_FLOATS`.
SAVABLE_DTYPES: Final = _NUMERIC | frozenset(dtypes.EXTENDED_FLOATS)

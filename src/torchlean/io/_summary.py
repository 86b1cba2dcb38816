"""What :func:`torchlean.io.inspect` returns: a file's entries without their data.

Reading map:
- :class:`TensorInfo` -- one entry: name, registry, position, shadowed or not, shape,
  dtype, byte size, and where it lies in the file.
- :class:`FileSummary` -- every entry of a file, ``next_id`` and the pinned dtype, plus
  lazy access to one tensor (:meth:`FileSummary.tensor`), its first elements
  (:meth:`FileSummary.head`), one entry's data (:meth:`FileSummary.read`) and blocks of
  it (:meth:`FileSummary.blocks`, read from disk alone where the format can), and
  whether an entry's stored bytes are exactly an array's (:meth:`FileSummary.matches`,
  streamed from disk through one small buffer where the format can).
- :func:`layout_entries` -- the entries of a file in the torchlean key layout, from
  each registry's ``(name, key)`` pairs and each key's shape and dtype.
- :func:`read_whole_once` -- a ``FileSummary`` reader that loads the whole file once,
  when a first value is asked for (folder formats without block reads).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from torchlean._text import did_you_mean, format_bytes, printable
from torchlean.errors import UnknownNameError

__all__ = ["CHUNK", "FileSummary", "TensorInfo", "layout_entries", "read_whole_once"]

#: The most bytes :meth:`FileSummary.matches` reads at a time.
CHUNK = 4 << 20

Registry = Literal["variable", "gradient"]
#: ``read(index)``: a block of one tensor, ``index`` a tuple of slices.
Block = Callable[[tuple[slice, ...]], np.ndarray[Any, Any]]


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a saved context, read from the file's header only."""

    name: str
    registry: Registry
    #: Position in its registry, most recent first (Lean's list index).
    position: int
    #: True when a more recent entry of the same name hides this one.
    shadowed: bool
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    #: The key the data is stored under (safetensors), or the name.
    key: str

    @property
    def numel(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class FileSummary:
    """A saved context described from its header: every entry, without its data."""

    path: str
    format: str
    entries: tuple[TensorInfo, ...]
    next_id: int | None
    dtype: str | None
    #: ``None`` when the file has no torchlean layout (a plain state_dict).
    layout: str | None
    _read: Callable[[TensorInfo, int | None], np.ndarray[Any, Any]] = field(repr=False)
    #: Opens an entry for reading blocks from the file, for formats that can.
    _blocks: Callable[[TensorInfo], AbstractContextManager[Block]] | None = field(
        default=None, repr=False
    )
    #: The file's own metadata (safetensors' ``__metadata__`` less torchlean's layout);
    #: ``None`` for formats that have none.
    metadata: dict[str, str] | None = None
    #: Yields an entry's stored bytes in order, chunk by chunk (each chunk valid until
    #: the next is asked for), for formats that can read them without the rest.
    _chunks: Callable[[TensorInfo], Iterator[memoryview]] | None = field(default=None, repr=False)

    @property
    def variables(self) -> tuple[TensorInfo, ...]:
        return tuple(e for e in self.entries if e.registry == "variable")

    @property
    def gradients(self) -> tuple[TensorInfo, ...]:
        return tuple(e for e in self.entries if e.registry == "gradient")

    @property
    def nbytes(self) -> int:
        """The bytes of tensor data the entries describe (shared storage counted once)."""
        seen: dict[str, int] = {}
        for e in self.entries:
            seen[e.key] = e.nbytes
        return sum(seen.values())

    def info(self, name: str, *, registry: Registry = "variable") -> TensorInfo:
        """The most recent entry named ``name`` in ``registry``."""
        if not isinstance(name, str):
            raise TypeError(f"{registry} name must be a str, got {type(name).__name__} {name!r}")
        for e in self.entries:
            if e.registry == registry and e.name == name:
                return e
        names = sorted({e.name for e in self.entries if e.registry == registry})
        close = did_you_mean(name, names)
        hint = ("; did you mean " + " or ".join(f"`{c}`" for c in close) + "?") if close else ""
        raise UnknownNameError(f"{self.path}: no {registry} `{name}`{hint}")

    def tensor(self, name: str, *, registry: Registry = "variable") -> np.ndarray[Any, Any]:
        """The whole tensor of the most recent entry ``name`` (reads only its bytes)."""
        return self._read(self.info(name, registry=registry), None)

    def head(
        self, name: str, n: int = 10, *, registry: Registry = "variable"
    ) -> np.ndarray[Any, Any]:
        """The first ``n`` elements of ``name`` in flat (C) order, reading few bytes.

        Cost: O(n) for safetensors (plus at most one row of the axis it slices).
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"head: n must be an int, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"head: n must be >= 0, got {n}")
        return self._read(self.info(name, registry=registry), n)

    def read(self, info: TensorInfo, n: int | None = None) -> np.ndarray[Any, Any]:
        """The data of the entry ``info`` (one of :attr:`entries`, shadowed ones too):
        whole, or its first ``n`` elements in flat order. Cost: as :meth:`head`."""
        if not isinstance(info, TensorInfo):
            raise TypeError(f"read: info must be a TensorInfo, got {type(info).__name__}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"read: n must be an int >= 0 or None, got {n!r}")
        return self._read(info, n)

    @property
    def sliceable(self) -> bool:
        """True when :meth:`blocks` reads each block from the file without the rest."""
        return self._blocks is not None

    def blocks(self, info: TensorInfo) -> AbstractContextManager[Block]:
        """A context manager giving ``read(index)``: ``tensor[index]`` (``index`` a
        tuple of slices) of the entry ``info``, read from the file alone where
        :attr:`sliceable`, else sliced from the whole tensor. Cost: O(block) per read
        when sliceable, else O(tensor) once."""
        if not isinstance(info, TensorInfo):
            raise TypeError(f"blocks: info must be a TensorInfo, got {type(info).__name__}")
        if self._blocks is not None:
            return self._blocks(info)
        whole = np.asarray(self._read(info, None))
        return contextlib.nullcontext(lambda index: whole[index])

    def matches(self, info: TensorInfo, array: Any) -> bool:
        """True when the entry ``info`` stores exactly ``array``'s bytes: the same dtype
        and shape, the elements in C order, little-endian as stored (a NaN matches the
        same NaN, and ``-0.0`` does not match ``0.0``).

        Where the format can (safetensors), the stored bytes are read from the file
        through one reused buffer of at most :data:`CHUNK` bytes and compared as they
        come, so nothing of the tensor's size is allocated; else :meth:`read`'s whole
        tensor is compared. Cost: O(tensor) time, O(:data:`CHUNK`) memory when streamed.
        """
        if not isinstance(info, TensorInfo):
            raise TypeError(f"matches: info must be a TensorInfo, got {type(info).__name__}")
        a = np.asarray(array)
        if a.dtype.name != info.dtype or tuple(a.shape) != tuple(info.shape):
            return False
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        # np.ascontiguousarray would turn a 0-d array into a 1-d one: reshape first
        flat = np.ascontiguousarray(a.reshape(-1)).view(np.uint8)
        if self._chunks is None:
            stored = np.ascontiguousarray(np.asarray(self._read(info, None)).reshape(-1))
            return stored.dtype == a.dtype and bool(np.array_equal(stored.view(np.uint8), flat))
        at = 0
        for chunk in self._chunks(info):
            n = len(chunk)
            if at + n > flat.size:
                return False
            whole = chunk.obj if isinstance(chunk, memoryview) else None
            if isinstance(whole, bytearray) and len(whole) == n:  # memcmp, no temporary
                same = whole == flat[at : at + n].data
            else:
                same = np.array_equal(np.frombuffer(chunk, np.uint8), flat[at : at + n])
            if not same:
                return False
            at += n
        return at == flat.size

    def __str__(self) -> str:
        lines = [f"{os.fspath(self.path)} ({self.format}, {format_bytes(self.nbytes)})"]
        if self.next_id is not None:
            pin = "" if self.dtype is None else f", dtype {self.dtype}"
            lines.append(f"next_id {self.next_id}{pin}")
        for k, v in (self.metadata or {}).items():
            lines.append(f"metadata {printable(k)}: {printable(v)}")
        for e in self.entries:
            mark = " (shadowed)" if e.shadowed else ""
            shape = str(e.shape)
            lines.append(
                f"{e.registry:8} {printable(e.name)}{mark}  {shape} {e.dtype}"
                f"  {format_bytes(e.nbytes)}"
            )
        return "\n".join(lines)


def layout_entries(
    variables: Sequence[tuple[str, str]],
    gradients: Sequence[tuple[str, str]],
    spec: Callable[[str], tuple[tuple[int, ...], str]],
) -> list[TensorInfo]:
    """The entries of a file in the torchlean key layout: each registry's ``(name, key)``
    pairs, most recent first, with ``spec(key)`` giving the key's shape and dtype name
    (a dtype numpy cannot hold counts 0 bytes). Cost: O(entries)."""
    from torchlean.io._common import numpy_dtype

    entries: list[TensorInfo] = []
    registry: Registry
    for registry, pairs in (("variable", variables), ("gradient", gradients)):
        seen: set[str] = set()
        for i, (name, key) in enumerate(pairs):
            shape, dtype = spec(key)
            try:
                itemsize = numpy_dtype(dtype).itemsize
            except TypeError:
                itemsize = 0
            entries.append(
                TensorInfo(
                    name=name,
                    registry=registry,
                    position=i,
                    shadowed=name in seen,
                    shape=shape,
                    dtype=dtype,
                    nbytes=math.prod(shape) * itemsize,
                    key=key,
                )
            )
            seen.add(name)
    return entries


def read_whole_once(
    load: Callable[[], Any], keys: Sequence[tuple[str, str]]
) -> Callable[[TensorInfo, int | None], Any]:
    """A :class:`FileSummary` reader for a file read only whole: the first value asked
    for loads it (``load()``, a context whose registries, variables then gradients,
    hold the entries of ``keys`` in order) and keeps its arrays as numpy by key; a
    value is then the whole array, or its first ``n`` elements. Cost: one whole load."""
    from torchlean.io._common import to_numpy

    loaded: list[dict[str, Any]] = []

    def read(info: TensorInfo, n: int | None) -> Any:
        if not loaded:
            ctx = load()
            pairs = zip(keys, ctx.var_registry + ctx.gradients, strict=True)
            loaded.append({key: to_numpy(at) for (_, key), (_, at) in pairs})
        a = loaded[0][info.key]
        return a if n is None else a.reshape(-1)[:n]

    return read

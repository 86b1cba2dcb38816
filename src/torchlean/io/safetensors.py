"""Whole contexts in safetensors files: the default checkpoint format.

Layout (see docs/io.md and :mod:`torchlean.io._layout`, shared with ``.npz``): the most
recent variable of each name is stored under its own name, so any safetensors reader
(``safetensors.torch.load_file``) sees a usable ``state_dict``; everything else lives
under the reserved key prefix ``__torchlean__/``. The header's ``__metadata__`` holds
``"torchlean"``: the layout JSON object (``version``, ``next_id``, ``dtype`` and the
registries as ``[name, key]`` pairs). Entries that hold one and the same tensor share
one key, so a name shadowed after ``set_variable`` costs no extra bytes. Other
``__metadata__`` entries (a LoRA trainer's, ``save(..., metadata=...)``'s) are kept:
``inspect`` reports them and ``convert`` carries them over.

A file is opened once (:class:`_File`) and everything is read from that descriptor, so
a load during an atomic save of the same path sees the old file or the new one, never
a mix.

Reading map:
- :func:`save_safetensors` -- write a context (atomically), with ``metadata=``.
- :func:`load_safetensors` -- read a context; without a ``torchlean`` entry in the
  metadata, a plain safetensors file loads as variables in the file's offset order.
- :func:`inspect_safetensors` -- a header-only :class:`~torchlean.io.FileSummary`
  (blocks and :meth:`~torchlean.io.FileSummary.matches` read from the file).
- :class:`_File` -- one open file: header, metadata, reads at offsets.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.
- :data:`PREFIX`, :data:`LAYOUT_VERSION`, :func:`check_layout` -- from
  :mod:`torchlean.io._layout`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

import numpy as np

from torchlean._text import printable
from torchlean._validate import require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._atomic import atomic_path
from torchlean.io._common import (
    Descriptor,
    build_context,
    check_backend,
    check_savable,
    descriptor_path,
    numpy_dtype,
    read_block,
    to_numpy,
)
from torchlean.io._format import Format
from torchlean.io._layout import (
    LAYOUT_VERSION,
    PREFIX,
    apply_roles,
    check_layout,
    layout_object,
    plan,
)
from torchlean.io._summary import CHUNK, Block, FileSummary, TensorInfo, layout_entries
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
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
#: The dtypes this module writes and reads back.
_SAVABLE: Final = frozenset(_DTYPES.values())


def save_safetensors(
    ctx: RuntimeContext[Any],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write the whole context to ``path`` in the layout above, atomically.

    ``metadata`` (str to str) goes into the header's ``__metadata__`` beside
    torchlean's own ``"torchlean"`` entry (a reserved key). Names that are not valid
    Unicode and dtypes safetensors cannot store (``complex128``, strings) are refused
    before anything is written. Cost: O(total bytes); torch and jax tensors are copied
    to host memory once.
    """
    require_save_arguments(ctx, path, "save_safetensors")
    extra = check_metadata(metadata, "save_safetensors")
    check_savable(ctx, path, format="safetensors", allowed=_SAVABLE)
    from safetensors import TensorSpec, serialize_file

    tensors, variables, gradients = plan(ctx)
    layout = layout_object(ctx, variables, gradients)
    header = {"format": "pt", **extra, _META_KEY: json.dumps(layout, separators=(",", ":"))}
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
        serialize_file(specs, tmp, metadata=header)


def check_metadata(metadata: Any, function: str) -> dict[str, str]:
    """``metadata`` checked: ``None`` or a mapping of str to str, without the reserved
    key ``"torchlean"`` and with valid Unicode; a plain dict of it."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"{function}: metadata must be a mapping of str to str, got {type(metadata).__name__}"
        )
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"{function}: metadata must map str to str, got {k!r}: {type(v).__name__}"
            )
        if k == _META_KEY:
            raise ValueError(
                f"{function}: metadata key {_META_KEY!r} is reserved for torchlean's layout"
            )
        try:
            (k + v).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{function}: metadata entry {printable(k)!r} is not valid Unicode"
                " (a lone surrogate)"
            ) from None
        out[k] = v
    return out


class _File(Descriptor):
    """One safetensors file, opened once: its descriptor, header and metadata.

    Every read of the file goes through this one descriptor (an atomic save that
    renames another file over the name meanwhile is never mixed in); safetensors'
    own reader validates the header through :func:`descriptor_path`, which opens the
    same file. The descriptor is closed by :meth:`close` or when the object is
    garbage-collected (a lazy :class:`~torchlean.io.FileSummary` keeps it).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        where, fd = self.where, self.fd
        size = os.fstat(fd).st_size
        if size < 8:
            self.close()
            raise FormatError(
                f"{where}: not a valid safetensors file: header too small ({size} bytes; the"
                " header's length alone takes 8)"
            )
        n = int.from_bytes(self.read_at(0, 8), "little")
        if n > size - 8:
            self.close()
            raise FormatError(
                f"{where}: not a valid safetensors file: the header's length says {n} bytes"
                f" but only {size - 8} follow"
            )
        try:
            self._validate()
            header = json.loads(self.read_at(8, n))
        except BaseException:
            self.close()
            raise
        self.data_start = 8 + n
        meta = header.pop("__metadata__", None)
        self.metadata: dict[str, str] = dict(meta) if isinstance(meta, dict) else {}
        self.specs: dict[str, dict[str, Any]] = header
        self.keys = sorted(header, key=lambda k: tuple(header[k]["data_offsets"]))

    def _validate(self) -> None:
        from safetensors import safe_open

        with contextlib.suppress(ImportError):  # registers bfloat16 with numpy
            import ml_dtypes  # noqa: F401
        try:
            with safe_open(descriptor_path(self.fd, self.where), framework="numpy"):
                pass
        except Exception as e:
            if "(os error 12)" in str(e):  # ENOMEM: no address space left to map the file
                raise MemoryError(f"{self.where}: no memory left to map the file") from None
            raise FormatError(f"{self.where}: not a valid safetensors file: {e}") from None

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def layout(
        self,
    ) -> tuple[
        list[tuple[str, str]], list[tuple[str, str]], int, str | None, dict[str, Any] | None
    ]:
        """The registries as ``(name, key)`` pairs, ``next_id``, the pin, and the file's
        torchlean layout object (None without one); validates the layout against the
        file's keys."""
        text = self.metadata.get(_META_KEY)
        if text is None:
            pairs = [(k, k) for k in reversed(self.keys)]
            return pairs, [], len(pairs), None, None
        return check_layout(self.where, text, self.keys)

    def dtype_of(self, key: str) -> np.dtype[Any]:
        code = self.specs[key]["dtype"]
        name = _DTYPES.get(code)
        if name is None:
            raise FormatError(
                f"{self.where}: tensor `{printable(key)}` has dtype {code}, which numpy cannot hold"
            )
        return numpy_dtype(name).newbyteorder("<")


def user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The ``__metadata__`` entries a user wrote: all but torchlean's layout."""
    return {k: v for k, v in metadata.items() if k != _META_KEY}


def _read_numpy(f: _File, keys: set[str]) -> dict[str, np.ndarray[Any, Any]]:
    """The tensors ``keys`` of the validated file ``f`` as numpy arrays over one
    immutable ``bytes`` object (one read, no copy per tensor, no memory map): numpy
    refuses to make them writeable, whoever holds them."""
    spans = {k: f.specs[k] for k in keys}
    start = min((s["data_offsets"][0] for s in spans.values()), default=0)
    stop = max((s["data_offsets"][1] for s in spans.values()), default=0)
    dtypes = {k: f.dtype_of(k) for k in spans}
    blob = f.read_at(f.data_start + start, stop - start)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for key, spec in spans.items():
        begin, end = spec["data_offsets"]
        dtype = dtypes[key]
        out[key] = np.frombuffer(
            blob, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin - start
        ).reshape(spec["shape"])
    return out


def load_safetensors(
    path: str | os.PathLike[str], *, backend: str = "numpy"
) -> RuntimeContext[Any]:
    """Read a context written by :func:`save_safetensors` (or any safetensors file).

    The file is opened once; safetensors validates the header through that descriptor,
    and the tensors are read from it with one read into one immutable ``bytes`` object,
    as read-only numpy arrays over it (the ``backend``'s ``from_numpy`` copies them into
    its own memory: nothing stays mapped to the file). Every tensor is read once, even
    when several entries share it. Cost: O(total bytes).
    """
    check_backend(backend)
    with _File(path) as f:
        variables, gradients, next_id, pin, layout = f.layout()
        arrays = _read_numpy(f, {k for _, k in variables} | {k for _, k in gradients})
    v = [(name, arrays[key]) for name, key in variables]
    g = [(name, arrays[key]) for name, key in gradients]
    ctx = build_context(v, g, next_id=next_id, pin=pin, backend=backend, path=path)
    return apply_roles(os.fspath(path), ctx, layout)


def inspect_safetensors(path: str | os.PathLike[str]) -> FileSummary:
    """A summary of ``path`` from its header only; tensors are read on request.

    The file stays open (one descriptor) while the summary lives, so what is read later
    comes from the file that was inspected even when the name is replaced meanwhile.
    Cost: O(header size); the tensor data is not touched.
    """
    where = os.fspath(path)
    f = _File(path)
    try:
        variables, gradients, next_id, pin, layout = f.layout()
        has_layout = layout is not None
    except BaseException:
        f.close()
        raise
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for key in {k for _, k in variables} | {k for _, k in gradients}:
        code = f.specs[key]["dtype"]
        specs[key] = (tuple(int(d) for d in f.specs[key]["shape"]), _DTYPES.get(code, code))
        if pin is not None and specs[key][1] != pin:
            f.close()
            raise FormatError(
                f"{where}: tensor `{printable(key)}` has dtype {specs[key][1]} but the file"
                f" says the context holds {pin} only"
            )
    entries = layout_entries(variables, gradients, specs.__getitem__)

    def elements(info: TensorInfo, first: int, count: int) -> np.ndarray[Any, Any]:
        dtype = f.dtype_of(info.key)
        begin = f.specs[info.key]["data_offsets"][0]
        data = f.read_at(f.data_start + begin + first * dtype.itemsize, count * dtype.itemsize)
        return np.frombuffer(data, dtype=dtype)

    def read(info: TensorInfo, n: int | None) -> np.ndarray[Any, Any]:
        numel = math.prod(info.shape)
        if n is None:
            return elements(info, 0, numel).reshape(info.shape)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return elements(info, 0, min(n, numel))

    @contextlib.contextmanager
    def blocks(info: TensorInfo) -> Iterator[Block]:
        f.dtype_of(info.key)  # a dtype numpy cannot hold fails here, before any read

        def block(index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
            return read_block(info.shape, index, lambda first, count: elements(info, first, count))

        yield block

    buffer: list[memoryview] = []  # one reused buffer for every entry's chunks

    def chunks(info: TensorInfo) -> Iterator[memoryview]:
        begin, end = f.specs[info.key]["data_offsets"]
        at, stop = f.data_start + begin, f.data_start + end
        if not buffer:
            buffer.append(memoryview(bytearray(CHUNK)))
        view = buffer[0]
        while at < stop:
            got = f.read_into(at, view[: min(len(view), stop - at)])
            if got <= 0:
                raise FormatError(
                    f"{where}: truncated while reading `{printable(info.key)}`: the file"
                    f" ends at offset {at}, its data at {stop}"
                )
            yield view[:got]
            at += got

    return FileSummary(
        path=where,
        format="safetensors",
        entries=tuple(entries),
        next_id=next_id if has_layout else None,
        dtype=pin,
        layout="torchlean" if has_layout else None,
        _read=read,
        _blocks=blocks,
        metadata=user_metadata(f.metadata),
        _chunks=chunks,
    )


#: The safetensors format: the whole context, exactly; ``inspect`` reads the header only;
#: ``save`` takes ``metadata=``.
FORMAT: Final = Format(
    name="safetensors",
    suffixes=(".safetensors",),
    save=save_safetensors,
    load=load_safetensors,
    inspect=inspect_safetensors,
    whole_context=True,
    header_only_inspect=True,
    metadata=True,
)

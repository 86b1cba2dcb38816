"""The header of a ``torch.save`` zip file read without importing torch (private).

``torchlean show``/``check`` of a ``.pt`` file only needs the names, shapes and dtypes
in its pickle (``<archive>/data.pkl``) and, for a preview, a few bytes of the stored
``<archive>/data/<key>`` records. This module reads exactly that, with a small pickle
machine that knows only the opcodes torch's ``weights_only`` unpickler accepts and only
the globals ``torch.save`` uses for dense tensors and plain containers
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``/``_v3``,
``_rebuild_parameter``, the ``torch.*Storage`` classes, the dtypes), each mapped to a
light record; nothing is ever called or imported. Whenever a file holds anything else,
or anything torch could refuse (a global, an opcode, a protocol, a damaged or unusual
zip layout, a tensor out of its storage's bounds, a big-endian file...), the answer is
``None`` and the caller reads the file with torch (``weights_only=True``), which gives
the same result or the same error it always gave.

Reading map:
- :func:`read_header` -- the unpickled object of the file, tensors as
  :class:`TensorRecord`, or ``None`` (use torch).
- :class:`TensorRecord` -- one tensor: dtype, shape, strides, offset, its storage.
- :class:`StorageRecord` -- one ``data/<key>`` record: bytes, where its data starts.
- :func:`strided_reader` -- reads of a record's elements (``pread``), any strides.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from torchlean.errors import FormatError
from torchlean.io._zip import check_zip_directory

__all__ = ["StorageRecord", "TensorRecord", "read_header", "strided_reader"]

# The storage classes torch's weights_only unpickler allows, as torch.save names them,
# and their dtypes (quantized storages are left to torch).
_STORAGES: Final = {
    "BFloat16Storage": "bfloat16",
    "BoolStorage": "bool",
    "ByteStorage": "uint8",
    "CharStorage": "int8",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "IntStorage": "int32",
    "LongStorage": "int64",
    "ShortStorage": "int16",
}
#: Bytes per element of the dtypes read here (torch's names less ``torch.``).
ITEMSIZE: Final = {
    "bfloat16": 2,
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "complex128": 16,
    "complex64": 8,
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "int32": 4,
    "int64": 8,
    "int16": 2,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}
# dtypes whose tensors may require grad (torch refuses it for the others)
_GRAD: Final = frozenset({"bfloat16", "float16", "float32", "float64", "complex64", "complex128"})
_VERSIONS: Final = (b"3\n", b"3")
_LOCAL_MAGIC: Final = b"PK\x03\x04"


class _Refused(Exception):
    """Something this reader does not vouch for: torch reads the file instead."""


@dataclass(frozen=True)
class _Global:
    """A global of the pickle: ``kind`` is ``"dict"``, ``"v2"``, ``"v3"``,
    ``"parameter"``, ``"storage"`` or ``"dtype"``; ``dtype`` for the last two."""

    kind: str
    dtype: str = ""


@dataclass(frozen=True, eq=False)
class StorageRecord:
    """One ``data/<key>`` record as torch's loader sees it: the dtype and bytes of the
    first reference to ``key`` (torch caches a storage by its key)."""

    key: str
    dtype: str
    nbytes: int
    #: Where the record's data starts in the file.
    start: int


@dataclass(frozen=True, eq=False)
class TensorRecord:
    """A dense tensor of the pickle: what ``torch._utils._rebuild_tensor_v2`` would
    build, without building it."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    #: In elements of ``dtype``.
    offset: int
    storage: StorageRecord

    def detach(self) -> TensorRecord:
        """Itself (the state_dict walk detaches torch tensors)."""
        return self

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    @property
    def contiguous(self) -> bool:
        """torch's ``is_contiguous()``: C order, size-1 axes' strides ignored."""
        if 0 in self.shape:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


def _globals() -> dict[str, _Global]:
    table = {
        "collections.OrderedDict": _Global("dict"),
        "torch._utils._rebuild_tensor_v2": _Global("v2"),
        "torch._utils._rebuild_tensor_v3": _Global("v3"),
        "torch._utils._rebuild_parameter": _Global("parameter"),
        "torch.storage.UntypedStorage": _Global("storage", "uint8"),
    }
    for name, dtype in _STORAGES.items():
        table[f"torch.{name}"] = _Global("storage", dtype)
        table[f"torch.cuda.{name}"] = _Global("storage", dtype)
    for dtype in ITEMSIZE:
        table[f"torch.{dtype}"] = _Global("dtype", dtype)
    return table


_GLOBALS: Final = _globals()


def _int(x: Any) -> int:
    if type(x) is not int:
        raise _Refused
    return x


def _ints(x: Any) -> tuple[int, ...]:
    if type(x) is not tuple:
        raise _Refused
    return tuple(_int(v) for v in x)


def _hooks(x: Any) -> None:
    if type(x) is not OrderedDict or x or x.__dict__:
        raise _Refused


def _tensor(
    storage: Any, offset: Any, size: Any, stride: Any, grad: Any, dtype: str
) -> TensorRecord:
    """What ``set_(storage, offset, size, stride)`` accepts: the checks torch makes
    (non-negative sizes, strides and offset, the last element inside the storage)."""
    if not isinstance(storage, StorageRecord) or type(grad) is not bool:
        raise _Refused
    if grad and dtype not in _GRAD:
        raise _Refused
    offset, shape, strides = _int(offset), _ints(size), _ints(stride)
    if len(shape) != len(strides) or offset < 0 or min((*shape, *strides, 0)) < 0:
        raise _Refused
    if 0 not in shape:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if (last + 1) * ITEMSIZE[dtype] > storage.nbytes:
            raise _Refused
    return TensorRecord(dtype, shape, strides, offset, storage)


def _reduce(func: Any, args: Any) -> Any:
    """The allowed calls, as records."""
    if not isinstance(func, _Global) or type(args) is not tuple:
        raise _Refused
    if func.kind == "dict" and not args:
        return OrderedDict()
    if func.kind == "v2" and len(args) in (6, 7):
        storage, offset, size, stride, grad, hooks, *metadata = args
        _hooks(hooks)
        if metadata and metadata[0] is not None:
            raise _Refused
        if not isinstance(storage, StorageRecord):
            raise _Refused
        return _tensor(storage, offset, size, stride, grad, storage.dtype)
    if func.kind == "v3" and len(args) in (7, 8):
        storage, offset, size, stride, grad, hooks, dtype, *metadata = args
        _hooks(hooks)
        if metadata and metadata[0] is not None:
            raise _Refused
        if not isinstance(dtype, _Global) or dtype.kind != "dtype":
            raise _Refused
        return _tensor(storage, offset, size, stride, grad, dtype.dtype)
    if func.kind == "parameter" and len(args) == 3:
        data, grad, hooks = args
        _hooks(hooks)
        if not isinstance(data, TensorRecord) or type(grad) is not bool:
            raise _Refused
        if grad and data.dtype not in _GRAD:
            raise _Refused
        return data
    raise _Refused


class _Machine:
    """The opcodes of torch's ``weights_only`` unpickler (torch 2.x), with records for
    the allowed globals and storages from the zip directory."""

    def __init__(self, data: bytes, storage: Callable[[Any], StorageRecord]) -> None:
        self.data = data
        self.pos = 0
        self.storage = storage

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def readline(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def run(self) -> Any:  # one branch per opcode
        read = self.read
        memo: dict[int, Any] = {}
        metastack: list[list[Any]] = []
        stack: list[Any] = []
        first = True
        while True:
            key = read(1)
            if not key:
                raise _Refused
            op = key[0]
            if first:  # torch warns for any protocol but 2: leave those to it
                if op != 0x80 or read(1) != b"\x02":
                    raise _Refused
                first = False
                continue
            if op == 0x63:  # GLOBAL
                module = self.readline()[:-1].decode("utf-8")
                name = self.readline()[:-1].decode("utf-8")
                found = _GLOBALS.get(f"{module}.{name}")
                if found is None:
                    raise _Refused
                stack.append(found)
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                stack[-1] = _reduce(stack[-1], args)
            elif op == 0x62:  # BUILD
                state = stack.pop()
                inst = stack[-1]
                if type(inst) is not OrderedDict:
                    raise _Refused
                inst.__dict__.update(state)
            elif op == 0x61:  # APPEND
                item = stack.pop()
                if type(stack[-1]) is not list:
                    raise _Refused
                stack[-1].append(item)
            elif op == 0x65:  # APPENDS
                items = stack
                stack = metastack.pop()
                if type(stack[-1]) is not list:
                    raise _Refused
                stack[-1].extend(items)
            elif op == 0x73:  # SETITEM
                v, k = stack.pop(), stack.pop()
                if type(stack[-1]) not in (dict, OrderedDict):
                    raise _Refused
                stack[-1][k] = v
            elif op == 0x75:  # SETITEMS
                items = stack
                stack = metastack.pop()
                if type(stack[-1]) not in (dict, OrderedDict):
                    raise _Refused
                for i in range(0, len(items), 2):
                    stack[-1][items[i]] = items[i + 1]
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x74:  # TUPLE
                items = stack
                stack = metastack.pop()
                stack.append(tuple(items))
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x86:  # TUPLE2
                stack[-2:] = [(stack[-2], stack[-1])]
            elif op == 0x87:  # TUPLE3
                stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x4A:  # BININT
                stack.append(struct.unpack("<i", read(4))[0])
            elif op == 0x4B:  # BININT1
                stack.append(read(1)[0])
            elif op == 0x4D:  # BININT2
                stack.append(struct.unpack("<H", read(2))[0])
            elif op == 0x47:  # BINFLOAT
                stack.append(struct.unpack(">d", read(8))[0])
            elif op == 0x58:  # BINUNICODE
                (n,) = struct.unpack("<I", read(4))
                raw = read(n)
                if len(raw) != n:
                    raise _Refused
                stack.append(str(raw, "utf-8", "surrogatepass"))
            elif op == 0x55:  # SHORT_BINSTRING (torch.load decodes it as utf-8)
                n = read(1)[0]
                raw = read(n)
                if len(raw) != n:
                    raise _Refused
                stack.append(raw.decode("utf-8", "strict"))
            elif op == 0x51:  # BINPERSID
                stack.append(self.storage(stack.pop()))
            elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
                i = read(1)[0] if op == 0x68 else struct.unpack("<I", read(4))[0]
                stack.append(memo[i])
            elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
                i = read(1)[0] if op == 0x71 else struct.unpack("<I", read(4))[0]
                memo[i] = stack[-1]
            elif op == 0x2E:  # STOP
                return stack.pop()
            else:  # LONG1, EMPTY_SET and the rest: rare in a checkpoint; torch reads them
                raise _Refused


def _local_start(fd: int, info: zipfile.ZipInfo, size: int) -> int:
    """Where the data of a stored member starts: after its local header (checked)."""
    header = os.pread(fd, 30, info.header_offset)
    if len(header) != 30 or header[:4] != _LOCAL_MAGIC:
        raise _Refused
    names, extra = struct.unpack("<HH", header[26:30])
    start: int = info.header_offset + 30 + int(names) + int(extra)
    if start + info.compress_size > size:
        raise _Refused
    return start


def _archive(fd: int, where: str) -> tuple[str, dict[str, zipfile.ZipInfo], int]:
    """The archive's folder, its members by name (lower case), and the file size; the
    zip-directory guard of io/_zip.py first."""
    size = os.fstat(fd).st_size
    if size < 30 or os.pread(fd, 4, 0) != _LOCAL_MAGIC or sys.byteorder != "little":
        raise _Refused
    with open(fd, "rb", closefd=False) as f:
        try:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
        except Exception:
            raise _Refused from None
        try:
            check_zip_directory(infos, size, where, npy=False)
        except FormatError:
            raise _Refused from None
    if not infos or "/" not in infos[0].filename or min(i.header_offset for i in infos) != 0:
        raise _Refused
    # one disk; no flags but "data descriptor" and "UTF-8 names" (what torch.save sets)
    # and no directories (miniz takes the DOS attribute 0x10 for one: it reads nothing)
    if any(
        info.volume != 0
        or info.flag_bits & ~0x808
        or info.external_attr & 0x10
        or info.filename.endswith("/")
        for info in infos
    ):
        raise _Refused
    _one_disk(fd, size, len(infos))
    folder = infos[0].filename.split("/", 1)[0] + "/"
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        lower = info.filename.lower()
        if not info.filename.startswith(folder) or lower in members:
            raise _Refused  # miniz finds names case-insensitively
        members[lower] = info
    return folder.lower(), members, size


def _one_disk(fd: int, size: int, count: int) -> None:
    """The end records say one disk (miniz refuses multi-disk archives) and hold no
    comment (torch.save writes none): the end record is the file's last 22 bytes."""
    end = os.pread(fd, 22, size - 22)
    if len(end) != 22 or end[:4] != b"PK\x05\x06":
        raise _Refused
    disk, cdir_disk, here, total, _, _, comment = struct.unpack("<HHHHIIH", end[4:])
    if disk or cdir_disk or comment or here != total:
        raise _Refused
    if total != 0xFFFF and total != count:
        raise _Refused
    if size < 42:
        return
    locator = os.pread(fd, 20, size - 42)
    if locator[:4] != b"PK\x06\x07":
        return
    ldisk, record, disks = struct.unpack("<IQI", locator[4:])
    if ldisk != 0 or disks != 1:
        raise _Refused
    end64 = os.pread(fd, 56, record)
    if len(end64) != 56 or end64[:4] != b"PK\x06\x06":
        raise _Refused
    disk64, cdir64, here64, total64 = struct.unpack("<IIQQ", end64[16:40])
    if disk64 or cdir64 or here64 != total64 or total64 != count:
        raise _Refused


def _small(fd: int, info: zipfile.ZipInfo | None, size: int) -> bytes | None:
    """A small stored member's bytes (CRC checked), or None when absent."""
    if info is None:
        return None
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > 1 << 30:
        raise _Refused
    start = _local_start(fd, info, size)
    data = os.pread(fd, info.file_size, start)
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise _Refused
    return data


def read_header(fd: int, where: str) -> Any:
    """The object ``torch.load(weights_only=True)`` would return for the zip file open
    as ``fd``, its dense tensors as :class:`TensorRecord`; ``None`` when this reader
    does not vouch for the file (torch reads it then). Reads the zip directory, the
    pickle and one local header per storage; no tensor data. Cost: O(pickle)."""
    try:
        return _read(fd, where)
    except _Refused:
        return None
    except (
        ValueError,  # struct, unicode and the like
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        OverflowError,
        RecursionError,
        MemoryError,
        OSError,
    ):
        return None


def _read(fd: int, where: str) -> Any:
    folder, members, size = _archive(fd, where)

    def member(name: str) -> zipfile.ZipInfo | None:
        return members.get(folder + name)

    version = _small(fd, member(".data/version"), size)
    if version is None:
        version = _small(fd, member("version"), size)
    if version not in _VERSIONS:
        raise _Refused
    if _small(fd, member("byteorder"), size) not in (None, b"little"):
        raise _Refused
    alignment = _small(fd, member(".storage_alignment"), size)
    if alignment is not None:
        int(alignment)  # torch reads it so (a ValueError leaves the file to torch)
    _small(fd, member(".format_version"), size)
    identity = _small(fd, member(".data/serialization_id"), size)
    if identity is not None:
        identity.decode("utf-8")  # torch.load returns it as a str at its end
    if member("constants.pkl") is not None:  # a TorchScript archive
        raise _Refused
    pickle = _small(fd, member("data.pkl"), size)
    if pickle is None:
        raise _Refused
    storages: dict[str, StorageRecord] = {}
    seen: dict[str, tuple[str, int]] = {}

    def storage(pid: Any) -> StorageRecord:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise _Refused
        _, kind, key, location, numel = pid
        if not isinstance(kind, _Global) or kind.kind != "storage":
            raise _Refused
        if type(key) is not str or type(location) is not str or type(numel) is not int:
            raise _Refused
        if seen.setdefault(key, (kind.dtype, numel)) != (kind.dtype, numel):
            raise _Refused  # torch keeps the first; leave such files to it
        known = storages.get(key)
        if known is not None:
            return known
        info = member(f"data/{key}".lower())
        nbytes = numel * ITEMSIZE[kind.dtype]
        if info is None or info.filename[len(folder) :] != f"data/{key}" or numel < 0:
            raise _Refused
        if info.compress_type != zipfile.ZIP_STORED or nbytes > info.file_size:
            raise _Refused
        record = StorageRecord(key, kind.dtype, nbytes, _local_start(fd, info, size))
        storages[key] = record
        return record

    return _Machine(pickle, storage).run()


def strided_reader(
    record: TensorRecord, read_at: Callable[[int, int], bytes], dtype: np.dtype[Any]
) -> Callable[[], np.ndarray[Any, Any]]:
    """The whole tensor of ``record`` (any non-negative strides): the span of its
    storage it covers is read once (``read_at(offset, n)``) and viewed with its
    strides, then copied to C order."""

    def whole() -> np.ndarray[Any, Any]:
        if 0 in record.shape:
            return np.zeros(record.shape, dtype=dtype)
        span = 1 + sum((n - 1) * s for n, s in zip(record.shape, record.stride, strict=True))
        start = record.storage.start + record.offset * dtype.itemsize
        base = np.frombuffer(read_at(start, span * dtype.itemsize), dtype=dtype)
        strides = tuple(s * dtype.itemsize for s in record.stride)
        view: np.ndarray[Any, Any] = np.ndarray(record.shape, dtype, base, 0, strides)
        return np.array(view, copy=True)

    return whole

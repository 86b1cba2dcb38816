"""PyTorch: ``.pt``/``.pth``/``.bin``/``.ckpt``/``.pth.tar`` state_dicts and bridges to
``nn.Module``.

Files are always read with ``torch.load(weights_only=True)``: a pickle that needs more
than tensors and plain containers is refused with a
:class:`~torchlean.errors.FormatError`, never executed (for a plain data class such as
``argparse.Namespace`` the error names ``torch.serialization.add_safe_globals``). A file
is opened once; the zip-bomb guard and ``torch.load`` read that one open file.

Reading map:
- :func:`load_pt` -- a state_dict file (bare, wrapped as ``{"state_dict": ...}`` or
  ``{"model_state_dict": ...}``, or picked with ``key=``) as a context (``io.load``
  strips prefixes); tied weights share one version counter.
- :func:`inspect_pt` -- a summary without torch for a zip file as ``torch.save`` writes
  it (io/_torchzip.py), else over ``torch.load(mmap=True)``: nothing read up front.
- :func:`save_pt` -- the variables as a state_dict of torch tensors (atomically).
- :func:`from_module` -- ``RuntimeContext.from_module``: parameters and buffers (marked
  as buffers), tied weights as one variable and its aliases.
- :func:`load_into` -- ``RuntimeContext.load_into``: checked, all-or-nothing, ties
  restored; ``strict=False`` returns a report of missing and unexpected names.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.

Tensors cross between torch and the other array libraries only through the backends'
``to_numpy``/``from_numpy`` (bf16 and the other narrow floats included).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal, overload

import numpy as np

from torchlean._text import printable
from torchlean._validate import require_bool, require_save_arguments
from torchlean.errors import BackendError, ExpectationError, FormatError
from torchlean.io._atomic import atomic_path
from torchlean.io._common import (
    SAVABLE_DTYPES,
    Descriptor,
    build_context,
    check_backend,
    check_savable,
    descriptor_path,
    numpy_dtype,
    open_regular,
    read_block,
)
from torchlean.io._format import Format
from torchlean.io._summary import Block, FileSummary, TensorInfo
from torchlean.io._torchzip import TensorRecord, read_header, strided_reader
from torchlean.io._zip import check_zip_file
from torchlean.io.expect import ExpectReport, compare, tied_names
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.backends import backend_named
from torchlean.runtime.context import RuntimeContext, require_context, with_roles

__all__ = ["FORMAT", "from_module", "inspect_pt", "load_into", "load_pt", "save_pt"]

_WRAPPERS: Final = ("state_dict", "model_state_dict")
# Globals whose module does things (files, processes, code): the refusal never suggests
# allowing them.
_NEVER_ALLOW: Final = frozenset(
    {
        "builtins",
        "os",
        "posix",
        "nt",
        "io",
        "sys",
        "subprocess",
        "shutil",
        "socket",
        "pickle",
        "runpy",
        "importlib",
        "codecs",
        "functools",
        "operator",
        "types",
        "ctypes",
        "pathlib",
        "tempfile",
        "webbrowser",
    }
)


def read_object(
    path: str | os.PathLike[str], *, mmap: bool, fd: int | None = None
) -> tuple[Any, dict[str, int] | None]:
    """``torch.load(weights_only=True)`` of ``path``, opened once (or of the open
    descriptor ``fd``, which stays open): the zip-bomb guard and torch read the same
    open file. ``mmap=True`` maps a zip file's tensors (``MAP_PRIVATE``, through
    :func:`descriptor_path`, so still the file that was opened) instead of reading
    them, and also returns where each data record starts in the file; other files are
    read (and ``None``). Cost: O(file), or O(pickle) mapped."""
    import pickle

    import torch

    where = os.fspath(path)
    own = fd is None
    fd = open_regular(path) if fd is None else fd
    with open(fd, "rb", closefd=own) as f:
        if os.fstat(fd).st_size == 0:
            raise FormatError(f"{where}: empty file, not a PyTorch file")
        # torch's zip reader allocates what the zip directory declares: check it first
        is_zip = check_zip_file(f, where, what="PyTorch file")
        name = descriptor_path(fd, path) if mmap and is_zip else None
        try:
            if name is not None and name != where:
                records = _record_offsets(f)
                obj = torch.load(name, weights_only=True, map_location="cpu", mmap=True)
                return obj, records
            return torch.load(f, weights_only=True, map_location="cpu"), None
        except pickle.UnpicklingError as e:
            raise _refusal(where, str(e)) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise FormatError(
                f"{where}: not a valid PyTorch file ({_first_line(str(e))})"
            ) from None
        except Exception as e:
            # a damaged pickle can fail anywhere in torch's restricted unpickler (an
            # IndexError from its stack, a KeyError from its memo, ...); it never ran code
            raise FormatError(
                f"{where}: not a valid PyTorch file ({type(e).__name__}: {_first_line(str(e))})"
            ) from None


def _record_offsets(f: Any) -> dict[str, int]:
    """Where the data of each ``.../data/<key>`` record of a torch zip file starts: the
    local header's offset plus its 30 bytes, name and extra field (torch pads records
    to 64 bytes there)."""
    import zipfile

    out: dict[str, int] = {}
    f.seek(0)
    with zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(info.header_offset + 26)
            lengths = f.read(4)
            start = info.header_offset + 30 + int.from_bytes(lengths[:2], "little")
            out[info.filename] = start + int.from_bytes(lengths[2:], "little")
    f.seek(0)
    return out


def _file_offsets(tensors: list[Any], records: dict[str, int] | None) -> dict[int, int]:
    """For each tensor (by position) of a mapped zip file, where its storage starts in
    the file: torch maps the whole file once, so each storage's address less the
    mapping's start is the data offset of one record. The start is found as the one
    address that puts every storage on a record. Empty when unknown, or when several
    addresses would do (a guess could read another record's bytes)."""
    import torch

    if not records:
        return {}
    pointers = {
        i: t.untyped_storage().data_ptr()
        for i, t in enumerate(tensors)
        if t.layout == torch.strided and t.untyped_storage().nbytes() > 0
    }
    if not pointers:
        return {}
    starts = set(records.values())
    lowest = min(pointers.values())
    bases = [
        lowest - candidate
        for candidate in sorted(starts)
        if all(p - (lowest - candidate) in starts for p in pointers.values())
    ]
    if len(bases) != 1:  # none, or several (few storages, empty records): not known
        return {}
    base = bases[0]
    return {i: p - base for i, p in pointers.items()}


def _refusal(where: str, text: str) -> FormatError:
    """The error for a pickle ``weights_only`` refused: what it needed, and for a plain
    data class (``argparse.Namespace``) how to allow it when the file is trusted."""
    why = next(
        (line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line),
        None,
    )
    if why is None:
        return FormatError(f"{where}: not a valid PyTorch file ({_first_line(text)})")
    why = why.split(" Please use", 1)[0]  # torch's advice: given below, or never
    message = (
        f"{where}: refused to load: the pickle needs more than tensors and plain"
        f" containers, and is never run (weights_only=True): {why}"
    )
    found = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", why)
    if found is not None:
        qualified = found.group(1)
        module, _, attribute = qualified.rpartition(".")
        if module and module.split(".")[0] not in _NEVER_ALLOW and attribute[:1].isupper():
            message += (
                f" If you trust this file and {qualified} is plain data, allow it before"
                f" loading: torch.serialization.add_safe_globals([{qualified}])"
            )
    return FormatError(message)


def _state_dict(
    obj: Any, where: str, *, key: str | None, flatten: bool, tensor: type[Any] | None = None
) -> list[tuple[str, Any]]:
    """The (name, tensor) pairs of the state dict in ``obj``: the one under ``key``
    (dotted for deeper levels), else ``obj`` or its ``state_dict`` /
    ``model_state_dict`` entry; nested mappings as dotted names when ``flatten``.
    ``tensor``: the class of tensors in ``obj`` (torch's, or the records of
    io/_torchzip.py)."""
    if tensor is None:
        import torch

        tensor = torch.Tensor

    if key is not None:
        obj = _descend(obj, key, where)
    elif isinstance(obj, Mapping):
        for wrapper in _WRAPPERS:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise FormatError(
            f"{where}: expected a state_dict (a mapping of names to tensors), got"
            f" {type(obj).__name__}"
        )
    pairs: list[tuple[str, Any]] = []
    others: list[str] = []

    def walk(mapping: Mapping[Any, Any], prefix: str) -> None:
        for name, value in mapping.items():
            if not isinstance(name, str):
                raise FormatError(
                    f"{where}: entry {name!r} has a {type(name).__name__} name; a state_dict"
                    " maps names (str) to tensors"
                )
            if isinstance(value, tensor):
                pairs.append((prefix + name, value.detach()))
            elif flatten and isinstance(value, Mapping):
                walk(value, f"{prefix}{name}.")
            else:
                kind = type(value).__name__
                article = "an" if kind[:1].lower() in "aeiou" else "a"
                others.append(f"`{printable(prefix + name)}` is {article} {kind}")

    walk(obj, "")
    if others:
        nested = [n for n, v in obj.items() if isinstance(n, str) and isinstance(v, Mapping)]
        if flatten:
            hint = "; flatten=True reads tensors and mappings of them only"
        elif nested:
            hint = (
                f"; it holds mappings under {', '.join(f'`{printable(n)}`' for n in nested[:5])}:"
                f' pick one with key="{printable(nested[0])}" (torchlean --key'
                f" {printable(nested[0])}), or read them all as dotted names with"
                " flatten=True (--flatten)"
            )
        else:
            hint = ""
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise FormatError(
            f"{where}: entry {others[0]}, not a tensor{more}; a state_dict maps names to"
            f" tensors{hint}"
        )
    return pairs


def _descend(obj: Any, key: str, where: str) -> Any:
    """``obj[key]``, where a dotted ``key`` also walks nested mappings (the longest
    existing name first: ``"model.encoder"`` may be one key or two levels)."""
    at, rest, walked = obj, key, ""
    while rest:
        if not isinstance(at, Mapping):
            raise FormatError(
                f"{where}: key={key!r}: `{printable(walked)}` is a {type(at).__name__}, not a"
                " mapping"
            )
        parts = rest.split(".")
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if head in at:
                at = at[head]
                walked = f"{walked}.{head}" if walked else head
                rest = ".".join(parts[i:])
                break
        else:
            there = f" under `{printable(walked)}`" if walked else ""
            names = [printable(str(k)) for k in at][:8]
            listed = ", ".join(f"`{n}`" for n in names) or "nothing"
            raise FormatError(
                f"{where}: key={key!r}: no entry `{printable(parts[0])}`{there}; the keys"
                f" there are {listed}"
            )
    return at


def _share_versions(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``pairs`` with the tensors that share a storage (tied weights, overlapping views
    such as ``qkv`` and ``qkv[2:6]``) rebuilt as views of one base tensor, so they share
    one version counter: a write through one is seen on every other. torch.load gives
    each its own counter. A conjugate or negative view is resolved (a copy)."""
    import torch

    groups: dict[int, list[int]] = {}
    out = []
    for i, (name, t) in enumerate(pairs):
        if t.layout == torch.strided and (t.is_conj() or t.is_neg()):
            t = t.resolve_conj().resolve_neg()
        out.append((name, t))
        if t.layout == torch.strided and t.untyped_storage().nbytes() > 0:
            groups.setdefault(t.untyped_storage().data_ptr(), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        storage = out[members[0]][1].untyped_storage()
        base = torch.empty(0, dtype=torch.uint8).set_(storage)
        for i in members:
            name, t = out[i]
            try:
                typed = base if t.dtype == torch.uint8 else base.view(t.dtype)
                out[i] = (name, typed.as_strided(t.shape, t.stride(), t.storage_offset()))
            except RuntimeError:  # a storage of mixed item sizes: an independent copy
                out[i] = (name, t.clone())
    return out


def load_pt(
    path: str | os.PathLike[str],
    *,
    backend: str = "numpy",
    key: str | None = None,
    flatten: bool = False,
) -> RuntimeContext[Any]:
    """Read a PyTorch state_dict file as a context, with ``weights_only=True``.

    The file is opened once; the zip-bomb guard and ``torch.load`` read that one open
    file, and the tensors are read into fresh memory (nothing stays mapped to the
    file). ``key`` picks a nested state dict (``"model"``, ``"state_dict_ema"``, dotted
    for deeper levels); ``flatten=True`` reads nested mappings as dotted names.
    Entries that share storage in the file share one version counter in a torch
    context. Variables are registered in the state_dict's order. Cost: O(total bytes).
    """
    check_backend(backend)
    where = os.fspath(path)
    obj, _ = read_object(path, mmap=False)
    pairs = _share_versions(_state_dict(obj, where, key=key, flatten=flatten))
    return build_context(pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path)


def inspect_pt(
    path: str | os.PathLike[str], *, key: str | None = None, flatten: bool = False
) -> FileSummary:
    """A summary of a PyTorch file whose tensors are mapped, not read
    (``torch.load(mmap=True)`` where the file is a zip archive, as ``torch.save``
    writes): entries come from the pickle, and a preview or sample reads only the pages
    it touches. A mapped file must not be truncated while the summary is used (the
    process would get SIGBUS). Contiguous tensors are read with ``pread`` from the file
    that was opened, not through the mapping, so a show adds no resident pages; other
    tensors are read through the mapping. Cost: O(pickle), plus what is read.

    A zip file as ``torch.save`` writes it (dense tensors in plain containers) is read
    without importing torch: its pickle by the restricted reader of io/_torchzip.py,
    its data with ``pread``; any other file is read by torch as above, with the same
    result and the same errors."""
    where = os.fspath(path)
    file = Descriptor(path)
    try:
        fast = _inspect_records(file, where, key=key, flatten=flatten)
    except BaseException:
        file.close()
        raise
    return fast if fast is not None else _inspect_torch(file, where, key=key, flatten=flatten)


def _inspect_records(
    file: Descriptor, where: str, *, key: str | None, flatten: bool
) -> FileSummary | None:
    """:func:`inspect_pt` without torch, or ``None`` when the file needs torch (the
    header reader does not vouch for it, or its state_dict is not one: torch's path
    then gives the error). An entry whose dtype numpy cannot hold is read by torch."""
    obj = read_header(file.fd, where)
    if obj is None:
        return None
    try:
        pairs = _state_dict(obj, where, key=key, flatten=flatten, tensor=TensorRecord)[::-1]
    except FormatError:
        return None
    records: list[TensorRecord] = [t for _, t in pairs]
    entries = tuple(
        TensorInfo(
            name=name,
            registry="variable",
            position=i,
            shadowed=False,
            shape=t.shape,
            dtype=t.dtype,
            nbytes=t.nbytes,
            key=name,
        )
        for i, (name, t) in enumerate(pairs)
    )
    torch_summary: list[FileSummary] = []

    def by_torch() -> FileSummary:
        """The torch path's summary of the same open file, made once when needed."""
        if not torch_summary:
            torch_summary.append(_inspect_torch(file, where, key=key, flatten=flatten))
        return torch_summary[0]

    def dtype_of(info: TensorInfo) -> np.dtype[Any] | None:
        try:
            return numpy_dtype(info.dtype)
        except (TypeError, BackendError):
            return None

    def elements(info: TensorInfo) -> Callable[[int, int], np.ndarray[Any, Any]] | None:
        t = records[info.position]
        dtype = dtype_of(info)
        if dtype is None or not t.contiguous:
            return None
        start = t.storage.start + t.offset * dtype.itemsize

        def read(first: int, count: int) -> np.ndarray[Any, Any]:
            data = file.read_at(start + first * dtype.itemsize, count * dtype.itemsize)
            return np.frombuffer(data, dtype=dtype)

        return read

    def read(info: TensorInfo, n: int | None) -> np.ndarray[Any, Any]:
        numel = math.prod(info.shape)
        direct = elements(info)
        if direct is not None:
            return direct(0, numel).reshape(info.shape) if n is None else direct(0, min(n, numel))
        dtype = dtype_of(info)
        if dtype is None:
            return by_torch().read(info, n)
        whole = strided_reader(records[info.position], file.read_at, dtype)()
        return whole if n is None else np.array(whole.reshape(-1)[:n], copy=True)

    @contextlib.contextmanager
    def blocks(info: TensorInfo) -> Iterator[Block]:
        direct = elements(info)
        if direct is not None:
            yield lambda index: read_block(info.shape, index, direct)
            return
        dtype = dtype_of(info)
        if dtype is None:
            with by_torch().blocks(info) as block:
                yield block
            return
        whole = strided_reader(records[info.position], file.read_at, dtype)()
        yield lambda index: np.array(whole[index], copy=True)

    return FileSummary(
        path=where,
        format="torch",
        entries=entries,
        next_id=None,
        dtype=None,
        layout=None,
        _read=read,
        _blocks=blocks,
    )


def _inspect_torch(file: Descriptor, where: str, *, key: str | None, flatten: bool) -> FileSummary:
    """:func:`inspect_pt` through ``torch.load(mmap=True)`` of the open ``file``."""
    import torch

    path = where
    try:
        obj, records = read_object(path, mmap=True, fd=file.fd)
        pairs = _state_dict(obj, where, key=key, flatten=flatten)[::-1]
    except BaseException:
        file.close()
        raise
    to_numpy = backend_named("torch").to_numpy
    tensors = [t for _, t in pairs]
    offsets = _file_offsets(tensors, records)
    entries = tuple(
        TensorInfo(
            name=name,
            registry="variable",
            position=i,
            shadowed=False,
            shape=tuple(t.shape),
            dtype=str(t.dtype).removeprefix("torch."),
            nbytes=t.numel() * t.element_size(),
            key=name,
        )
        for i, (name, t) in enumerate(pairs)
    )

    def elements(info: TensorInfo) -> Callable[[int, int], np.ndarray[Any, Any]] | None:
        """Reads of flat elements from the file itself (``pread``: the mapping is not
        touched, so it adds nothing to the resident memory), where possible."""
        t = tensors[info.position]
        at = offsets.get(info.position)
        try:
            dtype = numpy_dtype(info.dtype)
        except (TypeError, BackendError):
            return None
        if at is None or not t.is_contiguous():
            return None
        start = at + t.storage_offset() * t.element_size()

        def read(first: int, count: int) -> np.ndarray[Any, Any]:
            data = file.read_at(start + first * dtype.itemsize, count * dtype.itemsize)
            return np.frombuffer(data, dtype=dtype)

        return read

    def dense(info: TensorInfo) -> Any:
        t = tensors[info.position]
        return t.to_dense() if t.layout != torch.strided else t

    def read(info: TensorInfo, n: int | None) -> np.ndarray[Any, Any]:
        numel = math.prod(info.shape)
        direct = elements(info)
        if direct is not None:
            return direct(0, numel).reshape(info.shape) if n is None else direct(0, min(n, numel))
        t = dense(info)
        part = t if n is None else t.reshape(-1)[:n]
        return np.array(to_numpy(part), copy=True)

    @contextlib.contextmanager
    def blocks(info: TensorInfo) -> Iterator[Block]:
        direct = elements(info)
        if direct is not None:
            yield lambda index: read_block(info.shape, index, direct)
            return
        t = dense(info)
        yield lambda index: np.array(to_numpy(t[index]), copy=True)

    return FileSummary(
        path=where,
        format="torch",
        entries=entries,
        next_id=None,
        dtype=None,
        layout=None,
        _read=read,
        _blocks=blocks,
    )


def _first_line(text: str) -> str:
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file")
    lines = [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not line.strip().startswith(boilerplate)
    ]
    line = lines[0] if lines else text
    line = line.split(" This is an internal miniz error", 1)[0]  # then advice, cut at 200
    return line[:200]


def save_pt(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write the variables (most recent entry of each name) as a torch state_dict.

    Conjugate and negative-bit views are resolved, and tensors that view one storage
    as different dtypes are saved as copies, so what is written always loads back;
    dtypes torch cannot hold (strings, dates) are refused first. Cost: O(total bytes).
    """
    require_save_arguments(ctx, path, "save_pt")
    check_savable(
        ctx,
        path,
        format="a PyTorch file",
        allowed=SAVABLE_DTYPES,
        unicode=False,
        everything=False,
    )
    import torch

    names = [name for name, _ in ctx.latest_variables()]
    tensors = [_as_torch(at, "variable", name) for name, at in ctx.latest_variables()]
    tensors = [t.resolve_conj().resolve_neg() if t.layout == torch.strided else t for t in tensors]
    dtypes: dict[int, set[Any]] = {}
    for t in tensors:
        if t.layout == torch.strided and t.device.type != "meta":
            dtypes.setdefault(t.untyped_storage().data_ptr(), set()).add(t.dtype)
    state = {
        name: t.clone()
        if t.layout == torch.strided
        and t.device.type != "meta"
        and len(dtypes[t.untyped_storage().data_ptr()]) > 1
        else t
        for name, t in zip(names, tensors, strict=True)
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a Python file, so a failed write is an OSError


def _as_torch(at: AnyTensor[Any], kind: str, name: str) -> Any:
    """The tensor of ``at`` as a torch tensor: itself (detached), or a copy of another
    library's array made by the torch backend."""
    import torch

    x = at.t
    if isinstance(x, torch.Tensor):
        return x.detach()
    a = np.array(at.library.to_numpy(x), copy=True)
    return backend_named("torch").from_numpy(a, f"{kind} `{name}`")


def from_module(module: Any, *, backend: str = "torch") -> RuntimeContext[Any]:
    """A context with one variable per entry of ``module.state_dict()`` (parameters and
    buffers by their state_dict names), in that order. The tensors are copied, so
    training the module later never changes the context.

    The module's buffers are marked as buffers (:meth:`RuntimeContext.buffers`: no
    gradient, no optimizer update). Tied weights stay tied: entries that are one tensor
    in the module (GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``) become one
    variable under the first name, the others its aliases
    (:meth:`RuntimeContext.aliases`). Cost: O(total bytes).

    An FSDP2 module (after ``fully_shard``) gives its sharded parameters as DTensors:
    with the default ``backend="torch"`` they stay DTensors (each rank copies its local
    shards; no collective), its buffers stay plain tensors. ``functional_call`` on the
    FSDP module itself would run on FSDP's own parameters, not the context's: call it
    on an unsharded module of the same class (built under ``torch.device("meta")``)
    with the DTensors redistributed to ``Replicate()`` (docs/distributed.md, "FSDP2")."""
    if not callable(getattr(module, "state_dict", None)):
        raise TypeError(f"from_module expects a torch nn.Module, got {type(module).__name__}")
    check_backend(backend)
    pairs: list[tuple[str, Any]] = []
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for n, t in module.state_dict(keep_vars=True).items():
        canonical = first.get(id(t))
        if canonical is not None:
            aliases[n] = canonical
            continue
        first[id(t)] = n
        pairs.append((n, t.detach().clone()))
    ctx = build_context(
        pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path="<module>"
    )
    named = getattr(module, "named_parameters", None)
    if not callable(named):
        return ctx
    params = {n for n, _ in named(remove_duplicate=False)}
    buffers = [n for n, _ in pairs if n not in params]
    if not buffers and not aliases:
        return ctx
    return with_roles(ctx, buffers=buffers, aliases=aliases)


@overload
def load_into(
    ctx: RuntimeContext[Any], module: Any, *, dtypes: bool = ..., strict: Literal[True] = ...
) -> Any: ...


@overload
def load_into(
    ctx: RuntimeContext[Any], module: Any, *, dtypes: bool = ..., strict: Literal[False]
) -> ExpectReport: ...


def load_into(
    ctx: RuntimeContext[Any], module: Any, *, dtypes: bool = True, strict: bool = True
) -> Any:
    """Copy the context's variables into ``module`` (parameters and buffers).

    All or nothing: every name, shape (and, by default, dtype) is checked first, then
    every value is made a dense tensor of the module's dtype on its device (a meta
    tensor on either side, or a value that cannot be converted, is refused here); only
    when all of them are ready is anything copied. When anything is wrong an
    :class:`~torchlean.errors.ExpectationError` (names, shapes, dtypes) or
    :class:`~torchlean.errors.BackendError` (data) lists every problem and the module
    is left unchanged. Returns ``module``. Tied weights: an alias of the context
    (:meth:`RuntimeContext.aliases`) or a name tied in the module to a name the context
    has is not missing (a GPT-2 file that omits ``lm_head.weight`` loads); a context
    that holds two names the module ties as two variables with different values is
    refused (an ``ExpectationError`` naming them: loading both would keep one silently).

    ``strict=False`` loads what matches and returns an
    :class:`~torchlean.io.ExpectReport` of the ``missing`` and ``unexpected`` names
    instead of raising for them (never silently: the report is the result); a shape or
    dtype mismatch still raises. Cost: O(total bytes).
    """
    require_context(ctx, "load_into")
    if not callable(getattr(module, "load_state_dict", None)):
        raise TypeError(f"load_into expects a torch nn.Module, got {type(module).__name__}")
    require_bool(strict, "load_into", "strict")
    import torch

    state = {n: at for n, at in ctx.latest_variables()}
    for alias, canonical in ctx.aliases().items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
    for alias, canonical in tied_names(module).items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
        elif canonical not in state and alias in state:
            state[canonical] = state[alias]
    have = {n: (at.dims, at.dtype) for n, at in state.items()}
    report = compare(have, module, dtypes=dtypes, source="the context's variables")
    if strict or report.mismatched:
        report.raise_if_bad()
    if not strict:
        for name in report.unexpected:
            del state[name]
    targets = module.state_dict()
    tensors: dict[str, Any] = {}
    problems: list[str] = []
    for name, at in state.items():
        shown = printable(name)
        target = targets[name]
        if target.device.type == "meta":
            problems.append(
                f"the module's `{shown}` is a meta tensor (no memory to copy into; call"
                " module.to_empty(device=...) first)"
            )
            continue
        x = at.t
        if isinstance(x, torch.Tensor) and x.device.type == "meta":
            problems.append(f"variable `{shown}` is a meta tensor (it has no data)")
            continue
        try:
            t = _as_torch(at, "variable", name)
            if t.layout != torch.strided:
                t = t.to_dense()
            t = t.resolve_conj().resolve_neg()
            tensors[name] = t.to(device=target.device, dtype=target.dtype)
        except (RuntimeError, TypeError, ValueError, BackendError) as e:
            problems.append(
                f"variable `{shown}` cannot become {str(target.dtype).removeprefix('torch.')}"
                f" on {target.device}: {_first_line(str(e))}"
            )
    if problems:
        raise BackendError(
            "load_into: nothing was copied, the module is unchanged: " + "; ".join(problems)
        )
    _refuse_split_ties(ctx, module, tensors)
    with torch.no_grad():
        module.load_state_dict(tensors, strict=strict)
    return module if strict else report


def _refuse_split_ties(ctx: RuntimeContext[Any], module: Any, tensors: dict[str, Any]) -> None:
    """Raise :class:`ExpectationError` when the context holds two names the module ties
    (one tensor) as two variables whose values differ: loading both would keep whichever
    came last, silently. Equal values (a file that stores both keys) load. Compared as
    the module's dtype, NaN equal to NaN. Cost: O(bytes of the tied variables)."""
    import torch

    own = {name for name, _ in ctx.latest_variables()}
    groups: dict[str, list[str]] = {}
    for alias, canonical in tied_names(module).items():
        groups.setdefault(canonical, [canonical]).append(alias)
    differ: list[str] = []
    for names in groups.values():
        held = [n for n in names if n in own and n in tensors]
        for other in held[1:]:
            a, b = tensors[held[0]], tensors[other]
            same = a.shape == b.shape and (
                torch.equal(a, b)
                or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
            )
            if not same:
                differ.append(f"`{printable(held[0])}` and `{printable(other)}`")
    if differ:
        raise ExpectationError(
            "load_into: the module ties "
            + ", ".join(differ)
            + " (one tensor) but the context holds them as variables with different values;"
            " loading both would keep one of them silently. Keep the one you mean (build the"
            " context without the other, or ctx.tie(alias, to=name)); nothing was copied,"
            " the module is unchanged"
        )


#: The PyTorch format: a state_dict of the variables (the latest entry of each name).
#: The usual suffixes of torch.save files: ``.bin`` (transformers), ``.ckpt`` (Lightning),
#: ``.pth.tar`` (timm); ``inspect`` maps the tensors instead of reading them; ``load`` and
#: ``inspect`` take ``key=`` and ``flatten=``.
FORMAT: Final = Format(
    name="torch",
    suffixes=(".pt", ".pth", ".bin", ".ckpt", ".pth.tar"),
    save=save_pt,
    load=load_pt,
    inspect=inspect_pt,
    nested=True,
)

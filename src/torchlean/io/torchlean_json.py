"""TorchLean's JSON weight format, as read by Lean's ``NN.Runtime.PyTorch.Import.Core``.

A document is ``{"params": {name: nested lists of numbers}, "meta": {...}}``. The
tensors are what Lean's importer sees (``unwrapParams``): ``params`` when it is an
object, with every other top-level field merged over it (a field replaces the ``params``
entry of its name), else the whole object. The ``meta`` object describes tensors and
is none itself, in either of its two layouts: a format descriptor
(``{"format": "TorchLean.MLP", "dtype": "float32"}``) or per tensor
(``{name: {"shape": [...], "dtype": "torch.float32"}}``, written by TorchLean's
state_dict adapter and by :func:`save_json`). When ``meta`` gives a shape or dtype,
the data must agree with it. Where torchlean is stricter than Lean (a repeated key, an
entry that is not a tensor, ``meta`` for a name that is no tensor) the error says so,
and ``load_json(path, lean=True)`` reads the file exactly as Lean does.

Numbers: Lean reads each number as a 64-bit ``Float``, truncating the decimal to 64
bits before rounding to 53, which misreads Python's shortest float64 decimal about once
in 8,000. So float64 values are written with 17 significant digits (always read back
exactly), and values of narrower floats (float32, float16, bfloat16, fp8) as the
shortest float64 decimal (read exactly: measured). NaN and infinity are not JSON and
are refused. Loading reads numbers as float64 and rounds them to the tensor's dtype
(``meta``'s, else ``dtype=``, float32 by default); integers are read exactly.

Big files are written and read a tensor at a time (:mod:`._json_stream`).

Reading map:
- :func:`save_json` -- write the variables (most recent entry of each name).
- :func:`load_json` -- read any of the three layouts.
- :func:`parse_document` -- a parsed document to ``(name, array)`` pairs and ``meta``.
- :func:`read_checkpoint` -- a ``.pt`` checkpoint read as TorchLean's state_dict adapter
  reads it (``convert model.pt model.json``).
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import queue
import re
import reprlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import numpy as np

from torchlean._validate import require_bool, require_path, require_save_arguments
from torchlean.errors import FormatError
from torchlean.io import _atomic
from torchlean.io import _json_stream as _stream
from torchlean.io._atomic import atomic_path
from torchlean.io._common import (
    build_context,
    check_backend,
    numpy_dtype,
    to_numpy,
)
from torchlean.io._format import Format
from torchlean.io._json_fast import MAX_DIMS, Flat, fast_document
from torchlean.io._json_stream import tensor_pieces
from torchlean.runtime.context import RuntimeContext
from torchlean.runtime.dtypes import dtype_name, is_extended_float

__all__ = ["FORMAT", "load_json", "parse_document", "read_checkpoint", "save_json"]

DEFAULT_DTYPE: Final = "float32"
_LEAF_TYPES: Final = frozenset({int, float})
_DTYPE_NAME: Final = re.compile(r"(torch\.)?[A-Za-z][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------- saving

#: Float dtypes whose values Lean's reader gets exactly from the shortest float64
#: decimal (orjson's): at most 24 significant bits (measured: every float16 and
#: bfloat16 value, and 20 million random float32 ones; tests/io/test_json_lean.py).
#: float64 values are written with 17 significant digits (``%.17g``), which Lean's
#: reader (truncating to 64 bits before rounding to 53) always reads back exactly,
#: where the shortest decimal is misread about once in 8,000.
_SHORTEST_EXACT_BITS: Final = 24


def _writer(name: str, a: np.ndarray[Any, Any], where: str) -> Any:
    """A function ``(block, offset) -> bytes`` writing blocks of ``a`` as JSON lists of
    numbers Lean reads as exactly the tensor's values; a FormatError for a dtype JSON
    cannot hold, or (when the block is written) for a non-finite value."""
    import orjson

    kind = a.dtype.kind
    numpy_option = orjson.OPT_SERIALIZE_NUMPY
    if kind == "b":
        return lambda block, offset: orjson.dumps(block.astype(np.uint8), option=numpy_option)
    if kind in "iu":
        return lambda block, offset: orjson.dumps(
            block if block.dtype.itemsize == 8 else block.astype(np.int64), option=numpy_option
        )
    if not (kind == "f" or kind == "V" or is_extended_float(a.dtype.name)):
        raise FormatError(
            f"{where}: tensor `{name}` has dtype {a.dtype.name}, which TorchLean's JSON cannot hold"
        )
    exact17 = kind == "f" and np.finfo(a.dtype).nmant + 1 > _SHORTEST_EXACT_BITS

    scratch = [np.empty(0, np.float64)]  # reused: no fresh pages for every piece

    def text(block: np.ndarray[Any, Any], offset: int) -> bytes:
        if scratch[0].size < block.size:
            scratch[0] = np.empty(block.size, np.float64)
        wide = scratch[0][: block.size].reshape(block.shape)
        with np.errstate(invalid="ignore"):  # a signalling NaN warns when cast
            np.copyto(wide, block, casting="unsafe")
        finite = np.isfinite(wide)
        if not finite.all():
            i = int(np.flatnonzero(~finite.reshape(-1))[0])
            at = offset + i
            index = np.unravel_index(at, a.shape) if a.ndim else ()
            raise FormatError(
                f"{where}: tensor `{name}` has {wide.reshape(-1)[i]} at flat index {at}"
                f" (index {tuple(int(x) for x in index)}); TorchLean's JSON holds finite"
                " numbers only, so nothing was written"
            )
        if not exact17:
            return orjson.dumps(wide, option=numpy_option)
        items = list(map("%.17g".__mod__, wide.reshape(-1).tolist()))
        for d in reversed(wide.shape[1:]):
            items = ["[" + ",".join(items[i : i + d]) + "]" for i in range(0, len(items), d)]
        return ("[" + ",".join(items) + "]").encode()

    return text


def _tensor_text(name: str, a: np.ndarray[Any, Any], where: str) -> Iterator[bytes | memoryview]:
    text = _writer(name, a, where)
    if a.ndim == 0:
        yield text(a.reshape(1), 0)[1:-1]
    elif a.size == 0:
        yield json.dumps(np.empty(a.shape, np.uint8).tolist(), separators=(",", ":")).encode()
    else:
        yield from tensor_pieces(a, text)


def _name_text(name: str, where: str) -> bytes:
    import orjson

    try:
        return orjson.dumps(name)  # raw UTF-8: Lean reads a \u surrogate pair as two NULs
    except TypeError:
        raise FormatError(
            f"{where}: variable name {name!r} holds a lone surrogate, which UTF-8 (and so"
            " TorchLean's JSON) cannot encode; nothing was written"
        ) from None


def _meta_optional(items: list[tuple[str, np.ndarray[Any, Any]]]) -> bool:
    """Whether loading without ``meta`` gives these arrays back: float32, with shapes
    their nested lists spell."""
    return all(a.dtype == np.float32 and (a.size > 0 or a.ndim == 1) for _, a in items)


def save_json(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write ``params`` and per-tensor ``meta`` for the variables, atomically, a tensor
    at a time.

    The most recent entry of each name is written, in first-registered order; gradients,
    shadowed entries and ``next_id`` are not part of this format. Every number reads back
    in Lean as exactly the tensor's value (float64 with 17 digits, narrower floats as the
    shortest float64 decimal, integers exactly); names are raw UTF-8. A variable named
    ``meta`` would be replaced in Lean by the top-level ``meta`` object (Lean's importer
    merges every top-level field over ``params``): such a context is written without
    ``meta`` when every variable is float32 with a shape its nested lists spell, and
    refused otherwise. Memory: one piece of one tensor's text at a time. Cost: O(total
    elements).
    """
    require_save_arguments(ctx, path, "save_json")
    import orjson

    where = os.fspath(path)
    items = [(name, to_numpy(at)) for name, at in ctx.latest_variables()]
    names = [_name_text(name, where) for name, _ in items]
    with_meta = True
    if any(name == "meta" for name, _ in items):
        if not _meta_optional(items):
            raise FormatError(
                f"{where}: a variable is named `meta`, and Lean's importer merges every"
                " top-level field over `params`, so the `meta` object saved beside"
                " `params` would replace it in Lean; without `meta` only float32"
                " variables whose shape their nested lists spell load back as they are"
                " (rename the variable, or convert the context to float32); nothing was"
                " written"
            )
        with_meta = False
    for name, a in items:
        _writer(name, a, where)  # refuse a dtype before anything is written
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _Writer(f.fileno())
        try:
            out.write(b'{"params":{')
            for i, ((name, a), key) in enumerate(zip(items, names, strict=True)):
                out.write(b"," + key + b":" if i else key + b":")
                for piece in _tensor_text(name, a, where):
                    out.write(piece)
            out.write(b"}")
            if with_meta:
                meta = {
                    name: {"shape": list(a.shape), "dtype": f"torch.{a.dtype.name}"}
                    for name, a in items
                }
                out.write(b',"meta":' + orjson.dumps(meta))
            out.write(b"}")
        except BaseException:
            out.abandon()
            raise
        out.close()


class _Writer:
    """Pieces of text gathered up to :data:`BATCH` bytes, then written by a thread of
    its own: ``os.write`` lets go of the GIL, so the disk write of one batch overlaps
    formatting the next. At most two batches wait (memory: three batches). An error of
    the write is raised by the next :meth:`write`, or by :meth:`close`."""

    BATCH: Final = 4 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.error: BaseException | None = None
        self.batches: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name="torchlean-json-writer")
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = self.batches.get()
            if batch is None:
                return
            if self.error is None:
                try:
                    _write_parts(self.fd, batch)
                except BaseException as e:  # raised in the caller's thread
                    self.error = e

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= self.BATCH:
            self._send()

    def _send(self) -> None:
        if self.error is not None:
            raise self.error
        if self.parts:
            self.batches.put(self.parts)
        self.parts, self.size = [], 0

    def close(self) -> None:
        """Write what is left, wait for the thread, and raise its error, if any."""
        try:
            self._send()
        finally:
            self.abandon()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop the thread once it has written (or, after an error, dropped) what it
        was given."""
        self.batches.put(None)
        self.thread.join()


def _write_parts(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` in order through the atomic writer's ``_write_all`` (which retries
    short writes): a big part as it is, runs of small ones joined."""
    small: list[bytes | memoryview] = []
    for part in parts:
        if len(part) < 1 << 16:
            small.append(part)
            continue
        if small:
            _atomic._write_all(fd, b"".join(small))
            small = []
        _atomic._write_all(fd, part)
    if small:
        _atomic._write_all(fd, b"".join(small))


# ---------------------------------------------------------------------------- loading


class _Duplicate(Exception):
    pass


class _NeedExact(Exception):
    """The fast reader cannot give this document's values exactly; read it slowly."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _tensor_values(doc: Any) -> Any:
    """The object whose values are the tensors (``params`` or the bare document)."""
    if type(doc) is dict:
        params = doc.get("params")
        return params if type(params) is dict else doc
    return None


def _census(doc: Any) -> tuple[int, int, int]:
    """Keys, strings and literals (true/false/null) outside the tensors' nested lists."""
    keys = strings = literals = 0
    tensors = _tensor_values(doc)
    stack = [doc]
    while stack:
        x = stack.pop()
        if type(x) is dict:
            keys += len(x)
            for v in x.values():
                if type(v) is list and x is tensors:
                    continue  # a tensor: not walked (its leaves are checked by the census)
                stack.append(v)
        elif type(x) is list:
            stack.extend(x)
        elif type(x) is str:
            strings += 1
        elif x is None or type(x) is bool:
            literals += 1
    return keys, strings, literals


_MAX_CHECKED_DEPTH: Final = 200


def _depth(doc: Any) -> int:
    """How deeply lists and objects nest in ``doc`` (without recursion)."""
    deepest = 0
    stack = [(doc, 1)]
    while stack:
        x, d = stack.pop()
        if type(x) is dict:
            x = list(x.values())
        if type(x) is list:
            deepest = max(deepest, d)
            stack.extend((y, d + 1) for y in x if type(y) in (list, dict))
    return deepest


def _parse(data: bytes, where: str, place: Callable[[int], str] | None = None) -> tuple[Any, bool]:
    """Parse JSON text; duplicate keys, NaN and bad syntax raise FormatError.

    Also returns whether the tensors' nested lists can hold numbers only: true when the
    file has no more quotes and ``true``/``false``/``null`` than the rest of the document
    accounts for (then no string or literal hides among the numbers). ``place(pos)``
    tells a syntax error's character position in ``data`` as the file's ``line L
    column C (char N)`` (``data`` is the streaming reader's skeleton of the file).
    """
    import orjson

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if not data.strip():
            raise FormatError(f"{where}: empty file, not JSON") from None
        found = str(e) if place is None else f"{e.msg}: {place(e.pos)}"
        if "unexpected end of data" in found:
            raise FormatError(f"{where}: truncated JSON ({found})") from None
        raise FormatError(f"{where}: not valid JSON ({found})") from None
    keys, strings, literals = _census(doc)
    # Each ':' outside a string belongs to one key; when they are as many as the keys
    # orjson kept, no key was repeated (a ':' inside a string only costs a re-check).
    if data.count(b":") != keys:
        # json's parser recurses: check the depth first, so that the outcome never
        # depends on how deep the caller's own stack is
        depth = _depth(doc)
        if depth > _MAX_CHECKED_DEPTH:
            raise FormatError(
                f"{where}: JSON nested {depth} levels deep, too deep to check for duplicate"
                f" keys (a TorchLean document nests far less; at most {_MAX_CHECKED_DEPTH})"
            )
        try:
            json.loads(data, object_pairs_hook=_no_duplicates)
        except _Duplicate as e:
            raise FormatError(
                f"{where}: duplicate key `{e.args[0]}`; "
                + _LEAN_HINT.format("it keeps the last value")
            ) from None
    numbers_only = data.count(b'"') == 2 * (keys + strings) and (
        data.count(b"true") + data.count(b"false") + data.count(b"null") == literals
    )
    return doc, numbers_only


class _Repr(reprlib.Repr):
    """:mod:`reprlib`'s short repr, with a big list the streaming reader has not read
    (:class:`~._json_stream.Streamed`) shown by its description."""

    def repr1(self, x: Any, level: int) -> str:
        if type(x) is _stream.Streamed:
            return x.description
        return super().repr1(x, level)


_REPR: Final = _Repr()


def _show(x: Any) -> str:
    """A JSON value, shortly (never recursing into a deeply nested one)."""
    if x is None or type(x) in (str, bool, int, float):
        return json.dumps(x)[:40]
    return _REPR.repr(x)


def _index(path: tuple[int, ...]) -> str:
    if len(path) > 12:  # a deep index, shortened: its start, the depth, its end
        return f"{_index(path[:4])}...({len(path) - 8} more)...{_index(path[-4:])}"
    return "".join(f"[{i}]" for i in path)


def _explain(name: str, value: Any, where: str) -> FormatError:
    """The first problem in a nested list that is not a regular array of numbers, found
    in the order the streaming reader's bracket walk finds it
    (:func:`~._json_stream.locate_problem`), so both readers say the same: in document
    order, a list's length checked at its end against the first list of its depth
    ``[0]...[0]`` to end, a number's depth against the first number's, a list's depth
    against it too. Without recursion, with O(depth) memory."""
    if type(value) is not list:
        return FormatError(
            f"{where}: tensor `{name}` has a non-numeric leaf at the top: {_show(value)}"
        )
    first_len: dict[int, int] = {}
    leaf_depth: int | None = None

    def ragged(message: str) -> FormatError:
        return FormatError(f"{where}: tensor `{name}` has ragged nesting: {message}")

    # one (list, next index) pair per open list, never one per element
    stack: list[list[Any]] = [[value, 0]]
    at: list[int] = []  # the index of the element being looked at in each open list
    while stack:
        frame = stack[-1]
        items, i = frame
        if i == len(items):  # the list ends
            depth = len(stack) - 1
            want = first_len.setdefault(depth, len(items))
            here = tuple(at[:depth])
            if len(items) != want:
                return ragged(
                    f"{_index(here)} has {len(items)} elements but {_index((0,) * depth)}"
                    f" has {want}"
                )
            stack.pop()
            continue
        frame[1] = i + 1
        x = items[i]
        del at[len(stack) - 1 :]
        at.append(i)
        here = tuple(at)
        if type(x) is list:
            if leaf_depth is not None and len(stack) >= leaf_depth:
                return ragged(
                    f"a list at {_index(here)} where the first element's nesting has a number"
                )
            stack.append([x, 0])
        elif type(x) in _LEAF_TYPES:
            if leaf_depth is None:
                leaf_depth = len(stack)
            elif leaf_depth != len(stack):
                return ragged(
                    f"a number at {_index(here)} where the first element's nesting has a list"
                )
        else:
            return FormatError(
                f"{where}: tensor `{name}` has a non-numeric leaf at {_index(here)}: {_show(x)}"
            )
    return FormatError(f"{where}: tensor `{name}` is not a regular array of numbers")


def _to_array(
    name: str, value: Any, dtype: np.dtype[Any], where: str, numbers_only: bool = False
) -> np.ndarray[Any, Any]:
    """A nested list of numbers as an array of ``dtype``; FormatError names the spot.

    When the leaves are known to be numbers (``numbers_only``) and ``dtype`` is a float
    type, numpy converts the nested lists in one call (it refuses ragged nesting);
    otherwise a level at a time is checked with C-speed set/map passes.
    """
    if type(value) is Flat:
        if dtype.kind in "iub":
            raise _NeedExact  # integers must be read exactly, not through float64
        return _shaped(_narrow(value.values, dtype, name, where), value.dims, name, where)
    if numbers_only and dtype.kind == "f" and type(value) is list:
        try:
            wide = np.array(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            pass  # the checks below say exactly what is wrong
        else:
            return _narrow(wide.reshape(-1), dtype, name, where).reshape(wide.shape)
    if type(value) in _LEAF_TYPES:
        leaves: list[Any] = [value]
        dims: list[int] = []
    elif type(value) is list:
        level: list[Any] = [value]
        dims = []
        while True:
            types = set(map(type, level))
            if types == {list}:
                lens = set(map(len, level))
                if len(lens) != 1:
                    raise _explain(name, value, where)
                d = lens.pop()
                dims.append(d)
                level = list(itertools.chain.from_iterable(level))
                if d == 0:
                    break
            elif types <= _LEAF_TYPES:
                break
            else:
                raise _explain(name, value, where)
        leaves = level
    else:
        raise FormatError(
            f"{where}: tensor `{name}` must be a number or nested lists of numbers,"
            f" got {_show(value)}"
        )
    kind = dtype.kind
    try:
        if kind in "iub":
            if float in set(map(type, leaves)):
                i = next(k for k, x in enumerate(leaves) if type(x) is float)
                idx = np.unravel_index(i, dims) if dims else ()
                raise FormatError(
                    f"{where}: tensor `{name}` has dtype {dtype.name} but holds"
                    f" {leaves[i]!r} at {_index(tuple(int(j) for j in idx)) or 'the top'}"
                )
            out = _integers(leaves, dtype, name, where, 0)
        else:
            out = _narrow(np.array(leaves, dtype=np.float64), dtype, name, where)
    except OverflowError:
        raise FormatError(
            f"{where}: tensor `{name}` holds a number too large for {dtype.name}"
        ) from None
    return _shaped(out, tuple(dims), name, where)


_MAX_DIMS: Final = MAX_DIMS  # numpy's limit


def _shaped(
    flat: np.ndarray[Any, Any], dims: tuple[int, ...], name: str, where: str
) -> np.ndarray[Any, Any]:
    """``flat`` reshaped to ``dims``; more dimensions than numpy holds is a FormatError."""
    if len(dims) > _MAX_DIMS:
        raise FormatError(
            f"{where}: tensor `{name}` is nested {len(dims)} lists deep; a tensor has at"
            f" most {_MAX_DIMS} dimensions"
        )
    return flat.reshape(dims)


def _integers(
    leaves: list[Any], dtype: np.dtype[Any], name: str, where: str, offset: int
) -> np.ndarray[Any, Any]:
    """Python ints as an array of the integer (or bool) ``dtype``, exactly: a value out
    of range raises FormatError (uint64 up to 2**64 - 1 included)."""
    if dtype.kind == "b":
        flat = np.array(leaves, dtype=np.int64) if leaves else np.zeros(0, np.int64)
        if not np.isin(flat, (0, 1)).all():
            raise FormatError(
                f"{where}: tensor `{name}` has dtype bool but holds values other than 0 and 1"
            )
        return flat.astype(np.bool_)
    info = np.iinfo(dtype)
    if leaves and (min(leaves) < info.min or max(leaves) > info.max):
        raise FormatError(f"{where}: tensor `{name}` holds values out of range for {dtype.name}")
    return np.array(leaves, dtype=dtype)


def _narrow(
    wide: np.ndarray[Any, Any], dtype: np.dtype[Any], name: str, where: str, offset: int = 0
) -> np.ndarray[Any, Any]:
    """Flat float64 values rounded to ``dtype`` (as numpy rounds); a finite number that
    overflows ``dtype`` raises FormatError naming the tensor and the flat index (the
    block's ``offset`` added)."""
    if dtype == np.float64:
        return wide
    with np.errstate(over="ignore"):
        out = wide.astype(dtype)
    if dtype.kind != "c" and not np.isfinite(out).all():
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise FormatError(
            f"{where}: tensor `{name}` holds {float(wide[i])!r} at flat index {offset + i}, which"
            " is out of"
            f" range for {dtype.name}"
        )
    return out


def _meta_dtype(value: Any, where: str, what: str) -> np.dtype[Any]:
    if not isinstance(value, str):
        raise FormatError(f"{where}: {what} must be a dtype name, got {_show(value)}")
    dtype = None
    # a plain name only: numpy reads "f4,i4" as a structured dtype, and may raise a
    # SyntaxError from its parser for a malformed one
    if _DTYPE_NAME.fullmatch(value):
        with contextlib.suppress(TypeError, ValueError):
            dtype = numpy_dtype(dtype_name(value))
    if dtype is None or not (
        dtype.kind in "biufc" or dtype.type.__module__.startswith("ml_dtypes")
    ):
        raise FormatError(f"{where}: {what} `{value}` is not a known dtype")
    return dtype


def _meta_shape(value: Any, where: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        shown = _REPR.repr(value).replace("'", '"')
        raise FormatError(
            f"{where}: meta shape of `{name}` must be a list of non-negative ints, got {shown}"
        )
    if len(value) > _MAX_DIMS or math.prod(d for d in value if d) >= 2**62:
        raise FormatError(
            f"{where}: meta shape of `{name}` is not a possible tensor shape: at most"
            f" {_MAX_DIMS} dimensions, fewer than 2**62 elements"
            f" (got {_REPR.repr(value)})"
        )
    return tuple(value)


def _agrees(data: tuple[int, ...], meta: tuple[int, ...]) -> bool:
    if data == meta:
        return True
    # "[]" cannot spell a shape such as (0, 3): accept an empty prefix of the meta shape.
    return bool(data) and data[-1] == 0 and meta[: len(data)] == data and math.prod(meta) == 0


_LEAN_HINT: Final = (
    "TorchLean's importer would accept the file ({}); load(path, lean=True) reads it as Lean does"
)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a bool", str: "a string", dict: "an object"}.get(type(value), "a value")


def _entries(doc: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The entries Lean's importer sees (``unwrapParams``) and the ``meta`` object.

    ``params``, when it is an object, with every other top-level field inserted over it
    (a field replaces a ``params`` entry of the same name, as in Lean); otherwise the
    whole object. The ``meta`` object (at the top level) describes the tensors and is no
    tensor itself; a ``meta`` that is a list of numbers is a tensor, as in Lean.
    """
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: expected a JSON object of tensors, got a {type(doc).__name__}")
    params = doc.get("params")
    found = doc.get("meta")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    if isinstance(params, dict):
        entries = dict(params)
        for key, value in doc.items():
            if key == "params" or (key == "meta" and isinstance(value, dict)):
                continue
            entries[key] = value
        if "meta" in params and isinstance(doc.get("meta"), dict):
            raise FormatError(
                f"{where}: tensor `meta` in `params` is replaced in Lean by the top-level"
                " `meta` object (Lean's importer merges every top-level field over"
                " `params`), so Lean cannot read it; rename the tensor or drop the `meta`"
                " object"
            )
    else:
        entries = {k: v for k, v in doc.items() if not (k == "meta" and isinstance(v, dict))}
    return entries, meta


def parse_document(
    doc: Any,
    where: str,
    numbers_only: bool = False,
    *,
    dtype: np.dtype[Any] | None = None,
    region: Any = None,
) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], dict[str, Any]]:
    """The ``(name, array)`` pairs of a parsed document, in its order, and its ``meta``.

    The tensors are the entries Lean's importer sees: ``params`` with every other
    top-level field merged over it, or the bare object when ``params`` is not an object.
    Stricter than Lean, with an error saying so: a non-tensor entry, and ``meta`` for a
    name that is not a tensor. Tensors without a dtype in ``meta`` get ``dtype``
    (float32 by default). ``region(value, name, dtype)`` reads a placeholder of the
    streaming reader (``None`` for other values). Cost: O(size).
    """
    entries, meta = _entries(doc, where)
    descriptor_dtype = None
    per_tensor: dict[str, dict[str, Any]] = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            if key not in entries:
                raise FormatError(
                    f"{where}: meta describes `{key}`, which is not in params; "
                    + _LEAN_HINT.format("it ignores `meta`")
                )
            per_tensor[key] = value
        elif key == "dtype":
            descriptor_dtype = _meta_dtype(value, where, "meta dtype")
    default = descriptor_dtype or dtype or np.dtype(DEFAULT_DTYPE)
    out: list[tuple[str, np.ndarray[Any, Any]]] = []
    for name, value in entries.items():
        info = per_tensor.get(name, {})
        if "dtype" in info:
            want = _meta_dtype(info["dtype"], where, f"meta dtype of `{name}`")
        else:
            want = default
        array = region(value, name, want) if region is not None else None
        if array is None:
            if value is None or type(value) in (bool, str, dict):
                raise FormatError(
                    f"{where}: tensor `{name}` must be a number or nested lists of numbers,"
                    f" got {_show(value)}; " + _LEAN_HINT.format(f"its lookups skip {_kind(value)}")
                )
            array = _to_array(name, value, want, where, numbers_only)
        if "shape" in info:
            shape = _meta_shape(info["shape"], where, name)
            if not _agrees(array.shape, shape):
                raise FormatError(
                    f"{where}: tensor `{name}` has shape {array.shape} but meta says {shape}"
                )
            array = array.reshape(shape)
        out.append((name, array))
    return out, meta


def read_document(
    data: bytes, where: str, *, dtype: np.dtype[Any] | None = None
) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], dict[str, Any]]:
    """The ``(name, array)`` pairs and ``meta`` of a TorchLean JSON text.

    Tries the fast reader (:mod:`torchlean.io._json_fast`) first; anything it does not
    take is read with orjson and checked element by element. Cost: O(len(data)).
    """
    fast = fast_document(data)
    if fast is not None:
        try:
            return parse_document(fast, where, True, dtype=dtype)
        except _NeedExact:
            pass
    doc, numbers_only = _parse(data, where)
    return parse_document(doc, where, numbers_only, dtype=dtype)


#: Files up to this size are read whole (the fast reader); bigger ones a tensor at a time.
STREAM_ABOVE: Final = 4 << 20


def _read_streaming(
    f: Any, size: int, where: str, dtype: np.dtype[Any] | None
) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], dict[str, Any]] | None:
    """The pairs of a big file read a tensor at a time, or ``None`` when the file is not
    one the streaming reader takes (then it is read whole)."""
    try:
        skeleton, regions, anchors = _stream.scan(f, size, where)
    except _stream.Unclean as e:
        if e.region is None:
            return None
        raise _stream.locate_problem(f, e.region, e.region.key, where) from None

    scratch = _stream.Scratch()  # one for the file: its buffers serve every tensor

    def region(value: Any, name: str, want: np.dtype[Any]) -> np.ndarray[Any, Any] | None:
        if type(value) is not _stream.Streamed:
            return None
        # over a bytes object of its own: a context adopts it without a copy
        return _stream.read_region(f, value.region, want, name, where, _narrow, _integers, scratch)

    doc, numbers_only = _parse(
        skeleton, where, lambda pos: _stream.place(f, anchors, skeleton, pos)
    )
    doc = _streamed(doc, regions, f)
    if type(doc) is dict and regions:
        meta = doc.get("meta")
        if isinstance(meta, dict) and not _inline(meta):
            return None  # a big list inside meta: read the file whole
    return parse_document(doc, where, numbers_only, dtype=dtype, region=region)


def _streamed(doc: Any, regions: dict[str, _stream.Region], f: Any) -> Any:
    """``doc`` (a parsed skeleton) with each placeholder, a value in an object, replaced
    by the :class:`~._json_stream.Streamed` list it stands for: so that the placeholder
    is read as its tensor and shown in messages by a description, never as itself.
    Cost: O(skeleton) at most; it stops once every placeholder is found."""
    left = len(regions)
    stack = [doc]
    while stack and left:  # stops once every placeholder is found
        x = stack.pop()
        if type(x) is dict:
            for key, value in x.items():
                if type(value) is str:
                    found = regions.get(value)
                    if found is not None:
                        x[key] = _stream.Streamed(f, found)
                        left -= 1
                elif type(value) in (dict, list):
                    stack.append(value)
        elif type(x) is list:
            stack.extend(y for y in x if type(y) in (dict, list))
    return doc


def _inline(meta: dict[str, Any]) -> bool:
    """Replace each :class:`~._json_stream.Streamed` list inside ``meta`` by its value,
    read when it is a small list among long blanks (``"shape": [1100,`` and 70,000
    blanks before ``1024]``); ``False`` when one is a big list (or not JSON)."""
    stack: list[Any] = [meta]
    while stack:
        x = stack.pop()
        for key, value in x.items() if type(x) is dict else enumerate(x):
            if type(value) is _stream.Streamed:
                value = _stream.small_value(value.f, value.region)
                if value is None:
                    return False
                x[key] = value
            if type(value) in (dict, list):
                stack.append(value)
    return True


def _load_dtype(dtype: Any, default: str | None) -> np.dtype[Any] | None:
    if dtype is None:
        return None if default is None else np.dtype(default)
    if not isinstance(dtype, str):
        raise TypeError(f"load_json: dtype must be a dtype name (str) or None, got {dtype!r}")
    try:
        return _meta_dtype(dtype, "load_json", "dtype")
    except FormatError as e:
        raise ValueError(str(e)) from None


def load_json(
    path: str | os.PathLike[str],
    *,
    backend: str = "numpy",
    dtype: str | None = None,
    lean: bool = False,
) -> RuntimeContext[Any]:
    """Read a TorchLean JSON file as a context: one variable per tensor, in file order.

    The tensors are those Lean's importer sees: ``params`` with every other top-level
    field merged over it, or the whole object when ``params`` is not an object.
    ``dtype`` is the dtype of tensors that ``meta`` gives none (default float32: the
    files come from float32 models, whose values float32 holds exactly; ``"float64"``
    keeps every number as Lean's 64-bit ``Float`` reads it). By default three things
    Lean accepts are refused, each with an error saying so: a repeated key (Lean keeps
    the last), an entry that is not a tensor (Lean's lookups skip it), and ``meta`` for
    a name that is not a tensor (Lean ignores ``meta``). ``lean=True`` reads the file
    exactly as Lean does (:func:`torchlean.io.lean_json.lean_view`: Lean's number
    conversion, keys in Lean's order, ``meta`` ignored, float64 unless ``dtype`` says
    otherwise); an entry no tensor shape reads is still an error. Files above 4 MB are
    read a tensor at a time. Cost: O(file size); ``lean=True`` runs a pure-Python
    parser (about 1 MB/s).
    """
    check_backend(backend)
    require_bool(lean, "load_json", "lean")
    want = _load_dtype(dtype, None)
    where = os.fspath(path)
    if lean:
        pairs = _lean_pairs(path, where, want or np.dtype(np.float64))
    else:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            found = _read_streaming(f, size, where, want) if size > STREAM_ABOVE else None
            if found is None:
                f.seek(0)
                found = read_document(f.read(), where, dtype=want)
        pairs = found[0]
    return build_context(pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path)


def _lean_pairs(
    path: str | os.PathLike[str], where: str, dtype: np.dtype[Any]
) -> list[tuple[str, np.ndarray[Any, Any]]]:
    from torchlean.io.lean_json import lean_view

    view = lean_view(path)
    if view.problems:
        listed = "; ".join(f"{p.place}: {p.message}" for p in view.problems)
        raise FormatError(f"{where}: Lean reads no tensor from some entries: {listed}")
    return [
        (name, _narrow(t.values.reshape(-1), dtype, name, where).reshape(t.shape))
        if dtype.kind != "i" and dtype.kind != "u" and dtype.kind != "b"
        else (name, t.values.astype(dtype))
        for name, t in view.tensors.items()
    ]


# ---------------------------------------------------------------------------- .pt bridge

_WRAPPERS: Final = ("state_dict", "model_state_dict")


def read_checkpoint(
    path: str | os.PathLike[str], *, strip_module: bool = True, backend: str = "numpy"
) -> tuple[RuntimeContext[Any], tuple[str, ...]]:
    """A PyTorch checkpoint read as TorchLean's state_dict adapter reads it, for writing
    as TorchLean JSON; and what it left out.

    Mirrors the script ``Export.PyTorch.StateDict.generateJsonBridgeScript`` emits:
    ``torch.load(weights_only=True)``; a dict holding a dict under ``state_dict`` or
    ``model_state_dict`` is unwrapped to it; a leading ``module.`` is removed from every
    key (``strip_module``, as the script's default ``stripDataParallelPrefix``); entries
    that are not tensors are skipped. Returns the context (one variable per tensor, in
    the checkpoint's order) and one line per entry left out (a non-tensor, or a key that
    a later key replaced after stripping, as the script's dict does). Memory: the
    checkpoint is memory-mapped where torch allows. Cost: O(total bytes).
    """

    import torch

    require_path(path, "read_checkpoint")
    check_backend(backend)
    require_bool(strip_module, "read_checkpoint", "strip_module")
    from torchlean.io.torch import read_object

    where = os.fspath(path)
    obj, _ = read_object(path, mmap=True)
    left_out: list[str] = []
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                left_out.extend(f"`{k}` (beside `{key}`)" for k in obj if k != key)
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise FormatError(
            f"{where}: expected a state_dict or a checkpoint holding one under `state_dict`"
            f" or `model_state_dict`, got {type(obj).__name__}"
        )
    pairs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            left_out.append(f"`{key}` ({type(value).__name__}, not a tensor)")
            continue
        name = str(key)
        if strip_module and name.startswith("module."):
            name = name[len("module.") :]
        if name in pairs:
            left_out.append(f"`{origin[name]}` (replaced by `{key}`, also named `{name}`)")
            del pairs[name]
        pairs[name] = value.detach().cpu()
        origin[name] = str(key)
    ctx = build_context(
        list(pairs.items())[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path
    )
    return ctx, tuple(left_out)


#: TorchLean's JSON format: the variables (the latest entry of each name).
FORMAT: Final = Format(
    name="json",
    suffixes=(".json",),
    save=save_json,
    load=load_json,
    load_options=("dtype", "lean"),
)

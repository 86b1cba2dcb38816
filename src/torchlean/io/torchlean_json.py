"""TorchLean's JSON weight format, as read by Lean's ``NN.Runtime.PyTorch.Import.Core``.

A document is ``{"params": {name: nested lists of numbers}, "meta": {...}}``. Three
layouts are found in the wild, and all load:
- ``meta`` as a format descriptor: ``{"format": "TorchLean.MLP", "dtype": "float32"}``;
- ``meta`` per tensor: ``{name: {"shape": [...], "dtype": "torch.float32"}}`` (written
  by TorchLean's state_dict exporter, and by :func:`save_json`);
- a bare ``{name: nested lists}`` without the ``params`` wrapper.
When ``meta`` gives a shape or dtype, the data must agree with it.

Numbers: each float is written as the shortest decimal that reads back, as a float64,
exactly the float64 of the stored value (``tensor.tolist()`` + ``json.dump`` write the
same numbers), so Lean's ``Float`` sees the very number PyTorch had. NaN and infinity
are not JSON and are refused. Loading reads numbers as float64 (as Lean does) and rounds
them to the tensor's dtype (float32 unless ``meta`` says otherwise).

Reading map:
- :func:`save_json` -- write the variables (most recent entry of each name).
- :func:`load_json` -- read any of the three layouts.
- :func:`parse_document` -- a parsed document to ``(name, array)`` pairs and ``meta``.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import reprlib
from typing import Any, Final

import numpy as np

from torchlean._validate import require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._atomic import atomic_write_bytes
from torchlean.io._common import build_context, check_backend, numpy_dtype, to_numpy
from torchlean.io._format import Format
from torchlean.io._json_fast import Flat, fast_document
from torchlean.runtime.context import RuntimeContext
from torchlean.runtime.dtypes import dtype_name, is_extended_float

__all__ = ["FORMAT", "load_json", "parse_document", "save_json"]

DEFAULT_DTYPE: Final = "float32"
_LEAF_TYPES: Final = frozenset({int, float})
_DTYPE_NAME: Final = re.compile(r"(torch\.)?[A-Za-z][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------- saving


def _first_nonfinite(a: np.ndarray[Any, Any]) -> int:
    return int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])


def _json_ready(name: str, a: np.ndarray[Any, Any], path: str) -> Any:
    """``a`` as something orjson writes as nested lists of exact numbers."""
    kind = a.dtype.kind
    if kind == "b":
        a = a.astype(np.int64)
    elif kind in "iu":
        if kind == "u" and a.dtype.itemsize == 8:
            return a.tolist()
        a = a.astype(np.int64)
    elif kind == "f" or kind == "V" or is_extended_float(a.dtype.name):
        with np.errstate(invalid="ignore"):  # a signalling NaN warns when cast
            a = a.astype(np.float64)
        if not np.isfinite(a).all():
            i = _first_nonfinite(a)
            index = np.unravel_index(i, a.shape) if a.ndim else ()
            value = a.reshape(-1)[i]
            raise FormatError(
                f"{path}: tensor `{name}` has {value} at flat index {i}"
                f" (index {tuple(int(x) for x in index)}); TorchLean's JSON holds finite"
                " numbers only, so nothing was written"
            )
    else:
        raise FormatError(
            f"{path}: tensor `{name}` has dtype {a.dtype.name}, which TorchLean's JSON cannot hold"
        )
    if a.ndim == 0 or a.size == 0:
        return a.tolist()
    return np.ascontiguousarray(a)


def save_json(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write ``params`` and per-tensor ``meta`` for the variables, atomically.

    The most recent entry of each name is written, in first-registered order; gradients,
    shadowed entries and ``next_id`` are not part of this format. Cost: O(total elements).
    """
    require_save_arguments(ctx, path, "save_json")
    import orjson

    where = os.fspath(path)
    params: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for name, at in ctx.latest_variables():
        a = to_numpy(at)
        params[name] = _json_ready(name, a, where)
        meta[name] = {"shape": list(a.shape), "dtype": f"torch.{a.dtype.name}"}
    data = orjson.dumps(
        {"params": params, "meta": meta},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    atomic_write_bytes(path, data)


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


def _parse(data: bytes, where: str) -> tuple[Any, bool]:
    """Parse JSON text; duplicate keys, NaN and bad syntax raise FormatError.

    Also returns whether the tensors' nested lists can hold numbers only: true when the
    file has no more quotes and ``true``/``false``/``null`` than the rest of the document
    accounts for (then no string or literal hides among the numbers).
    """
    import orjson

    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if not data.strip():
            raise FormatError(f"{where}: empty file, not JSON") from None
        if "unexpected end of data" in str(e):
            raise FormatError(f"{where}: truncated JSON ({e})") from None
        raise FormatError(f"{where}: not valid JSON ({e})") from None
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
            raise FormatError(f"{where}: duplicate key `{e.args[0]}`") from None
    numbers_only = data.count(b'"') == 2 * (keys + strings) and (
        data.count(b"true") + data.count(b"false") + data.count(b"null") == literals
    )
    return doc, numbers_only


def _show(x: Any) -> str:
    """A JSON value, shortly (never recursing into a deeply nested one)."""
    if x is None or type(x) in (str, bool, int, float):
        return json.dumps(x)[:40]
    return reprlib.repr(x)


def _index(path: tuple[int, ...]) -> str:
    if len(path) > 12:  # a deep index, shortened: its start, the depth, its end
        return f"{_index(path[:4])}...({len(path) - 8} more)...{_index(path[-4:])}"
    return "".join(f"[{i}]" for i in path)


def _explain(name: str, value: Any, where: str) -> FormatError:
    """The first problem in a nested list that is not a regular array of numbers."""

    def shape_of(x: Any) -> tuple[int, ...]:
        dims = []
        while type(x) is list:
            dims.append(len(x))
            if not x:
                break
            x = x[0]
        return tuple(dims)

    expected = shape_of(value)

    def check(x: Any, at: tuple[int, ...]) -> FormatError | None:
        depth = len(at)
        if type(x) is list:
            if depth >= len(expected):
                return FormatError(
                    f"{where}: tensor `{name}` has ragged nesting: a list at {_index(at)}"
                    " where the first element's nesting has a number"
                )
            if len(x) != expected[depth]:
                return FormatError(
                    f"{where}: tensor `{name}` has ragged nesting: {_index(at)} has"
                    f" {len(x)} elements but {_index(at[:-1])}[0] has {expected[depth]}"
                )
            return None
        if type(x) not in _LEAF_TYPES:
            return FormatError(
                f"{where}: tensor `{name}` has a non-numeric leaf at {_index(at) or 'the top'}:"
                f" {_show(x)}"
            )
        if depth < len(expected):
            return FormatError(
                f"{where}: tensor `{name}` has ragged nesting: a number at {_index(at)}"
                " where the first element's nesting has a list"
            )
        return None

    def walk(top: Any) -> FormatError | None:
        # depth first, in document order, without recursion (the nesting may be deep)
        stack: list[tuple[Any, tuple[int, ...]]] = [(top, ())]
        while stack:
            x, at = stack.pop()
            e = check(x, at)
            if e is not None:
                return e
            if type(x) is list:
                stack.extend((x[i], (*at, i)) for i in range(len(x) - 1, -1, -1))
        return None

    found = walk(value)
    return found or FormatError(f"{where}: tensor `{name}` is not a regular array of numbers")


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
            flat = np.array(leaves, dtype=np.int64)
            if kind == "b":
                if not np.isin(flat, (0, 1)).all():
                    raise FormatError(
                        f"{where}: tensor `{name}` has dtype bool but holds values other"
                        " than 0 and 1"
                    )
                out = flat.astype(np.bool_)
            else:
                out = flat.astype(dtype)
                if not np.array_equal(out.astype(np.int64), flat):
                    raise FormatError(
                        f"{where}: tensor `{name}` holds values out of range for {dtype.name}"
                    )
        else:
            out = _narrow(np.array(leaves, dtype=np.float64), dtype, name, where)
    except OverflowError:
        raise FormatError(
            f"{where}: tensor `{name}` holds a number too large for {dtype.name}"
        ) from None
    return _shaped(out, tuple(dims), name, where)


_MAX_DIMS: Final = 64  # numpy's limit


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


def _narrow(
    wide: np.ndarray[Any, Any], dtype: np.dtype[Any], name: str, where: str
) -> np.ndarray[Any, Any]:
    """Flat float64 values rounded to ``dtype`` (as numpy rounds); a finite number that
    overflows ``dtype`` raises FormatError naming the tensor and the flat index."""
    if dtype == np.float64:
        return wide
    with np.errstate(over="ignore"):
        out = wide.astype(dtype)
    if dtype.kind != "c" and not np.isfinite(out).all():
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise FormatError(
            f"{where}: tensor `{name}` holds {float(wide[i])!r} at flat index {i}, which is out of"
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
        shown = reprlib.repr(value).replace("'", '"')
        raise FormatError(
            f"{where}: meta shape of `{name}` must be a list of non-negative ints, got {shown}"
        )
    if len(value) > _MAX_DIMS or math.prod(d for d in value if d) >= 2**62:
        raise FormatError(
            f"{where}: meta shape of `{name}` is not a possible tensor shape: at most"
            f" {_MAX_DIMS} dimensions, fewer than 2**62 elements"
            f" (got {reprlib.repr(value)})"
        )
    return tuple(value)


def _agrees(data: tuple[int, ...], meta: tuple[int, ...]) -> bool:
    if data == meta:
        return True
    # "[]" cannot spell a shape such as (0, 3): accept an empty prefix of the meta shape.
    return bool(data) and data[-1] == 0 and meta[: len(data)] == data and math.prod(meta) == 0


def parse_document(
    doc: Any, where: str, numbers_only: bool = False
) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], dict[str, Any]]:
    """The ``(name, array)`` pairs of a parsed document, in its order, and its ``meta``."""
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: expected a JSON object of tensors, got a {type(doc).__name__}")
    if "params" in doc:
        params = doc["params"]
        meta = doc.get("meta", {})
        extra = [k for k in doc if k not in ("params", "meta")]
        if not isinstance(params, dict):
            raise FormatError(f"{where}: `params` must be an object of tensors")
        if not isinstance(meta, dict):
            raise FormatError(f"{where}: `meta` must be an object")
        if extra:
            raise FormatError(f"{where}: unexpected top-level key `{extra[0]}` beside `params`")
    else:
        params, meta = doc, {}
    descriptor_dtype = None
    per_tensor: dict[str, dict[str, Any]] = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            if key not in params:
                raise FormatError(f"{where}: meta describes `{key}`, which is not in params")
            per_tensor[key] = value
        elif key == "dtype":
            descriptor_dtype = _meta_dtype(value, where, "meta dtype")
    out: list[tuple[str, np.ndarray[Any, Any]]] = []
    for name, value in params.items():
        info = per_tensor.get(name, {})
        if "dtype" in info:
            dtype = _meta_dtype(info["dtype"], where, f"meta dtype of `{name}`")
        else:
            dtype = descriptor_dtype or np.dtype(DEFAULT_DTYPE)
        array = _to_array(name, value, dtype, where, numbers_only)
        if "shape" in info:
            shape = _meta_shape(info["shape"], where, name)
            if not _agrees(array.shape, shape):
                raise FormatError(
                    f"{where}: tensor `{name}` has shape {array.shape} but meta says {shape}"
                )
            array = array.reshape(shape)
        out.append((name, array))
    return out, meta


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_document(
    data: bytes, where: str
) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], dict[str, Any]]:
    """The ``(name, array)`` pairs and ``meta`` of a TorchLean JSON text.

    Tries the fast reader (:mod:`torchlean.io._json_fast`) first; anything it does not
    take is read with orjson and checked element by element. Cost: O(len(data)).
    """
    fast = fast_document(data)
    if fast is not None:
        try:
            return parse_document(fast, where, True)
        except _NeedExact:
            pass
    doc, numbers_only = _parse(data, where)
    return parse_document(doc, where, numbers_only)


def load_json(path: str | os.PathLike[str], *, backend: str = "numpy") -> RuntimeContext[Any]:
    """Read a TorchLean JSON file as a context: one variable per tensor, in file order.

    Cost: O(file size).
    """
    check_backend(backend)
    pairs, _ = read_document(_read(path), os.fspath(path))
    return build_context(pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path)


#: TorchLean's JSON format: the variables (the latest entry of each name).
FORMAT: Final = Format(name="json", suffixes=(".json",), save=save_json, load=load_json)

"""A fast, validating reader for TorchLean JSON documents (simdjson underneath).

``json.load`` + ``np.array`` spend their time making one Python float per number. Here
simdjson parses the whole document (strict JSON, correctly rounded float64) and hands
each tensor's numbers over as one flat float64 buffer; the nesting is checked apart,
from the raw bytes: removing every number and blank from a tensor's text leaves its
"skeleton" (``[[,,],[,,]]``), which must equal the one its shape implies. Where
the lists are few beside the numbers (a matrix's rows), :func:`array_dims` checks the
parsed lists' lengths instead and counts the ``[`` in the text, with no copy of it.

Anything unusual -- escapes in strings, a repeated key, a ':' inside a string, a
tensor that is not a regular array of numbers, an integer dtype, a missing simdjson --
makes :func:`fast_document` return ``None``, and the caller reads the file the slow,
exact way, which also explains what is wrong. Both ways give the same arrays, bit for
bit (tested side by side).

Reading map:
- :func:`fast_document` -- the document with tensors as :class:`Flat`, or ``None``.
- :class:`Flat` -- a tensor's numbers (flat float64) and dims.
- :func:`skeleton_dims` -- the dims a skeleton spells, or ``None`` when irregular.
- :func:`array_dims` -- the dims of a parsed array, checked without its skeleton.
- :func:`count_bytes` -- how often some bytes occur in a text, fast.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

__all__ = ["MAX_DIMS", "Flat", "array_dims", "count_bytes", "fast_document", "skeleton_dims"]

_NUMBER_AND_BLANK: Final = b"0123456789.eE+- \t\n\r"
_BLANK_AND_CLOSERS: Final = b" \t\n\r,}"


class Flat:
    """A tensor's numbers parsed as float64 (flat, C order) and its dims."""

    __slots__ = ("dims", "values")

    def __init__(self, values: np.ndarray[Any, Any], dims: tuple[int, ...]) -> None:
        self.values = values
        self.dims = dims


def skeleton_dims(s: bytes, count: int) -> tuple[int, ...] | None:
    """The dims of the regular nested list of ``count`` numbers whose skeleton is ``s``,
    or ``None``.

    ``s`` is the text of a nested list with every number and blank removed, so an inner
    list of one number and an empty one both read ``[]``: ``count`` tells them apart
    (all inner lists hold one number exactly when the count is the product of the dims).
    Cost: O(len(s)).
    """
    if b"[]" in s:
        if count == 0:
            return (0,) if s == b"[]" else None
        dims = _dims(s.replace(b"[]", b"[,]"))
        if dims is None:
            return None
        dims = (*dims[:-1], 1)
        if _skeleton(dims) != s:  # e.g. [[,],[]]: some inner lists are longer
            return None
    else:
        dims = _dims(s)
    return dims if dims is not None and math.prod(dims) == count else None


def count_bytes(text: Any, needles: bytes) -> tuple[int, ...]:
    """How many times each byte of ``needles`` occurs in ``text`` (bytes-like), counted
    by numpy a megabyte at a time: several bytes in one pass over memory, about twice
    as fast as ``bytes.count`` per byte, and no copy bigger than a megabyte.
    Cost: O(len(text) * len(needles))."""
    view = np.frombuffer(text, np.uint8)
    counts = [0] * len(needles)
    step = 1 << 20
    for i in range(0, view.size, step):
        part = view[i : i + step]
        for k, value in enumerate(needles):
            counts[k] += int(np.count_nonzero(part == value))
    return tuple(counts)


#: The most dimensions a tensor has (numpy's limit).
MAX_DIMS: Final = 64

#: :func:`array_dims` decides when the text has at least this many bytes per list.
BYTES_PER_LIST: Final = 256


def array_dims(array: Any, count: int, opens: int, size: int | None) -> tuple[int, ...] | None:
    """The dims of ``array``, a simdjson array parsed from a text of ``size`` bytes
    holding ``opens`` bytes ``[``, whose numbers ``as_buffer`` flattened to ``count``
    values, when it is a regular array of numbers; ``None`` when it is not, or when its
    lists are more than one per :data:`BYTES_PER_LIST` bytes, too many to check this
    way (then :func:`skeleton_dims` decides). ``size=None``: the caller bounds them.

    The first elements give the dims; every list above the innermost level must hold
    that many lists, every innermost list that many elements. Those are all the lists a
    regular array has, so the text must hold exactly as many ``[``: one more would be a
    list among the numbers (the flattening already refused strings, literals and
    objects, so a ``[`` is always a list). Cost: O(lists) Python steps.
    """
    import simdjson

    dims: list[int] = []
    x = array
    while isinstance(x, simdjson.Array):
        n = len(x)
        if n == 0:
            return None  # "[]" spells no shape below it: the skeleton decides
        dims.append(n)
        x = x[0]
    if type(x) not in (int, float) or math.prod(dims) != count:
        return None
    lists = sum(math.prod(dims[:d]) for d in range(len(dims)))
    if (size is not None and lists * BYTES_PER_LIST > size) or opens != lists:
        return None
    level = [array]
    for d in dims[:-1]:
        below = []
        for x in level:
            if len(x) != d:
                return None
            for y in x:
                if not isinstance(y, simdjson.Array):
                    return None
                below.append(y)
        level = below
    last = dims[-1]
    if any(len(x) != last for x in level):
        return None
    return tuple(dims)


def _dims(s: bytes) -> tuple[int, ...] | None:
    k = len(s) - len(s.lstrip(b"["))
    if k == 0 or s.translate(None, b"[],"):
        return None
    dims: list[int] = []
    inner_len = 0
    for depth in range(k - 1, -1, -1):
        end = s.find(b"]" * (k - depth))
        if end < 0:
            return None
        # the first list at this depth is s[depth : end + k - depth]
        first_len = end + k - 2 * depth
        if depth == k - 1:
            d = first_len - 1
        else:
            d, rest = divmod(first_len - 1, inner_len + 1)
            if rest:
                return None
        dims.append(d)
        inner_len = first_len
    dims.reverse()
    return tuple(dims) if _skeleton(tuple(dims)) == s else None


def _skeleton(dims: tuple[int, ...]) -> bytes:
    """The skeleton of a regular nested list of shape ``dims`` (all dims >= 1)."""
    expected = b"[" + b"," * (dims[-1] - 1) + b"]"
    for d in reversed(dims[:-1]):
        expected = b"[" + b",".join([expected] * d) + b"]"
    return expected


def _regions(data: bytes) -> dict[str, list[tuple[int, int]]] | None:
    """For each key whose value starts with '[', the byte range of that value."""
    quotes = []
    i = data.find(b'"')
    while i >= 0:  # one pass at memchr speed; strings are few (keys, meta)
        quotes.append(i)
        i = data.find(b'"', i + 1)
    if len(quotes) % 2:
        return None
    out: dict[str, list[tuple[int, int]]] = {}
    n = len(data)
    for i in range(0, len(quotes), 2):
        start = quotes[i + 1] + 1
        stop = quotes[i + 2] if i + 2 < len(quotes) else n
        j = start
        while j < stop and data[j] in b" \t\n\r":
            j += 1
        if j >= stop or data[j] != 58:  # not a key
            continue
        j += 1
        while j < stop and data[j] in b" \t\n\r":
            j += 1
        if j >= stop or data[j] != 91:  # the value is not a list
            continue
        end = data.rfind(b"]", j, stop) + 1
        if end <= j or data[end:stop].translate(None, _BLANK_AND_CLOSERS):
            continue  # something else follows the list: leave it to the slow path
        name = data[quotes[i] + 1 : quotes[i + 1]].decode("utf-8")
        out.setdefault(name, []).append((j, end))
    return out


def _keys(x: Any) -> int:
    n = 0
    stack = [x]
    while stack:
        y = stack.pop()
        if type(y) is dict:
            n += len(y)
            stack.extend(y.values())
        elif type(y) is list:
            stack.extend(y)
    return n


def fast_document(data: bytes) -> dict[str, Any] | None:
    """``{"params": {name: Flat or scalar}, "meta": {...}}`` from ``data``, or ``None``
    when the document is not a plain, clean TorchLean document. Cost: O(len(data))."""
    try:
        import simdjson
    except ImportError:  # pragma: no cover - a dependency; the slow path still works
        return None
    if b"\\" in data:
        return None
    parser = simdjson.Parser()
    try:
        top = parser.parse(data)
    except (ValueError, RuntimeError, TypeError):
        return None
    if not isinstance(top, simdjson.Object):
        return None
    top_keys = list(top.keys())
    if len(set(top_keys)) != len(top_keys):
        return None
    colons = len(top_keys)
    meta: Any = {}
    if "params" in top_keys:
        if any(k not in ("params", "meta") for k in top_keys):
            return None
        params = top["params"]
        if not isinstance(params, simdjson.Object):
            return None
        if "meta" in top_keys:
            m = top["meta"]
            if not isinstance(m, simdjson.Object):
                return None  # a `meta` that is not an object is an entry (Lean merges it)
            meta = m.as_dict()
            colons += _keys(meta)
    else:
        params = top
    names = list(params.keys())
    if len(set(names)) != len(names):
        return None
    if params is not top:
        colons += len(names)
    regions = None
    values: dict[str, Any] = {}
    for name in names:
        value = params[name]
        if isinstance(value, simdjson.Array):
            if regions is None:
                regions = _regions(data)
                if regions is None:
                    return None
            spans = regions.get(name, [])
            if len(spans) != 1:
                return None
            start, end = spans[0]
            try:
                flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
            except (ValueError, TypeError, RuntimeError):
                return None
            (opens,) = count_bytes(memoryview(data)[start:end], b"[")
            dims = array_dims(value, flat.size, opens, end - start)
            if dims is None:
                text = data[start:end].translate(None, _NUMBER_AND_BLANK)
                dims = skeleton_dims(text, flat.size)
            if dims is None:
                return None
            values[name] = Flat(flat, dims)
        elif type(value) in (int, float):
            values[name] = value
        else:
            return None
    del top, params
    # One ':' per key: more means a repeated key was merged (or a ':' in a string).
    # Tensor texts hold numbers, blanks, brackets and commas only: skip them.
    spans = sorted(span for found in (regions or {}).values() for span in found)
    found_colons, at = 0, 0
    for start, end in spans:
        found_colons += data.count(b":", at, start)
        at = end
    if found_colons + data.count(b":", at) != colons:
        return None
    return {"params": values, "meta": meta} if "meta" in top_keys else {"params": values}

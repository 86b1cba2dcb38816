"""What TorchLean's Lean importer sees in a JSON weight file: a model written from the Lean.

Python's ``json`` module and Lean's ``Lean.Json.parse`` disagree on many files (``NaN``,
a byte-order mark, duplicate keys, ``\\ud83d\\ude00``), and TorchLean's importer adds its
own rules on top (``params`` unwrapping, exact nested-array shapes). This module follows
the Lean definitions literally, one Python function per Lean one, so that tests can ask
"what will Lean read from these bytes?" and the CLI can answer a user before they switch.

The Lean it follows (Lean 4 core and TorchLean commit c2be276):

- ``IO.FS.readFile``: the bytes must be valid UTF-8 (no byte-order mark is skipped).
- ``Lean.Json.Parser`` (``Lean/Data/Json/Parser.lean``): whitespace is space, tab, LF,
  CR; numbers ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?`` (no ``NaN``,
  ``Infinity``, ``+1``, ``.5``, ``1.``, ``01``); strings reject raw control characters
  below U+0020 and take the escapes ``\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX``, where a
  ``\\u`` escape of a UTF-16 surrogate (D800-DFFF) becomes U+0000 (``Char.ofNat``): a
  surrogate *pair* is two NUL characters, not the character it encodes; no trailing
  commas; objects are trees ordered by key, and a repeated key keeps its last value.
- ``Lean.JsonNumber``: ``mantissa * 10^-exponent`` with an integer mantissa, so ``-0``
  and ``-0.0`` are the integer 0 and read as +0.0 (but ``-1e-400`` underflows to -0.0).
- ``JsonNumber.toFloat`` and ``Float.ofScientific``: the decimal is scaled to at least 64
  significant bits, truncated to 64 bits, rounded to 53 (``UInt64.toFloat``), then scaled
  by a power of two (``Float.scaleB``). This is not always the correctly rounded double
  that Python's ``float()`` gives: a decimal just above a halfway point between two
  doubles can round down (see :func:`float_of_scientific`).
- ``Import.PyTorch`` (``NN/Runtime/PyTorch/Import/Core.lean``): ``loadWeights?`` takes a
  JSON object; ``unwrapParams`` uses ``params`` when it is an object and inserts every
  *other* top-level field over it (a top-level field replaces a ``params`` entry of the
  same name); otherwise the whole object is the state dict. ``parseTensor s`` reads a
  JSON number as a scalar and a JSON array of exactly ``n`` entries as ``.dim n s``.

Lean's importer never lists tensors: a model-family importer asks for a key with a shape
(``getTensor? o "fc1.weight" (.dim 3 (.dim 2 .scalar))``). :func:`lean_import` answers
the question a user has before that: for every key, the one shape it reads as (a number:
shape ``()``; a rectangular array: its dimensions), what cannot be read as a tensor and
where, and what Lean reads differently from a plain reading (notes). One ambiguity is
Lean's own: an empty array ``[]`` reads as ``.dim 0 s`` for *every* ``s``; the view
gives it shape ``(0,)`` (and ``[[], []]`` shape ``(2, 0)``).

Not modelled: numbers whose exponent makes Lean build an integer of billions of digits
(``1e999999999``); Lean would run out of time or memory, the model gives the value the
arithmetic would give (inf or 0) at once. Nesting depth: the model has no limit; Lean's
recursive parser is bounded by its stack.

Reading map:
- :func:`parse` -- ``Lean.Json.parse`` of bytes or text; :class:`JsonNumber`, :data:`Json`.
- :func:`float_of_scientific` -- ``Float.ofScientific``; :meth:`JsonNumber.to_float`.
- :func:`parse_tensor`, :func:`load_weights`, :func:`unwrap_params`, :func:`get_tensor` --
  the importer's functions, literally.
- :func:`lean_import`, :func:`lean_view` -- every tensor Lean will see, every problem with
  its place: :class:`LeanView`, :class:`LeanTensor`, :class:`LeanFinding`.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias, Union

import numpy as np

from torchlean._validate import require_path
from torchlean.errors import FormatError

__all__ = [
    "Json",
    "JsonNumber",
    "LeanFinding",
    "LeanTensor",
    "LeanView",
    "float_of_scientific",
    "get_tensor",
    "lean_import",
    "lean_view",
    "load_weights",
    "parse",
    "parse_tensor",
    "unwrap_params",
]

Json: TypeAlias = Union[bool, "JsonNumber", str, list["Json"], dict[str, "Json"], None]
"""A parsed JSON value: ``null``, a bool, a :class:`JsonNumber`, a string, an array, or
an object (a dict in Lean's key order: ``compare`` on strings, i.e. by code point)."""

_U64 = (1 << 64) - 1
# Beyond these many decimal digits of magnitude a value is 0 or inf whatever the digits
# (doubles span about 10^-324 .. 10^308); Lean computes the same result the long way.
_DIGITS_LIMIT = 400


@dataclass(frozen=True)
class JsonNumber:
    """Lean's ``JsonNumber``: the value ``mantissa * 10^-exponent``.

    The parser builds it exactly as Lean's does (``1.50`` is ``(150, 2)``, ``1.5e3`` is
    ``(1500, 0)``, ``-0.0`` is ``(0, 1)``). ``exponent`` is negative only for a shift too
    large to multiply out (more than 4096 digits); Lean multiplies it out, and the value
    and :meth:`to_float` are the same. ``negative_zero`` records a minus sign on a zero,
    which Lean's integer mantissa cannot keep (it is not compared).
    """

    mantissa: int
    exponent: int
    negative_zero: bool = field(default=False, compare=False)

    def to_float(self) -> float:
        """The 64-bit float Lean reads. Mirrors ``JsonNumber.toFloat``:
        ``(if m >= 0 then 1.0 else -1.0) * Float.ofScientific m.natAbs true e``.
        Cost: O(digits^2) at worst (exact integer arithmetic)."""
        m, e = self.mantissa, self.exponent
        sign = 1.0 if m >= 0 else -1.0
        magnitude = abs(m)
        if magnitude == 0:
            return sign * 0.0
        digits = len(str(magnitude)) if magnitude.bit_length() < 20000 else _DIGITS_LIMIT * 4
        if digits - e > _DIGITS_LIMIT:
            return sign * math.inf
        if digits - e < -_DIGITS_LIMIT:
            return sign * 0.0
        if e < 0:  # Lean's shiftl multiplies the mantissa out: exponent 0
            magnitude, e = magnitude * 10**-e, 0
        return sign * float_of_scientific(magnitude, True, e)


def _log2(n: int) -> int:
    """``Nat.log2``: floor of log2, and 0 for 0."""
    return n.bit_length() - 1 if n > 0 else 0


@functools.lru_cache(maxsize=512)
def _pow5(e: int) -> int:
    return int(5**e)


def _of_binary_scientific(m: int, e: int) -> float:
    """``Float.ofBinaryScientific m e`` (``m * 2^e``): keep the top 64 bits of ``m``
    (truncating), round them to a double (``UInt64.toFloat``), then ``Float.scaleB``."""
    s = max(_log2(m) - 63, 0)  # Nat subtraction
    top = (m >> s) & _U64
    x = float(top)  # round to nearest, ties to even, as C's (double)uint64_t
    try:
        return math.ldexp(x, e + s)  # C scalbn: one rounding, to a subnormal if need be
    except OverflowError:
        return math.inf


def float_of_scientific(mantissa: int, negative_exponent: bool, exponent: int) -> float:
    """``Float.ofScientific m s e``: ``m * 10^-e`` (``s`` true) or ``m * 10^e``, as Lean
    computes it.

    For ``s`` true: shift ``m`` left so that at least 64 significant bits survive the
    division by ``5^e`` (floor), then :func:`Float.ofBinaryScientific`, which truncates
    to 64 bits before rounding to 53. The truncation makes a decimal just above a
    halfway point between two doubles round to the even neighbour, where a correctly
    rounded reader rounds up: ``1.00000000000000011102230246251565404236316680908203126``
    is 1.0 in Lean and 1.0000000000000002 in Python. Cost: O(digits^2) big-integer work.
    """
    if mantissa < 0 or exponent < 0:
        raise ValueError(
            f"float_of_scientific: mantissa and exponent are natural numbers, got"
            f" {mantissa} and {exponent}"
        )
    if negative_exponent:
        s = max(64 - _log2(mantissa), 0)  # Nat subtraction
        m = (mantissa << (3 * exponent + s)) // _pow5(exponent)
        return _of_binary_scientific(m, -4 * exponent - s)
    return _of_binary_scientific(mantissa * _pow5(exponent), exponent)


# ---------------------------------------------------------------- Lean.Json.parse

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_SHIFT_LIMIT = 4096  # decimal digits a positive exponent is multiplied out to


class _Stop(Exception):
    """Lean's parser fails here (character index, Lean-style message)."""

    def __init__(self, at: int, message: str) -> None:
        super().__init__(message)
        self.at = at
        self.message = message


@dataclass
class _Trace:
    """What the parser saw that Lean's tree forgets: repeated keys, by place."""

    duplicates: list[tuple[tuple[str | int, ...], str]] = field(default_factory=list)


def _number(text: str, i: int) -> tuple[JsonNumber, int]:
    """``Lean.Json.Parser.num`` at ``text[i]`` (a ``-`` or a digit)."""
    match = _NUMBER.match(text, i)
    if match is None:  # "-" not followed by a digit
        raise _Stop(i + 1, "expected 1-9" if i + 1 < len(text) else "unexpected end of input")
    minus, whole, frac, exp_sign, exp_digits = match.groups()
    sign = -1 if minus else 1
    digits = frac or ""
    magnitude = int(whole) * 10 ** len(digits) + (int(digits) if digits else 0)
    mantissa, exponent = sign * magnitude, len(digits)
    if exp_digits is not None:
        n = int(exp_digits)
        if exp_sign == "-":
            exponent += n  # shiftr
        elif n <= exponent:  # shiftl, 10^(s - e) = 1
            exponent -= n
        elif n - exponent <= _SHIFT_LIMIT:
            mantissa, exponent = mantissa * 10 ** (n - exponent), 0
        else:  # the same value, not multiplied out
            exponent -= n
    end = match.end()
    if end < len(text) and text[end] == "." and frac is None:
        # Lean skips the "." and then wants a digit; report its message and place.
        raise _Stop(end + 1, "expected digit")
    if end < len(text) and text[end] in "eE" and exp_digits is None:
        rest = end + 1 + (1 if text[end + 1 : end + 2] in ("+", "-") else 0)
        raise _Stop(rest, "expected 0-9" if rest < len(text) else "unexpected end of input")
    return JsonNumber(mantissa, exponent, negative_zero=bool(minus) and magnitude == 0), end


def _string(text: str, i: int) -> tuple[str, int]:
    """``Lean.Json.Parser.str`` after the opening quote at ``text[i - 1]``."""
    parts: list[str] = []
    n = len(text)
    while True:
        match = _PLAIN.match(text, i)
        assert match is not None  # the pattern matches the empty string
        parts.append(match.group())
        i = match.end()
        if i >= n:
            raise _Stop(i, "unexpected end of input")
        c = text[i]
        if c == '"':
            return "".join(parts), i + 1
        if c != "\\":
            raise _Stop(i, "unexpected character in string")
        if i + 1 >= n:
            raise _Stop(i + 1, "unexpected end of input")
        e = text[i + 1]
        if e in _ESCAPES:
            parts.append(_ESCAPES[e])
            i += 2
        elif e == "u":
            code = 0
            for k in range(4):
                if i + 2 + k >= n:
                    raise _Stop(i + 2 + k, "unexpected end of input")
                h = text[i + 2 + k]
                if h not in _HEX:
                    raise _Stop(i + 2 + k, "invalid hex character")
                code = code * 16 + int(h, 16)
            # Char.ofNat: a surrogate is not a Unicode scalar value, so it becomes '\0'.
            parts.append("\0" if 0xD800 <= code <= 0xDFFF else chr(code))
            i += 6
        else:
            raise _Stop(i + 1, "illegal \\u escape")


def _ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    assert match is not None
    return match.end()


def _key(text: str, i: int) -> tuple[str, int]:
    """``objectCore``'s start: ``"key"``, whitespace, ``:``, whitespace."""
    if i >= len(text):
        raise _Stop(i, "unexpected end of input")
    if text[i] != '"':
        raise _Stop(i, 'expected "')
    key, i = _string(text, i + 1)
    i = _ws(text, i)
    if i >= len(text):
        raise _Stop(i, "unexpected end of input")
    if text[i] != ":":
        raise _Stop(i, "expected :")
    return key, _ws(text, i + 1)


def _sorted(obj: dict[str, Json]) -> dict[str, Json]:
    return dict(sorted(obj.items()))


def _parse_text(text: str, trace: _Trace) -> Json:
    """``Lean.Json.Parser.any``: whitespace, one value, end of input. Iterative, so a
    deeply nested document does not exhaust Python's stack."""
    n = len(text)
    # Each open container: [list or dict, pending key (objects)].
    stack: list[list[Any]] = []
    i = _ws(text, 0)
    while True:
        # ---- one value at text[i] (anyCore)
        if i >= n:
            raise _Stop(i, "unexpected end of input")
        c = text[i]
        value: Json
        if c == "[":
            i = _ws(text, i + 1)
            if i >= n:
                raise _Stop(i, "unexpected end of input")
            if text[i] == "]":
                value, i = [], _ws(text, i + 1)
            else:
                stack.append([[], None])
                continue
        elif c == "{":
            i = _ws(text, i + 1)
            if i >= n:
                raise _Stop(i, "unexpected end of input")
            if text[i] == "}":
                value, i = {}, _ws(text, i + 1)
            else:
                key, i = _key(text, i)
                stack.append([{}, key])
                continue
        elif c == '"':
            value, i = _string(text, i + 1)
            i = _ws(text, i)
        elif c in "tfn":
            word = {"t": "true", "f": "false", "n": "null"}[c]
            if not text.startswith(word, i):
                raise _Stop(i, f"expected: {word}")
            value = {"t": True, "f": False, "n": None}[c]
            i = _ws(text, i + len(word))
        elif c == "-" or "0" <= c <= "9":
            value, i = _number(text, i)
            i = _ws(text, i)
        else:
            raise _Stop(i, "unexpected input")
        # ---- hand the value to its container; close containers as they end
        while True:
            if not stack:
                if i != n:
                    raise _Stop(i, "expected end of input")
                return value
            frame = stack[-1]
            container = frame[0]
            if isinstance(container, list):
                container.append(value)
                close, what = "]", "array"
            else:
                key = frame[1]
                if key in container:
                    path = tuple(len(f[0]) if isinstance(f[0], list) else f[1] for f in stack[:-1])
                    trace.duplicates.append((path, key))
                container[key] = value  # RBNode/TreeMap insert: the last value wins
                close, what = "}", "object"
            if i >= n:
                raise _Stop(i, "unexpected end of input")
            c = text[i]
            if c == close:
                stack.pop()
                value = container if isinstance(container, list) else _sorted(container)
                i = _ws(text, i + 1)
                continue
            if c != ",":
                raise _Stop(i, f"unexpected character in {what}")
            i = _ws(text, i + 1)
            if isinstance(container, dict):
                frame[1], i = _key(text, i)
            break


def _decode(data: bytes | str) -> str:
    """The text Lean's ``IO.FS.readFile`` gives for ``data``, or a FormatError."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise FormatError(
                f"Lean cannot read this text: character {e.start} is a lone surrogate"
                f" ({data[e.start]!r}), which UTF-8 cannot encode"
            ) from e
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(
            f"Lean cannot read this file: not valid UTF-8 at byte {e.start}"
            f" ({e.reason}); IO.FS.readFile requires UTF-8"
        ) from e


def _parse(data: bytes | str, trace: _Trace) -> Json:
    text = _decode(data)
    try:
        return _parse_text(text, trace)
    except _Stop as stop:
        offset = len(text[: stop.at].encode("utf-8"))
        line = text.count("\n", 0, stop.at) + 1
        column = stop.at - (text.rfind("\n", 0, stop.at) + 1) + 1
        hint = ""
        if stop.at == 0 and text.startswith("\ufeff"):
            hint = " (a UTF-8 byte-order mark: Lean does not skip it)"
        elif text.startswith(("NaN", "Infinity"), stop.at) or text.startswith(
            "-Infinity", stop.at - 1
        ):
            hint = " (NaN and Infinity are not JSON numbers for Lean)"
        raise FormatError(
            f"Lean.Json.parse fails: offset {offset}: {stop.message}"
            f" (line {line}, column {column}){hint}"
        ) from None


def parse(data: bytes | str) -> Json:
    """``data`` parsed as ``Lean.Json.parse`` parses it; bytes must be UTF-8.

    Returns ``None``, a bool, a :class:`JsonNumber`, a str, a list, or a dict whose keys
    are in Lean's order (sorted by code point) holding the last value of a repeated key.
    Raises FormatError where Lean's parser fails (the message gives Lean's offset in
    bytes and its reason). Cost: O(len(data)).
    """
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"parse: data must be bytes or str, got {type(data).__name__}")
    return _parse(bytes(data) if not isinstance(data, str) else data, _Trace())


# ---------------------------------------------------------------- Import.PyTorch


def parse_tensor(shape: tuple[int, ...], j: Json) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """``parseTensor s j``: a float64 array of exactly ``shape``, or ``None``.

    A scalar shape takes a JSON number; ``(n, *rest)`` takes an array of exactly ``n``
    entries, each read with ``rest``. Cost: O(size).
    """
    values: list[float] = []

    def go(depth: int, x: Json) -> bool:
        if depth == len(shape):
            if isinstance(x, JsonNumber):
                values.append(x.to_float())
                return True
            return False
        if not isinstance(x, list) or len(x) != shape[depth]:
            return False
        return all(go(depth + 1, y) for y in x)

    if not go(0, j):
        return None
    return np.array(values, dtype=np.float64).reshape(shape)


def unwrap_params(o: dict[str, Json]) -> dict[str, Json]:
    """``unwrapParams``: if ``o["params"]`` is an object, it with every other top-level
    field of ``o`` inserted over it (a top-level field replaces a ``params`` entry of the
    same name); otherwise ``o`` itself. Keys in Lean's order. Cost: O(len(o))."""
    p = o.get("params")
    if not isinstance(p, dict):
        return o
    merged = dict(p)
    for k, v in o.items():
        if k != "params":
            merged[k] = v
    return _sorted(merged)


def load_weights(j: Json) -> dict[str, Json] | None:
    """``loadWeights?``: the state dict of a JSON object (:func:`unwrap_params`), or
    ``None`` for any other JSON value."""
    if not isinstance(j, dict):
        return None
    return unwrap_params(j)


def get_tensor(
    o: dict[str, Json], key: str, shape: tuple[int, ...]
) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """``getTensor? o k s``: the entry ``key`` read as a tensor of ``shape``, or ``None``
    (missing, or not of that shape)."""
    j = o.get(key)
    return None if key not in o else parse_tensor(shape, j)


# ---------------------------------------------------------------- the view


@dataclass(frozen=True)
class LeanFinding:
    """One thing to know about a file, with its place: a tensor ``name`` (``None`` for
    the document) and an ``index`` path inside it (``(1, 0)`` is ``name[1][0]``)."""

    message: str
    name: str | None = None
    index: tuple[int, ...] = ()

    @property
    def place(self) -> str:
        """``fc.weight[1][0]``, ``fc.weight``, or ``document``."""
        if self.name is None:
            return "document"
        return f"{self.name}" + "".join(f"[{k}]" for k in self.index)


@dataclass(frozen=True)
class LeanTensor:
    """A tensor Lean's importer reads: ``getTensor? o name s`` succeeds for ``s`` =
    ``shape`` (for an empty array, for every shape with the same leading zero)."""

    name: str
    shape: tuple[int, ...]
    values: np.ndarray[Any, np.dtype[np.float64]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class LeanView:
    """Everything TorchLean's importer sees in one file.

    - ``layout``: ``"params"`` (``{"params": {...}, ...}`` unwrapped and merged),
      ``"bare"`` (the whole object is the state dict) or ``"none"`` (Lean reads nothing).
    - ``tensors``: name -> :class:`LeanTensor`, in Lean's key order.
    - ``skipped``: name -> JSON kind of the entries that are not tensors (objects,
      strings, bools, null: Lean reads them only if a model asks, and no tensor lookup
      succeeds on them).
    - ``problems``: why Lean reads no state dict, or why it cannot read an entry as a
      tensor (a ragged array, a non-number inside an array), with the place.
    - ``notes``: what Lean reads differently from a plain reading (a repeated key, a
      top-level field replacing a ``params`` entry, ``-0`` as +0.0, a large integer
      rounded, a finite literal read as inf or 0).
    """

    source: str
    layout: str
    tensors: dict[str, LeanTensor]
    skipped: dict[str, str]
    problems: tuple[LeanFinding, ...]
    notes: tuple[LeanFinding, ...]

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems

    def arrays(self) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
        """name -> float64 values of every tensor, in Lean's key order."""
        return {name: t.values for name, t in self.tensors.items()}

    def format(self) -> list[str]:
        """Human-readable lines: layout, tensors with shapes, skipped entries, notes,
        problems (each with its place)."""
        lines = [f"{self.source}: what TorchLean's importer (Import.PyTorch) sees"]
        lines.append(
            {
                "params": 'layout: {"params": {...}}, other top-level fields merged over it',
                "bare": "layout: the whole object is the state dict",
                "none": "layout: none (Lean reads no state dict)",
            }[self.layout]
        )
        count = len(self.tensors)
        lines.append(f"{count} tensor{'' if count == 1 else 's'}:")
        width = max((len(n) for n in self.tensors), default=0)
        for name, t in self.tensors.items():
            lines.append(f"  {name.ljust(width)}  {_shape_text(t.shape)}")
        if self.skipped:
            items = ", ".join(f"{n} ({k})" for n, k in self.skipped.items())
            lines.append(f"not tensors (Lean's lookups skip them): {items}")
        for title, findings in (("notes", self.notes), ("problems", self.problems)):
            if findings:
                lines.append(f"{len(findings)} {title[:-1] if len(findings) == 1 else title}:")
                lines.extend(f"  {f.place}: {f.message}" for f in findings)
        if not self.problems:
            lines.append("no problems: Lean imports every tensor listed")
        return lines


def _shape_text(shape: tuple[int, ...]) -> str:
    return (
        "()"
        if not shape
        else "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    )


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _kind(j: Json) -> str:
    if j is None:
        return "null"
    if isinstance(j, bool):
        return "bool"
    if isinstance(j, JsonNumber):
        return "number"
    if isinstance(j, str):
        return "string"
    if isinstance(j, list):
        return "array"
    return "object"


def _infer_shape(j: Json) -> tuple[int, ...]:
    """The one shape ``j`` can read as, if any: dimensions along the first entries."""
    dims: list[int] = []
    while isinstance(j, list):
        dims.append(len(j))
        if not j:
            break
        j = j[0]
    return tuple(dims)


def _why_not(
    shape: tuple[int, ...], j: Json, index: tuple[int, ...]
) -> tuple[tuple[int, ...], str]:
    """Where and why ``parseTensor shape j`` fails (the first place, in index order)."""
    depth = len(index)
    if depth == len(shape):
        return index, f"expected a number, got {_article(_kind(j))}"
    if not isinstance(j, list):
        return index, f"expected an array of length {shape[depth]}, got {_article(_kind(j))}"
    if len(j) != shape[depth]:
        return index, (
            f"ragged: expected an array of length {shape[depth]} (as at the first entry),"
            f" got length {len(j)}"
        )
    for k, y in enumerate(j):
        if parse_tensor(shape[depth + 1 :], y) is None:
            return _why_not(shape, y, (*index, k))
    raise AssertionError("parse_tensor failed but every part reads")  # pragma: no cover


def _number_notes(
    name: str, j: Json, notes: list[LeanFinding], index: tuple[int, ...] = ()
) -> None:
    """Notes for numbers Lean reads differently from their text."""
    if isinstance(j, list):
        for k, y in enumerate(j):
            _number_notes(name, y, notes, (*index, k))
        return
    if not isinstance(j, JsonNumber):
        return
    if j.negative_zero:
        notes.append(LeanFinding("-0 reads as +0.0 (Lean's mantissa is an integer)", name, index))
        return
    value = j.to_float()
    if j.mantissa != 0 and math.isinf(value):
        notes.append(LeanFinding(f"a finite number reads as {value}", name, index))
    elif j.mantissa != 0 and value == 0.0:
        notes.append(LeanFinding("a nonzero number reads as 0.0 (underflow)", name, index))
    elif j.exponent <= 0 and abs(j.mantissa) > 2**53 and int(value) != j.mantissa * 10**-j.exponent:
        notes.append(
            LeanFinding(
                f"the integer {j.mantissa * 10**-j.exponent} reads as {value!r}", name, index
            )
        )


def _import(doc: Json, source: str, trace: _Trace) -> LeanView:
    notes: list[LeanFinding] = []
    for path, key in trace.duplicates:
        where = "the top level" if not path else "`" + ".".join(map(str, path)) + "`"
        name = key if path in ((), ("params",)) else None
        notes.append(
            LeanFinding(f"key `{key}` repeats in {where}; Lean keeps the last value", name)
        )
    if not isinstance(doc, dict):
        problem = LeanFinding(
            f"loadWeights? fails: the document is {_article(_kind(doc))}, not an object"
        )
        return LeanView(source, "none", {}, {}, (problem,), tuple(notes))
    params = doc.get("params")
    layout = "params" if isinstance(params, dict) else "bare"
    if layout == "params":
        assert isinstance(params, dict)
        for k in doc:
            if k != "params" and k in params:
                notes.append(
                    LeanFinding(
                        f"the top-level field replaces params' `{k}` ({_kind(params[k])}) with"
                        f" {_article(_kind(doc[k]))}",
                        k,
                    )
                )
    elif "params" in doc:
        notes.append(
            LeanFinding(
                f"`params` is {_article(_kind(params))}, not an object:"
                " the whole object is the state dict",
                "params",
            )
        )
    state = load_weights(doc)
    assert state is not None
    tensors: dict[str, LeanTensor] = {}
    skipped: dict[str, str] = {}
    problems: list[LeanFinding] = []
    for name, j in state.items():
        if not isinstance(j, (list, JsonNumber)):
            skipped[name] = _kind(j)
            continue
        shape = _infer_shape(j)
        values = parse_tensor(shape, j)
        if values is None:
            index, why = _why_not(shape, j, ())
            problems.append(LeanFinding(f"no tensor shape reads it: {why}", name, index))
            continue
        tensors[name] = LeanTensor(name, shape, values)
        _number_notes(name, j, notes)
    return LeanView(source, layout, tensors, skipped, tuple(problems), tuple(notes))


def lean_import(doc: Json, *, source: str = "<document>") -> LeanView:
    """Every tensor TorchLean's importer reads from the parsed document ``doc`` (see
    :func:`parse`), with the problems and notes. Mirrors ``loadWeights?`` then
    ``getTensor?`` for each key with the one shape its value has. Cost: O(size)."""
    return _import(doc, source, _Trace())


def lean_view(source: str | os.PathLike[str] | bytes) -> LeanView:
    """What TorchLean's importer sees in a file (a path) or in ``bytes``: the tensors,
    their shapes and float64 values, and every problem with its place.

    Never raises for a bad file: a file Lean cannot parse gives a view with no tensors
    and the parse error as its problem. Raises ``OSError`` if the file cannot be read.
    Cost: O(file size).
    """
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "<bytes>"
    else:
        require_path(source, "lean_view", "source")
        with open(source, "rb") as f:
            data = f.read()
        name = os.fspath(source)
    trace = _Trace()
    try:
        doc = _parse(data, trace)
    except FormatError as e:
        return LeanView(name, "none", {}, {}, (LeanFinding(str(e)),), ())
    return _import(doc, name, trace)

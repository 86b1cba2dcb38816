"""How a context prints as text: ``Runtime.contextToString`` and ``Spec.pretty``.

The text is the one Lean prints for the same context: each scalar goes through Lean's
``toString`` and each dimension is bracketed as ``Spec.pretty`` brackets it.

- A float prints as Lean's ``Float.toString``, which is C++ ``std::to_string``, i.e.
  ``printf("%f")``: six decimals, no exponent (``3.000000``, ``-0.750000``, ``0.000010``,
  ``0.000000`` for ``1e-7``, ``100000000000000000000.000000`` for ``1e20``,
  ``-0.000000``), ``inf`` / ``-inf``, and ``NaN`` for every NaN whatever its sign or
  payload.
- float32 prints its exact value widened to float64 (Lean's ``Float32.toString`` widens
  too): ``np.float32(0.1)`` prints ``0.100000``. float16, bfloat16 and the float8 types,
  which Lean has no type for, print the same way: exact value, widened to float64, ``%f``.
- A bool prints ``true`` / ``false``; an integer prints its plain decimal digits.
- A complex number prints as Lean prints the pair ``(re, im) : Float × Float``:
  ``(1.000000, -2.000000)``. Lean has no complex scalar; the pair is how one is written
  there.
- Nesting: ``[a, b]`` per dimension, ``", "`` between entries; a scalar has no brackets;
  an empty tensor is ``[]`` and shape (2, 0) is ``[[], []]``.
- Anything else (an object array, a meta tensor, a tracer, an opaque pytree leaf) prints
  Python's own text for it: Lean has no counterpart.

Reading map:
- :func:`context_to_string` -- ``Context(vars: [...], grads: [...])``, every value in full.
- :func:`pretty_tensor` -- one tensor, nested as ``Spec.pretty`` nests it.
- :func:`lean_scalar` -- one scalar as Lean's ``toString`` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from torchlean.runtime.backends import read_checked
from torchlean.runtime.dtypes import EXTENDED_FLOATS

if TYPE_CHECKING:
    from torchlean.runtime.any_tensor import AnyTensor
    from torchlean.runtime.context import RuntimeContext

__all__ = ["context_to_string", "lean_scalar", "pretty_tensor"]


def context_to_string(ctx: RuntimeContext[Any]) -> str:
    """``Context(vars: [w: 3.000000, ...], grads: [...])``, exactly the text Lean prints.

    Mirrors ``Runtime.contextToString``: every entry (shadowed ones included), most recent
    first, each tensor as :func:`pretty_tensor` prints it. Cost: O(total elements).
    """
    vars_text = ", ".join(
        f"{n}: {pretty_tensor(at, f'variable `{n}`')}" for n, at in ctx.var_registry
    )
    grads_text = ", ".join(
        f"{n}: {pretty_tensor(at, f'gradient `{n}`')}" for n, at in ctx.gradients
    )
    return f"Context(vars: [{vars_text}], grads: [{grads_text}])"


def pretty_tensor(at: AnyTensor[Any], what: str) -> str:
    """The values of ``at`` as Lean's ``Spec.pretty`` prints them: ``[a, b]`` per
    dimension, each scalar as :func:`lean_scalar` prints it. ``what`` names the entry in
    the error raised if the tensor was written in place. Cost: O(size)."""
    t = read_checked(at, what)
    backend = at.library
    array = backend.data(t)
    if array is None:  # a meta tensor, a tracer, an opaque pytree leaf
        return backend.stand_in(t)
    fmt = _scalar_format(array.dtype)
    if array.dtype.name in EXTENDED_FLOATS or array.dtype.kind == "f":
        array = array.astype(np.float64)  # exact: every float type here widens exactly

    def go(a: Any, depth: int) -> str:
        if depth == 0:
            return fmt(a)
        return "[" + ", ".join(go(x, depth - 1) for x in a) + "]"

    # tolist() gives Python scalars (bool, int, float, complex) nested per dimension.
    values = array.tolist() if array.dtype.kind in "biufc" else array
    text = go(values, array.ndim)
    local = backend.local_dims(t)
    if local is not None:  # a distributed tensor: this process's shard, said so
        return f"<local shard {local} of {at.dims}, {backend.placement(t)}: {text}>"
    return text


def lean_scalar(value: object) -> str:
    """``value`` as Lean's ``toString`` prints it: a float as ``%f`` (``3.000000``, ``inf``,
    ``NaN``), a bool as ``true`` / ``false``, an integer in plain digits, a complex
    number as the pair ``(re, im)``; anything else as ``str``. Cost: O(1)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _lean_float(float(value))
    if isinstance(value, (complex, np.complexfloating)):
        c = complex(value)
        return f"({_lean_float(c.real)}, {_lean_float(c.imag)})"
    return str(value)


def _lean_float(x: float) -> str:
    """C++ ``std::to_string(double)`` as Lean's ``Float.toString`` uses it."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "%f" % x  # noqa: UP031 -- printf's %f is the point


def _scalar_format(dtype: np.dtype[Any]) -> Callable[[Any], str]:
    """The formatter for the Python scalars ``tolist()`` gives for ``dtype``."""
    if dtype.kind == "b":
        return lambda v: "true" if v else "false"
    if dtype.kind in "iu":
        return str
    if dtype.kind == "f" or dtype.name in EXTENDED_FLOATS:
        return _lean_float
    if dtype.kind == "c":
        return lambda v: f"({_lean_float(v.real)}, {_lean_float(v.imag)})"
    return lean_scalar

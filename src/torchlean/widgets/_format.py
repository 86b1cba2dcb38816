"""How the views write numbers, shapes and counts: one format for every renderer.

Reading map:
- :func:`format_number` -- a value: ints exactly, floats to 4 significant digits.
- :func:`format_shape` -- ``(3, 4)``; a scalar is ``()``.
- :func:`format_size` -- a byte count (:func:`torchlean._text.format_bytes`), ``?``
  when unknown.
- :func:`count` -- ``1 variable``, ``3 variables``.
- :data:`DONATED` -- what the views say of a donated context.
"""

from __future__ import annotations

import math

from torchlean._text import format_bytes

__all__ = ["DONATED", "count", "format_number", "format_shape", "format_size"]

#: What the views say of a donated context instead of its (unreadable) registries.
DONATED = "donated: no variables or gradients to show"


def format_number(v: object) -> str:
    """A value as the views print it: ints exactly, floats to 4 significant digits."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        return f"{v:.4g}"
    if isinstance(v, complex):
        return f"{format_number(v.real)}{'+' if v.imag >= 0 else '-'}{format_number(abs(v.imag))}j"
    return str(v)


def format_shape(dims: tuple[int, ...]) -> str:
    """``(3, 4)``; a scalar is ``()`` and a vector ``(5,)``."""
    return str(tuple(dims))


def format_size(n: int | None) -> str:
    """A byte count as :func:`~torchlean._text.format_bytes` writes it; ``?`` for an
    unknown size (a dtype with no item size)."""
    return "?" if n is None else format_bytes(n)


def count(n: int, noun: str) -> str:
    """``1 variable``, ``0 variables``, ``3 variables``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

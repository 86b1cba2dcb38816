"""Element types: canonical names, the extended floats, item sizes.

Every library names its dtypes its own way (``torch.float32``, ``np.dtype('float32')``,
``jnp.float32``); a context speaks of them by one canonical name, numpy's
(``"float32"``). numpy has no native type for the narrow floats machine learning uses
(bfloat16, the float8 and float4 formats); they come from ``ml_dtypes``, which numpy,
jax and safetensors all understand. This module is the one table of them.

Reading map:
- :data:`EXTENDED_FLOATS` -- the narrow floats numpy has no native type for, with their
  item sizes in bytes.
- :func:`dtype_name` -- a canonical dtype name (``"float32"``) from any library's dtype.
- :func:`numpy_dtype` -- the numpy dtype of a canonical name (``ml_dtypes`` for the
  extended floats).
- :func:`itemsize` -- the bytes per element of a canonical name.
- :func:`is_extended_float`, :func:`bits_dtype` -- helpers for the conversions the
  backends do (an extended float travels between libraries as same-width integer bits).
- :func:`render_array` -- an array ready to print (extended floats as float32).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

import numpy as np

__all__ = [
    "EXTENDED_FLOATS",
    "bits_dtype",
    "dtype_name",
    "is_extended_float",
    "itemsize",
    "numpy_dtype",
    "render_array",
]

#: The narrow floats numpy has no native type for, and their item sizes in bytes.
#: Each of them is a subset of float32, so float32 shows their values exactly.
EXTENDED_FLOATS: Final = MappingProxyType(
    {
        "bfloat16": 2,
        "float8_e4m3fn": 1,
        "float8_e4m3fnuz": 1,
        "float8_e5m2": 1,
        "float8_e5m2fnuz": 1,
        "float8_e4m3b11fnuz": 1,
        "float8_e8m0fnu": 1,
        "float4_e2m1fn": 1,
    }
)

_BITS: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int16),
    4: np.dtype(np.int32),
}


def is_extended_float(name: str) -> bool:
    """True when ``name`` is one of :data:`EXTENDED_FLOATS`."""
    return name in EXTENDED_FLOATS


def bits_dtype(size: int) -> np.dtype[Any]:
    """The integer dtype of ``size`` bytes an extended float is reinterpreted as."""
    return _BITS[size]


def dtype_name(dtype: object) -> str:
    """The canonical name of a dtype from numpy, torch, jax or a string: ``"float32"``.

    Raises ``TypeError("not a dtype: ...")`` for anything else.
    """
    if isinstance(dtype, np.dtype):
        return dtype.name
    text = str(dtype)
    if text.startswith("torch."):
        if isinstance(dtype, str):  # a name such as "torch.float32" must name a real dtype
            try:
                return dtype_name(text.removeprefix("torch."))
            except TypeError:
                raise TypeError(f"not a dtype: {dtype!r}") from None
        return text.removeprefix("torch.")
    try:
        return np.dtype(dtype).name  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError, SyntaxError):  # numpy parses strings like "f4,i2"
        pass
    if isinstance(dtype, str) and dtype in EXTENDED_FLOATS:
        try:
            return numpy_dtype(dtype).name
        except TypeError:
            pass
    raise TypeError(f"not a dtype: {dtype!r}")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a canonical dtype name; the extended floats via ``ml_dtypes``.

    Raises ``TypeError`` for a name numpy (with ``ml_dtypes``) does not know.
    """
    if name in EXTENDED_FLOATS:
        try:
            import ml_dtypes

            extended: np.dtype[Any] = np.dtype(getattr(ml_dtypes, name))
        except (ImportError, AttributeError) as e:
            raise TypeError(f"dtype {name} needs a newer ml_dtypes package: {e}") from None
        return extended
    try:
        dtype: np.dtype[Any] = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        raise TypeError(f"not a dtype: {name!r}") from None
    return dtype


def itemsize(name: str) -> int:
    """The bytes per element of the dtype called ``name`` (``"bool"`` is 1)."""
    size = EXTENDED_FLOATS.get(name)
    if size is not None:
        return size
    return numpy_dtype(name).itemsize


def render_array(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``array`` ready to print: extended floats (bfloat16, float8) shown as float32.

    The values are exact (each of those types is a subset of float32), and print as
    ``1.0`` rather than ``1``. Cost: O(size) for an extended float, else O(1).
    """
    if array.dtype.name in EXTENDED_FLOATS:
        return array.astype(np.float32)
    return array

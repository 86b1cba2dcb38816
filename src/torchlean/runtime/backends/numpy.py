"""The numpy backend: arrays stored over a private, immutable copy.

The stored array is a read-only array over a private ``bytes`` copy of the caller's
data, so neither the caller's array nor a looked-up array can be written, and numpy
refuses to make it writeable again. An array that already lies over an immutable buffer
(one a lookup returned) is stored without a copy. A fresh result handed over with
``adopt`` is stored over ``bytes`` too: without a copy when it already lies over
``bytes`` (read from a file), with one otherwise (an optimizer's output).

Reading map:
- :data:`NUMPY` -- the backend; :func:`is_immutable` -- is an array over ``bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from torchlean.runtime.backends._base import Backend

if TYPE_CHECKING:
    from torchlean.runtime.backends._update import Update, Updated, UpdateRule

__all__ = ["NUMPY", "NumpyBackend", "is_immutable"]


class NumpyBackend(Backend):
    name = "numpy"

    def freeze(self, x: Any) -> Any:
        if type(x) is not np.ndarray:
            x = np.asarray(x)
        elif x.base is not None and _private_bytes(x):
            return x  # already over an immutable buffer (e.g. from a lookup): no copy
        if x.dtype.hasobject:
            raise TypeError(
                f"expected an array of numbers, got a numpy array of dtype {x.dtype}"
                " (Python objects cannot be stored in a context)"
            )
        data = x.tobytes()  # inlined _over_bytes: the hot path of register_variable
        if len(data) == 1:
            data += b"\0"
        return np.ndarray(x.shape, x.dtype, data)  # positional: faster

    def adopt(self, x: Any) -> Any:
        # A fresh array nobody else holds. One that already lies over an immutable
        # ``bytes`` object (read from a file) is made read-only without a copy; any
        # other (one that owns its memory: an optimizer's or an addition's result) is
        # copied over ``bytes`` too: numpy lets whoever reaches the array that owns the
        # memory (up the ``.base`` chain) make it writeable again, but never one over
        # ``bytes``.
        if type(x) is not np.ndarray or x.dtype.hasobject:
            return self.freeze(x)
        if x.base is not None and _private_bytes(x):
            return x
        return _over_bytes(x)

    def dims(self, x: Any) -> tuple[int, ...]:
        return x.shape  # type: ignore[no-any-return]

    def dtype_name(self, x: Any) -> str:
        return x.dtype.name  # type: ignore[no-any-return]

    def is_contiguous(self, x: Any) -> bool:
        return bool(x.flags.c_contiguous)

    def from_numpy(self, array: np.ndarray[Any, Any], what: str) -> Any:
        return array

    def zeros_like(self, x: Any) -> Any:
        return np.zeros_like(x)

    def scalar(self, value: float | int, dtype: str, like: Any) -> Any:
        return np.asarray(value, dtype=dtype)

    def updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """The optimizer's maths on numpy, out of place (fresh arrays the context adopts)."""

        def update(arrays: Update) -> Updated:
            return rule.arrays(np, arrays)

        return update

    def copy(self, x: Any) -> Any:
        """``np.array(x)`` (a writable copy)."""
        return np.array(x)


def _over_bytes(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A read-only array over a private ``bytes`` copy of ``x`` (never made writeable
    again, whoever holds it). A 1-byte array gets a 2-byte buffer: CPython hands out
    one shared object for every 1-byte ``bytes``, and memory written through DLPack
    (which ignores read-only flags) would otherwise change every such object."""
    data = x.tobytes()
    if len(data) == 1:
        data += b"\0"  # a new 2-byte object, private to this array
    return np.ndarray(x.shape, x.dtype, data)  # positional: faster


def _private_bytes(x: np.ndarray[Any, Any]) -> bool:
    """True when ``x`` lies over a ``bytes`` object that is not CPython's shared
    1-byte object (see :func:`_over_bytes`)."""
    base: object = x.base
    while isinstance(base, np.ndarray):
        base = base.base
    return type(base) is bytes and len(base) != 1


def is_immutable(x: np.ndarray[Any, Any]) -> bool:
    """True when no one can ever write ``x``'s memory: it is owned by a ``bytes`` object."""
    base: object = x.base
    while isinstance(base, np.ndarray):
        base = base.base
    return type(base) is bytes


NUMPY: Final = NumpyBackend()

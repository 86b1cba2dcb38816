"""The numpy backend: arrays stored over a private, immutable copy.

The stored array is a read-only array over a private ``bytes`` copy of the caller's
data, so neither the caller's array nor a looked-up array can be written, and numpy
refuses to make it writeable again. An array that already lies over an immutable buffer
(one a lookup returned) is stored without a copy. A fresh result handed over with
``adopt`` (e.g. an optimizer's output) is made read-only without a copy.

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
        elif x.base is not None and is_immutable(x):
            return x  # already over an immutable buffer (e.g. from a lookup): no copy
        if x.dtype.hasobject:
            raise TypeError(
                f"expected an array of numbers, got a numpy array of dtype {x.dtype}"
                " (Python objects cannot be stored in a context)"
            )
        # One copy into an immutable bytes object: an array over it is read-only and
        # can never be made writeable again, whoever holds it.
        return np.ndarray(x.shape, x.dtype, x.tobytes())  # positional: faster

    def adopt(self, x: Any) -> Any:
        # A fresh array nobody else holds: every ndarray in its base chain is made
        # read-only, so the view returned can never be made writeable again. Memory
        # owned by something other than an array or an immutable ``bytes`` (a memory
        # map, a bytearray) is copied instead.
        if type(x) is not np.ndarray:
            return self.freeze(x)
        chain = [x]
        while isinstance(chain[-1].base, np.ndarray):
            chain.append(chain[-1].base)
        owner = chain[-1].base
        if (owner is not None and type(owner) is not bytes) or x.dtype.hasobject:
            return self.freeze(x)
        for a in chain:
            a.setflags(write=False)
        return x.view()

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


def is_immutable(x: np.ndarray[Any, Any]) -> bool:
    """True when no one can ever write ``x``'s memory: it is owned by a ``bytes`` object."""
    base: object = x.base
    while isinstance(base, np.ndarray):
        base = base.base
    return type(base) is bytes


NUMPY: Final = NumpyBackend()

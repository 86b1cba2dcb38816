"""Leaves a pytree transformation puts in a context that are not arrays.

``jax.tree_util.tree_map(lambda x: None, ctx)``, ``jax.eval_shape`` and jax's own
internals rebuild a context around any object; such a value is stored as it is, with
the shape it has (or the one its entry had), and shown by its ``repr``.

Reading map:
- :data:`OPAQUE` -- the backend.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from torchlean._text import short_repr
from torchlean.errors import BackendError
from torchlean.runtime.backends._base import NO_DEVICE, Backend
from torchlean.runtime.dtypes import dtype_name

__all__ = ["OPAQUE"]


class _OpaqueBackend(Backend):
    name = "opaque"

    def dtype_name(self, x: Any) -> str:
        try:
            return dtype_name(x.dtype)
        except (AttributeError, TypeError):
            return type(x).__name__

    def device(self, x: Any) -> str:
        return NO_DEVICE

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        return None

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        raise BackendError(f"{type(x).__name__} {short_repr(x)} is not an array")

    def stand_in(self, x: Any) -> str:
        return short_repr(x)

    def add(self, a: Any, b: Any) -> Any:
        raise BackendError(f"cannot add {type(a).__name__} and {type(b).__name__}")


OPAQUE: Final = _OpaqueBackend()

"""The JAX backend: arrays are immutable, so they are stored as they are.

Reading map:
- :class:`JaxBackend` -- the backend (built on the first jax array a context sees).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from torchlean.errors import BackendError
from torchlean.runtime.backends._base import TRACED, Backend, numpy_nonfinite
from torchlean.runtime.backends._update import Update, Updated, UpdateRule
from torchlean.runtime.dtypes import dtype_name

__all__ = ["JaxBackend"]


class JaxBackend(Backend):
    name = "jax"
    differentiable = True

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        self.jax = jax
        self.jnp = jnp
        self._tracer = jax.core.Tracer

    def dtype_name(self, x: Any) -> str:
        return dtype_name(x.dtype)

    def device(self, x: Any) -> str:
        if isinstance(x, self._tracer):
            return TRACED
        try:
            devices = x.devices()
        except Exception:  # pragma: no cover - any other abstract value
            return TRACED
        return ",".join(sorted({_device_name(d) for d in devices}))

    def is_traced(self, x: Any) -> bool:
        """True for a tracer (a value inside ``jax.jit`` / ``jax.grad``)."""
        return isinstance(x, self._tracer)

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        if isinstance(x, self._tracer) or x.is_deleted():
            return None
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        array = self.data(x)
        if array is None:
            raise BackendError(f"{self.stand_in(x)} has no data to read")
        return array

    def from_numpy(self, array: np.ndarray[Any, Any], what: str) -> Any:
        x64 = self.jax.config.read("jax_enable_x64")  # type: ignore[no-untyped-call]
        if array.dtype.itemsize == 8 and not x64:
            raise BackendError(
                f"{what} has dtype {array.dtype.name} but JAX is running without 64-bit"
                " types and would silently cast it; enable them first with"
                ' jax.config.update("jax_enable_x64", True), or load with backend="numpy"'
            )
        return self.jnp.asarray(array)

    def stand_in(self, x: Any) -> str:
        if isinstance(x, self._tracer):
            kind = "traced"
        elif x.is_deleted():
            kind = "deleted jax array"
        else:  # pragma: no cover - only values without data get here
            kind = "jax array"
        return f"<{kind} {self.dtype_name(x)} {self.dims(x)}>"

    def nonfinite(self, x: Any) -> tuple[int, int]:
        if isinstance(x, self._tracer) or x.is_deleted():
            return (0, 0)
        if self.device(x) == "cpu":
            return numpy_nonfinite(np.asarray(x))  # a view: no copy on the host
        jnp = self.jnp
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return (0, 0)
        # Counted where the array lives: a GPU array is not copied to the host.
        return (int(jnp.isnan(x).sum()), int(jnp.isinf(x).sum()))

    def zeros_like(self, x: Any) -> Any:
        return self.jnp.zeros_like(x)

    def scalar(self, value: float | int, dtype: str, like: Any) -> Any:
        return self.jnp.asarray(value, dtype=dtype)

    # jax runs without 64-bit integers by default: counters (and checkpoints) use int32
    counter_dtype = "int32"

    def updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """The optimizer's maths on ``jax.numpy`` as one jitted call (compiled on the first
        update); ``donate=True`` donates the parameters, slots, steps and count."""
        jnp = self.jnp

        def pure(
            params: list[Any],
            grads: list[Any],
            slots: dict[str, list[Any]],
            steps: list[Any],
            count: Any,
        ) -> Updated:
            return rule.arrays(jnp, Update(params, grads, slots, steps, count))

        jitted = self.jax.jit(pure, donate_argnums=(0, 2, 3, 4) if donate else ())

        def update(arrays: Update) -> Updated:
            return jitted(*arrays)  # type: ignore[no-any-return]

        return update

    def value_and_grad(
        self, fn: Callable[[list[Any]], Any], values: list[Any], *, has_aux: bool
    ) -> tuple[Any, list[Any]]:
        """``jax.value_and_grad`` over the list ``values`` (traceable by ``jax.jit``)."""
        out, grads = self.jax.value_and_grad(fn, has_aux=has_aux)(values)
        return out, list(grads)

    def jit(self, fn: Callable[..., Any], *, donate_argnums: tuple[int, ...]) -> Any:
        """``jax.jit(fn, donate_argnums=donate_argnums)``."""
        return self.jax.jit(fn, donate_argnums=donate_argnums)

    def array_namespace(self) -> Any:
        """``jax.numpy``."""
        return self.jnp

    def buffer_range(self, x: Any) -> tuple[Hashable, int, int] | None:
        """``(device, first byte, one past the last)`` of a single-device array's
        buffer; a sharded array stands for its own buffers (``(id, 0, 1)``). ``None`` for
        a tracer, a deleted or an empty array. Donating one buffer twice, or one another
        entry still holds, is what this guards against."""
        if isinstance(x, self._tracer) or x.is_deleted() or x.size == 0:
            return None
        try:
            start = int(x.unsafe_buffer_pointer())
        except Exception:  # sharded over several devices: no single pointer
            return (("jax", id(x)), 0, 1)
        return (self.device(x), start, start + int(x.nbytes))

    def copy(self, x: Any) -> Any:
        """``jnp.array(x, copy=True)`` (a new buffer)."""
        return self.jnp.array(x, copy=True)

    def adopt_all(self, values: list[Any]) -> list[Any]:
        """The values as they are (jax arrays are immutable)."""
        return list(values)


def _device_name(device: Any) -> str:
    platform = device.platform
    if platform == "cpu":
        return "cpu"
    index = getattr(device, "local_hardware_id", None)
    if index is None:
        index = device.id
    if platform in ("gpu", "cuda", "rocm"):
        platform = "cuda"  # torch calls NVIDIA and AMD GPUs alike "cuda"
    return f"{platform}:{index}"

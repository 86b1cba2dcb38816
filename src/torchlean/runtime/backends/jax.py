"""The JAX backend: arrays are immutable, so they are stored as they are.

Reading map:
- :class:`JaxBackend` -- the backend (built on the first jax array a context sees).
"""

from __future__ import annotations

import itertools
import operator
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
        """The values as numpy; for an array that is not fully addressable (several
        processes), this process's block (:meth:`local_value`), never a gather."""
        if isinstance(x, self._tracer) or x.is_deleted():
            return None
        if not x.is_fully_addressable:
            return _local_array(x)
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        if not isinstance(x, self._tracer) and not x.is_deleted() and not x.is_fully_addressable:
            raise BackendError(
                f"a jax array {self.dims(x)} sharded as {self.placement(x)} holds values"
                " on several processes; torchlean never gathers them behind your back."
                ' Save it with io.save(ctx, DIR, format="orbax") on every process, or'
                " read this process's part through x.addressable_shards"
            )
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
        if not x.is_fully_addressable:  # this process's block only
            return numpy_nonfinite(_local_array(x))
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
        if not donate:
            return lambda arrays: jitted(*arrays)
        kept = self.jax.jit(pure)
        tracer = self._tracer

        def update(arrays: Update) -> Updated:
            # Under a transformation outside jax.jit (jax.grad or jax.vmap of a function
            # that steps) the arrays mix tracers and concrete arrays; donating the concrete
            # ones deletes what the backward pass reads again ("Array has been deleted").
            # Inside jax.jit donation is a no-op anyway: never donate next to a tracer.
            params, grads, slots, steps, count = arrays
            traced = isinstance(count, tracer) or any(
                map(
                    isinstance,
                    itertools.chain(params, grads, steps, *slots.values()),
                    itertools.repeat(tracer),
                )
            )
            return (kept if traced else jitted)(*arrays)  # type: ignore[no-any-return]

        return update

    def value_and_grad(
        self,
        fn: Callable[[list[Any]], Any],
        values: list[Any],
        *,
        has_aux: bool,
        unreached: Callable[[bool], Exception] | None = None,
    ) -> tuple[Any, list[Any]]:
        """``jax.value_and_grad`` over the list ``values`` (traceable by ``jax.jit``);
        ``unreached`` is ignored (a traced loss does not tell what it depends on).

        Outside ``jax.jit``, a gradient of a variable sharded over several devices is
        laid out as its variable (``jax.device_put(grad, var.sharding)``): jax's eager
        differentiation may return another layout (replicated), which the optimizer
        step refuses."""
        out, grads = self.jax.value_and_grad(fn, has_aux=has_aux)(values)
        grads = list(grads)
        tracer = self._tracer
        for i, (g, v) in enumerate(zip(grads, values, strict=True)):
            if isinstance(g, tracer) or isinstance(v, tracer):
                continue
            layout = v.sharding
            if layout.num_devices > 1 and g.sharding != layout:
                grads[i] = self.jax.device_put(g, layout)
        return out, grads

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

    # ------------------------------------------------------------------ distribution
    #
    # A jax.Array may be sharded over several devices (one process, or several with
    # jax.distributed). Nothing here gathers: values are read from this process's
    # addressable shards, each replicated piece once.

    def _sharded(self, x: Any) -> bool:
        """True for a concrete array laid out over more than one device."""
        if isinstance(x, self._tracer) or x.is_deleted():
            return False
        return len(x.sharding.device_set) > 1

    def placement(self, x: Any) -> str | None:
        """The sharding of an array over more than one device, as text:
        ``"P('x', 'y') on Mesh('x': 4, 'y': 2, axis_types=(Explicit, Explicit))"`` for a
        ``NamedSharding`` (trailing unsharded axes dropped, so equal layouts compare
        equal), ``str(sharding)`` for any other kind; ``None`` on one device or for a
        tracer."""
        if not self._sharded(x):
            return None
        sharding = x.sharding
        spec = getattr(sharding, "spec", None)
        mesh = getattr(sharding, "mesh", None)
        if spec is None or mesh is None:
            return str(sharding)
        axes = list(spec)
        while axes and axes[-1] is None:
            axes.pop()
        text = ", ".join(repr(a) for a in axes)
        return f"P({text}) on {mesh}"

    def local_dims(self, x: Any) -> tuple[int, ...] | None:
        """The shape of the block this process's shards cover, or ``None`` when the
        array is fully addressable (this process holds all of it)."""
        if not self._sharded(x) or x.is_fully_addressable:
            return None
        return _local_block(x)[0]

    def local_value(self, x: Any) -> Any:
        """The values this process holds, as a numpy array: the block its addressable
        shards cover (each replicated piece read once), or the whole array when it is
        fully addressable. Never a collective. Cost: O(local size) host copy (device
        to host for an accelerator)."""
        if not self._sharded(x):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        return _local_array(x)

    def nonfinite_owned(self, x: Any) -> tuple[int, int]:
        """The NaN and infinity counts of the shards this process is the first holder of
        (the lowest device id holding that piece): summed over every process they count
        each global element once."""
        if not self._sharded(x):
            return self.nonfinite(x)
        if x.is_fully_addressable and self.jax.process_count() == 1:
            return self.nonfinite(x)
        owner: dict[tuple[tuple[int, int], ...], int] = {}
        for device, index in x.sharding.devices_indices_map(x.shape).items():
            key = _box(index, x.shape)
            owner[key] = min(owner.get(key, device.id), device.id)
        nan = inf = 0
        for shard in x.addressable_shards:
            if owner[_box(shard.index, x.shape)] == shard.device.id:
                n, i = numpy_nonfinite(np.asarray(shard.data))
                nan, inf = nan + n, inf + i
        return (nan, inf)

    def all_reduce_sum(self, counts: list[int]) -> tuple[list[int], int] | None:
        """``counts`` summed over the jax processes
        (``multihost_utils.process_allgather``, int64 on the host side), and their
        number; in one process, ``counts`` as they are. A collective when there are
        several processes and ``counts`` is not empty."""
        world = int(self.jax.process_count())
        if world == 1 or not counts:
            return list(counts), world
        from jax.experimental import multihost_utils

        rows = multihost_utils.process_allgather(np.asarray(counts, dtype=np.int32))
        summed = np.asarray(rows, dtype=np.int64).reshape(world, len(counts)).sum(axis=0)
        return [int(v) for v in summed], world

    def local_scope(self) -> str | None:
        """``"process P of N"`` under ``jax.distributed`` with several processes."""
        world = int(self.jax.process_count())
        if world == 1:
            return None
        return f"process {self.jax.process_index()} of {world}"

    def placements(self, values: list[Any]) -> list[str | None]:
        """:meth:`placement` of each value; arrays that all sit on one device each (a
        ``SingleDeviceSharding``: what a jitted update on one device returns) are
        answered from their shardings in C-level loops, 12x faster than one by one
        (tracers, which have no sharding, and other shardings go one by one). Cost:
        O(n)."""
        single = self.jax.sharding.SingleDeviceSharding
        try:
            shardings = list(map(_SHARDING, values))
        except AttributeError:  # a tracer: no sharding to read
            return list(map(self.placement, values))
        if set(map(type, shardings)) == {single}:  # types: no sharding's own __eq__
            return [None] * len(values)
        return list(map(self.placement, values))

    def shape_keys(self, values: list[Any]) -> list[Any] | None:
        """The avals, read in a C-level loop (twice as fast as the shapes): jax keeps one
        aval object per shape, dtype and sharding, so the outputs of a jitted function
        have the same objects at every call. ``None`` for values without one. Cost:
        O(n)."""
        try:
            return list(map(_AVAL, values))
        except AttributeError:
            return None


_SHARDING = operator.attrgetter("sharding")
_AVAL = operator.attrgetter("aval")


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


def _box(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A shard's index (slices) as ``((start, stop), ...)`` per axis."""
    return tuple(
        (s.start or 0, size if s.stop is None else s.stop)
        for s, size in zip(index, shape, strict=True)
    )


def _local_block(x: Any) -> tuple[tuple[int, ...], tuple[int, ...], list[Any]]:
    """``(shape, origin, shards)`` of the block this process's addressable shards
    cover, one shard per distinct piece. Raises :class:`BackendError` when the pieces
    do not tile one block (no single local array can stand for them)."""
    shape = tuple(x.shape)
    pieces: dict[tuple[tuple[int, int], ...], Any] = {}
    for shard in x.addressable_shards:
        pieces.setdefault(_box(shard.index, shape), shard)
    if not pieces:  # pragma: no cover - a process always holds a shard of its arrays
        raise BackendError("this process holds no shard of the array")
    starts = tuple(min(b[a][0] for b in pieces) for a in range(len(shape)))
    stops = tuple(max(b[a][1] for b in pieces) for a in range(len(shape)))
    dims = tuple(stop - start for start, stop in zip(starts, stops, strict=True))
    covered = sum(int(np.prod([e - s for s, e in b])) for b in pieces)
    if covered != int(np.prod(dims)):
        raise BackendError(
            f"the shards this process holds of a {shape} array do not form one block;"
            " read them one by one through x.addressable_shards"
        )
    return dims, starts, list(pieces.items())


def _local_array(x: Any) -> np.ndarray[Any, Any]:
    """This process's block of ``x`` (:func:`_local_block`) assembled on the host."""
    dims, origin, pieces = _local_block(x)
    out = np.empty(dims, dtype=x.dtype)
    for box, shard in pieces:
        at = tuple(slice(s - o, e - o) for (s, e), o in zip(box, origin, strict=True))
        out[at] = np.asarray(shard.data)
    return out

"""The :class:`Backend` interface every array library implements.

Reading map:
- :class:`Backend` -- storing (``freeze``, ``adopt``, ``version``, ``check_intact``),
  describing (``dims``, ``dtype_name``, ``device``, ``stand_in``), converting
  (``data``, ``to_numpy``, ``from_numpy``), computing (``nonfinite``, ``add``,
  ``zeros_like``) and training (``updater``, ``value_and_grad``, ``jit``, ``rng_state``:
  what the optimizers, autograd and the training loop ask of a library).
- :data:`UNKNOWN_DEVICES` -- device names that stand for "no device".
- :func:`numpy_nonfinite` -- NaN and infinity counts of a numpy array.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from torchlean.errors import BackendError
from torchlean.runtime.dtypes import EXTENDED_FLOATS, dtype_name

if TYPE_CHECKING:
    from torchlean.runtime.backends._update import Update, Updated, UpdateRule

__all__ = ["NO_DEVICE", "TRACED", "UNKNOWN_DEVICES", "Backend", "numpy_nonfinite"]

#: The device of a traced value (under ``jax.jit`` / ``jax.grad``): not known.
TRACED: Final = "traced"
#: The device of an opaque pytree leaf (``None``, a ``ShapeDtypeStruct``...).
NO_DEVICE: Final = "none"
#: Device names that stand for "no device"; ``check()`` leaves them out.
UNKNOWN_DEVICES: Final = frozenset({TRACED, NO_DEVICE})


class Backend:
    """How one array library's tensors are stored, checked, converted and rendered.

    Subclasses override what differs; the defaults fit an immutable array library
    whose arrays numpy can read (``np.asarray``).
    """

    name: str = "?"
    #: True when stored values carry a version that must be checked on every read.
    versioned: bool = False
    #: True when the library can differentiate (``torchlean.autograd``).
    differentiable: bool = False
    #: True when an optimizer state keeps one step counter shared by the parameters that
    #: step together (an :class:`Update` whose ``steps`` is one array); False for a
    #: library whose updater takes a counter per parameter (torch: views of one buffer,
    #: incremented by one kernel).
    shared_step_counter: bool = True

    # ------------------------------------------------------------------ storing

    def freeze(self, x: Any) -> Any:
        """Return the value a context stores for ``x`` (a protected copy or ``x``)."""
        return x

    def adopt(self, x: Any) -> Any:
        """Like :meth:`freeze`, for a fresh value nobody else holds (no copy)."""
        return self.freeze(x)

    def version(self, x: Any) -> int | None:
        """The version counter of a stored value, or ``None`` when it has none."""
        return None

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        """Raise when the stored value was written in place since it was stored."""

    # ------------------------------------------------------------------ describing

    def dims(self, x: Any) -> tuple[int, ...]:
        return tuple(int(d) for d in x.shape)

    def dtype_name(self, x: Any) -> str:
        return dtype_name(x.dtype)

    def device(self, x: Any) -> str:
        """The canonical device name: ``"cpu"``, ``"cuda:0"``, ``"meta"``..."""
        return "cpu"

    def stand_in(self, x: Any) -> str:
        """A short text standing for ``x`` where its values cannot be shown."""
        return f"<{self.name} {self.dtype_name(x)} {self.dims(x)} on {self.device(x)}>"

    def is_contiguous(self, x: Any) -> bool:
        """True when ``x``'s elements lie in one dense row-major block."""
        return True

    # ------------------------------------------------------------------ converting

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        """The values of ``x`` as numpy, or ``None`` when ``x`` has none to read.

        A tensor on another device is copied to the host; ``x`` itself never moves.
        Cost: O(size) for a copy.
        """
        return self.to_numpy(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        """A numpy copy or view of ``x`` for rendering and saving (never moves ``x``).

        Raises :class:`~torchlean.errors.BackendError` for a value without data (a
        meta tensor, a tracer).
        """
        return np.asarray(x)

    def from_numpy(self, array: np.ndarray[Any, Any], what: str) -> Any:
        """A value of this library holding ``array``'s elements, ready to store.

        The caller gives ``array`` up (it may be reused without a copy). ``what`` names
        the entry in errors.
        """
        raise BackendError(f"{what}: the {self.name} backend cannot build arrays from numpy")

    # ------------------------------------------------------------------ computing

    def nonfinite(self, x: Any) -> tuple[int, int]:
        """The number of NaN and of infinite elements of ``x`` ((0, 0) without data).

        Cost: O(size).
        """
        array = self.data(x)
        if array is None:
            return (0, 0)
        return numpy_nonfinite(array)

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def zeros_like(self, x: Any) -> Any:
        """A fresh array of zeros with ``x``'s shape, dtype and device."""
        raise BackendError(f"the {self.name} backend cannot make arrays")

    def scalar(self, value: float | int, dtype: str, like: Any) -> Any:
        """A fresh 0-d array of ``dtype`` holding ``value``, on ``like``'s device."""
        raise BackendError(f"the {self.name} backend cannot make arrays")

    # ------------------------------------------------------------------ training

    #: The dtype of step counters (an optimizer's ``count``, a checkpoint's step).
    counter_dtype: str = "int64"

    def buffer_range(self, x: Any) -> tuple[Hashable, int, int] | None:
        """The memory ``x``'s elements lie in: ``(space, first byte, one past the last)``.

        Two values whose ranges in one ``space`` (an address space: a device) intersect
        may share elements. ``None`` when ``x`` has no elements, no data, or is never
        written in place (an in-place update compares these ranges, see
        :mod:`torchlean.optim`). Cost: O(ndim).
        """
        return None

    def updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """A function that runs one update of the optimizer ``rule`` on this library.

        ``donate=True``: it may write the parameters, slots, steps and count it is given
        in place (their owners are donated by the caller). Build it once per optimizer
        (a jax backend compiles it on the first call).
        """
        raise BackendError(f"the {self.name} backend cannot run optimizer updates")

    def value_and_grad(
        self,
        fn: Callable[[list[Any]], Any],
        values: list[Any],
        *,
        has_aux: bool,
        unreached: Callable[[bool], Exception] | None = None,
    ) -> tuple[Any, list[Any]]:
        """``(fn(values), gradient of its scalar loss with respect to each value)``.

        ``fn`` returns the loss, or ``(loss, aux)`` with ``has_aux``; a value the loss
        does not depend on gets zeros. The library's own autograd does the work.
        ``unreached``: where the library can tell that the loss depends on none of
        ``values`` (there being some), ``unreached(other)`` is raised instead, ``other``
        saying whether the loss depends on other differentiable arrays (parameters
        captured from outside, or swapped in by a module such as FSDP2's); libraries that
        cannot tell (a traced jax value) ignore it.
        """
        raise BackendError(f"the {self.name} backend has no autograd")

    def jit(self, fn: Callable[..., Any], *, donate_argnums: tuple[int, ...]) -> Any:
        """``fn`` compiled by the library (its arguments ``donate_argnums`` donated), or
        ``None`` when the library runs eagerly."""
        return None

    def to_device(self, x: Any, device: str) -> Any:
        """``x`` on ``device`` (a canonical name, see :meth:`device`): ``x`` itself when it
        is there or the library places arrays itself, else a copy."""
        return x

    def rng_state(self) -> np.ndarray[Any, Any] | None:
        """The library's global random state as bytes (``None`` when it keeps none)."""
        return None

    def set_rng_state(self, state: Any) -> None:
        """Restore a global random state :meth:`rng_state` returned (as saved and loaded)."""

    def device_rng_state(self) -> np.ndarray[Any, Any] | None:
        """The random state of every accelerator the library has started, one row per
        device (``None`` when it keeps none or started none)."""
        return None

    def set_device_rng_state(self, state: Any) -> None:
        """Restore what :meth:`device_rng_state` returned (one row per device)."""

    def copy(self, x: Any) -> Any:
        """A fresh copy of ``x`` (same shape, dtype and device) sharing no memory with it."""
        return np.array(x, copy=True)

    def array_namespace(self) -> Any:
        """The module of numpy-like functions (``where``, ``minimum``, ``cos``...) that
        accept this library's arrays, traced ones included (numpy by default)."""
        return np

    # ------------------------------------------------------------------ bulk (fast paths)

    def adopt_all(self, values: list[Any]) -> list[Any]:
        """:meth:`adopt` of each value (fresh results an optimizer step hands a context)."""
        return [self.adopt(x) for x in values]

    def scalars(self, value: float | int, dtype: str, likes: list[Any]) -> list[Any]:
        """A fresh 0-d array of ``dtype`` holding ``value`` on each of ``likes``' devices
        (an optimizer's per-parameter step counters). Cost: O(len(likes))."""
        return [self.scalar(value, dtype, x) for x in likes]

    def zeros_like_all(self, values: list[Any]) -> list[Any]:
        """:meth:`zeros_like` of each value; a library with flat buffers gives values that
        tile one buffer zeros that tile one buffer too (see :meth:`flat_base`)."""
        return [self.zeros_like(x) for x in values]

    def flat_base(self, values: list[Any]) -> Any | None:
        """The one contiguous 1-d buffer that ``values`` (views of it, in order) tile
        exactly, or ``None`` when they do not (or the library has no views)."""
        return None

    def flatten(self, values: list[Any]) -> list[Any]:
        """Copies of ``values`` that are views tiling one fresh contiguous buffer, in order
        (same shapes, dtype and device; see :func:`torchlean.optim.flatten`)."""
        raise BackendError(
            f"the {self.name} backend keeps no flat buffers (flat storage needs torch tensors)"
        )

    def planned_updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """An updater like :meth:`updater` for a caller that hands it the same layout step
        after step (a cached plan, :mod:`torchlean.optim._plan`): it may remember what it
        learns about the tensors (groups, flat buffers) while they stay the same."""
        return self.updater(rule, donate=donate)

    def capture(self, fn: Callable[[], Any], *, like: Any) -> tuple[Any, Callable[[], None]] | None:
        """Record the kernels ``fn`` launches, once, for replay (a CUDA graph on torch
        CUDA tensors): ``(what fn returned, replay)``, or ``None`` when the library cannot
        record on ``like``'s device (``fn`` is then not called). A replay reruns the
        kernels on the same memory and runs no Python."""
        return None

    def bump_versions(self, values: list[Any]) -> None:
        """Record a write to each value done behind the library's back (a replayed
        recording): every context holding one of them then refuses to read it."""

    def version_space(self, x: Any) -> Hashable | None:
        """What ``x`` shares its version counter with (tensors with equal keys may bump
        each other's counter with any write), or ``None`` for a library without version
        counters."""
        return None

    def copy_into(self, dst: Any, src: Any) -> None:
        """Write ``src``'s elements into ``dst`` (same shape and dtype)."""
        raise BackendError(f"the {self.name} backend cannot write arrays in place")

    # ------------------------------------------------------------------ distribution

    def placement(self, x: Any) -> str | None:
        """How ``x`` is laid out over processes (a DTensor's placements and mesh), or
        ``None`` for a value that lives in one process. Equal texts mean equal layouts:
        a library that overrides this method has ``check()`` and the optimizer step
        compare a gradient's with its variable's, and its cached step plans compare
        every tensor's at every step (:mod:`torchlean.optim._plan`)."""
        return None

    def local_dims(self, x: Any) -> tuple[int, ...] | None:
        """The shape of the part of ``x`` this process holds, or ``None`` when it holds
        all of it (always when :meth:`placement` is ``None``; also for a jax array
        sharded over the devices of this one process)."""
        return None

    def local_value(self, x: Any) -> Any:
        """The part of ``x`` this process holds, as a value of a single-process library
        (``x`` itself by default)."""
        return x

    def nonfinite_owned(self, x: Any) -> tuple[int, int]:
        """The NaN and infinity counts this process contributes to a count summed over
        processes (:meth:`all_reduce_sum`): each global element counted once."""
        return self.nonfinite(x)

    def all_reduce_sum(self, counts: list[int]) -> tuple[list[int], int] | None:
        """``counts`` summed over every process of the default group and the number of
        processes, or ``None`` when the library runs no process group (a collective:
        every process must call it)."""
        return None

    def local_scope(self) -> str | None:
        """Which process this is (``"rank 0 of 2"``), or ``None`` outside a process
        group."""
        return None

    def note_written(self, values: list[Any], by: str) -> None:
        """Remember that ``by`` (an in-place optimizer step) just wrote ``values``, so that
        a later read through another context that shares them can say so (see
        :meth:`check_intact`). Nothing by default."""

    def clip_by_global_norm(self, arrays: list[Any], max_norm: float) -> tuple[list[Any], Any]:
        """``(arrays scaled so that their global 2-norm is at most max_norm, that norm)``,
        as ``torch.nn.utils.clip_grad_norm_``: the factor is ``max_norm / (norm + 1e-6)``
        clamped at 1. Fresh arrays; the given ones are not written. Cost: O(total size)."""
        xp = self.array_namespace()
        if not arrays:
            return [], xp.asarray(0.0, dtype=np.float32)
        norms = [xp.sqrt(xp.sum(xp.square(xp.ravel(a)))) for a in arrays]
        total = xp.sqrt(xp.sum(xp.stack([n.astype(norms[0].dtype) for n in norms]) ** 2))
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        return [a * coef.astype(a.dtype) for a in arrays], total

    def reaches(self, loss: Any) -> bool:
        """Whether ``loss`` (computed inside :meth:`value_and_grad`, before it returns)
        depends on at least one of the differentiated values; True where the library
        cannot tell (a traced jax value)."""
        return True

    def all_reduce(self, values: list[Any], *, mean: bool) -> list[Any]:
        """``values`` summed (``mean``: averaged) over every process of the default group,
        one collective per (device, dtype); fresh arrays. Raises
        :class:`~torchlean.errors.BackendError` where the library runs no process group."""
        raise BackendError(
            f"value_and_grad(reduce=...): the {self.name} backend cannot reduce across"
            " processes; data-parallel reduction runs on torch tensors in a"
            " torch.distributed process group"
        )

    def stores_as_is(self, source: Backend) -> bool:
        """Whether a value of ``source``'s library is stored by this backend as it is,
        where a reader asks for this backend's values (no conversion through numpy).
        True for ``source is self``; the torch backend also keeps DTensors (they are
        torch tensors whose values span processes, which numpy cannot hold)."""
        return source is self

    def pending_reduction(self, gradient: Any, variable: Any) -> bool:
        """Whether ``gradient`` is laid out like ``variable`` except for reductions still
        pending (a DTensor's ``Partial`` placements where the variable has another), so
        that :meth:`reduce_pending` gives it the variable's layout. False by default (a
        library without such layouts). Not a collective."""
        return False

    def reduce_pending(self, gradients: list[Any], variables: list[Any]) -> list[Any]:
        """Each gradient with its pending reductions done, laid out as its variable
        (see :meth:`pending_reduction`); fresh arrays. A collective: every process calls
        it with the same gradients in the same order."""
        raise BackendError(f"the {self.name} backend has no pending reductions to do")

    def copy_all(self, values: list[Any]) -> list[Any]:
        """:meth:`copy` of each value (the buffers ``value_and_grad(has_state=True)`` hands
        a loss). Cost: O(total elements)."""
        return [self.copy(x) for x in values]

    def placements(self, values: list[Any]) -> list[str | None]:
        """:meth:`placement` of each value (what a cached step plan compares at every
        step); a library may answer faster in bulk, never otherwise. Cost: O(n)."""
        return list(map(self.placement, values))

    def shape_keys(self, values: list[Any]) -> list[Any] | None:
        """For each value an object that only values of one shape share, read faster
        than the shape (jax: the aval, one object per shape and dtype), or ``None``
        (the default) where the library has none. A caller that remembers the keys of
        values whose shapes it read compares later keys by identity instead of reading
        shapes again. Cost: O(n) C-level steps."""
        return None

    def intact_copies(self, values: list[Any], dims: list[tuple[int, ...]]) -> bool:
        """Whether ``values`` (copies made by :meth:`copy_all`, handed to a loss and
        returned by it) still have ``dims`` and carry no autograd history, so that a
        context may store them as they are. Cost: O(len(values))."""
        return list(map(self.dims, values)) == dims


def numpy_nonfinite(array: np.ndarray[Any, Any]) -> tuple[int, int]:
    """The NaN and infinity counts of a numpy array (extended floats included)."""
    if array.dtype.kind not in "fc" and array.dtype.name not in EXTENDED_FLOATS:
        return (0, 0)
    nan = int(np.count_nonzero(np.isnan(array)))
    inf = int(np.count_nonzero(np.isinf(array)))
    return (nan, inf)

"""The whole training step recorded once and replayed: :class:`CapturedStep` (opt-in).

A training step of a small model on a GPU is mostly Python launching kernels. When the
shapes never change, the library can record the kernels of one step and replay them
(:meth:`~torchlean.runtime.backends.Backend.capture`: a CUDA graph on torch CUDA
tensors); a replay runs no Python at all. :class:`CapturedStep` runs the first
``warmup`` steps eagerly (they settle the optimizer's layout: step counters gathered
into one buffer, the plan made), records the next one and replays it from then on.

The promises of the contexts are kept around the replay: each call checks that it is
given the contexts the previous call returned, unwritten (a tensor written in place is
refused as everywhere), copies the batch into the recorded inputs (shapes and dtypes
fixed: another shape raises), bumps the version counters of every tensor the replay
wrote (so that older contexts sharing them refuse to be read) and returns new contexts
(the ones given are donated, as by the eager step). Any other context, or a library or
device that cannot record, runs the eager step instead.

Reading map:
- :class:`CapturedStep` -- ``step(ctx, state, batch) -> (loss, ctx', state')``.
- ``_Recording`` -- the recorded step: its inputs, outputs and ``replay``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torchlean.autograd import value_and_grad
from torchlean.errors import DTypeMismatchError, ShapeMismatchError, TorchLeanError
from torchlean.optim import Optimizer
from torchlean.runtime import _bulk
from torchlean.runtime.backends import Backend, backend_of
from torchlean.runtime.context import RuntimeContext
from torchlean.runtime.context import donate as donate_context

__all__ = ["CapturedStep"]

Context = RuntimeContext[Any]


class _Recording:
    """A recorded step: the contexts it returned last, its inputs and its outputs."""

    __slots__ = (
        "batch",
        "constants",
        "ctx",
        "keys",
        "last",
        "library",
        "loss",
        "names",
        "replay",
        "state",
        "written",
    )

    def __init__(
        self,
        library: Backend,
        batch: list[Any],
        constants: list[Any],
        loss: Any,
        replay: Callable[[], None],
        ctx: Context,
        state: Context,
    ) -> None:
        self.library = library
        self.batch = batch  # the recorded input arrays (None where an argument is constant)
        #: the non-array arguments, baked into the recording: (the value given, a copy of
        #: it when == compares it by value, else None: then only that object is accepted)
        self.constants = constants
        self.loss = loss
        self.replay = replay
        self.ctx = ctx
        self.state = state
        self.names = list(_bulk.latest_names(ctx, gradients=True))
        self.keys = list(_bulk.latest_names(state))
        #: what the last replay wrote (the next one, handed those contexts, only checks
        #: versions) and the tensors every replay writes
        self.last: tuple[Any, Any, Any] = (None, None, None)
        self.written: list[Any] | None = None

    def step(
        self, ctx: Context, state: Context, args: tuple[Any, ...]
    ) -> tuple[Any, Context, Context] | None:
        """One replay, or ``None`` when these are not the contexts it returned last (or a
        tensor of theirs was written in place: the eager step then says which)."""
        if ctx is not self.ctx or state is not self.state:
            return None
        names, keys = self.names, self.keys
        last = self.last
        params = _bulk.heads(ctx, names, last=last[0])
        grads = _bulk.heads(ctx, names, gradients=True, last=last[1])
        entries = _bulk.heads(state, keys, last=last[2])
        if params is None or grads is None or entries is None:
            return None
        self._load(args)
        self.replay()
        library = self.library
        written = self.written
        if written is None:
            written = [*params.tensors, *grads.tensors, *entries.tensors, self.loss]
            self.written = written  # the recording writes the same tensors every replay
        library.bump_versions(written)
        new_ctx, wrote_params = _bulk.replace_heads_read(ctx, names, params.tensors, read=params)
        new_ctx, wrote_grads = _bulk.replace_heads_read(
            new_ctx, names, grads.tensors, gradients=True, read=grads
        )
        new_state, wrote_entries = _bulk.replace_heads_read(
            state, keys, entries.tensors, read=entries
        )
        donate_context(ctx, to="captured step")
        donate_context(state, to="captured step")
        self.ctx, self.state = new_ctx, new_state
        self.last = (wrote_params, wrote_grads, wrote_entries)
        return library.copy(self.loss), new_ctx, new_state

    def _load(self, args: tuple[Any, ...]) -> None:
        """Copy the batch into the recorded inputs; shapes, dtypes and constants fixed."""
        if len(args) != len(self.batch):
            raise TorchLeanError(
                f"captured step: it was recorded with {len(self.batch)} batch arguments,"
                f" got {len(args)}"
            )
        library = self.library
        for i, (dst, src, constant) in enumerate(
            zip(self.batch, args, self.constants, strict=True)
        ):
            if dst is None:
                if not _same_constant(src, constant):
                    raise TorchLeanError(
                        f"captured step: batch argument {i} is not an array, so its value"
                        f" {_recorded(constant)!r} was recorded, got {src!r}; pass it as an"
                        " array"
                    )
                continue
            if library.dims(src) != library.dims(dst):
                raise ShapeMismatchError(
                    f"captured step: batch argument {i} has shape {library.dims(src)} but the"
                    f" step was recorded for {library.dims(dst)}; a captured step has fixed"
                    " shapes (use the eager step for a batch of another shape)"
                )
            if library.dtype_name(src) != library.dtype_name(dst):
                raise DTypeMismatchError(
                    f"captured step: batch argument {i} is {library.dtype_name(src)} but the"
                    f" step was recorded for {library.dtype_name(dst)}"
                )
            library.copy_into(dst, src)


def _constant(x: Any, i: int, library: Backend) -> tuple[Any, Any]:
    """``(x, a copy of x)`` for a non-array batch argument whose ``==`` compares values
    (a number, a string, a list of them: a later call's value, or the same list mutated
    in place, is compared with the copy); ``(x, None)`` for one compared by identity (a
    module, a function). A value whose ``==`` is not a bool (a numpy array: the recording
    would bake its elements) is refused. An object whose type keeps ``object``'s ``==``
    is compared by identity without being copied (a module is not deep-copied)."""
    equality: object = type(x).__eq__
    if equality is object.__eq__:
        return x, None
    try:
        snapshot = copy.deepcopy(x)
        equal = snapshot == x
    except Exception:  # not copyable, or == raises (a dataclass holding tensors)
        return x, None
    if not isinstance(equal, bool):
        raise TorchLeanError(
            f"captured step: batch argument {i} is a {type(x).__name__}, not a"
            f" {library.name} array, and == does not compare it to a bool, so a replay"
            " could not tell a new value from the recorded one; pass it as a"
            f" {library.name} array"
        )
    return x, (snapshot if equal and snapshot is not x else None)


def _same_constant(x: Any, constant: tuple[Any, Any]) -> bool:
    """Whether ``x`` may replay the recording made with ``constant`` (see :func:`_constant`)."""
    given, snapshot = constant
    if snapshot is None:
        return x is given
    try:
        equal = x == snapshot
    except Exception:
        return False
    return equal is True


def _tensors(ctx: Context, state: Context) -> dict[str, int]:
    """The identity of each variable of ``ctx`` and ``state`` (by name), to tell an
    in-place step (the same tensors out as in) from one that wrote new ones."""
    out = {f"ctx/{name}": id(entry.unchecked) for name, entry in ctx.latest_variables()}
    out.update((f"state/{n}", id(e.unchecked)) for n, e in state.latest_variables())
    return out


def _recorded(constant: tuple[Any, Any]) -> Any:
    """The value a non-array batch argument had when the step was recorded."""
    return constant[0] if constant[1] is None else constant[1]


class CapturedStep:
    """``step(ctx, state, batch) -> (loss, ctx', state')``: value_and_grad then the
    optimizer's in-place step, recorded once and replayed (see the module docstring).

    ``warmup`` eager steps come first; a library or device that cannot record (torch
    on the CPU) runs every step eagerly. The optimizer's learning rate must be a number
    (a schedule reads the step count on the host, which a replay cannot).
    """

    def __init__(
        self,
        loss_fn: Callable[..., Any],
        optimizer: Optimizer,
        *,
        frozen: str | tuple[str, ...] = (),
        warmup: int = 2,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "CapturedStep: optimizer must be a torchlean Optimizer,"
                f" got {type(optimizer).__name__}"
            )
        for index, hyper in enumerate((optimizer.hyper, *optimizer.groups.group_hypers)):
            if callable(hyper.lr):
                where = "" if index == 0 else f" of groups[{index - 1}]"
                raise TorchLeanError(
                    f"captured step: the learning rate{where} is a schedule, which reads"
                    " the step count on the host at every step; a recorded step cannot."
                    " Use a number, or the eager step"
                )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise TypeError(
                f"CapturedStep: warmup must be a number of steps (an int >= 0), got {warmup!r}"
            )
        self.grad_fn = value_and_grad(loss_fn, frozen=frozen)
        self.optimizer = optimizer
        self.warmup = warmup
        self._eager_steps = 0
        self._recording: _Recording | None = None
        self._unable: set[tuple[Backend, str]] = set()

    def eager(
        self, ctx: Context, state: Context, args: tuple[Any, ...]
    ) -> tuple[Any, Context, Context]:
        """One step without recording (donating ``ctx`` and ``state``)."""
        value, ctx = self.grad_fn(ctx, *args)
        ctx, state = self.optimizer.step(ctx, state, donate=True)
        return value, ctx, state

    def __call__(
        self, ctx: Context, state: Context, args: tuple[Any, ...]
    ) -> tuple[Any, Context, Context]:
        recording = self._recording
        if recording is not None:
            out = recording.step(ctx, state, args)
            if out is not None:
                return out
            self._recording = None  # other contexts: record again after a warm-up
            self._eager_steps = 0
        if self._eager_steps < self.warmup:
            self._eager_steps += 1
            return self.eager(ctx, state, args)
        return self._record(ctx, state, args)

    def _record(
        self, ctx: Context, state: Context, args: tuple[Any, ...]
    ) -> tuple[Any, Context, Context]:
        variables = ctx.latest_variables()
        if not variables:
            return self.eager(ctx, state, args)
        first = variables[0][1]
        library = first.library
        key = (library, first.device)
        if key in self._unable:
            return self.eager(ctx, state, args)
        batch: list[Any] = []
        constants: list[Any] = []
        for i, x in enumerate(args):
            try:
                is_array = backend_of(x) is library
            except TypeError:
                is_array = False
            batch.append(library.copy(x) if is_array else None)
            constants.append(None if is_array else _constant(x, i, library))
        static_args = tuple(
            b if b is not None else c[0] for b, c in zip(batch, constants, strict=True)
        )
        # what the step reads: a recorded step must write these same tensors (in place),
        # or every replay would read them again as they were when it was recorded
        reads = _tensors(ctx, state)
        box: list[Any] = [ctx, state]

        def one_step() -> Any:
            value, box[0], box[1] = self.eager(box[0], box[1], static_args)
            return value

        captured = library.capture(one_step, like=first.unchecked)
        if captured is None:
            self._unable.add(key)
            return self.eager(ctx, state, args)
        loss, replay = captured
        # The recording ran the Python of one step and launched nothing: run it now.
        recording = _Recording(library, batch, constants, loss, replay, box[0], box[1])
        in_place = _tensors(box[0], box[1]) == reads
        self._recording = recording
        out = recording.step(box[0], box[1], args)
        assert out is not None, "a step just recorded must replay"
        if not in_place:
            # This step wrote new tensors (the first step of a layout: counters gathered
            # into one buffer, the caller's tensors copied): right once, stale if
            # replayed again. Record the next step instead.
            self._recording = None
            self._eager_steps = self.warmup
        return out

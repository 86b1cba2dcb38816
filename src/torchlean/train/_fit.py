"""The training loop: :func:`fit`.

Reading map:
- :func:`fit` -- checks its arguments, resumes, then runs one step per batch.
- :class:`FitResult` -- what it returns.
- ``_make_step`` -- the step: ``value_and_grad`` then ``optimizer.step``, compiled as one
  call where the array library compiles (:meth:`Backend.jit`: jax), recorded and
  replayed with ``capture`` (:class:`~torchlean.train._captured.CapturedStep`).
- ``_Periodic`` -- what runs every so many steps: evaluation and checkpoints.
- ``_batches`` -- the batch of each step from a callable or an iterable.
- ``_Progress`` -- the rich progress bar with the loss and the last evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchlean._validate import require_callable, require_int, require_path
from torchlean.autograd import value_and_grad
from torchlean.errors import FormatError
from torchlean.optim import Optimizer
from torchlean.runtime.backends import Backend
from torchlean.runtime.context import RuntimeContext, claim, require_context
from torchlean.train._captured import CapturedStep
from torchlean.train._checkpoint import (
    checkpoint_name,
    context_library,
    latest_checkpoint,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)

__all__ = ["FitResult", "fit"]

Data = Callable[[int], Any] | Iterable[Any]
Evaluation = Callable[[RuntimeContext[Any]], float | Mapping[str, float]]
Context = RuntimeContext[Any]
StepFn = Callable[[Context, Context, tuple[Any, ...]], tuple[Any, Context, Context]]


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    #: The trained context (its gradients are those of the last step).
    ctx: RuntimeContext[Any]
    #: The optimizer state after the last step.
    state: RuntimeContext[Any]
    #: The number of steps taken in all (including those before a resume).
    step: int
    #: The loss of each step this call ran, as Python floats.
    losses: list[float] = field(default_factory=list)
    #: ``(step, result of eval_fn)`` for each evaluation.
    evaluations: list[tuple[int, Any]] = field(default_factory=list)
    #: The checkpoint files written by this call.
    checkpoints: list[Path] = field(default_factory=list)


def fit(
    ctx: RuntimeContext[Any],
    loss_fn: Callable[..., Any],
    optimizer: Optimizer,
    data: Data,
    *,
    steps: int,
    state: RuntimeContext[Any] | None = None,
    frozen: str | Iterable[str] = (),
    eval_fn: Evaluation | None = None,
    eval_every: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool | str | os.PathLike[str] = False,
    progress: bool = True,
    donate: bool = True,
    jit: bool = True,
    capture: bool = False,
    description: str = "training",
) -> FitResult:
    """Train ``ctx`` for ``steps`` steps in all; return the final context and state.

    Each step computes ``loss_fn(ctx, *batch)`` and its gradients with
    :func:`torchlean.autograd.value_and_grad` (``frozen`` variables get none) and applies
    ``optimizer.step``. ``donate=True`` (default) lets the step update the parameters in
    place: the ``ctx`` and ``state`` you pass are donated (see :mod:`torchlean.optim`);
    with ``donate=False`` they stay valid. On jax contexts the whole step is one
    ``jax.jit`` call when ``jit`` is true (the loss must then be traceable).
    ``capture=True`` (opt-in, needs ``donate=True`` and a number as learning rate)
    records the whole step once and replays it (a CUDA graph on torch CUDA tensors; see
    :class:`~torchlean.train.CapturedStep`): batch shapes must then stay fixed. On jax
    it is the ``jax.jit`` step; where nothing can record (torch on the CPU) the step
    runs eagerly.

    ``eval_fn(ctx)`` runs every ``eval_every`` steps and after the last one.
    ``checkpoint_every`` > 0 writes ``checkpoint_dir/step-NNNNNN.safetensors`` every that
    many steps and after the last one. ``resume=True`` continues from the latest
    checkpoint in ``checkpoint_dir`` (from the start when there is none); a path resumes
    from that file. The checkpoint's tensors must have the names, shapes and dtypes of
    ``ctx`` and of the optimizer state (:class:`~torchlean.errors.ExpectationError`
    otherwise). Lean counterpart: none. Cost: ``steps`` forward/backward passes and
    optimizer steps, plus one file write per checkpoint.
    """
    require_context(ctx, "fit")
    require_callable(loss_fn, "fit", "loss_fn")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            "fit: optimizer must be a torchlean.optim.Optimizer (sgd, adam, adamw),"
            f" got {type(optimizer).__name__}"
        )
    if not isinstance(data, Iterable) and not callable(data):
        raise TypeError(
            f"fit: data must be an iterable of batches or a callable, got {type(data).__name__}"
        )
    require_int(steps, "fit", "steps")
    if state is not None:
        require_context(state, "fit", "state")
    periodic = _Periodic.checked(
        steps=steps,
        eval_fn=eval_fn,
        eval_every=eval_every,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    if resume is True and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if not isinstance(frozen, (str, Iterable)):
        raise TypeError(f"fit: frozen must be a str or an iterable of str, got {frozen!r}")
    frozen_names = (frozen,) if isinstance(frozen, str) else tuple(frozen)

    if state is None:
        state = optimizer.init(ctx)
    start = 0
    source = _resume_source(resume, checkpoint_dir)
    library = context_library(ctx)
    rngs: dict[str, Any] = {}
    if source is not None:
        ctx, state, start, rngs = read_checkpoint(source, ctx, state)
        if "data" in rngs:
            library.set_rng_state(rngs["data"])  # the state the data iterator started from
        else:  # a checkpoint without it: the iterator starts from the step's state
            restore_rng(library, rngs)
    # The data iterator (a shuffling DataLoader draws its order here) starts from this
    # state; checkpoints keep it, so that a resumed run draws the same order.
    periodic.data_rng = library.rng_state()
    batches = _batches(data, start)
    if "data" in rngs:
        restore_rng(library, rngs)  # after skipping the batches already used
    result = FitResult(ctx, state, start)
    if not isinstance(capture, bool):
        raise TypeError(f"fit: capture must be a bool, got {capture!r}")
    if capture and not donate:
        raise ValueError("fit: capture=True replays the step in place, which needs donate=True")
    step_fn = _make_step(
        ctx,
        loss_fn,
        optimizer,
        frozen=frozen_names,
        donate=donate,
        jit=jit or capture,
        capture=capture,
    )
    bar = _Progress(description, steps, start, enabled=progress)
    try:
        for step in range(start, steps):
            batch = next(batches)
            value, ctx, state = step_fn(ctx, state, batch if isinstance(batch, tuple) else (batch,))
            loss = float(value)
            result.losses.append(loss)
            evaluated = periodic.after(step + 1, ctx, state, result)
            bar.advance(loss, evaluated)
    finally:
        bar.close()
    result.ctx, result.state, result.step = ctx, state, max(start, steps)
    return result


# ---------------------------------------------------------------------- the step


def _make_step(
    ctx: Context,
    loss_fn: Callable[..., Any],
    optimizer: Optimizer,
    *,
    frozen: tuple[str, ...],
    donate: bool,
    jit: bool,
    capture: bool = False,
) -> StepFn:
    """One training step: gradients, then the optimizer; one compiled call where the
    (single) array library of ``ctx`` compiles and ``jit`` is true; recorded and replayed
    (:class:`CapturedStep`) with ``capture`` where the library does not compile."""
    grad_fn = value_and_grad(loss_fn, frozen=frozen)

    def eager_step(c: Context, s: Context, args: tuple[Any, ...]) -> tuple[Any, Context, Context]:
        value, c = grad_fn(c, *args)
        c, s = optimizer.step(c, s, donate=donate)
        return value, c, s

    libraries = {at.library for _, at in ctx.latest_variables()}
    captured = CapturedStep(loss_fn, optimizer, frozen=frozen) if capture else None
    if captured is not None and not any(
        library.jit(_nothing, donate_argnums=()) for library in libraries
    ):
        return captured
    if not jit or len(libraries) != 1:
        return eager_step

    def pure(c: Context, s: Context, args: tuple[Any, ...]) -> tuple[Any, Context, Context]:
        value, c = grad_fn(c, *args)
        c, s = optimizer.step(c, s, donate=False)
        return value, c, s

    (library,) = libraries
    compiled = library.jit(pure, donate_argnums=(0, 1) if donate else ())
    if compiled is None:
        return eager_step

    def compiled_step(
        c: Context, s: Context, args: tuple[Any, ...]
    ) -> tuple[Any, Context, Context]:
        if donate:
            # claimed first (two threads cannot both run it), every donated buffer once
            c, s = claim(c, s, to="fit")
            c, s = _distinct_buffers(library, c), _distinct_buffers(library, s)
        # without its old gradients the context keeps one layout: one compilation
        value, new_c, new_s = compiled(c.clear_gradients(), s, args)
        return value, new_c, new_s

    return compiled_step


def _distinct_buffers(library: Backend, ctx: Context) -> Context:
    """``ctx`` with a copy in every variable entry whose memory overlaps an earlier
    entry's (one array registered twice, a shadowed entry after ``set_variable``), so
    that donating all its entries donates each buffer once. Cost: O(n log n)."""
    spans = []
    for i, (_, at) in enumerate(ctx.var_registry):
        span = library.buffer_range(at.unchecked) if at.library is library else None
        if span is not None:
            spans.append((repr(span[0]), span[1], span[2], i))
    spans.sort()
    shared: set[int] = set()
    reach: tuple[str, int] = ("", 0)
    for space, start, stop, i in spans:
        if space == reach[0] and start < reach[1]:
            shared.add(i)
        reach = (space, max(stop, reach[1]) if space == reach[0] else stop)
    if not shared:
        return ctx
    entries = [
        (name, library.copy(at.t) if i in shared else at.t)
        for i, (name, at) in enumerate(ctx.var_registry)
    ]
    return RuntimeContext.from_registries(
        entries,
        [(name, at.t) for name, at in ctx.gradients],
        next_id=ctx.next_id,
        dtype=ctx.dtype,
        adopt=True,
    )


def _nothing() -> None:
    """A function to ask a library whether it compiles (``Backend.jit`` gives ``None``
    when it runs eagerly)."""


def _batches(data: Data, start: int) -> Iterator[Any]:
    """The batches from step ``start`` on; an iterable's iterator is made, and the
    batches before ``start`` skipped, now (not at the first batch)."""
    if callable(data):
        return _calls(data, start)
    iterator = iter(data)
    for i in range(start):
        try:
            next(iterator)
        except StopIteration:
            raise ValueError(
                f"resuming at step {start} needs {start} batches to skip, but the data has only {i}"
            ) from None
    return _rest(iterator)


def _calls(data: Callable[[int], Any], start: int) -> Iterator[Any]:
    step = start
    while True:
        yield data(step)
        step += 1


def _rest(iterator: Iterator[Any]) -> Iterator[Any]:
    yield from iterator
    raise ValueError("the data ran out of batches before the last step")


# ---------------------------------------------------------------------- every so often


@dataclass
class _Periodic:
    """Evaluation every ``eval_every`` steps, checkpoints every ``checkpoint_every``
    steps; both after the last step too."""

    steps: int
    eval_fn: Evaluation | None
    eval_every: int
    checkpoint_dir: str | os.PathLike[str] | None
    checkpoint_every: int
    #: the random state the data iterator started from (kept in every checkpoint)
    data_rng: Any = None

    @classmethod
    def checked(
        cls,
        *,
        steps: int,
        eval_fn: Evaluation | None,
        eval_every: int,
        checkpoint_dir: str | os.PathLike[str] | None,
        checkpoint_every: int,
    ) -> _Periodic:
        require_int(eval_every, "fit", "eval_every")
        require_int(checkpoint_every, "fit", "checkpoint_every")
        if eval_fn is not None:
            require_callable(eval_fn, "fit", "eval_fn")
        if checkpoint_dir is not None:
            require_path(checkpoint_dir, "fit", "checkpoint_dir")
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        return cls(steps, eval_fn, eval_every, checkpoint_dir, checkpoint_every)

    def after(self, done: int, ctx: Context, state: Context, result: FitResult) -> Any:
        """Run what is due after step ``done``; return the evaluation (None if none)."""
        last = done == self.steps
        evaluated = None
        if self.eval_fn is not None and (
            last or (self.eval_every > 0 and done % self.eval_every == 0)
        ):
            evaluated = self.eval_fn(ctx)
            result.evaluations.append((done, evaluated))
        if (
            self.checkpoint_dir is not None
            and self.checkpoint_every > 0
            and (done % self.checkpoint_every == 0 or last)
        ):
            path = Path(self.checkpoint_dir) / checkpoint_name(done)
            write_checkpoint(path, ctx, state, done, data_rng=self.data_rng)
            result.checkpoints.append(path)
        return evaluated


def _resume_source(
    resume: bool | str | os.PathLike[str], folder: str | os.PathLike[str] | None
) -> Path | None:
    if resume is False:
        return None
    if resume is True:
        assert folder is not None
        return latest_checkpoint(folder)
    path = Path(resume)
    if not path.is_file():
        raise FormatError(f"cannot resume from {path}: no such checkpoint file")
    return path


# ---------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar with the loss (and the last evaluation), or nothing."""

    def __init__(self, description: str, total: int, start: int, *, enabled: bool) -> None:
        self._bar: Any = None
        if not enabled or total <= start:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task(
            description, total=total, completed=start, loss="-", extra=""
        )
        self._bar.start()

    def advance(self, loss: float, evaluated: Any) -> None:
        if self._bar is None:
            return
        fields: dict[str, Any] = {"loss": _fmt(loss)}
        if evaluated is not None:
            if isinstance(evaluated, Mapping):
                fields["extra"] = " ".join(f"{k} {_fmt(v)}" for k, v in evaluated.items())
            else:
                fields["extra"] = f"eval {_fmt(evaluated)}"
        self._bar.update(self._task, advance=1, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _fmt(x: Any) -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{value:.4f}" if math.isfinite(value) and abs(value) >= 1e-3 else f"{value:.3g}"

"""The training loop: :func:`fit`.

Reading map:
- :func:`fit` -- checks its arguments, resumes, then runs one step per batch;
  ``_require_one_process`` refuses checkpoint files of values that span processes.
- :class:`FitResult` -- what it returns.
- ``_make_step`` -- the step: ``value_and_grad`` then ``optimizer.step``, compiled as one
  call where the array library compiles (:meth:`Backend.jit`: jax).
- ``_Periodic`` -- what runs every so many steps: evaluation and checkpoints (files, or
  with ``distributed=True`` folders saved asynchronously by every process).
- ``_batches`` -- the batch of each step from a callable or an iterable.
- ``_Progress`` -- the rich progress bar with the loss and the last evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchlean._validate import require_bool, require_callable, require_int, require_path
from torchlean.autograd import value_and_grad
from torchlean.errors import BackendError, ExpectationError, FormatError
from torchlean.optim import Optimizer, clip_gradients
from torchlean.runtime.backends import Backend
from torchlean.runtime.context import (
    RuntimeContext,
    claim,
    overlaps_caller_memory,
    owned_by_caller,
    require_context,
)
from torchlean.train._captured import CapturedStep
from torchlean.train._checkpoint import (
    checkpoint_files,
    checkpoint_name,
    context_library,
    folder_checkpoint_name,
    latest_checkpoint,
    latest_folder_checkpoint,
    prune_checkpoints,
    prune_folder_checkpoints,
    read_checkpoint,
    read_folder_checkpoint,
    restore_rng,
    start_folder_checkpoint,
    write_checkpoint,
)

__all__ = ["FitResult", "StepInfo", "fit"]

Data = Callable[[int], Any] | Iterable[Any]
Evaluation = Callable[[RuntimeContext[Any]], float | Mapping[str, float]]
Context = RuntimeContext[Any]
StepFn = Callable[[Context, Context, Any], tuple[Any, Context, Context]]


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
    #: The checkpoint files written by this call (removed ones too, see ``keep_last``).
    checkpoints: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class StepInfo:
    """What ``fit``'s ``on_step`` callback gets after each optimizer step."""

    #: The number of steps taken so far (1 after the first).
    step: int
    #: The loss of this step (the mean over its micro-batches), a Python float.
    loss: float
    #: What the loss returned besides the loss (``has_aux=True``; of the last
    #: micro-batch), else None.
    aux: Any
    #: The learning rate this step used (the optimizer's own; a schedule's value at the
    #: state's count before the step, which continues a ``state`` passed to ``fit``).
    lr: float


def fit(
    ctx: RuntimeContext[Any],
    loss_fn: Callable[..., Any],
    optimizer: Optimizer,
    data: Data,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    state: RuntimeContext[Any] | None = None,
    frozen: str | Iterable[str] = (),
    has_aux: bool = False,
    has_state: bool = False,
    accumulate: int = 1,
    clip: float | None = None,
    on_step: Callable[[StepInfo], Any] | None = None,
    eval_fn: Evaluation | None = None,
    eval_every: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume: bool | str | os.PathLike[str] = False,
    progress: bool = True,
    donate: bool = True,
    jit: bool = True,
    capture: bool = False,
    reduce: str | None = None,
    reduce_partial: bool = False,
    distributed: bool = False,
    description: str = "training",
) -> FitResult:
    """Train ``ctx`` for ``steps`` optimizer steps (or ``epochs`` passes over ``data``)
    in all; return the final context and state.

    Each step computes ``loss_fn(ctx, *batch)`` and its gradients with
    :func:`torchlean.autograd.value_and_grad` (``frozen`` variables and buffers get
    none) and applies ``optimizer.step``. A batch is spread as the loss's arguments: a
    tuple or a list (a ``DataLoader``'s ``[x, y]``) as positional arguments, a mapping
    as keyword arguments, anything else as one argument. ``data`` is a callable
    ``data(step)``, or any iterable of batches (a ``DataLoader``, a list, a generator).

    - ``epochs``: instead of ``steps``, that many passes over ``data`` (which must have
      a length and be iterable again: a ``DataLoader``, a list); ``steps`` is then
      ``epochs * len(data) // accumulate``.
    - ``has_aux`` / ``has_state``: as :func:`~torchlean.autograd.value_and_grad` (the
      loss returns ``(loss, aux)`` / ``(out, new_buffers)``: BatchNorm's running
      statistics train as in ``module.train()``).
    - ``accumulate=k``: each step adds the gradients of ``k`` micro-batches of the loss
      divided by ``k`` (Lightning's ``accumulate_grad_batches``), then steps once.
      Micro-batches run on across epochs (no partial step at an epoch's end; the
      ``epochs * len(data) % k`` batches left at the end are unused). A checkpoint
      records ``k``; resuming it with another is an
      :class:`~torchlean.errors.ExpectationError`.
    - ``clip``: scale the gradients to a global 2-norm of at most ``clip`` before each
      step (:func:`torchlean.optim.clip_gradients`, as ``clip_grad_norm_``).
    - ``capture=True`` (opt-in, needs ``donate=True``, a number as learning rate, one
      micro-batch a step, no clipping and no ``has_aux``/``has_state``) records the whole
      step once and replays it (a CUDA graph on torch CUDA tensors; see
      :class:`~torchlean.train.CapturedStep`): batch shapes must then stay fixed. On jax
      it is the ``jax.jit`` step; where nothing can record (torch on the CPU) the step
      runs eagerly.
    - ``on_step(info)``: called after each step with a :class:`StepInfo` (step, loss,
      aux, learning rate): logging, early stopping by raising.
    - ``eval_fn(ctx)`` runs every ``eval_every`` steps and after the last one.
    - ``checkpoint_every`` > 0 writes ``checkpoint_dir/step-NNNNNN.safetensors`` every
      that many steps and after the last one; ``keep_last=k`` removes all but the ``k``
      newest of them; a folder holding checkpoints of steps after the one this run
      starts from is refused (:class:`~torchlean.errors.ExpectationError`), as this
      run's files would mix with them. ``resume=True`` continues from the latest checkpoint in
      ``checkpoint_dir`` (from the start when there is none); a path resumes from that
      file. The checkpoint's tensors must have the names, shapes and dtypes of ``ctx``
      and of the optimizer state (:class:`~torchlean.errors.ExpectationError` otherwise).
    - ``reduce="mean"`` / ``"sum"``: data-parallel training, every process running
      ``fit`` on its part of each batch (:func:`~torchlean.autograd.value_and_grad`'s
      ``reduce``: the gradients and the loss all-reduced after each micro-batch).
    - ``reduce_partial=True`` (DTensor contexts; every process calls ``fit``): each
      step passes it to ``optimizer.step``, which reduces gradients whose only
      difference from their variables is ``Partial`` placements (a replicated
      parameter used with a ``Shard(0)`` batch) through DTensor's ``redistribute``, one
      collective per such gradient; without it the step refuses them. Clip with the
      optimizer's ``clip=`` (after the reduction), not ``fit``'s.
    - ``distributed=True`` (every process calls ``fit``): checkpoints are folders
      ``checkpoint_dir/step-NNNNNN`` written by every process with
      :func:`torchlean.io.distributed.save_async` (the step goes on while the shards are
      written; ``fit`` waits for the last one before it returns), ``keep_last`` counts
      complete folders, and ``resume=True`` continues from the latest *complete* folder
      (a ``.partial`` one, left by a crash, is ignored; rank 0 chooses), loaded into the
      layout of ``ctx`` on any world size: a run saved on 2 processes resumes on 1, and
      the other way round. ``resume=DIR`` names a folder. Folders hold the parameters,
      the optimizer state and the step, not random states. A context whose values
      span processes (DTensors: an FSDP2 module's ``from_module``) keeps them there:
      its checkpoints must be folders (checkpoint files are refused before the first
      step), saved and resumed shard by shard in the same placements.

    ``donate=True`` (default) lets the steps update the parameters in place: the ``ctx``
    and ``state`` you pass are donated to ``fit`` (any later use raises
    :class:`~torchlean.errors.DonatedContextError`; use the result's), but the arrays you
    registered yourself are never written (see :mod:`torchlean.optim`). With
    ``donate=False`` both stay valid. On jax contexts the whole step is one ``jax.jit``
    call when ``jit`` is true (the loss must then be traceable). Lean counterpart: none.
    Cost: ``steps * accumulate`` forward/backward passes and ``steps`` optimizer steps,
    plus one file write per checkpoint.
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
    require_bool(has_aux, "fit", "has_aux")
    require_bool(has_state, "fit", "has_state")
    require_int(accumulate, "fit", "accumulate", minimum=1)
    steps = _total_steps(steps, epochs, data, accumulate)
    if clip is not None and (
        isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0
    ):
        raise ValueError(f"fit: clip must be a number > 0 (a maximum norm), got {clip!r}")
    if on_step is not None:
        require_callable(on_step, "fit", "on_step")
    if state is not None:
        require_context(state, "fit", "state")
    periodic = _Periodic.checked(
        steps=steps,
        eval_fn=eval_fn,
        eval_every=eval_every,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
    )
    if resume is True and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    require_bool(distributed, "fit", "distributed")
    if distributed and checkpoint_dir is None:
        raise ValueError(
            "fit: distributed=True writes checkpoint folders and needs a checkpoint_dir"
        )
    if reduce is not None and reduce not in ("mean", "sum"):
        raise ValueError(f"fit: reduce must be 'mean', 'sum' or None, got {reduce!r}")
    require_bool(reduce_partial, "fit", "reduce_partial")
    if reduce_partial and clip is not None:
        raise ValueError(
            "fit: clip= scales the gradients before the step, where reduce_partial=True"
            " leaves them Partial (their norm would be a hidden collective); clip in the"
            " optimizer instead, after the reduction: optim.adamw(..., clip=max_norm)"
        )
    if not distributed and (periodic.checkpoint_every > 0 or resume is not False):
        _require_one_process(ctx)
    periodic.distributed = distributed
    periodic.accumulate = accumulate
    if not isinstance(frozen, (str, Iterable)):
        raise TypeError(f"fit: frozen must be a str or an iterable of str, got {frozen!r}")
    frozen_names = (frozen,) if isinstance(frozen, str) else tuple(frozen)

    if donate:  # handed over: a later use of the caller's contexts is loud
        if state is None:
            (ctx,) = claim(ctx, to="fit")
        else:
            ctx, state = claim(ctx, state, to="fit")
    if state is None:
        state = optimizer.init(ctx)
    start = 0
    source = _resume_source(resume, checkpoint_dir, distributed)
    library = context_library(ctx)
    rngs: dict[str, Any] = {}
    first_pass = 0  # the pass over data (epochs=) whose iterator train/data_rng started
    if source is not None and distributed:
        ctx, state, start = read_folder_checkpoint(source, ctx, state)
    elif source is not None:
        ctx, state, start, rngs = read_checkpoint(source, ctx, state)
        _same_accumulate(source, rngs.pop("accumulate", accumulate), accumulate, start)
        first_pass = rngs.pop("data_pass", 0)
        if "data" in rngs:
            library.set_rng_state(rngs["data"])  # the state the data iterator started from
        else:  # a checkpoint without it: the iterator starts from the step's state
            restore_rng(library, rngs)
    if periodic.checkpoint_every > 0 and not distributed:
        _no_later_checkpoints(periodic.checkpoint_dir, start)
    # The data iterator (a shuffling DataLoader draws its order here) starts from this
    # state; checkpoints keep it, so that a resumed run draws the same order.
    periodic.data_rng = library.rng_state()

    def started(index: int) -> None:
        # a new pass (epochs=): its iterator draws its order from this state
        periodic.data_rng, periodic.data_pass = library.rng_state(), index

    batches = _batches(data, start * accumulate, epochs, first_pass=first_pass, started=started)
    if "data" in rngs:
        restore_rng(library, rngs)  # after skipping the batches already used
    result = FitResult(ctx, state, start)
    if not isinstance(capture, bool):
        raise TypeError(f"fit: capture must be a bool, got {capture!r}")
    if capture and not donate:
        raise ValueError("fit: capture=True replays the step in place, which needs donate=True")
    if capture and (
        accumulate != 1
        or clip is not None
        or has_aux
        or has_state
        or reduce is not None
        or reduce_partial
    ):
        raise ValueError(
            "fit: capture=True records one plain step; it does not combine with"
            " accumulate, clip, has_aux, has_state, reduce or reduce_partial"
        )
    step_fn = _make_step(
        ctx,
        loss_fn,
        optimizer,
        frozen=frozen_names,
        has_aux=has_aux,
        has_state=has_state,
        accumulate=accumulate,
        clip=clip,
        donate=donate,
        jit=jit or capture,
        capture=capture,
        reduce=reduce,
        reduce_partial=reduce_partial,
    )
    bar = _Progress(description, steps, start, enabled=progress)
    try:
        for step in range(start, steps):
            micro = [_spread(next(batches)) for _ in range(accumulate)]
            lr = _lr_of(optimizer, state) if on_step is not None else 0.0
            out, ctx, state = step_fn(ctx, state, micro)
            value, aux = out if has_aux else (out, None)
            loss = float(value)
            result.losses.append(loss)
            if on_step is not None:
                on_step(StepInfo(step + 1, loss, aux, lr))
            evaluated = periodic.after(step + 1, ctx, state, result)
            bar.advance(loss, evaluated)
        periodic.finish()
    finally:
        bar.close()
    result.ctx, result.state, result.step = ctx, state, max(start, steps)
    return result


def _same_accumulate(source: Any, written: int, accumulate: int, start: int) -> None:
    """Refuse to resume a checkpoint written with another ``accumulate``: its steps used
    ``written`` batches each, and this run would skip ``accumulate`` per step."""
    if written != accumulate:
        raise ExpectationError(
            f"fit: checkpoint {os.fspath(source)} was written with accumulate={written}"
            f" (after step {start} it had used {start * written} batches), but this run has"
            f" accumulate={accumulate} and would skip {start * accumulate} batches; resume"
            f" with accumulate={written}"
        )


def _lr_of(optimizer: Optimizer, state: Context) -> float:
    """The learning rate the next step of ``optimizer`` uses: a schedule's value at the
    state's ``count`` (the steps the state has taken, which a state passed in or imported
    starts above 0), as the step reads it."""
    lr = optimizer.hyper.lr
    if not callable(lr):
        return float(lr)
    count = state.variable_entry("count")
    return float(optimizer.lr_at(0 if count is None else int(count.t)))


def _require_one_process(ctx: Context) -> None:
    """Refuse, before the first step, checkpoint files of a context whose values span
    processes (a file holds whole tensors; those are written shard by shard)."""
    for name, at in ctx.latest_variables():
        if at.local_dims is not None:
            raise BackendError(
                f"fit: variable `{name}` ({at.library.stand_in(at.unchecked)}) holds values"
                " on several processes, which a checkpoint file cannot hold; pass"
                " distributed=True (every process calls fit and writes its shards into"
                " checkpoint folders)"
            )


def _total_steps(steps: int | None, epochs: int | None, data: Data, accumulate: int) -> int:
    """``steps``, or the steps of ``epochs`` passes over ``data``."""
    if (steps is None) == (epochs is None):
        raise TypeError("fit: pass exactly one of steps= and epochs=")
    if steps is not None:
        require_int(steps, "fit", "steps")
        return int(steps)
    require_int(epochs, "fit", "epochs")
    assert epochs is not None
    if callable(data) or not isinstance(data, Sized) or _is_iterator(data):
        raise TypeError(
            "fit: epochs= needs data with a length that can be iterated again (a"
            f" DataLoader, a list), got {type(data).__name__}; pass steps= for a stream"
        )
    total = int(epochs) * len(data) // accumulate
    if epochs and not total:
        raise ValueError(
            f"fit: epochs={epochs} over data of {len(data)} batches make no step of"
            f" accumulate={accumulate} micro-batches (nothing would be trained); pass more"
            " epochs, a smaller accumulate, or steps="
        )
    return total


def _is_iterator(data: object) -> bool:
    return isinstance(data, Iterator)


def _spread(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A batch as the loss's ``(args, kwargs)``: a tuple or list as positional arguments,
    a mapping as keyword arguments, anything else as one argument."""
    if isinstance(batch, tuple):
        return batch, {}
    if isinstance(batch, list):
        return tuple(batch), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    return (batch,), {}


# ---------------------------------------------------------------------- the step

Micro = list[tuple[tuple[Any, ...], dict[str, Any]]]


def _scaled(loss_fn: Callable[..., Any], k: int, has_aux: bool, has_state: bool) -> Any:
    """``loss_fn`` with its loss divided by ``k`` (the rest of its result unchanged)."""
    if k == 1:
        return loss_fn

    def scaled(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        out = loss_fn(ctx, *args, **kwargs)
        new_state = None
        if has_state:
            out, new_state = out
        out = (out[0] / k, out[1]) if has_aux else out / k
        return (out, new_state) if has_state else out

    scaled.__name__ = getattr(loss_fn, "__name__", "loss")
    return scaled


def _make_step(
    ctx: Context,
    loss_fn: Callable[..., Any],
    optimizer: Optimizer,
    *,
    frozen: tuple[str, ...],
    has_aux: bool,
    has_state: bool,
    accumulate: int,
    clip: float | None,
    donate: bool,
    jit: bool,
    capture: bool = False,
    reduce: str | None = None,
    reduce_partial: bool = False,
) -> StepFn:
    """One training step: the gradients of ``accumulate`` micro-batches, clipping, then
    the optimizer; one compiled call where the (single) array library of ``ctx``
    compiles and ``jit`` is true; recorded and replayed (:class:`CapturedStep`) with
    ``capture`` where the library does not compile."""
    fn = _scaled(loss_fn, accumulate, has_aux, has_state)
    options: dict[str, Any] = {
        "has_aux": has_aux,
        "has_state": has_state,
        "frozen": frozen,
        "reduce": reduce,
    }
    grad_fn = value_and_grad(fn, **options)
    add_fn = value_and_grad(fn, accumulate=True, **options)

    def gradients(c: Context, micro: Micro) -> tuple[Any, Context]:
        total: Any = None
        aux: Any = None
        for i, (args, kwargs) in enumerate(micro):
            out, c = (add_fn if i else grad_fn)(c, *args, **kwargs)
            value, aux = out if has_aux else (out, None)
            total = value if total is None else total + value
        if clip is not None:
            c = clip_gradients(c, clip)[0]
        return ((total, aux) if has_aux else total), c

    def eager_step(c: Context, s: Context, micro: Micro) -> tuple[Any, Context, Context]:
        out, c = gradients(c, micro)
        c, s = optimizer.step(c, s, donate=donate, reduce_partial=reduce_partial)
        return out, c, s

    libraries = {at.library for _, at in ctx.latest_variables()}
    if capture and not any(library.jit(_nothing, donate_argnums=()) for library in libraries):
        captured = CapturedStep(loss_fn, optimizer, frozen=frozen)

        def captured_step(c: Context, s: Context, micro: Micro) -> tuple[Any, Context, Context]:
            ((args, kwargs),) = micro
            if kwargs:
                raise TypeError("fit: capture=True takes tuple or list batches, not mappings")
            return captured(c, s, args)

        return captured_step
    if not jit or len(libraries) != 1:
        return eager_step

    def pure(c: Context, s: Context, micro: Micro) -> tuple[Any, Context, Context]:
        out, c = gradients(c, micro)
        c, s = optimizer.step(c, s, donate=False, reduce_partial=reduce_partial)
        return out, c, s

    (library,) = libraries
    compiled = library.jit(pure, donate_argnums=(0, 1) if donate else ())
    if compiled is None:
        return eager_step

    def compiled_step(c: Context, s: Context, micro: Micro) -> tuple[Any, Context, Context]:
        if donate:
            # claimed first (two threads cannot both run it), every donated buffer once
            c, s = claim(c, s, to="fit")
            c, s = _distinct_buffers(library, c), _distinct_buffers(library, s)
        # without its old gradients the context keeps one layout: one compilation
        out, new_c, new_s = compiled(c.clear_gradients(), s, micro)
        return out, new_c, new_s

    return compiled_step


def _distinct_buffers(library: Backend, ctx: Context) -> Context:
    """``ctx`` with a copy in every variable entry whose memory overlaps an earlier
    entry's (one array registered twice, a shadowed entry after ``set_variable``), so
    that donating all its entries donates each buffer once, and in every entry the
    caller owns (:func:`owned_by_caller`). Cost: O(n log n)."""
    spans = []
    shared: set[int] = set()
    for i, (_, at) in enumerate(ctx.var_registry):
        span = library.buffer_range(at.unchecked) if at.library is library else None
        if span is not None:
            spans.append((repr(span[0]), span[1], span[2], i))
            if owned_by_caller(at.unchecked):
                shared.add(i)  # the caller's own array: donate a copy, never it
    spans.sort()
    # ... and in every entry that views the caller's memory (a torch tree_map's detach())
    viewing = overlaps_caller_memory(library, [at.unchecked for _, at in ctx.var_registry])
    shared.update(i for i, (_, at) in enumerate(ctx.var_registry) if id(at.unchecked) in viewing)
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
    ).copy_roles(ctx)


def _nothing() -> None:
    """A function to ask a library whether it compiles (``Backend.jit`` gives ``None``
    when it runs eagerly)."""


def _batches(
    data: Data,
    start: int,
    epochs: int | None = None,
    *,
    first_pass: int = 0,
    started: Callable[[int], None] | None = None,
) -> Iterator[Any]:
    """The batches from micro-batch ``start`` on (``epochs`` passes over ``data`` when
    given, from pass ``first_pass`` on, calling ``started(i)`` just before pass ``i``
    makes its iterator); an iterable's iterator is made, and the batches before
    ``start`` skipped, now (not at the first batch)."""
    if callable(data):
        return _calls(data, start)
    if epochs is None:
        iterator = iter(data)
    else:
        assert isinstance(data, Sized)
        start -= first_pass * len(data)
        iterator = _passes(data, epochs, first_pass, started)
    for i in range(start):
        try:
            next(iterator)
        except StopIteration:
            raise ValueError(
                f"resuming at step {start} needs {start} batches to skip, but the data has only {i}"
            ) from None
    return _rest(iterator)


def _passes(
    data: Iterable[Any], epochs: int, first: int, started: Callable[[int], None] | None
) -> Iterator[Any]:
    for index in range(first, epochs):
        if started is not None:
            started(index)
        yield from data


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
    #: keep only this many newest checkpoints of the folder (None: all)
    keep_last: int | None = None
    #: the random state the data iterator started from (kept in every checkpoint); with
    #: ``epochs=``, the iterator of pass ``data_pass``, the pass under way
    data_rng: Any = None
    data_pass: int = 0
    #: checkpoints are folders written asynchronously by every process
    distributed: bool = False
    #: the folder save in flight (``distributed``), waited for by :meth:`finish`
    pending: Any = None
    #: the micro-batches per step, recorded in checkpoint files
    accumulate: int = 1

    @classmethod
    def checked(
        cls,
        *,
        steps: int,
        eval_fn: Evaluation | None,
        eval_every: int,
        checkpoint_dir: str | os.PathLike[str] | None,
        checkpoint_every: int,
        keep_last: int | None,
    ) -> _Periodic:
        require_int(eval_every, "fit", "eval_every")
        require_int(checkpoint_every, "fit", "checkpoint_every")
        if keep_last is not None:
            require_int(keep_last, "fit", "keep_last", minimum=1)
            if checkpoint_dir is None:
                raise ValueError("keep_last needs a checkpoint_dir")
        if eval_fn is not None:
            require_callable(eval_fn, "fit", "eval_fn")
        if checkpoint_dir is not None:
            require_path(checkpoint_dir, "fit", "checkpoint_dir")
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir")
        return cls(steps, eval_fn, eval_every, checkpoint_dir, checkpoint_every, keep_last)

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
            if self.distributed:
                path = Path(self.checkpoint_dir) / folder_checkpoint_name(done)
                # waits for the save in flight, then returns once the tensors are copied
                self.pending = start_folder_checkpoint(path, ctx, state, done)
                result.checkpoints.append(path)
                self._prune()
            else:
                path = Path(self.checkpoint_dir) / checkpoint_name(done)
                write_checkpoint(
                    path,
                    ctx,
                    state,
                    done,
                    data_rng=self.data_rng,
                    accumulate=self.accumulate,
                    data_pass=self.data_pass,
                )
                result.checkpoints.append(path)
                if self.keep_last is not None:
                    prune_checkpoints(self.checkpoint_dir, self.keep_last)
        return evaluated

    def finish(self) -> None:
        """Wait for the folder save in flight (its errors raise here); prune again."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
            self._prune()

    def _prune(self) -> None:
        """``keep_last`` complete folders (rank 0 removes; the one in flight is not yet
        complete and is not counted)."""
        if self.keep_last is None or self.checkpoint_dir is None:
            return
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            prune_folder_checkpoints(self.checkpoint_dir, self.keep_last)


def _no_later_checkpoints(folder: str | os.PathLike[str] | None, start: int) -> None:
    """Refuse to write checkpoints into ``folder`` when it holds checkpoints of steps
    after ``start`` (another run's, or those after the one resumed): ``keep_last``
    removes by step, so it would remove this run's files, and ``resume=True`` would
    continue the other run."""
    if folder is None:
        return
    later = [path.name for step, path in checkpoint_files(folder) if step > start]
    if later:
        shown = ", ".join(later[:3]) + (f" and {len(later) - 3} more" if len(later) > 3 else "")
        raise ExpectationError(
            f"fit: {os.fspath(folder)} holds checkpoints of steps after {start} ({shown});"
            " this run's checkpoints would mix with them (keep_last removes by step, and"
            " resume=True would continue from theirs). Resume from the latest"
            " (resume=True), or move them out of checkpoint_dir, or write to another one"
        )


def _resume_source(
    resume: bool | str | os.PathLike[str],
    folder: str | os.PathLike[str] | None,
    distributed: bool = False,
) -> Path | None:
    if resume is False:
        return None
    if resume is True:
        assert folder is not None
        return latest_folder_checkpoint(folder) if distributed else latest_checkpoint(folder)
    path = Path(resume)
    if distributed:
        from torchlean.io.distributed import is_checkpoint_folder

        if not is_checkpoint_folder(path):
            raise FormatError(f"cannot resume from {path}: not a complete checkpoint folder")
        return path
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

"""A training loop over runtime contexts: ``fit``.

:func:`fit` runs ``value_and_grad`` and an optimizer step per batch, shows a progress
bar with the loss, evaluates now and then, writes checkpoints with :mod:`torchlean.io`
and resumes from them to exactly the numbers of an uninterrupted run.

Reading map:
- :func:`fit` -- the loop; returns a :class:`FitResult`.
- :class:`FitResult` -- the final context and optimizer state, the step, the losses and
  the evaluations.
- :func:`save_checkpoint` / :func:`load_checkpoint` -- one safetensors file holding the
  parameters (``model/<name>``), the optimizer state (``optim/<name>``), the step
  (``train/step``) and torch's CPU random state (``train/torch_rng``, torch contexts only).
- :func:`latest_checkpoint` -- the checkpoint of the highest step in a folder.

Batches: ``data`` is either a callable ``data(step) -> batch`` (the batch of step
``step``, counted from 0: deterministic data makes resuming exact) or an iterable of
batches, of which a resumed run skips the ``step`` batches already used. A batch is a
tuple of arguments for ``loss_fn(ctx, *batch)`` (anything else is one argument).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchlean._validate import require_callable, require_int, require_path
from torchlean.autograd import value_and_grad
from torchlean.errors import ExpectationError, FormatError
from torchlean.optim import Optimizer
from torchlean.runtime.context import RuntimeContext, require_context
from torchlean.runtime.context import donate as donate_context
from torchlean.runtime.dtypes import dtype_name

__all__ = ["FitResult", "fit", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

Data = Callable[[int], Any] | Iterable[Any]
Evaluation = Callable[[RuntimeContext[Any]], float | Mapping[str, float]]
_CHECKPOINT = re.compile(r"^step-(\d+)\.safetensors$")


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
    description: str = "training",
) -> FitResult:
    """Train ``ctx`` for ``steps`` steps in all; return the final context and state.

    Each step computes ``loss_fn(ctx, *batch)`` and its gradients with
    :func:`torchlean.autograd.value_and_grad` (``frozen`` variables get none) and applies
    ``optimizer.step``. ``donate=True`` (default) lets the step update the parameters in
    place: the ``ctx`` and ``state`` you pass are donated (see :mod:`torchlean.optim`);
    with ``donate=False`` they stay valid. On jax contexts the whole step is one
    ``jax.jit`` call when ``jit`` is true (the loss must then be traceable).

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
    require_int(eval_every, "fit", "eval_every")
    require_int(checkpoint_every, "fit", "checkpoint_every")
    if state is not None:
        require_context(state, "fit", "state")
    if eval_fn is not None:
        require_callable(eval_fn, "fit", "eval_fn")
    if checkpoint_dir is not None:
        require_path(checkpoint_dir, "fit", "checkpoint_dir")
    if checkpoint_every and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs a checkpoint_dir")
    if resume is True and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if not isinstance(frozen, (str, Iterable)):
        raise TypeError(f"fit: frozen must be a str or an iterable of str, got {frozen!r}")
    frozen_names = (frozen,) if isinstance(frozen, str) else tuple(frozen)
    if state is None:
        state = optimizer.init(ctx)
    start = 0
    source = _resume_source(resume, checkpoint_dir)
    if source is not None:
        ctx, state, start = load_checkpoint(source, ctx, state)
    result = FitResult(ctx, state, start)
    step_fn = _make_step(ctx, loss_fn, optimizer, frozen_names, donate, jit)
    batches = _batches(data, start)
    bar = _Progress(description, steps, start, enabled=progress)
    try:
        for step in range(start, steps):
            batch = next(batches)
            args = batch if isinstance(batch, tuple) else (batch,)
            value, ctx, state = step_fn(ctx, state, args)
            loss = float(value)
            result.losses.append(loss)
            done = step + 1
            evaluated = None
            if eval_fn is not None and (
                done == steps or (eval_every > 0 and done % eval_every == 0)
            ):
                evaluated = eval_fn(ctx)
                result.evaluations.append((done, evaluated))
            if (
                checkpoint_dir is not None
                and checkpoint_every > 0
                and (done % checkpoint_every == 0 or done == steps)
            ):
                path = Path(checkpoint_dir) / f"step-{done:06d}.safetensors"
                save_checkpoint(path, ctx, state, done)
                result.checkpoints.append(path)
            bar.advance(loss, evaluated)
    finally:
        bar.close()
    result.ctx, result.state, result.step = ctx, state, max(start, steps)
    return result


# ---------------------------------------------------------------------- the step


StepFn = Callable[
    [RuntimeContext[Any], RuntimeContext[Any], tuple[Any, ...]],
    tuple[Any, RuntimeContext[Any], RuntimeContext[Any]],
]


def _make_step(
    ctx: RuntimeContext[Any],
    loss_fn: Callable[..., Any],
    optimizer: Optimizer,
    frozen: tuple[str, ...],
    donate: bool,
    jit: bool,
) -> StepFn:
    grad_fn = value_and_grad(loss_fn, frozen=frozen)
    backends = {at.backend for _, at in ctx.latest_variables()}
    if jit and backends == {"jax"}:
        import jax

        def pure(
            c: RuntimeContext[Any], s: RuntimeContext[Any], args: tuple[Any, ...]
        ) -> tuple[Any, RuntimeContext[Any], RuntimeContext[Any]]:
            value, c = grad_fn(c, *args)
            c, s = optimizer.step(c, s, donate=False)
            return value, c, s

        jitted = jax.jit(pure, donate_argnums=(0, 1) if donate else ())

        def jax_step(
            c: RuntimeContext[Any], s: RuntimeContext[Any], args: tuple[Any, ...]
        ) -> tuple[Any, RuntimeContext[Any], RuntimeContext[Any]]:
            # without its old gradients the context keeps one layout: one compilation
            value, new_c, new_s = jitted(c.clear_gradients(), s, args)
            if donate:
                donate_context(c, to="fit")
                donate_context(s, to="fit")
            return value, new_c, new_s

        return jax_step

    def eager_step(
        c: RuntimeContext[Any], s: RuntimeContext[Any], args: tuple[Any, ...]
    ) -> tuple[Any, RuntimeContext[Any], RuntimeContext[Any]]:
        value, c = grad_fn(c, *args)
        c, s = optimizer.step(c, s, donate=donate)
        return value, c, s

    return eager_step


def _batches(data: Data, start: int) -> Iterator[Any]:
    if callable(data):
        step = start
        while True:
            yield data(step)
            step += 1
    iterator = iter(data)
    for i in range(start):
        try:
            next(iterator)
        except StopIteration:
            raise ValueError(
                f"resuming at step {start} needs {start} batches to skip, but the data has only {i}"
            ) from None
    yield from iterator
    raise ValueError("the data ran out of batches before the last step")


# ---------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: str | os.PathLike[str],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
    step: int,
) -> None:
    """Write parameters, optimizer state, step and (torch) RNG state to one file.

    The file is a safetensors file written atomically by :func:`torchlean.io.save`; the
    names are ``model/<variable>``, ``optim/<state entry>``, ``train/step`` and, for
    torch contexts, ``train/torch_rng``. Cost: O(total bytes).
    """
    import numpy as np

    require_path(path, "save_checkpoint")
    require_context(ctx, "save_checkpoint")
    require_context(state, "save_checkpoint", "state")
    require_int(step, "save_checkpoint", "step")

    from torchlean import io

    items: list[tuple[str, Any]] = [(f"model/{n}", at.t) for n, at in ctx.latest_variables()]
    items += [(f"optim/{n}", at.t) for n, at in state.latest_variables()]
    # jax runs without 64-bit integers by default, so its checkpoints count in int32
    wide = _backend_name(ctx) != "jax"
    items.append(("train/step", np.asarray(step, np.int64 if wide else np.int32)))
    if any(at.backend == "torch" for _, at in ctx.latest_variables()):
        import torch

        items.append(("train/torch_rng", torch.get_rng_state().numpy()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    io.save(RuntimeContext.empty().register_variables(items), path)


def load_checkpoint(
    path: str | os.PathLike[str],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
) -> tuple[RuntimeContext[Any], RuntimeContext[Any], int]:
    """Read a checkpoint into contexts shaped like ``ctx`` and ``state``.

    Returns ``(ctx', state', step)``: ``ctx`` and ``state`` with the most recent entry
    of each name replaced by the file's tensor (same array library and device as the
    entry it replaces); restores torch's CPU random state when the file has one. Every
    missing, unexpected or mismatched tensor is listed in one
    :class:`~torchlean.errors.ExpectationError`. Cost: O(total bytes).
    """
    from torchlean import io

    require_path(path, "load_checkpoint")
    require_context(ctx, "load_checkpoint")
    require_context(state, "load_checkpoint", "state")
    backend = _backend_name(ctx)
    loaded = io.load(path, backend=backend)
    tensors = loaded.state_dict()
    # names, shapes and dtypes: the one comparison of torchlean.io.expect
    want = {f"model/{n}": at for n, at in ctx.latest_variables()}
    want |= {f"optim/{n}": at for n, at in state.latest_variables()}
    have = {n: t for n, t in tensors.items() if n not in ("train/step", "train/torch_rng")}
    specs = {k: (at.dims, at.dtype) for k, at in want.items()}
    report = io.compare(have, specs, dtypes=True, suggest=False)
    missing, mismatched = set(report.missing), {m.name for m in report.mismatched}
    problems = [
        f"missing tensor `{k}`"
        if k in missing
        else f"tensor `{k}` is {dtype_name(have[k].dtype)} {tuple(int(d) for d in have[k].shape)}"
        f" but {at.dtype} {at.dims} is expected"
        for k, at in want.items()
        if k in missing or k in mismatched
    ]
    problems += [f"unexpected tensor `{n}`" for n in report.unexpected]
    if "train/step" not in tensors:
        problems.append("missing tensor `train/step`")
    if problems:
        raise ExpectationError(
            f"checkpoint {os.fspath(path)} does not fit this model and optimizer: "
            + "; ".join(problems)
        )
    new_ctx = _fill(ctx, tensors, "model/")
    new_state = _fill(state, tensors, "optim/")
    step = int(_to_numpy(tensors["train/step"]))
    if "train/torch_rng" in tensors and backend == "torch":
        import torch

        rng = tensors["train/torch_rng"]
        torch.set_rng_state(rng if isinstance(rng, torch.Tensor) else torch.tensor(rng))
    return new_ctx, new_state, step


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The ``step-NNNNNN.safetensors`` file of the highest step in ``folder``, or None."""
    require_path(folder, "latest_checkpoint", "folder")
    best: tuple[int, Path] | None = None
    root = Path(folder)
    if not root.is_dir():
        return None
    for child in root.iterdir():
        m = _CHECKPOINT.match(child.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), child)
    return None if best is None else best[1]


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


def _backend_name(ctx: RuntimeContext[Any]) -> str:
    for _, at in ctx.latest_variables():
        return at.backend
    return "numpy"


def _to_numpy(x: Any) -> Any:
    import numpy as np

    return x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else np.asarray(x)


def _fill(
    template: RuntimeContext[Any], tensors: Mapping[str, Any], prefix: str
) -> RuntimeContext[Any]:
    values = []
    for name, at in template.latest_variables():
        value = tensors[prefix + name]
        if at.backend == "torch" and str(value.device) != at.device:
            value = value.to(at.device)
        values.append((name, value))
    return template.with_variables(values, adopt=True)


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

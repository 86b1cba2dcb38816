"""Flat storage: the variables of one (device, dtype) group as views of one buffer.

:func:`flatten` copies the floating-point torch variables of a context into one
contiguous buffer per (device, dtype) and registers views of it in their place. Then
everything downstream works on whole buffers: :func:`torchlean.autograd.value_and_grad`
gathers the gradients into one flat gradient (one ``cat``; they are its views), an
optimizer's ``init`` gives moments and step counters that are views of one buffer each,
and the step runs one fused kernel per buffer instead of one list entry per tensor
(:meth:`~torchlean.runtime.backends.Backend.planned_updater`).

The promises are those of any context: the views are torch tensors, stored without a
copy and watched by their version counter. The views of a buffer share its counter, so
a write in place to one variable is seen as a write to every variable of its buffer
(they all refuse to be read). Saving, loading, views and ``check`` see ordinary tensors;
a context read from a file is not flat until flattened again.

Reading map:
- :func:`flatten` -- the flat copy of a context (and of its optimizer state).
- :data:`SLOTS` -- the state entries that are flattened with their variable.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, Final, overload

from torchlean.errors import BackendError
from torchlean.runtime.backends import Backend
from torchlean.runtime.context import RuntimeContext, require_context

__all__ = ["SLOTS", "flatten"]

#: The prefixes of an optimizer state's per-variable entries (``exp_avg/<name>``...).
SLOTS: Final = ("step", "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_FLOAT_KINDS = ("float", "bfloat")

Context = RuntimeContext[Any]


@overload
def flatten(ctx: Context, state: None = None, *, frozen: str | Sequence[str] = ()) -> Context: ...


@overload
def flatten(
    ctx: Context, state: Context, *, frozen: str | Sequence[str] = ()
) -> tuple[Context, Context]: ...


def flatten(
    ctx: Context, state: Context | None = None, *, frozen: str | Sequence[str] = ()
) -> Context | tuple[Context, Context]:
    """``ctx`` with its floating-point torch variables in flat storage: one contiguous
    buffer per (device, dtype), the variables views of it (first-registered order).

    Gradients and other variables stay as they are; variables matching a ``frozen``
    name or glob pattern stay out of the buffers (a buffer is updated as a whole: give
    the variables that get no gradient here). With ``state`` (an optimizer state of
    ``ctx``), its step counters and moments are flattened in the same groups and
    ``(ctx', state')`` is returned; otherwise build the state afterwards with
    ``optimizer.init(ctx')``, which makes flat moments for flat variables. Raises
    :class:`~torchlean.errors.BackendError` when a floating-point variable belongs to a
    library without flat buffers (numpy, jax). Lean counterpart: none. Cost: one copy of
    the variables (and of the state).
    """
    require_context(ctx, "flatten")
    if state is not None:
        require_context(state, "flatten", "state")
    if not isinstance(frozen, str) and not (
        isinstance(frozen, Sequence) and all(isinstance(p, str) for p in frozen)
    ):
        raise TypeError(
            f"flatten: frozen must be a name or glob pattern (str) or a sequence of them,"
            f" got {frozen!r}"
        )
    patterns = (frozen,) if isinstance(frozen, str) else tuple(frozen)
    groups: dict[tuple[Backend, str, str], list[tuple[str, Any]]] = {}
    for name, at in ctx.latest_variables():
        if not at.dtype.startswith(_FLOAT_KINDS):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        groups.setdefault((at.library, at.device, at.dtype), []).append((name, at.t))
    items: list[tuple[str, Any]] = []
    state_items: list[tuple[str, Any]] = []
    for (library, device, dtype), members in groups.items():
        names = [n for n, _ in members]
        try:
            views = library.flatten([t for _, t in members])
        except BackendError as e:
            raise BackendError(
                f"flatten: variable `{names[0]}` is a {library.name} {dtype} array on {device}: {e}"
            ) from None
        items += zip(names, views, strict=True)
        if state is None:
            continue
        for slot in SLOTS:
            entries = [state.variable_entry(f"{slot}/{n}") for n in names]
            if any(e is None for e in entries):
                continue
            values = [e.t for e in entries if e is not None]
            keyed = {(e.library, e.device, e.dtype) for e in entries if e is not None}
            if len(keyed) != 1:
                continue
            flat = next(iter(keyed))[0].flatten(values)
            state_items += zip([f"{slot}/{n}" for n in names], flat, strict=True)
    new = ctx.with_variables(items, adopt=True)
    if state is None:
        return new
    return new, state.with_variables(state_items, adopt=True)

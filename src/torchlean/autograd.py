"""Gradients into the context: ``value_and_grad`` over PyTorch's or JAX's autograd.

TorchLean's runtime keeps the gradients of a loss beside the variables they belong to.
:func:`value_and_grad` turns a loss written against a context into a function that
returns the loss and a new context holding the gradient of every variable, computed by
the array library's own autograd (``torch.autograd.grad`` over fresh requires-grad
leaves, or ``jax.value_and_grad``); this module never differentiates anything itself.

Reading map:
- :func:`value_and_grad` -- the transformation; options ``has_aux``, ``has_state``
  (a loss that returns updated buffers), ``accumulate``, ``frozen``, ``reduce``
  (data-parallel: the gradients and the loss all-reduced over the process group).
- :func:`differentiable_names` -- the variables that get a gradient (after ``frozen``).
- :func:`call_module` -- a torch ``nn.Module`` run with a context's tensors
  (``functional_call`` prepared once per layout; :mod:`torchlean._module_call`).
- :meth:`torchlean.runtime.backends.Backend.value_and_grad` -- each library's autograd
  (torch, jax), which :func:`value_and_grad` calls on the variables' values.

Semantics, in the words of the Lean module: the gradient of each variable (the most
recent entry of its name) is written to the gradient registry under the same name. By
default it *replaces* the most recent gradient of that name (or is registered when there
is none), so a training step never needs ``clear_gradients``; ``accumulate=True`` adds
into the existing gradient instead, exactly as :meth:`RuntimeContext.accumulate_gradient`.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple, cast

from torchlean._module_call import call_module as call_module
from torchlean._validate import require_bool, require_callable
from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    InPlaceModificationError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.runtime import _bulk
from torchlean.runtime.backends import Backend, backend_named, backend_of
from torchlean.runtime.context import RuntimeContext, require_context

__all__ = ["call_module", "differentiable_names", "value_and_grad"]

Loss = Callable[..., Any]
_FLOAT_KINDS = ("float", "bfloat", "complex")
#: The library whose autograd runs a loss over a context with nothing to differentiate.
_DEFAULT_LIBRARY = "torch"
#: The values of ``value_and_grad(reduce=)``.
_REDUCTIONS = ("mean", "sum")


def _check_frozen(frozen: object, where: str) -> None:
    if isinstance(frozen, str):
        return
    if isinstance(frozen, (Sequence, AbstractSet)) and all(isinstance(p, str) for p in frozen):
        return
    raise TypeError(
        f"{where}: frozen must be a name or glob pattern (str) or a sequence of them,"
        f" got {frozen!r}"
    )


def differentiable_names(ctx: RuntimeContext[Any], frozen: str | Sequence[str] = ()) -> list[str]:
    """The names of the variables that get a gradient, in first-registered order.

    A variable gets one unless it is a buffer (:meth:`RuntimeContext.mark_buffers`), its
    name matches a ``frozen`` name or glob pattern (``fnmatch`` rules: ``"encoder.*"``)
    or its dtype is not floating point. A pattern
    that matches no variable raises :class:`~torchlean.errors.UnknownNameError` (a typo
    would otherwise silently freeze nothing). Cost: O(n * p) for p patterns.
    """
    require_context(ctx, "differentiable_names")
    _check_frozen(frozen, "differentiable_names")
    patterns = (frozen,) if isinstance(frozen, str) else tuple(frozen)
    used = [False] * len(patterns)
    names: list[str] = []
    buffers = set(ctx.buffers())
    for name, at in ctx.latest_variables():
        hit = name in buffers
        for i, pattern in enumerate(patterns):
            if fnmatch.fnmatchcase(name, pattern):
                used[i] = True
                hit = True
        if not hit and at.dtype.startswith(_FLOAT_KINDS):
            names.append(name)
    unused = [p for p, u in zip(patterns, used, strict=True) if not u]
    if unused:
        listed = ", ".join(f"`{p}`" for p in unused)
        raise UnknownNameError(
            f"value_and_grad: frozen pattern{'s' if len(unused) > 1 else ''} {listed}"
            f" match{'' if len(unused) > 1 else 'es'} no variable"
            f" (the context has {ctx.context_size()} variable entries)"
        )
    return names


def value_and_grad(
    fn: Loss,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    accumulate: bool = False,
    frozen: str | Sequence[str] = (),
    reduce: str | None = None,
) -> Callable[..., tuple[Any, RuntimeContext[Any]]]:
    """Turn ``fn(ctx, *args) -> loss`` into ``(ctx, *args) -> (loss, ctx')``.

    ``ctx'`` is ``ctx`` with the gradient of the scalar ``loss`` with respect to every
    variable (the most recent entry of each name) registered under the variable's name;
    a variable the loss does not depend on gets a zero gradient (as with
    ``jax.value_and_grad``), but a torch loss that depends on none of them raises
    :class:`~torchlean.errors.TorchLeanError` (e.g. ``functional_call`` on an FSDP2
    module, which swaps its own parameters in). The variables of ``ctx'`` are those of
    ``ctx``, unchanged.

    - ``has_aux=True``: ``fn`` returns ``(loss, aux)`` and the result is
      ``((loss, aux), ctx')``; torch tensors in ``aux`` are detached.
    - ``has_state=True``: ``fn`` returns ``(out, new_state)``, ``out`` being what it
      returns otherwise and ``new_state`` a mapping of variable names to new values
      (BatchNorm's running statistics); they land in ``ctx'`` (detached) and get no
      gradient. Only buffers (:meth:`RuntimeContext.mark_buffers`) and variables that
      get no gradient may be updated. The buffers of the context ``fn`` receives are
      fresh copies, so a loss may update them in place (``functional_call`` of a
      module in train mode does) and return them.
    - A loss that writes in place a tensor of the context it receives (a parameter's
      leaf shares memory with the stored tensor; without ``has_state``, so do the
      buffers) raises :class:`~torchlean.errors.InPlaceModificationError` naming the
      variables, when it returns (``nn.Embedding(max_norm=...)`` renormalizes its
      weight in place: not supported on a context).
    - ``accumulate=False`` (default): each gradient replaces the most recent gradient of
      its name, or is registered when there is none. ``accumulate=True``: it is added
      into that gradient (:meth:`RuntimeContext.accumulate_gradient`).
    - ``frozen``: names or glob patterns of variables that get no gradient (like
      ``requires_grad_(False)``); non-floating variables never get one.
    - ``reduce="mean"`` / ``"sum"`` (data-parallel training on plain, replicated torch
      tensors, each process with its part of the batch; call it on every process of an
      initialised ``torch.distributed`` group): after the backward pass, the gradients
      and the loss are all-reduced with one bucketed ``all_reduce`` per (device,
      dtype) -- flattened into one buffer, summed, divided by the world size for
      ``"mean"``, split back -- so every process gets the gradient of the mean (sum) of
      the processes' losses. It raises, instead of reducing zeros, when the loss does
      not depend on any variable; outside a process group, or on DTensor or jax
      variables, it raises :class:`~torchlean.errors.BackendError`. ``accumulate=True``
      reduces this call's gradients before adding them. DTensor gradients are left as
      DTensor's autograd places them; ``Partial`` ones are reduced by the optimizer
      step when asked (``step(..., reduce_partial=True)``).

    Torch contexts go through ``torch.autograd.grad`` on fresh leaves that share storage
    with the stored variables (no copy); jax contexts through ``jax.value_and_grad``,
    so the returned function can be traced by ``jax.jit``. Mixing torch and jax
    variables, or a context of numpy arrays, raises :class:`~torchlean.errors.BackendError`.
    Lean counterpart: none (the Lean module leaves gradients to a higher layer). Cost: one
    forward and one backward pass, plus O(n log n) to rebuild the registries.
    """
    require_callable(fn, "value_and_grad", "fn")
    require_bool(has_aux, "value_and_grad", "has_aux")
    require_bool(has_state, "value_and_grad", "has_state")
    require_bool(accumulate, "value_and_grad", "accumulate")
    _check_frozen(frozen, "value_and_grad")
    if reduce is not None and reduce not in _REDUCTIONS:
        raise ValueError(f"value_and_grad: reduce must be 'mean', 'sum' or None, got {reduce!r}")
    where = f"value_and_grad({getattr(fn, '__name__', 'fn')})"

    layouts = _Layouts(frozen)

    def transformed(
        ctx: RuntimeContext[Any], *args: Any, **kwargs: Any
    ) -> tuple[Any, RuntimeContext[Any]]:
        require_context(ctx, where)
        # the layout (names, library, buffers) is read once per layout; the leaves have
        # the variables' dims and library, and the buffers' copies those of the buffers:
        # the trusted batch edit
        layout = layouts.read(ctx)
        names, library, values, dims = layout.names, layout.library, layout.values, layout.dims
        copies: list[Any] = []
        if has_state and layout.buffers:
            # fresh copies: a loss may update them in place (BatchNorm in train mode)
            one = layout.buffer_library
            if one is not None:
                copies = one.copy_all(layout.buffer_values)
            else:
                copies = list(map(_copy, layout.buffer_libraries, layout.buffer_values))
            edited, order = layout.edited, layout.edited_order

            def inner(leaves: list[Any]) -> RuntimeContext[Any]:
                given = [*leaves, *copies]
                if order is None:
                    return _bulk.replace_heads_trusted(ctx, edited, given)
                # every variable, in the registry's order: call_module's read of this
                # context is then what the edit wrote (versions checked only)
                return _expected(ctx, layout, list(map(given.__getitem__, order)))
        else:
            whole = layout.whole

            def inner(leaves: list[Any]) -> RuntimeContext[Any]:
                if whole:
                    return _expected(ctx, layout, leaves)
                return _bulk.replace_heads_trusted(ctx, names, leaves)

        if reduce is not None:
            library.all_reduce([], mean=True)  # no collective: is there a group at all?
            if not names:
                raise _unreached_error(where, reduce, names, ctx)

        #: whether the new state is the buffers' copies, as the loss received them
        #: (``_COPIES``; ``_ALL_COPIES``: every one in order, no history: kept in ``intact``)
        returned = [_NOT_COPIES]
        intact: list[Any] = [None]

        def on_values(leaves: list[Any]) -> Any:
            out = fn(inner(leaves), *args, **kwargs)
            state: Any = None
            if has_state:
                out, state = _split_state(out, where)
                if copies:
                    returned[0] = _returns_copies(state, layout, copies)
                    if returned[0] is _ALL_COPIES:
                        intact[0], state = state, None  # stored as they are: no detach
            loss, aux = _split(out, has_aux)
            shape = tuple(getattr(loss, "shape", ()))
            if shape != ():
                raise _scalar_error(shape)
            if reduce is not None and not library.reaches(loss):
                raise _unreached_error(where, reduce, names, ctx)
            return (loss, (aux, state)) if has_state else out

        def unreached(other: bool) -> TorchLeanError:
            return _unreached_error(where, reduce, names, ctx, other=other)

        try:
            out, raw = library.value_and_grad(
                on_values, values, has_aux=has_aux or has_state, unreached=unreached
            )
        finally:
            _bulk.expect_read(layout.every, None)  # the inner context's tensors not kept
        if _bulk.heads(ctx, layout.every, last=layout.read) is None:
            # the leaves share memory and version counters with the stored tensors
            raise _written_error(where, ctx, layout.every)
        if has_state:
            loss, (aux, new_state) = out
            out = (loss, aux) if has_aux else loss
            if intact[0] is not None:
                new_state = intact[0]
            matched = layout if returned[0] is not _NOT_COPIES else None
            ctx = _land_state(ctx, new_state, names, where, matched)
        if reduce is not None:
            value = out[0] if has_aux else out
            *raw, value = library.all_reduce([*raw, value], mean=reduce == "mean")
            out = (value, out[1]) if has_aux else value
        if accumulate:
            new = ctx
            for name, at in zip(names, raw, strict=True):
                new = new.accumulate_gradient(name, at)
            return out, new
        wrote = layouts.gradients
        last = wrote[1] if wrote[0] is names else None
        old = _bulk.heads(ctx, names, gradients=True, last=last)
        same = old is not None and (
            old is last or (old.dims == dims and len(set(old.libraries)) <= 1)
        )
        if same and old is not None and (not names or _bulk.library(old.libraries[0]) is library):
            fresh = library.adopt_all(raw)
            new, written = _bulk.replace_heads_read(ctx, names, fresh, gradients=True, read=old)
            layouts.gradients = (names, written)
            return out, new
        return out, ctx.with_gradients(list(zip(names, raw, strict=True)), adopt=True)

    transformed.__name__ = f"value_and_grad({getattr(fn, '__name__', 'fn')})"
    transformed.__doc__ = fn.__doc__
    return transformed


class _Layout(NamedTuple):
    """What one call differentiates: the variables' names, library, values and dims,
    and the buffers' names, values, dims and libraries (first-registered order)."""

    names: list[str]
    library: Backend
    values: list[Any]
    dims: list[Any]
    buffers: list[str]
    buffer_values: list[Any]
    buffer_dims: list[Any]
    buffer_libraries: list[Backend]
    #: ``names + buffers`` (the entries the inner context replaces when buffers are copied)
    edited: list[str]
    #: ``{buffer: position in buffers}``
    buffer_index: dict[str, int]
    #: the buffers' one array library (``None``: none, or several)
    buffer_library: Backend | None
    #: when ``edited`` holds every variable: for each name of :attr:`every`, its
    #: position in ``edited`` (else ``None``)
    edited_order: list[int] | None
    #: whether ``names`` is every variable, in the registry's order
    whole: bool
    #: the names of the latest entries (:func:`~torchlean.runtime._bulk.latest_names`)
    #: and their records, read and checked
    every: list[str]
    read: _bulk.Heads


class _Layouts:
    """The differentiable names, library and buffers of the last layout a transformed
    function saw (names, array libraries and dtypes of the variables, and the context's
    buffers and aliases), so that a training loop pays the per-name checks once."""

    __slots__ = ("frozen", "gradients", "last")

    def __init__(self, frozen: str | Sequence[str]) -> None:
        self.frozen = frozen
        self.last: tuple[Any, ...] | None = None
        #: the names and :class:`~torchlean.runtime._bulk.Heads` of the gradients the
        #: last call wrote (the next call, handed that context, only checks versions)
        self.gradients: tuple[Any, Any] = (None, None)

    def read(self, ctx: RuntimeContext[Any]) -> _Layout:
        """The :class:`_Layout` of ``ctx``, its values read and checked against in-place
        writes."""
        every = _bulk.latest_names(ctx)
        read = _bulk.heads(ctx, every)
        roles = _bulk.roles(ctx)
        if read is not None:
            dtypes = list(map(_DTYPE, read.tensors))
            last = self.last
            if (
                last is not None
                and last[0] is every
                and last[1] is roles
                and last[2] == read.libraries
                and last[3] == dtypes
            ):
                build: Callable[[_bulk.Heads], _Layout] = last[4]
                return build(read)
        names = differentiable_names(ctx, self.frozen)
        library = _library_of_names(ctx, names)
        ctx.state_dict()  # every entry read and checked
        if read is None:  # pragma: no cover - state_dict raised for the written tensor
            read = _bulk.heads(ctx, every)
            assert read is not None
        buffers = ctx.buffers()
        index = {name: i for i, name in enumerate(every)}
        positions = [index[name] for name in names]
        kept = [index[name] for name in buffers]
        dims = [read.dims[i] for i in positions]
        buffer_dims = [read.dims[i] for i in kept]
        buffer_libraries = [_bulk.library(read.libraries[i]) for i in kept]
        edited = [*names, *buffers]
        at = {name: i for i, name in enumerate(edited)}
        covers = len(at) == len(every) and all(name in at for name in every)
        edited_order = [at[name] for name in every] if covers else None
        whole = names == every
        buffer_index = {name: i for i, name in enumerate(buffers)}
        kinds = set(buffer_libraries)
        buffer_library = buffer_libraries[0] if len(kinds) == 1 else None

        def layout(read: _bulk.Heads) -> _Layout:
            tensors = read.tensors
            return _Layout(
                names,
                library,
                list(tensors) if whole else list(map(tensors.__getitem__, positions)),
                dims,
                buffers,
                list(map(tensors.__getitem__, kept)),
                buffer_dims,
                buffer_libraries,
                edited,
                buffer_index,
                buffer_library,
                edited_order,
                whole,
                every,
                read,
            )

        self.last = (every, roles, read.libraries, list(map(_DTYPE, read.tensors)), layout)
        return layout(read)


_DTYPE = operator.attrgetter("dtype")


def _expected(ctx: RuntimeContext[Any], layout: _Layout, values: list[Any]) -> RuntimeContext[Any]:
    """``ctx`` with every variable (:attr:`_Layout.every`, in order) holding ``values``;
    a read of them (``call_module``, ``state_dict``) until the loss returns checks only
    their versions (:func:`~torchlean.runtime._bulk.expect_read`)."""
    new, wrote = _bulk.replace_heads_read(ctx, layout.every, values, read=layout.read)
    _bulk.expect_read(layout.every, wrote)
    return new


def library_copy(value: Any) -> Any:
    """A fresh copy of ``value`` made by its array library."""
    return backend_of(value).copy(value)


def _split_state(out: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(out, tuple) or len(out) != 2 or not isinstance(out[1], Mapping):
        raise TypeError(
            f"{where} (has_state=True): fn must return (loss, new_state) with new_state a"
            f" mapping of variable names to arrays, got {type(out).__name__}"
            + (
                f" whose second item is a {type(out[1]).__name__}"
                if isinstance(out, tuple) and len(out) == 2
                else ""
            )
        )
    return out[0], out[1]


def _copy(library: Backend, value: Any) -> Any:
    return library.copy(value)


#: What :func:`_returns_copies` found.
_NOT_COPIES, _COPIES, _ALL_COPIES = "not copies", "copies", "all copies"


def _returns_copies(state: Any, layout: _Layout, copies: list[Any]) -> str:
    """Whether ``state`` (what the loss returned) maps buffer names to the very copies
    the loss received, their dims unchanged (BatchNorm's in-place update): ``_COPIES``;
    ``_ALL_COPIES`` when it holds every buffer in the layout's order (what
    ``call_module`` returns), none with autograd history (stored without a detach);
    else ``_NOT_COPIES``."""
    if type(state) is not dict:
        return _NOT_COPIES
    one = layout.buffer_library
    if one is not None and len(state) == len(copies) and list(state) == layout.buffers:
        # every buffer, in the layout's order: C-level passes
        values = list(state.values())
        if all(map(operator.is_, values, copies)) and one.intact_copies(values, layout.buffer_dims):
            return _ALL_COPIES
    # C-level loops: a BatchNorm CNN returns a dozen buffers at every step
    found = list(map(layout.buffer_index.get, state))
    if None in found:
        return _NOT_COPIES  # not a buffer (or not a name at all)
    at = cast("list[int]", found)
    values = list(state.values())
    if not all(map(operator.is_, map(copies.__getitem__, at), values)):
        return _NOT_COPIES
    if one is not None:
        dims = list(map(one.dims, values))
    else:
        dims = [layout.buffer_libraries[i].dims(v) for i, v in zip(at, values, strict=True)]
    return _COPIES if dims == list(map(layout.buffer_dims.__getitem__, at)) else _NOT_COPIES


def _land_state(
    ctx: RuntimeContext[Any],
    new_state: Mapping[str, Any],
    names: list[str],
    where: str,
    layout: _Layout | None = None,
) -> RuntimeContext[Any]:
    """``ctx`` with the variables of ``new_state`` replaced (detached values adopted).

    ``layout``: given when the loss returned the copies of the buffers it received
    (:func:`_returns_copies`), so ``new_state`` holds them, detached (same dims, dtype
    and library as the buffers): they are written with the trusted batch edit. Anything
    else goes through :meth:`RuntimeContext.with_variables`, which checks every value."""
    if layout is not None:
        keys = list(new_state)
        one = layout.buffer_library
        if one is not None:
            fresh = one.adopt_all(list(new_state.values()))
        else:
            index = layout.buffer_index
            fresh = [layout.buffer_libraries[index[n]].adopt(new_state[n]) for n in keys]
        return _bulk.replace_heads_trusted(ctx, keys, fresh)
    differentiated = set(names)
    problems: list[str] = []
    changed: list[str] = []
    reshaped = False
    for name, value in new_state.items():
        entry = ctx.variable_entry(name) if isinstance(name, str) else None
        if entry is None:
            problems.append(f"`{name}` is not a variable of the context")
        elif name in differentiated:
            problems.append(
                f"`{name}` gets a gradient (mark it as a buffer with ctx.mark_buffers, or"
                " freeze it)"
            )
        else:
            library = entry.library
            try:
                same = backend_of(value) is library
            except TypeError:
                same = False  # not an array: with_variables says so
            if same:
                dims, dtype = library.dims(value), library.dtype_name(value)
                if dims != entry.dims or dtype != entry.dtype:
                    reshaped = reshaped or dims != entry.dims
                    changed.append(
                        f"`{name}` is {dtype} {dims}, the context holds {entry.dtype} {entry.dims}"
                    )
    if problems:
        raise UnknownNameError(f"{where}: the new state cannot be stored: " + "; ".join(problems))
    if changed:
        # before: stored as returned, silently (an int counter became float32, a running
        # statistic lost its shape), and a jitted loop retraced at every step
        error = ShapeMismatchError if reshaped else DTypeMismatchError
        raise error(
            f"{where}: the new state would change a variable's shape or dtype: "
            + "; ".join(changed)
            + "; return each in the dtype and shape it has (x.astype(...) / x.to(...))"
        )
    return ctx.with_variables(list(new_state.items()), adopt=True)


def _library_of_names(ctx: RuntimeContext[Any], names: list[str]) -> Backend:
    """The one differentiable array library of the variables ``names``."""
    seen: dict[Backend, str] = {}
    for name in names:
        at = ctx.variable_entry(name)
        assert at is not None
        seen.setdefault(at.library, name)
    if not seen:
        return _first_differentiable(ctx)
    if len(seen) > 1:
        where = ", ".join(f"{b.name} (e.g. `{n}`)" for b, n in seen.items())
        raise BackendError(
            f"value_and_grad: the variables mix array libraries: {where};"
            " differentiate one library's arrays at a time"
        )
    ((library, name),) = seen.items()
    if not library.differentiable:
        raise BackendError(
            f"value_and_grad: variable `{name}` is a {library.name} array, which has no"
            " autograd; register torch tensors or jax arrays instead"
        )
    return library


def _first_differentiable(ctx: RuntimeContext[Any]) -> Backend:
    """Nothing to differentiate: the first differentiable library of the context, else
    ``_DEFAULT_LIBRARY`` (the loss still runs; every gradient list is empty)."""
    for _, at in ctx.latest_variables():
        if at.library.differentiable:
            return at.library
    return backend_named(_DEFAULT_LIBRARY)


def _unreached_error(
    where: str,
    reduce: str | None,
    names: list[str],
    ctx: RuntimeContext[Any],
    *,
    other: bool = False,
) -> TorchLeanError:
    """The loss reaches no variable: every gradient would be zero (and reducing would
    average zeros over the processes). ``other``: the loss depends on other tensors
    that require grad (captured parameters, or a module that swaps its own in)."""
    head = where if reduce is None else f"{where} (reduce={reduce!r})"
    if not names:
        return TorchLeanError(
            f"{head}: no variable gets a gradient (the context's"
            f" {ctx.context_size()} variable entries are all frozen, buffers or not"
            " floating point); there is nothing to reduce"
        )
    shown = ", ".join(f"`{n}`" for n in names[:8])
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    cause = (
        "; it depends on other tensors that require grad instead: parameters captured"
        " from outside the context, or a module that manages its own parameters (an"
        " FSDP2 module, after fully_shard, swaps its own sharded parameters in and"
        " ignores those functional_call passes: call functional_call on an unsharded"
        " module of the same class (built under torch.device('meta'), or a copy made"
        " before fully_shard) with the context's DTensors redistributed to Replicate()"
        " in the loss; docs/distributed.md, FSDP2)"
        if other
        else ""
    )
    return TorchLeanError(
        f"{head}: the loss depends on none of the variables"
        f" {shown}{more}, so every gradient would be zero{cause}; compute the loss from"
        " the context the function receives (ctx.get_variable / functional_call on it),"
        " not from tensors captured outside it"
    )


def _written_error(where: str, ctx: RuntimeContext[Any], names: list[str]) -> TorchLeanError:
    """The loss wrote in place a tensor the context holds (a parameter's leaf shares its
    memory): every variable found written is named. Cost: O(n) (an error path)."""
    written = []
    for name in names:
        try:
            ctx[name]
        except InPlaceModificationError:
            written.append(name)
    shown = ", ".join(f"`{n}`" for n in written[:8])
    more = f" and {len(written) - 8} more" if len(written) > 8 else ""
    return InPlaceModificationError(
        f"{where}: the loss wrote in place the context's {shown}{more} (the tensors it"
        " was given share memory with the context's); contexts never change, so that"
        " context can no longer be trusted. A module whose forward pass updates a"
        " parameter in place (nn.Embedding(max_norm=...) renormalizes the rows it looks"
        " up) cannot run on a context: apply that update to the new context's values"
        " outside the loss; a buffer the forward pass updates (BatchNorm's statistics,"
        " an EMA) trains through has_state=True, which hands the loss copies"
    )


def _scalar_error(shape: tuple[int, ...]) -> ShapeMismatchError:
    return ShapeMismatchError(
        f"value_and_grad: fn must return a scalar loss (shape ()), got shape {shape};"
        " reduce it first (e.g. .mean() or .sum())"
    )


def _split(out: Any, has_aux: bool) -> tuple[Any, Any]:
    if not has_aux:
        return out, None
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(
            "value_and_grad(has_aux=True): fn must return a pair (loss, aux),"
            f" got {type(out).__name__}"
        )
    return out

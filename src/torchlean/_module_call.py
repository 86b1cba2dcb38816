"""A torch ``nn.Module`` run with a context's tensors: ``functional_call`` prepared once.

``torch.func.functional_call(module, ctx.state_dict(), args)`` works on a context, but
every call walks the module twice (its tied names, then each dotted name down to its
submodule) and builds several dictionaries: about 0.1-0.3 ms a step on a host CPU for a
small model, whatever the size of its kernels. :func:`call_module` does the same swap
with what stays true between steps remembered per (module, layout of the context): for
each variable, the ``_parameters`` / ``_buffers`` slots of the submodules it goes into
(every tied name of the module, and the context's aliases), and the tensors the module
held there. A call checks the module still holds those tensors (one C-level pass),
puts the context's tensors in, runs the module, reads the buffers back (``state=True``)
and puts the module's own tensors back, even when the forward pass raises.

Three things a real model does are handled here: a module changed between calls (a
submodule replaced, a parameter added or a ``None`` one filled: the module is walked
again), two threads calling one module (the second is refused: its forward pass would
run on the first one's tensors), and activation checkpointing inside the forward
(``torch.utils.checkpoint(..., use_reentrant=False)`` recomputes the checkpointed part in
the backward pass, after the module's own tensors are back: the recomputation gets the
tensors the forward pass used, through a wrapper of torch's checkpoint generator that
acts only inside ``call_module``).

Reading map:
- :func:`call_module` -- the call (public as :func:`torchlean.autograd.call_module`).
- :class:`_Prepared` -- one (module, layout: the context's names and roles): the slots,
  the tensors the module held.
- :func:`_prepare` -- the walk of the module that builds it, and the strict check.
- :data:`_BUSY` -- one thread at a time per module.
- :func:`_install_recompute` / :func:`_recompute_with` -- checkpointing's recomputation
  run on the tensors of the calls active when the checkpointed part ran.
"""

from __future__ import annotations

import collections
import functools
import operator
import threading
import weakref
from collections.abc import Callable
from typing import Any

from torchlean._text import short_repr
from torchlean._validate import require_bool
from torchlean.errors import (
    BackendError,
    ExpectationError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.runtime import _bulk
from torchlean.runtime.context import RuntimeContext, require_context

__all__ = ["call_module"]

_SETITEM = operator.setitem
_GETITEM = operator.getitem


class _Prepared:
    """The slots of one module for one layout of a context's names."""

    __slots__ = ("buffer_dicts", "buffer_keys", "buffers", "dicts", "dims", "frozen", "keys",
                 "names", "originals", "roles", "sizes", "strict", "take", "total",
                 "watch_dicts", "watch_keys", "watch_values")  # fmt: skip

    def __init__(self) -> None:
        #: the context's latest variable names and roles (buffers, aliases) this was made for
        self.names: list[str] = []
        self.roles: Any = None
        self.strict = True
        #: the context's dims (in the order of names) the shapes were checked against
        self.dims: list[Any] = []
        #: per slot: the submodule's ``_parameters`` or ``_buffers`` dict and the key
        self.dicts: list[dict[str, Any]] = []
        self.keys: list[str] = []
        #: per slot: the index of the context's tensor that goes there
        self.take: list[int] = []
        #: per slot: the tensor the module held there
        self.originals: list[Any] = []
        #: the slots of parameters the module freezes (``requires_grad=False``), by name
        self.frozen: list[tuple[int, str]] = []
        #: the module's structure besides the slots: each submodule under its parent
        #: (``_modules``) and each ``None`` parameter or buffer, with what was there
        self.watch_dicts: list[dict[str, Any]] = []
        self.watch_keys: list[str] = []
        self.watch_values: list[Any] = []
        #: every ``_parameters``, ``_buffers`` and ``_modules`` dict, and their total
        #: length: every key they held is checked above (a slot, a ``None`` entry or a
        #: submodule), so with none deleted a name added anywhere changes the total
        self.sizes: list[dict[str, Any]] = []
        self.total = 0
        #: the context's buffers, with the slot each is read back from
        self.buffers: list[str] = []
        self.buffer_dicts: list[dict[str, Any]] = []
        self.buffer_keys: list[str] = []

    def intact(self) -> bool:
        """Whether the module still holds the tensors (and submodules) it held when this
        was made, and no parameter, buffer or submodule was added since."""
        held = map(_GETITEM, self.dicts, self.keys)
        watched = map(_GETITEM, self.watch_dicts, self.watch_keys)
        try:
            return (
                all(map(operator.is_, held, self.originals))
                and all(map(operator.is_, watched, self.watch_values))
                and sum(map(len, self.sizes)) == self.total
            )
        except KeyError:  # a parameter, buffer or submodule was deleted since
            return False


# One prepared layout per module (a weak reference: a module dropped is forgotten).
_CACHE: weakref.WeakKeyDictionary[Any, _Prepared] = weakref.WeakKeyDictionary()
#: ``id(module)`` -> (thread ident, token) of the call that has its slots swapped
_BUSY: dict[int, tuple[int, object]] = {}
#: per thread: the swaps of the calls running now (outermost first)
_ACTIVE = threading.local()
#: whether torch's checkpoint generator is wrapped (:func:`_install_recompute`)
_INSTALLED: list[bool] = [False]


def call_module(
    module: Any,
    ctx: RuntimeContext[Any],
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    state: bool = False,
    strict: bool = True,
) -> Any:
    """``module(*args, **kwargs)`` with the context's variables as its parameters and
    buffers: ``torch.func.functional_call(module, ctx.state_dict(), args, kwargs)``
    with the swap prepared once per (module, layout).

    - Every variable of ``ctx`` must be a parameter or buffer of ``module`` (else
      :class:`~torchlean.errors.UnknownNameError`, listing them). A tensor goes into
      every name the module ties to it (GPT-2's ``lm_head.weight`` is
      ``transformer.wte.weight``), and into the context's aliases
      (:meth:`RuntimeContext.aliases`).
    - ``strict=True`` (default): every parameter and persistent buffer of the module
      must get a tensor from the context (else ``UnknownNameError`` naming the missing
      ones), of the shape the module's has (else
      :class:`~torchlean.errors.ShapeMismatchError` naming them: a bias of shape (1,)
      would broadcast silently); ``strict=False`` leaves those the context lacks as the
      module holds them and checks no shape (``functional_call``'s default).
    - Names the module ties (one tensor) that the context holds as two variables are
      refused with ``strict=True`` (:class:`~torchlean.errors.ExpectationError`: they
      would train apart); ``strict=False`` runs them untied.
    - A parameter the module freezes (``requires_grad=False``) must not get a gradient
      (``value_and_grad(frozen=...)``): torch.optim would leave it as it is, so a call
      whose tensor for it requires grad raises :class:`~torchlean.errors.TorchLeanError`.
    - ``state=True`` returns ``(out, new_state)``: ``{buffer: value after the call}``
      for each buffer of the context (:meth:`RuntimeContext.buffers`), what
      ``value_and_grad(has_state=True)`` takes. A module that updates a buffer in place
      (BatchNorm in train mode) writes the context's tensor: inside
      ``value_and_grad(has_state=True)`` the loss gets fresh copies of the buffers, so
      nothing a context holds changes. Called on a stored context, BatchNorm's write
      is caught through ``num_batches_tracked`` (an ordinary in-place add: the context
      then raises :class:`~torchlean.errors.InPlaceModificationError` when that entry
      or the whole state is read); torch's kernel writes the running statistics
      themselves without a version bump (docs/arrays.md, routes not seen).
    - ``args``: a tuple of positional arguments, or one argument that is not a tuple.

    The module's own tensors are back in place when the call returns or raises. One
    module runs one thread's call at a time: a call on a module another thread is
    running raises :class:`~torchlean.errors.BackendError` (``functional_call`` would
    silently run it on the other thread's tensors; the guard is per module passed: two
    modules that share a submodule, called from two threads, are not caught).
    Activation checkpointing inside the forward pass
    (``torch.utils.checkpoint(..., use_reentrant=False)``) recomputes with the tensors
    the forward pass used (a buffer the checkpointed part updates in place is updated
    again, as in the plain module); ``use_reentrant=True`` is refused by torch itself
    under ``value_and_grad``. Lean counterpart: none.
    Cost: the forward pass plus O(s) C-level steps for s slots; the first call with a
    layout, or after the module's tensors were replaced, walks the module (O(n)).
    """
    if not callable(module) or not callable(getattr(module, "named_modules", None)):
        raise TypeError(f"call_module expects a torch nn.Module, got {type(module).__name__}")
    require_context(ctx, "call_module")
    require_bool(state, "call_module", "state")
    require_bool(strict, "call_module", "strict")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(
            "call_module: kwargs must be a dict or None, got"
            f" {type(kwargs).__name__} {short_repr(kwargs)}"
        )
    if not isinstance(args, tuple):
        args = (args,)
    names = _bulk.latest_names(ctx)
    read = _bulk.heads(ctx, names)
    if read is None:
        ctx.state_dict()  # raises, naming the variable written in place
        read = _bulk.heads(ctx, names)  # pragma: no cover - state_dict raised
        assert read is not None  # pragma: no cover
    tensors = read.tensors
    if not _INSTALLED[0]:
        _install_recompute()
    me = threading.get_ident()
    token = (me, object())
    owner = _BUSY.setdefault(id(module), token)
    if owner is not token and owner[0] != me:
        raise BackendError(
            f"call_module({type(module).__name__}): another thread is running this module"
            " with its own tensors (the module's parameter slots hold one call's tensors"
            " at a time); give each thread its own copy of the module (copy.deepcopy)"
        )
    try:
        return _call(module, ctx, names, read.dims, tensors, args, kwargs, state, strict)
    finally:
        if owner is token:
            del _BUSY[id(module)]


def _call(
    module: Any,
    ctx: RuntimeContext[Any],
    names: list[str],
    dims: list[Any],
    tensors: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    state: bool,
    strict: bool,
) -> Any:
    """The swap, the forward pass and the restore, the module claimed by this thread."""
    prepared = _CACHE.get(module)
    if (
        prepared is None
        or (prepared.names is not names and prepared.names != names)
        or prepared.roles is not _bulk.roles(ctx)
        or prepared.strict is not strict
        or (strict and prepared.dims is not dims and prepared.dims != dims)
        or not prepared.intact()
    ):
        prepared = _prepare(module, ctx, names, dims, strict)
        _CACHE[module] = prepared
    dicts, keys = prepared.dicts, prepared.keys
    values = list(map(tensors.__getitem__, prepared.take))
    if prepared.frozen:
        trained = [name for k, name in prepared.frozen if values[k].requires_grad]
        if trained:
            raise _frozen_error(module, trained)
    collections.deque(map(_SETITEM, dicts, keys, values), 0)
    stack = getattr(_ACTIVE, "stack", None)
    if stack is None:
        stack = _ACTIVE.stack = []
    stack.append(prepared)
    try:
        out = module(*args, **(kwargs or {}))
        if state:
            after = map(_GETITEM, prepared.buffer_dicts, prepared.buffer_keys)
            return out, dict(zip(prepared.buffers, after, strict=True))
        return out
    finally:
        stack.pop()
        collections.deque(map(_SETITEM, dicts, keys, prepared.originals), 0)


def _prepare(
    module: Any, ctx: RuntimeContext[Any], names: list[str], dims: list[Any], strict: bool
) -> _Prepared:
    """Walk ``module`` once: the slots of each of ``names`` (with the module's ties and
    the context's aliases), checked against the module's parameters and buffers (their
    shapes too when ``strict``: ``dims``, the context's, in the order of ``names``)."""
    # every (submodule, kind, key) of the module, by dotted name, and the tie groups
    slots: dict[str, tuple[dict[str, Any], str]] = {}
    held: dict[str, Any] = {}
    parameters: set[str] = set()
    optional: set[str] = set()
    prepared = _Prepared()
    watch = prepared.watch_dicts, prepared.watch_keys, prepared.watch_values
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for key, value in sub._parameters.items():
            if value is not None:
                slots[dot + key] = (sub._parameters, key)
                held[dot + key] = value
                parameters.add(dot + key)
            else:
                _watch(watch, sub._parameters, key, None)
        skip = getattr(sub, "_non_persistent_buffers_set", ())
        for key, value in sub._buffers.items():
            if value is not None:
                slots[dot + key] = (sub._buffers, key)
                held[dot + key] = value
                if key in skip:
                    optional.add(dot + key)
            else:
                _watch(watch, sub._buffers, key, None)
        for key, child in sub._modules.items():
            _watch(watch, sub._modules, key, child)
        prepared.sizes.extend((sub._parameters, sub._buffers, sub._modules))
    prepared.total = sum(map(len, prepared.sizes))
    tied: dict[int, list[str]] = {}
    for name, value in held.items():
        tied.setdefault(id(value), []).append(name)
    aliases: dict[str, list[str]] = {}
    for alias, canonical in ctx.aliases().items():
        aliases.setdefault(canonical, []).append(alias)
    index = {name: i for i, name in enumerate(names)}
    prepared.names, prepared.strict, prepared.roles = names, strict, _bulk.roles(ctx)
    prepared.dims = dims
    mismatched: list[str] = []
    untied: list[str] = []
    covered: set[str] = set()
    unexpected: list[str] = []
    for i, name in enumerate(names):
        if name not in slots:
            unexpected.append(name)
            continue
        targets = list(tied[id(held[name])])
        for alias in aliases.get(name, ()):
            if alias in slots:
                targets.extend(tied[id(held[alias])])
        for target in dict.fromkeys(targets):
            if target in index and target != name:
                # the context has a variable of its own under that name: with strict,
                # a tie of the module the context breaks (trained apart, silently)
                if strict and name < target:
                    untied.append(f"`{name}` and `{target}`")
                continue
            covered.add(target)
            d, key = slots[target]
            prepared.dicts.append(d)
            prepared.keys.append(key)
            prepared.take.append(i)
            prepared.originals.append(held[target])
            if target in parameters and not held[target].requires_grad:
                prepared.frozen.append((len(prepared.take) - 1, name))
            shape = _shape(held[target])
            if strict and shape is not None and shape != tuple(dims[i]):
                mismatched.append(
                    f"`{name}` has shape {tuple(dims[i])} but the module's `{target}` has"
                    f" shape {shape}"
                )
    missing = [n for n in slots if n not in covered and n not in optional] if strict else []
    if unexpected or missing or mismatched or untied:
        problems = []
        if unexpected:
            shown = ", ".join(f"`{n}`" for n in unexpected[:8])
            more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
            problems.append(f"the module has no parameter or buffer {shown}{more}")
        if missing:
            shown = ", ".join(f"`{n}`" for n in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            problems.append(
                f"the context has no variable for {shown}{more} (pass strict=False to keep"
                " the module's own)"
            )
        if mismatched:
            shown = "; ".join(mismatched[:8])
            more = f" and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""
            problems.append(f"variable {shown}{more}")
        if untied:
            shown = ", ".join(untied[:8])
            more = f" and {len(untied) - 8} more" if len(untied) > 8 else ""
            problems.append(
                f"the module ties {shown}{more} (one tensor) but the context has a variable"
                " for each, which would train apart (keep one and tie the other to it with"
                " ctx.tie, or pass strict=False to run them untied)"
            )
        if not unexpected and not missing and not mismatched:
            raise ExpectationError(
                f"call_module({type(module).__name__}): " + "; ".join(problems) + "; build"
                " the context with RuntimeContext.from_module(module)"
            )
        if not unexpected and not missing:
            raise ShapeMismatchError(
                f"call_module({type(module).__name__}): " + "; ".join(problems) + " (a"
                " context of another configuration of the model?); build the context"
                " with RuntimeContext.from_module(module)"
            )
        raise UnknownNameError(
            f"call_module({type(module).__name__}): " + "; ".join(problems) + "; build the"
            " context with RuntimeContext.from_module(module)"
        )
    for name in ctx.buffers():
        d, key = slots[name]
        prepared.buffers.append(name)
        prepared.buffer_dicts.append(d)
        prepared.buffer_keys.append(key)
    return prepared


def _frozen_error(module: Any, names: list[str]) -> TorchLeanError:
    """A parameter the module freezes that the call would train."""
    shown = ", ".join(f"`{n}`" for n in dict.fromkeys(names))
    return TorchLeanError(
        f"call_module({type(module).__name__}): the module freezes {shown}"
        " (requires_grad=False) but the context's tensors for them require grad, so they"
        " would be trained (torch.optim would leave them as they are); freeze them in the"
        " transformation (value_and_grad(loss, frozen=[...]) or fit(..., frozen=[...]))"
        " or unfreeze them in the module (requires_grad_(True))"
    )


def _shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a module's tensor; ``None`` for one without a shape yet (a lazy
    module's uninitialized parameter)."""
    try:
        return tuple(value.shape)
    except (RuntimeError, ValueError, AttributeError):
        return None


def _watch(
    watch: tuple[list[Any], list[Any], list[Any]], d: dict[str, Any], key: str, value: Any
) -> None:
    watch[0].append(d)
    watch[1].append(key)
    watch[2].append(value)


def _recompute_with(stack: list[_Prepared], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run, when torch's checkpoint recomputes it in the backward pass, with the
    tensors the slots of every call in ``stack`` hold now (when the checkpointed part
    runs). A buffer the recomputation updates in place (BatchNorm in train mode) is
    updated again, as in the plain module; under ``value_and_grad(has_state=True)``
    that is the loss's copy, stored after the backward pass."""
    swaps = [(p.dicts, p.keys, list(map(_GETITEM, p.dicts, p.keys))) for p in stack]

    @functools.wraps(fn)
    def recompute(*args: Any, **kwargs: Any) -> Any:
        saved = []
        try:
            for dicts, keys, values in swaps:
                saved.append((dicts, keys, list(map(_GETITEM, dicts, keys))))
                collections.deque(map(_SETITEM, dicts, keys, values), 0)
            return fn(*args, **kwargs)
        finally:
            for dicts, keys, values in reversed(saved):
                collections.deque(map(_SETITEM, dicts, keys, values), 0)

    return recompute


def _install_recompute() -> None:
    """Wrap torch's non-reentrant checkpoint generator (once per process): inside a
    ``call_module`` call of this thread, the function it recomputes in the backward pass
    runs with the tensors of the calls active when it was checkpointed
    (:func:`_recompute_with`); outside one, it is torch's, untouched."""
    _INSTALLED[0] = True
    import torch.utils.checkpoint as checkpointing

    original = getattr(checkpointing, "_checkpoint_without_reentrant_generator", None)
    if original is None or getattr(original, "__torchlean_recompute__", False):
        return

    @functools.wraps(original)
    def generator(fn: Any, *args: Any, **kwargs: Any) -> Any:
        stack = getattr(_ACTIVE, "stack", None)
        if stack:
            fn = _recompute_with(stack, fn)
        return original(fn, *args, **kwargs)

    generator.__torchlean_recompute__ = True  # type: ignore[attr-defined]
    checkpointing._checkpoint_without_reentrant_generator = generator

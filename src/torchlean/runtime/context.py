"""The runtime context: named variables, named gradients and a fresh-id counter.

Mirrors TorchLean's ``NN.Runtime.Context``. A :class:`RuntimeContext` holds two
registries of ``(name, AnyTensor)`` entries, most recent first, and ``next_id``. Every
operation returns a new context and leaves the one it was called on exactly as it was.

The observable results are those of the Lean definitions, word for word: registering
prepends (a newer entry shadows an older one of the same name), a lookup takes the first
entry of a name and returns its tensor only when the stored shape equals the requested
one, and an update rewrites every entry of a name (shadowed ones too). The registries
are persistent maps underneath (see :mod:`torchlean.runtime._registry`), so a lookup or
an update costs O(log n) instead of a walk of the list, and old contexts share their
structure with new ones instead of being copied.

Reading map:
- :class:`RuntimeContext` -- the context; each seed operation is a method.
- :func:`empty_context` -- ``RuntimeContext.empty``.
- The seed's operations as functions with the context first: :func:`register_variable`,
  :func:`get_variable`, :func:`set_variable`, :func:`register_gradient`,
  :func:`get_gradient`, :func:`set_gradient`, :func:`clear_gradients`,
  :func:`has_variable`, :func:`variable_names`, :func:`gradient_names`,
  :func:`context_size`, :func:`gradient_count`, :func:`is_valid_context`,
  :func:`context_to_string`.
- Python additions: :meth:`RuntimeContext.variable` / :meth:`RuntimeContext.gradient`
  (strict lookups), :meth:`RuntimeContext.accumulate_gradient`,
  :meth:`RuntimeContext.check`, :meth:`RuntimeContext.state_dict`.

Immutability of the tensors themselves: a numpy array is copied into a read-only buffer
when it is stored, so neither the caller's array nor an array a lookup returns can
change what a context holds; a torch tensor is stored without a copy and its version
counter is recorded, so a write in place is detected and every later read of it raises
:class:`~torchlean.errors.InPlaceModificationError`; jax arrays are immutable already.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal

import numpy as np

from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    ShapeMismatchError,
    UnknownNameError,
)
from torchlean.runtime._backends import (
    _BY_TYPE,
    NUMPY,
    UNKNOWN_DEVICES,
    backend_of,
    dtype_name,
    read_checked,
    render_array,
)
from torchlean.runtime._registry import EMPTY, DonatedRegistry, Entry, Registry, fresh_entry
from torchlean.runtime.any_tensor import AnyTensor, ArrayT
from torchlean.spec.shape import ShapeLike, as_dims

if TYPE_CHECKING:
    from torchlean.runtime.check import CheckReport

__all__ = [
    "RuntimeContext",
    "clear_gradients",
    "context_size",
    "context_to_string",
    "empty_context",
    "get_gradient",
    "get_variable",
    "gradient_count",
    "gradient_names",
    "has_variable",
    "is_valid_context",
    "register_gradient",
    "register_variable",
    "set_gradient",
    "set_variable",
    "variable_names",
]

Kind = Literal["variable", "gradient"]

_new = object.__new__

_REPR_ENTRIES = 6


class RuntimeContext(Generic[ArrayT]):
    """Named variables, named gradients and a fresh-id counter. Mirrors
    ``Runtime.RuntimeContext``.

    Build one with :meth:`empty` (or :func:`empty_context`) and grow it with
    :meth:`register_variable`; every method returns a new context. ``dtype`` pins the
    element type, as Lean's ``RuntimeContext α`` does: a pinned context refuses tensors
    of another dtype, or of another array library than its first tensor, and never casts.
    """

    __slots__ = ("__weakref__", "_g", "_next_id", "_pin", "_v")
    _v: Registry
    _g: Registry
    _next_id: int
    # (dtype name, backend name or None until the first tensor is stored) or None.
    _pin: tuple[str, str | None] | None

    def __init__(self, *, dtype: object = None) -> None:
        self._v = EMPTY
        self._g = EMPTY
        self._next_id = 0
        self._pin = _make_pin(dtype)

    # ------------------------------------------------------------------ building

    @classmethod
    def empty(cls, *, dtype: object = None) -> RuntimeContext[Any]:
        """An empty context with no variables and no gradients. Mirrors ``Runtime.empty``.

        ``dtype`` (a numpy, torch or jax dtype, or a name such as ``"float32"``) pins
        the element type; a torch dtype also pins the array library to torch.
        """
        return cls(dtype=dtype)

    @classmethod
    def from_state_dict(
        cls, mapping: Mapping[str, Any], *, dtype: object = None
    ) -> RuntimeContext[Any]:
        """A context with one variable per item of ``mapping``, registered in its order.

        Cost: O(m log m) for m items.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(
                f"from_state_dict expects a mapping of name to array, got {type(mapping).__name__}"
            )
        return cls(dtype=dtype).register_variables(mapping)

    @classmethod
    def from_module(cls, module: Any, *, backend: str = "torch") -> RuntimeContext[Any]:
        """A context of ``module``'s parameters and buffers (see :mod:`torchlean.io.torch`)."""
        if not callable(getattr(module, "state_dict", None)):
            raise TypeError(f"from_module expects a torch nn.Module, got {type(module).__name__}")
        from torchlean.io.torch import from_module

        return from_module(module, backend=backend)

    def load_into(self, module: Any, *, dtypes: bool = True) -> Any:
        """Copy the variables into ``module``, checked first (see :mod:`torchlean.io.torch`)."""
        if not callable(getattr(module, "load_state_dict", None)):
            raise TypeError(f"load_into expects a torch nn.Module, got {type(module).__name__}")
        from torchlean.io.torch import load_into

        return load_into(self, module, dtypes=dtypes)

    def _derive(self, v: Registry, g: Registry, next_id: int) -> RuntimeContext[ArrayT]:
        new: RuntimeContext[ArrayT] = _new(RuntimeContext)
        new._v = v
        new._g = g
        new._next_id = next_id
        new._pin = self._pin
        return new

    def _take(self, value: Any, kind: Kind, name: str) -> tuple[AnyTensor[Any], Any]:
        """Validate and protect ``value``; return it wrapped, and the pin it implies."""
        backend = _BY_TYPE.get(type(value))
        if backend is None:
            try:
                backend = backend_of(value)
            except TypeError as e:
                raise TypeError(f"{kind} `{name}`: {e}") from None
        try:
            stored = backend.freeze(value)
        except TypeError as e:
            raise TypeError(f"{kind} `{name}`: {e}") from None
        pin = self._pin
        if pin is not None:
            got = backend.dtype_name(stored)
            if got != pin[0]:
                raise DTypeMismatchError(
                    f"{kind} `{name}` has dtype {got} but this context holds {pin[0]}"
                    " only; convert it first (no silent casts)"
                )
            if pin[1] is None:
                pin = (pin[0], backend.name)
            elif pin[1] != backend.name:
                raise DTypeMismatchError(
                    f"{kind} `{name}` is a {backend.name} array but this context holds"
                    f" {pin[1]} {pin[0]} arrays only"
                )
        # fresh_entry(), inlined: this is the hot path of every register and set.
        entry: Entry = _new(Entry)
        entry._dims = stored.shape if backend is NUMPY else backend.dims(stored)
        entry._s = None
        entry._t = stored
        entry._backend = backend
        entry._version = backend.version(stored) if backend.versioned else None
        entry.count = 0
        return entry, pin

    # ------------------------------------------------------------------ variables

    def register_variable(self, name: str, value: ArrayT) -> RuntimeContext[ArrayT]:
        """Put ``(name, value)`` in front of the variables and add 1 to ``next_id``.

        Mirrors ``Runtime.registerVariable``. An older variable of the same name stays,
        shadowed. Cost: O(log n) (plus a copy of a numpy array).
        """
        if type(name) is not str:
            _check_name(name, "variable")
        at, pin = self._take(value, "variable", name)
        new = self._derive(self._v.push(name, at), self._g, self._next_id + 1)
        new._pin = pin
        return new

    def register_variables(
        self, items: Mapping[str, ArrayT] | Iterable[tuple[str, ArrayT]]
    ) -> RuntimeContext[ArrayT]:
        """Register each ``(name, value)`` in order, as repeated :meth:`register_variable`.

        Validates every item before anything is registered. Cost: O(m log n).
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        if not isinstance(pairs, Iterable) or isinstance(pairs, (str, bytes)):
            raise TypeError(
                "register_variables expects a mapping or an iterable of (name, array)"
                f" pairs, got {type(items).__name__}"
            )
        taken: list[tuple[str, AnyTensor[Any]]] = []
        probe = self  # carries the pin the values seen so far imply
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                text = repr(pair)
                text = text if len(text) <= 60 else text[:57] + "..."
                raise TypeError(
                    f"register_variables: item {i} must be a (name, array) pair,"
                    f" got {type(pair).__name__} {text}"
                )
            name, value = pair
            _check_name(name, "variable")
            at, pin = probe._take(value, "variable", name)
            if pin is not probe._pin:
                probe = probe._derive(probe._v, probe._g, probe._next_id)
                probe._pin = pin
            taken.append((name, at))
        new = probe._derive(self._v.push_many(taken), self._g, self._next_id + len(taken))
        return new

    def get_variable(self, name: str, shape: ShapeLike) -> ArrayT | None:
        """The first variable named ``name`` if its shape is ``shape``, else ``None``.

        Mirrors ``Runtime.getVariable``: an older, shadowed entry of that name is never
        returned, even when its shape matches. Cost: O(log n).
        """
        try:
            node = self._v.map.get(name)
        except TypeError:
            node = None
        if node is None:
            if type(name) is not str:
                _check_name(name, "variable")
            as_dims(shape)
            return None
        if node._dims != (shape if type(shape) is tuple else as_dims(shape)):
            as_dims(shape)
            return None
        if node._version is not None:
            node._backend.check_intact(node._t, node._version, f"variable `{name}`")
        return node._t  # type: ignore[no-any-return]

    def set_variable(self, name: str, value: ArrayT) -> RuntimeContext[ArrayT]:
        """Give every variable named ``name`` the value ``value`` (shadowed ones too).

        Mirrors ``Runtime.setVariable``: the order is kept, the shape may change, and
        nothing changes when the name is absent. Cost: O(log n).
        """
        if type(name) is not str:
            _check_name(name, "variable")
        at, pin = self._take(value, "variable", name)
        v = self._v.set_all(name, at)
        if v is self._v:
            return self._derive(v, self._g, self._next_id)
        new = self._derive(v, self._g, self._next_id)
        new._pin = pin
        return new

    def has_variable(self, name: str) -> bool:
        """True iff a variable named ``name`` exists. Mirrors ``Runtime.hasVariable``.

        Cost: O(log n).
        """
        try:
            found = name in self._v.map
        except TypeError:
            found = False
        if not found and type(name) is not str:
            _check_name(name, "variable")
        return found

    def variable_names(self) -> list[str]:
        """Every variable's name, most recent first, shadowed entries included.

        Mirrors ``Runtime.variableNames``. Cost: O(n).
        """
        return list(self._v.names())

    def context_size(self) -> int:
        """The number of variable entries (shadowed ones included). Mirrors
        ``Runtime.contextSize``."""
        return self._v.size

    # ------------------------------------------------------------------ gradients

    def register_gradient(self, name: str, grad: ArrayT) -> RuntimeContext[ArrayT]:
        """Put ``(name, grad)`` in front of the gradients; ``next_id`` is unchanged.

        Mirrors ``Runtime.registerGradient``. To add into an existing gradient, use
        :meth:`accumulate_gradient`. Cost: O(log n).
        """
        if type(name) is not str:
            _check_name(name, "gradient")
        at, pin = self._take(grad, "gradient", name)
        new = self._derive(self._v, self._g.push(name, at), self._next_id)
        new._pin = pin
        return new

    def get_gradient(self, name: str, shape: ShapeLike) -> ArrayT | None:
        """The first gradient named ``name`` if its shape is ``shape``, else ``None``.

        Mirrors ``Runtime.getGradient``. Cost: O(log n).
        """
        try:
            node = self._g.map.get(name)
        except TypeError:
            node = None
        if node is None:
            if type(name) is not str:
                _check_name(name, "gradient")
            as_dims(shape)
            return None
        if node._dims != (shape if type(shape) is tuple else as_dims(shape)):
            as_dims(shape)
            return None
        if node._version is not None:
            node._backend.check_intact(node._t, node._version, f"gradient `{name}`")
        return node._t  # type: ignore[no-any-return]

    def set_gradient(self, name: str, grad: ArrayT) -> RuntimeContext[ArrayT]:
        """Give every gradient named ``name`` the value ``grad``. Mirrors
        ``Runtime.setGradient`` (nothing changes when the name is absent). Cost: O(log n).
        """
        if type(name) is not str:
            _check_name(name, "gradient")
        at, pin = self._take(grad, "gradient", name)
        g = self._g.set_all(name, at)
        new = self._derive(self._v, g, self._next_id)
        if g is not self._g:
            new._pin = pin
        return new

    def clear_gradients(self) -> RuntimeContext[ArrayT]:
        """Remove every gradient entry (PyTorch's ``optimizer.zero_grad()``). Mirrors
        ``Runtime.clearGradients``. Cost: O(1)."""
        return self._derive(self._v, EMPTY, self._next_id)

    def gradient_names(self) -> list[str]:
        """Every gradient's name, most recent first. Mirrors ``Runtime.gradientNames``.

        Cost: O(n).
        """
        return list(self._g.names())

    def gradient_count(self) -> int:
        """The number of gradient entries. Mirrors ``Runtime.gradientCount``."""
        return self._g.size

    def has_gradient(self, name: str) -> bool:
        """True iff a gradient named ``name`` exists. Cost: O(log n)."""
        try:
            found = name in self._g.map
        except TypeError:
            found = False
        if not found and type(name) is not str:
            _check_name(name, "gradient")
        return found

    def accumulate_gradient(self, name: str, grad: ArrayT) -> RuntimeContext[ArrayT]:
        """Add ``grad`` into the most recent gradient named ``name``, or register it.

        The accumulation the Lean module leaves to callers. Only the most recent entry
        of that name changes. A different shape raises
        :class:`~torchlean.errors.ShapeMismatchError`; a different dtype or array
        library raises :class:`~torchlean.errors.DTypeMismatchError` (no silent
        promotion). Cost: O(log n) plus the addition.
        """
        if type(name) is not str:
            _check_name(name, "gradient")
        at, pin = self._take(grad, "gradient", name)
        node = self._g.map.get(name)
        if node is None:
            new = self._derive(self._v, self._g.push(name, at), self._next_id)
            new._pin = pin
            return new
        old = node
        if old._dims != at._dims:
            raise ShapeMismatchError(
                f"cannot accumulate into gradient `{name}`: it has shape {old._dims}"
                f" but the added gradient has shape {at._dims}"
            )
        if old._backend is not at._backend:
            raise DTypeMismatchError(
                f"cannot accumulate into gradient `{name}`: it is a {old.backend} array"
                f" but the added gradient is a {at.backend} array"
            )
        if old.dtype != at.dtype:
            raise DTypeMismatchError(
                f"cannot accumulate into gradient `{name}`: it has dtype {old.dtype}"
                f" but the added gradient has dtype {at.dtype}"
            )
        devices = {old.device, at.device}
        if len(devices) > 1 and not devices & UNKNOWN_DEVICES:
            raise BackendError(
                f"cannot accumulate into gradient `{name}`: it is on {old.device}"
                f" but the added gradient is on {at.device}"
            )
        backend = at._backend
        total = backend.adopt(backend.add(read_checked(old, f"gradient `{name}`"), at.t))
        summed = fresh_entry(old._dims, total, backend)
        return self._derive(self._v, self._g.replace_head(name, summed), self._next_id)

    # ------------------------------------------------------------------ strict lookups

    def variable(self, name: str, shape: ShapeLike | None = None) -> ArrayT:
        """The most recent variable named ``name``; raises instead of returning ``None``.

        :class:`~torchlean.errors.UnknownNameError` (a ``KeyError``) names close
        matches; :class:`~torchlean.errors.ShapeMismatchError` (a ``ValueError``) gives
        the stored and the requested shape. Cost: O(log n) (O(n) to suggest names).
        """
        return self._strict(self._v, "variable", name, shape)

    def gradient(self, name: str, shape: ShapeLike | None = None) -> ArrayT:
        """The most recent gradient named ``name``; raises like :meth:`variable`."""
        return self._strict(self._g, "gradient", name, shape)

    def _strict(self, registry: Registry, kind: Kind, name: str, shape: ShapeLike | None) -> ArrayT:
        _check_name(name, kind)
        dims = None if shape is None else as_dims(shape)
        at = registry.head(name)
        if at is None:
            raise UnknownNameError(_unknown_message(registry, kind, name))
        if dims is not None and at._dims != dims:
            raise ShapeMismatchError(
                f"{kind} `{name}` has shape {at._dims} but {dims} was requested"
            )
        if at._version is not None:
            at._backend.check_intact(at._t, at._version, f"{kind} `{name}`")
        return at._t  # type: ignore[no-any-return]

    def __getitem__(self, name: str) -> ArrayT:
        """``ctx[name]`` is :meth:`variable` without a shape check."""
        return self.variable(name)

    def __contains__(self, name: object) -> bool:
        """``name in ctx`` is :meth:`has_variable`."""
        return isinstance(name, str) and name in self._v.map

    # ------------------------------------------------------------------ whole context

    @property
    def var_registry(self) -> tuple[tuple[str, AnyTensor[ArrayT]], ...]:
        """The variable entries ``(name, AnyTensor)``, most recent first. Cost: O(n)."""
        return tuple(self._v.entries())

    @property
    def gradients(self) -> tuple[tuple[str, AnyTensor[ArrayT]], ...]:
        """The gradient entries ``(name, AnyTensor)``, most recent first. Cost: O(n)."""
        return tuple(self._g.entries())

    @property
    def next_id(self) -> int:
        """The fresh-id counter: the number of :meth:`register_variable` calls so far."""
        self._v.size  # noqa: B018 - raises DonatedContextError for a donated context
        return self._next_id

    @property
    def dtype(self) -> str | None:
        """The pinned element type (e.g. ``"float32"``), or ``None`` when not pinned."""
        return None if self._pin is None else self._pin[0]

    def state_dict(self, *, gradients: bool = False) -> dict[str, ArrayT]:
        """The most recent entry of each name, as a plain dict in first-registered order.

        ``gradients=True`` gives the gradients instead of the variables. Cost: O(n).
        """
        if not isinstance(gradients, bool):
            raise TypeError(f"state_dict: gradients must be a bool, got {gradients!r}")
        registry = self._g if gradients else self._v
        kind = "gradient" if gradients else "variable"
        out: dict[str, ArrayT] = {}
        for name, at in registry.visible():
            out[name] = read_checked(at, f"{kind} `{name}`")
        return out

    def is_valid_context(self) -> bool:
        """True iff every gradient's name is the name of some variable (names only).

        Mirrors ``Runtime.isValidContext``. Cost: O(m log n) for m gradient entries.
        """
        vmap = self._v.map
        return all(name in vmap for name in self._g.map)

    def check(self) -> CheckReport:
        """Everything wrong with this context, as a report (not a bool).

        Finds gradients without a variable, gradients whose shape or dtype differs from
        their variable's, non-finite values, and tensors on more than one device.
        :meth:`is_valid_context` stays exactly the Lean check. Cost: O(total elements).
        """
        from torchlean.runtime.check import check_context

        return check_context(self)

    def context_to_string(self) -> str:
        """``Context(vars: [w: 3.0, ...], grads: [...])`` with every value in full.

        Mirrors ``Runtime.contextToString`` (for debugging: it prints whole tensors).
        Cost: O(total elements).
        """
        vars_text = ", ".join(f"{n}: {_pretty(at, 'variable', n)}" for n, at in self._v.entries())
        grads_text = ", ".join(f"{n}: {_pretty(at, 'gradient', n)}" for n, at in self._g.entries())
        return f"Context(vars: [{vars_text}], grads: [{grads_text}])"

    def __repr__(self) -> str:
        def summary(registry: Registry) -> str:
            parts = []
            for i, (name, at) in enumerate(registry.entries()):
                if i == _REPR_ENTRIES:
                    parts.append(f"... {registry.size - _REPR_ENTRIES} more")
                    break
                parts.append(f"{name}: {at._dims} {at.dtype}")
            return "[" + ", ".join(parts) + "]"

        pin = "" if self._pin is None else f", dtype={self._pin[0]}"
        return (
            f"RuntimeContext({_count(self._v.size, 'variable')}, "
            f"{_count(self._g.size, 'gradient')}, next_id={self._next_id}{pin}; "
            f"vars={summary(self._v)}, grads={summary(self._g)})"
        )

    def __iter__(self) -> Iterator[str]:
        raise TypeError(
            "a RuntimeContext is not iterable; use variable_names(), var_registry or state_dict()"
        )

    def __bool__(self) -> bool:
        return True

    def __copy__(self) -> RuntimeContext[ArrayT]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RuntimeContext[ArrayT]:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (self.var_registry, self.gradients, self._next_id, self._pin),
        )

    def _repr_html_(self) -> str:
        from torchlean.widgets import to_html

        return to_html(self)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from torchlean.widgets import rich_renderable

        yield rich_renderable(self)


def donate(ctx: RuntimeContext[Any], *, to: str) -> None:
    """Hand ``ctx`` over to ``to`` (e.g. an in-place optimizer step): any later use of
    ``ctx`` raises :class:`~torchlean.errors.DonatedContextError`.

    The caller promises that no one else needs ``ctx``; in return, ``to`` may reuse the
    buffers ``ctx`` held. Donating one context never affects another. Cost: O(1).
    """
    why = (
        f"this context was donated to {to} and can no longer be used;"
        " use the context that call returned"
    )
    sentinel = DonatedRegistry(why)
    ctx._v = sentinel  # type: ignore[assignment]
    ctx._g = sentinel  # type: ignore[assignment]


def is_donated(ctx: RuntimeContext[Any]) -> bool:
    """True when ``ctx`` was donated and can no longer be used."""
    registry: object = ctx._v
    return isinstance(registry, DonatedRegistry)


def _rebuild(
    variables: tuple[tuple[str, AnyTensor[Any]], ...],
    gradients: tuple[tuple[str, AnyTensor[Any]], ...],
    next_id: int,
    pin: tuple[str, str | None] | None,
) -> RuntimeContext[Any]:
    """Rebuild a context from its entries (for pickle and copy)."""
    ctx: RuntimeContext[Any] = RuntimeContext()
    v = EMPTY.push_many(list(reversed(variables)))
    g = EMPTY.push_many(list(reversed(gradients)))
    new = ctx._derive(v, g, next_id)
    new._pin = pin
    return new


def _make_pin(dtype: object) -> tuple[str, str | None] | None:
    if dtype is None:
        return None
    try:
        name = dtype_name(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be a numpy, torch or jax dtype or a dtype name, got {dtype!r}"
        ) from None
    backend = "torch" if str(dtype).startswith("torch.") else None
    return (name, backend)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def require_context(value: object, where: str, argument: str = "ctx") -> None:
    """Raise a ``TypeError`` naming ``where`` and ``argument`` unless ``value`` is a
    :class:`RuntimeContext` (for the functions that take one). Cost: O(1)."""
    if not isinstance(value, RuntimeContext):
        text = repr(value)
        if len(text) > 60:
            text = text[:57] + "..."
        raise TypeError(
            f"{where}: {argument} must be a RuntimeContext, got {type(value).__name__} {text}"
        )


def _check_name(name: object, kind: str) -> None:
    if not isinstance(name, str):
        text = repr(name)
        if len(text) > 60:
            text = text[:57] + "..."
        raise TypeError(f"{kind} name must be a str, got {type(name).__name__} {text}")


def _unknown_message(registry: Registry, kind: str, name: str) -> str:
    if registry.size == 0:
        return f"no {kind} `{name}`; the context has no {kind}s"
    names = list(registry.map.keys())
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:
        # a `module.` prefix or a missing one is the commonest near miss
        close = [n for n in names if n.endswith("." + name) or name.endswith("." + n)][:3]
    if close:
        return f"no {kind} `{name}`; did you mean " + " or ".join(f"`{c}`" for c in close) + "?"
    return f"no {kind} `{name}` (the context has {_count(len(names), kind + ' name')})"


def _pretty(at: AnyTensor[Any], kind: str, name: str) -> str:
    t = read_checked(at, f"{kind} `{name}`")
    array = at._backend.data(t)
    if array is None:  # a meta tensor, a tracer, an opaque pytree leaf
        return at._backend.stand_in(t)
    array = render_array(array)

    def go(a: np.ndarray[Any, Any]) -> str:
        if a.ndim == 0:
            return str(a[()])
        return "[" + ", ".join(go(a[i]) for i in range(a.shape[0])) + "]"

    return go(array)


def empty_context(*, dtype: object = None) -> RuntimeContext[Any]:
    """An empty context. Mirrors ``Runtime.empty``; ``dtype`` pins the element type."""
    return RuntimeContext.empty(dtype=dtype)


# The seed's operations as functions, context first. Each checks that its first argument
# is a context (a clear TypeError, not an AttributeError) and then calls the method.


def register_variable(
    ctx: RuntimeContext[ArrayT], name: str, value: ArrayT
) -> RuntimeContext[ArrayT]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "register_variable")
    return ctx.register_variable(name, value)


def get_variable(ctx: RuntimeContext[ArrayT], name: str, shape: ShapeLike) -> ArrayT | None:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "get_variable")
    return ctx.get_variable(name, shape)


def set_variable(ctx: RuntimeContext[ArrayT], name: str, value: ArrayT) -> RuntimeContext[ArrayT]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "set_variable")
    return ctx.set_variable(name, value)


def register_gradient(
    ctx: RuntimeContext[ArrayT], name: str, grad: ArrayT
) -> RuntimeContext[ArrayT]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "register_gradient")
    return ctx.register_gradient(name, grad)


def get_gradient(ctx: RuntimeContext[ArrayT], name: str, shape: ShapeLike) -> ArrayT | None:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "get_gradient")
    return ctx.get_gradient(name, shape)


def set_gradient(ctx: RuntimeContext[ArrayT], name: str, grad: ArrayT) -> RuntimeContext[ArrayT]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "set_gradient")
    return ctx.set_gradient(name, grad)


def clear_gradients(ctx: RuntimeContext[ArrayT]) -> RuntimeContext[ArrayT]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "clear_gradients")
    return ctx.clear_gradients()


def has_variable(ctx: RuntimeContext[Any], name: str) -> bool:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "has_variable")
    return ctx.has_variable(name)


def variable_names(ctx: RuntimeContext[Any]) -> list[str]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "variable_names")
    return ctx.variable_names()


def gradient_names(ctx: RuntimeContext[Any]) -> list[str]:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "gradient_names")
    return ctx.gradient_names()


def context_size(ctx: RuntimeContext[Any]) -> int:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "context_size")
    return ctx.context_size()


def gradient_count(ctx: RuntimeContext[Any]) -> int:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "gradient_count")
    return ctx.gradient_count()


def is_valid_context(ctx: RuntimeContext[Any]) -> bool:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "is_valid_context")
    return ctx.is_valid_context()


def context_to_string(ctx: RuntimeContext[Any]) -> str:
    if type(ctx) is not RuntimeContext:
        require_context(ctx, "context_to_string")
    return ctx.context_to_string()


for _function in (
    register_variable,
    get_variable,
    set_variable,
    register_gradient,
    get_gradient,
    set_gradient,
    clear_gradients,
    has_variable,
    variable_names,
    gradient_names,
    context_size,
    gradient_count,
    is_valid_context,
    context_to_string,
):
    _function.__doc__ = getattr(RuntimeContext, _function.__name__).__doc__
del _function

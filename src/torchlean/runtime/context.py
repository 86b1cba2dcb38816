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
- :class:`RuntimeContext` -- the context; each seed operation is a method (the same
  operations as functions with the context first are in
  :mod:`torchlean.runtime.functions`).
- Python additions: :meth:`RuntimeContext.variable` / :meth:`RuntimeContext.gradient`
  (strict lookups), :meth:`RuntimeContext.accumulate_gradient`,
  :meth:`RuntimeContext.check`, :meth:`RuntimeContext.state_dict`.
- For the runtime layers above (autograd, optimizers, I/O, views): the batch edits
  :meth:`RuntimeContext.with_variables` / :meth:`RuntimeContext.with_gradients`, the
  entries :meth:`RuntimeContext.latest_variables`, :meth:`RuntimeContext.variable_entry`
  (and the gradient forms), :meth:`RuntimeContext.from_registries` (Lean's structure
  literal), :func:`donate` / :func:`claim` (atomic) / :func:`is_donated`,
  :func:`stored_values` (every stored value, unchecked, for buffer comparisons),
  :func:`with_roles` (buffers and aliases set literally), :func:`owned_by_caller`
  (memory the caller registered, which a donated step never writes).
- Roles (:mod:`torchlean.runtime._roles`): :meth:`RuntimeContext.mark_buffers`,
  :meth:`RuntimeContext.buffers`, :meth:`RuntimeContext.tie`,
  :meth:`RuntimeContext.aliases`.

Immutability of the tensors themselves: a numpy array is copied into a read-only buffer
when it is stored, so neither the caller's array nor an array a lookup returns can
change what a context holds; a torch tensor is stored without a copy and its version
counter is recorded, so a write in place is detected and every later read of it raises
:class:`~torchlean.errors.InPlaceModificationError`; jax arrays are immutable already.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, Literal

from torchlean._text import did_you_mean, short_repr, unmatched_patterns
from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    ShapeMismatchError,
    UnknownNameError,
)
from torchlean.runtime._registry import EMPTY, DonatedRegistry, Registry
from torchlean.runtime._roles import Roles, marked, tied
from torchlean.runtime.any_tensor import (
    LIBRARIES,
    VERSION_READERS,
    AnyTensor,
    ArrayT,
    Entry,
    as_tensor,
    fresh_entry,
)
from torchlean.runtime.backends import (
    BY_TYPE,
    UNKNOWN_DEVICES,
    Backend,
    backend_of,
    read_checked,
)
from torchlean.runtime.dtypes import dtype_name
from torchlean.spec.shape import ShapeLike, as_dims

if TYPE_CHECKING:
    from torchlean.runtime.check import CheckReport

__all__ = [
    "RuntimeContext",
    "claim",
    "donate",
    "is_donated",
    "owned_by_caller",
    "require_context",
    "with_roles",
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

    __slots__ = ("__weakref__", "_g", "_next_id", "_pin", "_roles", "_v")
    _v: Registry
    _g: Registry
    _next_id: int
    # (dtype name, backend name or None until the first tensor is stored) or None.
    _pin: tuple[str, str | None] | None
    # buffers and aliases (see torchlean.runtime._roles), None when there are none
    _roles: Roles | None

    def __init__(self, *, dtype: object = None) -> None:
        self._v = EMPTY
        self._g = EMPTY
        self._next_id = 0
        self._pin = _make_pin(dtype)
        self._roles = None

    # ------------------------------------------------------------------ building

    @classmethod
    def empty(cls, *, dtype: object = None) -> RuntimeContext[Any]:
        """An empty context with no variables and no gradients. Mirrors ``Runtime.emptyContext``.

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
    def from_registries(
        cls,
        var_registry: Iterable[tuple[str, Any]],
        gradients: Iterable[tuple[str, Any]] = (),
        *,
        next_id: int | None = None,
        dtype: object = None,
        adopt: bool = False,
    ) -> RuntimeContext[Any]:
        """A context with exactly these registries, as Lean's structure literal
        ``{ var_registry := ..., gradients := ..., next_id := ... }``.

        Both registries are lists of ``(name, array)`` (or ``(name, AnyTensor)``), most
        recent first, shadowed entries included; ``next_id`` defaults to the number of
        variable entries. ``adopt=True``: the caller gives the arrays up (fresh results,
        e.g. just read from a file), so they are stored without a protective copy.
        Every entry is validated before the context is built. Cost: O(n log n).
        """
        if next_id is None:
            variables = list(var_registry)
            next_id = len(variables)
        else:
            variables = list(var_registry)
        if type(next_id) is not int or next_id < 0:
            raise TypeError(f"from_registries: next_id must be an int >= 0, got {next_id!r}")
        probe = cls(dtype=dtype)
        v = probe._take_all(variables, "variable", adopt)
        g = probe._take_all(list(gradients), "gradient", adopt)
        new = probe._derive(EMPTY.push_many(v[::-1]), EMPTY.push_many(g[::-1]), next_id)
        new._pin = probe._pin
        return new

    # ------------------------------------------------------------------ roles

    def mark_buffers(self, patterns: str | Iterable[str]) -> RuntimeContext[ArrayT]:
        """Mark the variables matching ``patterns`` (names or ``fnmatch`` globs such as
        ``"*.running_*"``) as buffers: state that never gets a gradient and that no
        optimizer touches (BatchNorm's running statistics).

        ``from_module`` marks a module's buffers already. The marks are names: they
        survive every operation, pytrees, pickle, and save/load in the torchlean layout.
        A pattern that matches no variable raises
        :class:`~torchlean.errors.UnknownNameError`. Lean counterpart: none. Cost: O(n * p).
        """
        return self._mark(patterns, "mark_buffers", buffers=True)

    def mark_parameters(self, patterns: str | Iterable[str]) -> RuntimeContext[ArrayT]:
        """Undo :meth:`mark_buffers` for the variables matching ``patterns``. Cost: O(n * p)."""
        return self._mark(patterns, "mark_parameters", buffers=False)

    def _mark(
        self, patterns: str | Iterable[str], where: str, *, buffers: bool
    ) -> RuntimeContext[ArrayT]:
        pats = _patterns(patterns, where)
        names = list(self._v.map.keys())
        unused = unmatched_patterns(pats, names)
        if unused:
            raise UnknownNameError(
                f"{where}: {unused} no variable"
                f" (the context has {_count(len(names), 'variable name')})"
            )
        new = self._derive(self._v, self._g, self._next_id)
        new._roles = marked(self._roles, names, pats, buffers=buffers)
        return new

    def buffers(self) -> list[str]:
        """The names of the variables marked as buffers, in first-registered order.

        Cost: O(n).
        """
        roles = self._roles
        if roles is None or not roles.buffers:
            return []
        from torchlean.runtime import _bulk

        marks = roles.buffers
        return [n for n in _bulk.latest_names(self) if n in marks]

    def is_buffer(self, name: str) -> bool:
        """True iff ``name`` is marked as a buffer. Cost: O(1)."""
        _check_name(name, "variable")
        return self._roles is not None and name in self._roles.buffers

    def tie(self, alias: str, *, to: str) -> RuntimeContext[ArrayT]:
        """Record ``alias`` as a second name of the variable ``to`` (a tied weight).

        The context keeps one variable; ``ctx[alias]`` reads ``ctx[to]``, saving stores
        the tensor once and remembers the alias, and ``load_into`` gives the module's
        tied parameter the same tensor. ``from_module`` records a module's ties already.
        ``to`` may be an alias itself (the new alias names the variable it names).
        Lean counterpart: none. Cost: O(a) for a aliases.
        """
        _check_name(alias, "alias")
        _check_name(to, "variable")
        to = self.aliases().get(to, to)  # tied to an alias: to the variable it names
        if to not in self._v.map:
            raise UnknownNameError(f"tie: {_unknown_message(self._v, 'variable', to)}")
        if alias in self._v.map:
            raise ValueError(
                f"tie: `{alias}` is a variable itself; an alias names no entry of its own"
                " (build the context without it, as from_module does)"
            )
        new = self._derive(self._v, self._g, self._next_id)
        new._roles = tied(self._roles, alias, to)
        return new

    def aliases(self) -> dict[str, str]:
        """``{alias: canonical name}`` of the tied weights (see :meth:`tie`). Cost: O(a)."""
        return {} if self._roles is None else self._roles.alias_map

    @classmethod
    def from_pytree(cls, tree: Any, *, dtype: object = None) -> RuntimeContext[Any]:
        """A context of the array leaves of a jax pytree (haiku/linen dicts, flax nnx
        ``State``, an equinox module), named by their key paths with dots
        (``{"dense": {"kernel": w}}`` -> ``dense.kernel``); :meth:`to_pytree` gives the
        tree back (see :mod:`torchlean.runtime._trees`). Cost: O(n log n)."""
        from torchlean.runtime._trees import from_pytree

        return from_pytree(tree, dtype=dtype)

    def to_pytree(self, like: Any = None) -> Any:
        """The variables in the structure :meth:`from_pytree` read (or ``like``'s); a
        context without one gives nested dicts split at the dots. Cost: O(n)."""
        from torchlean.runtime._trees import to_pytree

        return to_pytree(self, like)

    def tree_shape(self) -> Any:
        """The pytree structure :meth:`from_pytree` recorded, or ``None``. Cost: O(1)."""
        return None if self._roles is None else self._roles.tree

    def copy_roles(self, other: RuntimeContext[Any]) -> RuntimeContext[ArrayT]:
        """This context with the buffers and aliases of ``other`` (by name), e.g. after
        rebuilding it with :meth:`from_registries`. Cost: O(1)."""
        require_context(other, "copy_roles", "other")
        new = self._derive(self._v, self._g, self._next_id)
        new._roles = other._roles
        return new

    def _take_all(
        self, items: list[tuple[str, Any]], kind: Kind, adopt: bool
    ) -> list[tuple[str, Entry]]:
        """Take every ``(name, value)``; the pin they imply is left on ``self``."""
        out: list[tuple[str, Entry]] = []
        for i, pair in enumerate(items):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(
                    f"{kind} entry {i} must be a (name, array) pair, got"
                    f" {type(pair).__name__} {short_repr(pair)}"
                )
            name, value = pair
            _check_name(name, kind)
            if not name.isascii():
                _check_new_name(name, kind)
            if isinstance(value, AnyTensor):
                value = read_checked(value, f"{kind} `{name}`")
            at, self._pin = self._take(value, kind, name, adopt)
            out.append((name, at))
        return out

    @classmethod
    def from_module(cls, module: Any, *, backend: str = "torch") -> RuntimeContext[Any]:
        """A context of ``module``'s parameters and buffers (see :mod:`torchlean.io.torch`)."""
        if not callable(getattr(module, "state_dict", None)):
            raise TypeError(f"from_module expects a torch nn.Module, got {type(module).__name__}")
        from torchlean.io.torch import from_module

        return from_module(module, backend=backend)

    def load_into(self, module: Any, *, dtypes: bool = True, strict: bool = True) -> Any:
        """Copy the variables into ``module``, checked first (see :mod:`torchlean.io.torch`);
        ``strict=False`` returns a report of missing and unexpected names instead."""
        if not callable(getattr(module, "load_state_dict", None)):
            raise TypeError(f"load_into expects a torch nn.Module, got {type(module).__name__}")
        from torchlean.io.torch import load_into

        if strict:
            return load_into(self, module, dtypes=dtypes)
        return load_into(self, module, dtypes=dtypes, strict=False)

    def _derive(self, v: Registry, g: Registry, next_id: int) -> RuntimeContext[ArrayT]:
        new: RuntimeContext[ArrayT] = _new(RuntimeContext)
        new._v = v
        new._g = g
        new._next_id = next_id
        new._pin = self._pin
        new._roles = self._roles
        return new

    def _take(self, value: Any, kind: Kind, name: str, adopt: bool = False) -> tuple[Entry, Any]:
        """Validate and protect ``value``; return it wrapped, and the pin it implies.

        ``adopt``: the caller gives ``value`` up (a fresh result), so it is stored
        without a protective copy (see :meth:`Backend.adopt`)."""
        backend = BY_TYPE.get(type(value))
        if backend is None:
            try:
                backend = backend_of(value)
            except TypeError as e:
                raise TypeError(f"{kind} `{name}`: {e}") from None
        try:
            stored = backend.adopt(value) if adopt else backend.freeze(value)
        except TypeError as e:
            raise TypeError(f"{kind} `{name}`: {e}") from None
        if not adopt and backend.differentiable:
            # the caller's memory (torch and jax store without a copy): an in-place
            # (donated) step updates a copy of it instead (see owned_by_caller)
            _CALLER_OWNED[id(stored)] = stored
            if stored is not value:  # torch's detach(): the caller's own tensor too
                _remember_caller_memory(value)
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
        return fresh_entry(backend.dims(stored), stored, backend), pin

    # ------------------------------------------------------------------ variables

    def register_variable(self, name: str, value: ArrayT) -> RuntimeContext[ArrayT]:
        """Put ``(name, value)`` in front of the variables and add 1 to ``next_id``.

        Mirrors ``Runtime.registerVariable``. An older variable of the same name stays,
        shadowed. Cost: O(log n) (plus a copy of a numpy array).
        """
        if type(name) is not str or not name.isascii():
            _check_new_name(name, "variable")
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
        taken: list[tuple[str, Entry]] = []
        probe = self  # carries the pin the values seen so far imply
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(
                    f"register_variables: item {i} must be a (name, array) pair,"
                    f" got {type(pair).__name__} {short_repr(pair)}"
                )
            name, value = pair
            _check_name(name, "variable")
            if not name.isascii():
                _check_new_name(name, "variable")
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
        if node[0] != (shape if type(shape) is tuple else as_dims(shape)):
            as_dims(shape)
            return None
        version = node[2]
        if version is not None:
            reader = VERSION_READERS[node[3]]
            if reader is None or reader(node[1]) != version:
                LIBRARIES[node[3]].check_intact(node[1], version, f"variable `{name}`")
        return node[1]  # type: ignore[no-any-return]

    def set_variable(self, name: str, value: ArrayT) -> RuntimeContext[ArrayT]:
        """Give every variable named ``name`` the value ``value`` (shadowed ones too).

        Mirrors ``Runtime.setVariable``: the order is kept, the shape may change, and
        nothing changes when the name is absent. Cost: O(log n).
        """
        if type(name) is not str or not name.isascii():
            _check_new_name(name, "variable")
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
        if type(name) is not str or not name.isascii():
            _check_new_name(name, "gradient")
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
        if node[0] != (shape if type(shape) is tuple else as_dims(shape)):
            as_dims(shape)
            return None
        version = node[2]
        if version is not None:
            reader = VERSION_READERS[node[3]]
            if reader is None or reader(node[1]) != version:
                LIBRARIES[node[3]].check_intact(node[1], version, f"gradient `{name}`")
        return node[1]  # type: ignore[no-any-return]

    def set_gradient(self, name: str, grad: ArrayT) -> RuntimeContext[ArrayT]:
        """Give every gradient named ``name`` the value ``grad``. Mirrors
        ``Runtime.setGradient`` (nothing changes when the name is absent). Cost: O(log n).
        """
        if type(name) is not str or not name.isascii():
            _check_new_name(name, "gradient")
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
        if type(name) is not str or not name.isascii():
            _check_new_name(name, "gradient")
        taken, pin = self._take(grad, "gradient", name)
        node = self._g.map.get(name)
        if node is None:
            new = self._derive(self._v, self._g.push(name, taken), self._next_id)
            new._pin = pin
            return new
        old = as_tensor(node)
        at = as_tensor(taken)
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
        return self._derive(self._v, self._g.replace_heads([(name, summed)]), self._next_id)

    # ------------------------------------------------------------------ batch edits

    def with_variables(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, adopt: bool = False
    ) -> RuntimeContext[ArrayT]:
        """Give the most recent variable of each name a new value, in one new context.

        A name that is absent is registered (``next_id`` grows by one for each). Older,
        shadowed entries keep their values, and the shape may change, as with repeated
        :meth:`register_variable` / replacement of the head entry. Every value is
        validated before anything is built. ``adopt=True``: the caller gives the values
        up (fresh results such as an optimizer's output or autograd's leaves), so they
        are stored as they are, without a protective copy or a detach. Lean
        counterpart: none (the batch form the runtime layers use). Cost: O(m log n).
        """
        taken, pin = self._take_items(items, "variable", "with_variables", adopt)
        vmap = self._v.map
        added = len({name for name, _ in taken if name not in vmap})
        new = self._derive(self._v.replace_heads(taken), self._g, self._next_id + added)
        new._pin = pin
        return new

    def with_gradients(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]], *, adopt: bool = False
    ) -> RuntimeContext[ArrayT]:
        """Give the most recent gradient of each name a new value; register the absent.

        As :meth:`with_variables`, for the gradients (``next_id`` never changes).
        Cost: O(m log n).
        """
        taken, pin = self._take_items(items, "gradient", "with_gradients", adopt)
        new = self._derive(self._v, self._g.replace_heads(taken), self._next_id)
        new._pin = pin
        return new

    def _take_items(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        kind: Kind,
        where: str,
        adopt: bool,
    ) -> tuple[list[tuple[str, Entry]], Any]:
        if not isinstance(adopt, bool):
            raise TypeError(f"{where}: adopt must be a bool, got {adopt!r}")
        pairs = items.items() if isinstance(items, Mapping) else items
        if not isinstance(pairs, Iterable) or isinstance(pairs, (str, bytes)):
            raise TypeError(
                f"{where} expects a mapping or an iterable of (name, array) pairs,"
                f" got {type(items).__name__}"
            )
        probe = self._derive(self._v, self._g, self._next_id)
        return probe._take_all(list(pairs), kind, adopt), probe._pin

    # ------------------------------------------------------------------ entries

    def latest_variables(self) -> list[tuple[str, AnyTensor[ArrayT]]]:
        """The most recent variable entry of each name, names in first-registered order
        (the entries :meth:`state_dict` reads). Cost: O(n)."""
        return list(self._v.visible())

    def latest_gradients(self) -> list[tuple[str, AnyTensor[ArrayT]]]:
        """The most recent gradient entry of each name, names in first-registered order.

        Cost: O(n).
        """
        return list(self._g.visible())

    def variable_entry(self, name: str) -> AnyTensor[ArrayT] | None:
        """The most recent variable entry named ``name`` (with its shape, dtype, device
        and library), or ``None``. Cost: O(log n)."""
        _check_name(name, "variable")
        return self._v.head(name)

    def gradient_entry(self, name: str) -> AnyTensor[ArrayT] | None:
        """The most recent gradient entry named ``name``, or ``None``. Cost: O(log n)."""
        _check_name(name, "gradient")
        return self._g.head(name)

    @property
    def library(self) -> str | None:
        """The array library a pinned context holds (``"torch"``...), or ``None`` when the
        context is not pinned or holds no tensor yet."""
        return None if self._pin is None else self._pin[1]

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
        if at is None and kind == "variable" and self._roles is not None:
            canonical = self._roles.alias_map.get(name)
            if canonical is not None:
                at = registry.head(canonical)
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

        ``gradients=True`` gives the gradients instead of the variables. Every value is
        checked against in-place writes. Cost: O(n), in C-level loops.
        """
        if not isinstance(gradients, bool):
            raise TypeError(f"state_dict: gradients must be a bool, got {gradients!r}")
        from torchlean.runtime import _bulk

        # the whole registry read in C-level loops (a training loss calls this every step)
        names = _bulk.latest_names(self, gradients=gradients)
        read = _bulk.heads(self, names, gradients=gradients)
        if read is not None:
            return dict(zip(names, read.tensors, strict=True))
        # a tensor written in place: the entry-by-entry read names it
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

    def check(self, *, collective: bool = False) -> CheckReport:
        """Everything wrong with this context, as a report (not a bool).

        Finds gradients without a variable, gradients whose shape, dtype or placement
        differs from their variable's, non-finite values, and tensors on more than one
        device. Distributed tensors are read as this process's local shards (the
        report's ``scope`` says so); ``collective=True``, called on every process,
        sums the counts over processes in one all-reduce. :meth:`is_valid_context`
        stays exactly the Lean check. Cost: O(total elements).
        """
        from torchlean.runtime.check import check_context

        return check_context(self, collective=collective)

    def context_to_string(self) -> str:
        """``Context(vars: [w: 3.000000, ...], grads: [...])`` with every value in full,
        each scalar printed as Lean's ``toString`` prints it (see
        :mod:`torchlean.runtime.printing`).

        Mirrors ``Runtime.contextToString`` (for debugging: it prints whole tensors).
        Cost: O(total elements).
        """
        from torchlean.runtime.printing import context_to_string

        return context_to_string(self)

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
            (self.var_registry, self.gradients, self._next_id, self._pin, self._roles),
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
    with _DONATION:
        _donate(ctx, to)


def claim(*contexts: RuntimeContext[Any], to: str) -> tuple[RuntimeContext[Any], ...]:
    """Donate ``contexts`` to ``to`` at once, atomically, before their buffers are reused.

    Returns a live context equal to each (sharing its registries) for the caller's own
    use. Raises :class:`~torchlean.errors.DonatedContextError`, donating none of them,
    when one was already donated: of two threads claiming one context, exactly one gets
    it (so an in-place update can never run twice on one buffer). Cost: O(1) each.
    """
    with _DONATION:
        for ctx in contexts:
            ctx._v.size  # noqa: B018 - raises DonatedContextError for a donated context
        live = tuple(ctx._derive(ctx._v, ctx._g, ctx._next_id) for ctx in contexts)
        for ctx in contexts:
            _donate(ctx, to)
    return live


def _donate(ctx: RuntimeContext[Any], to: str) -> None:
    why = (
        f"this context was donated to {to} and can no longer be used;"
        " use the context that call returned"
    )
    sentinel = DonatedRegistry(why)
    ctx._v = sentinel  # type: ignore[assignment]
    ctx._g = sentinel  # type: ignore[assignment]


#: Serialises donations: a claim checks and donates its contexts under it.
_DONATION: Final = threading.Lock()


def stored_values(
    ctx: RuntimeContext[Any], *, gradients: bool = False
) -> Iterator[tuple[str, bool, Any, Backend]]:
    """Each stored value of the variables (or gradients) of ``ctx``, unchecked, as
    ``(name, visible, tensor, backend)``: ``visible`` for the most recent entry of a name.

    A value that several entries of a name share (after ``set_variable``) comes once as
    the visible entry and once more as a shadowed one; the rest of a run of equal
    entries is skipped. For the runtime layers that compare buffers (an in-place
    optimizer step). Cost: O(distinct values), no wrapper built.
    """
    registry = ctx._g if gradients else ctx._v
    for name, record in registry.map.items():
        backend = LIBRARIES[record[3]]
        yield name, True, record[1], backend
        if record[4] > 1:
            yield name, False, record[1], backend
        runs = record[5]
        while runs is not None:
            older, _, runs = runs
            yield name, False, older[1], LIBRARIES[older[3]]


#: Values stored without ``adopt`` that share the caller's memory, by id (weakly held).
_CALLER_OWNED: Final[weakref.WeakValueDictionary[int, Any]] = weakref.WeakValueDictionary()


#: The caller's own objects behind :data:`_CALLER_OWNED` values that are not them (the
#: tensor a torch ``detach()`` was stored for), by id (weakly held): their memory
#: stays the caller's even when no context holds the stored value any more.
_CALLER_MEMORY: Final[weakref.WeakValueDictionary[int, Any]] = weakref.WeakValueDictionary()


def _remember_caller_memory(value: Any) -> None:
    with contextlib.suppress(TypeError):  # not weakly referenceable: the stored value is
        _CALLER_MEMORY[id(value)] = value


def owned_by_caller(value: Any) -> bool:
    """True when ``value`` (a stored tensor, ``AnyTensor.unchecked``) is memory the
    caller registered without giving it up (``adopt=False``, the default of
    ``register_variable``, ``from_state_dict``, ``with_variables``). An in-place
    (donated) optimizer step never writes such a value: it updates a copy, once, at
    the first step, and donates only what torchlean allocated. Register with
    ``adopt=True`` to opt in to in-place updates of your own arrays. Cost: O(1)."""
    return _CALLER_OWNED.get(id(value)) is value


def overlaps_caller_memory(library: Backend, values: list[Any]) -> set[int]:
    """The ``id`` of each of ``values`` (stored tensors of ``library``) that is not
    itself :func:`owned_by_caller` but whose memory overlaps a live value that is: a
    ``detach()`` or a view of the caller's tensor that a torch ``tree_map`` put in a
    context. An in-place step updates such a value as a copy too. The caller's own
    object itself (in a context only by ``adopt=True``) is theirs to give. Compared by byte
    range (:meth:`Backend.buffer_range`). Cost: O((c + n) log c) for c live values the
    caller owns (of ``library``) and n values."""
    spans: dict[Any, list[tuple[int, int]]] = {}
    for held in [*_CALLER_OWNED.values(), *_CALLER_MEMORY.values()]:
        if BY_TYPE.get(type(held)) is library:
            span = library.buffer_range(held)
            if span is not None:
                spans.setdefault(span[0], []).append((span[1], span[2]))
    if not spans:
        return set()
    merged: dict[Any, tuple[list[int], list[int]]] = {}
    for space, ranges in spans.items():
        ranges.sort()
        starts: list[int] = []
        stops: list[int] = []
        for start, stop in ranges:
            if stops and start < stops[-1]:
                stops[-1] = max(stops[-1], stop)
            else:
                starts.append(start)
                stops.append(stop)
        merged[space] = (starts, stops)
    out: set[int] = set()
    for value in values:
        # the caller's own object in a context was handed over (adopt=True)
        if owned_by_caller(value) or _CALLER_MEMORY.get(id(value)) is value:
            continue
        span = library.buffer_range(value)
        if span is None:
            continue
        found = merged.get(span[0])
        if found is None:
            continue
        starts, stops = found
        i = bisect.bisect_left(starts, span[2]) - 1  # the last range starting before its end
        if i >= 0 and stops[i] > span[1]:
            out.add(id(value))
    return out


def is_donated(ctx: RuntimeContext[Any]) -> bool:
    """True when ``ctx`` was donated and can no longer be used."""
    registry: object = ctx._v
    return isinstance(registry, DonatedRegistry)


def _rebuild(
    variables: tuple[tuple[str, AnyTensor[Any]], ...],
    gradients: tuple[tuple[str, AnyTensor[Any]], ...],
    next_id: int,
    pin: tuple[str, str | None] | None,
    roles: Roles | None = None,
) -> RuntimeContext[Any]:
    """Rebuild a context from its entries (for pickle and copy)."""
    ctx: RuntimeContext[Any] = RuntimeContext()
    v = EMPTY.push_many(list(reversed(variables)))
    g = EMPTY.push_many(list(reversed(gradients)))
    new = ctx._derive(v, g, next_id)
    new._pin = pin
    new._roles = roles
    return new


def with_roles(
    ctx: RuntimeContext[Any],
    *,
    buffers: Iterable[str] = (),
    aliases: Mapping[str, str] | None = None,
    tree: Any = None,
) -> RuntimeContext[Any]:
    """``ctx`` with exactly these buffers and aliases (names taken literally, no globs),
    for the layers that rebuild a context (``from_module``, file readers); ``tree`` is the
    structure ``from_pytree`` read (see :mod:`torchlean.runtime._trees`). Names that are
    not variables of ``ctx`` raise :class:`~torchlean.errors.UnknownNameError`. Cost: O(b + a)."""
    names = ctx._v.map
    marks = frozenset(buffers)
    table = dict(aliases or {})
    unknown = sorted(n for n in marks | set(table.values()) if n not in names)
    if unknown:
        raise UnknownNameError(
            "buffers and aliases must name variables of the context; unknown: "
            + ", ".join(f"`{n}`" for n in unknown[:5])
        )
    clash = sorted(a for a in table if a in names)
    if clash:
        raise ValueError(
            "an alias names no entry of its own, but "
            + ", ".join(f"`{a}`" for a in clash[:5])
            + " are variables"
        )
    new = ctx._derive(ctx._v, ctx._g, ctx._next_id)
    roles = Roles(marks, tuple(sorted(table.items())), tree)
    new._roles = None if roles == Roles() else roles
    return new


def _patterns(patterns: object, where: str) -> tuple[str, ...]:
    if isinstance(patterns, str):
        return (patterns,)
    if isinstance(patterns, Iterable):
        pats = tuple(patterns)
        if all(isinstance(p, str) for p in pats):
            return pats
    raise TypeError(
        f"{where}: expects a name or glob pattern (str) or an iterable of them,"
        f" got {short_repr(patterns)}"
    )


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
        raise TypeError(
            f"{where}: {argument} must be a RuntimeContext, got {type(value).__name__}"
            f" {short_repr(value)}"
        )


def _check_name(name: object, kind: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, got {type(name).__name__} {short_repr(name)}")


def _check_new_name(name: object, kind: str) -> None:
    """A name about to be stored: a str that every file format can store (valid
    Unicode: no lone surrogate, which UTF-8 cannot encode). Called only for names that
    are not ASCII (``str.isascii`` is the fast path). Cost: O(len(name))."""
    _check_name(name, kind)
    assert isinstance(name, str)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{kind} name {name!r} has a lone surrogate ({name[e.start]!r} at index"
            f" {e.start}), which is not text and which no file format can store; decode"
            " the name properly (e.g. bytes.decode('utf-8')) before registering it"
        ) from None


def _unknown_message(registry: Registry, kind: str, name: str) -> str:
    if registry.size == 0:
        return f"no {kind} `{name}`; the context has no {kind}s"
    names = list(registry.map.keys())
    close = did_you_mean(name, names)
    if not close:
        # a `module.` prefix or a missing one is the commonest near miss
        close = [n for n in names if n.endswith("." + name) or name.endswith("." + n)][:3]
    if close:
        return f"no {kind} `{name}`; did you mean " + " or ".join(f"`{c}`" for c in close) + "?"
    return f"no {kind} `{name}` (the context has {_count(len(names), kind + ' name')})"

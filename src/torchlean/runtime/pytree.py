"""A :class:`RuntimeContext` is a pytree for JAX and for PyTorch.

``jax.jit``, ``jax.grad``, ``jax.vmap``, ``jax.tree_util.tree_map``, optax,
``torch.utils._pytree.tree_map`` and ``torch.func`` take a context and give one back
with the same names, order, shadowing (several entries of one name), ``next_id`` and
dtype pin. The leaves are the tensors of every variable entry, most recent first, then
of every gradient entry, most recent first (the order of ``var_registry`` and
``gradients``); everything else is the static layout (:class:`Layout`).

Unflattening accepts any leaves without checking them, because the libraries pass
tracers, ``None``, ``object()`` sentinels or ``jax.ShapeDtypeStruct`` through it. A leaf
is stored as it is (a torch tensor keeps ``requires_grad``, so autograd and
``torch.func`` see through a context; its version counter is recorded), except a
writeable numpy array, which is copied into a read-only buffer as
``register_variable`` does. An entry's shape is its leaf's shape, or the shape the
entry had when the leaf has none.

Registration never imports jax or torch: it happens at once for a library already
imported, and otherwise right after it is imported (a ``sys.meta_path`` finder watches
for ``jax`` and ``torch``), or on :func:`register`.

Reading map:
- :func:`register` -- register with jax and/or torch now (idempotent).
- :func:`registered` -- the libraries registered so far.
- :class:`EntryKey` -- one entry in a key path: ``.variables['fc1.weight']``.
- :class:`Layout` -- the aux data: names, shapes, ``next_id``, pin, roles (buffers, aliases).
- ``_flatten`` / ``_flatten_with_keys`` / ``_unflatten`` -- the node functions.
- ``_ImportWatcher`` -- the finder that registers when jax or torch gets imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import json
import operator
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from torchlean.errors import BackendError
from torchlean.runtime._registry import EMPTY, LazyRegistry, Order, Registry
from torchlean.runtime._roles import Roles
from torchlean.runtime.any_tensor import Entry, fresh_entry, library_index, read_record
from torchlean.runtime.backends import BY_TYPE, NUMPY, OPAQUE, backend_of
from torchlean.runtime.context import RuntimeContext

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

__all__ = ["EntryKey", "Layout", "register", "registered"]

Library = Literal["jax", "torch"]
LIBRARIES: Final[tuple[Library, ...]] = ("jax", "torch")


class Layout(NamedTuple):
    """The static part of a flattened context (the pytree aux data).

    Hashable and compared by value, so ``jax.jit`` caches a compiled function per
    layout: a context with other names, shapes, ``next_id`` or pin is traced again.
    """

    variables: tuple[str, ...]
    variable_dims: tuple[tuple[int, ...], ...]
    gradients: tuple[str, ...]
    gradient_dims: tuple[tuple[int, ...], ...]
    next_id: int
    pin: tuple[str, str | None] | None
    #: buffers and aliases (:mod:`torchlean.runtime._roles`), ``None`` when there are none
    roles: Roles | None = None


@dataclass(frozen=True)
class EntryKey:
    """The key of one entry in a pytree key path.

    ``registry`` is ``"variables"`` or ``"gradients"``, ``name`` the entry's name and
    ``occurrence`` its rank among the entries of that name (0 for the visible one, 1
    for the entry it shadows...). Prints as ``.variables['w']`` (``.variables['w']#1``
    for a shadowed entry).
    """

    registry: Literal["variables", "gradients"]
    name: str
    occurrence: int = 0

    def __str__(self) -> str:
        text = f".{self.registry}[{self.name!r}]"
        return text if self.occurrence == 0 else f"{text}#{self.occurrence}"

    def get(self, parent: Any) -> Any:
        """The tensor this key names in the context ``parent``. Cost: O(n)."""
        from torchlean.runtime.context import require_context

        require_context(parent, "EntryKey.get", "parent")
        entries = parent.var_registry if self.registry == "variables" else parent.gradients
        seen = 0
        for name, at in entries:
            if name == self.name:
                if seen == self.occurrence:
                    return at.t
                seen += 1
        raise KeyError(str(self))


# ---------------------------------------------------------------------- node functions


def _leaves(registry: Registry, kind: str) -> tuple[list[Any], list[str], list[Any]]:
    leaves: list[Any] = []
    names: list[str] = []
    dims: list[Any] = []
    for name, at in registry.entries():
        t = at._t
        if at._version is not None:  # a read through the context: refuse a written tensor
            at._backend.check_intact(t, at._version, f"{kind} `{name}`")
        leaves.append(t)
        names.append(name)
        dims.append(at._dims)
    return leaves, names, dims


def _flatten(ctx: RuntimeContext[Any]) -> tuple[list[Any], Layout]:
    """The leaves of ``ctx`` (variables, then gradients) and its layout. Cost: O(n),
    C-level loops when every name has one entry (:func:`_quick_leaves`)."""
    v, g = ctx._v, ctx._g
    quick_v = _quick_leaves(v, "variable")
    quick_g = _quick_leaves(g, "gradient") if quick_v is not None else None
    if quick_v is not None and quick_g is not None:
        vleaves, vnames, vdims = quick_v
        gleaves, gnames, gdims = quick_g
        layout = _same_layout(vnames, vdims, gnames, gdims, ctx._next_id, ctx._pin, ctx._roles)
        vleaves.extend(gleaves)
        return vleaves, layout
    leaves, names, dims = _leaves(v, "variable")
    gleaves, more_names, more_dims = _leaves(g, "gradient")
    layout = Layout(
        tuple(names),
        tuple(dims),
        tuple(more_names),
        tuple(more_dims),
        ctx._next_id,
        ctx._pin,
        ctx._roles,
    )
    leaves.extend(gleaves)
    return leaves, layout


# ---------------------------------------------------------------------- quick paths
#
# A training step flattens and unflattens the same layout call after call (a jitted step
# over ``(ctx, state)``: ~900 leaves for GPT-2 and AdamW). When every name has exactly one
# entry (no shadowing), the leaves are the records' tensors in the order's name order, and
# a registry is a map of fresh records plus that order: both built with C-level loops,
# and the order (names, chunks) and the Layout object are remembered per layout, so that
# jax compares and hashes an identical object. The shapes of a jitted loop's outputs are
# not read one by one either: jax gives them the same aval objects at every call, and
# avals seen once with the layout's dims stand for those dims (Backend.shape_keys).

_DIMS = operator.itemgetter(0)
_TENSOR = operator.itemgetter(1)
_VERSION = operator.itemgetter(2)
_SHAPE = operator.attrgetter("shape")
#: How many layouts (and registry orders) are remembered; a few models side by side.
_KEEP = 16
#: id(order) -> (order, its names most recent first): the orders of remembered layouts.
_ORDERS: dict[int, tuple[Order, tuple[str, ...]]] = {}
#: A remembered layout: (layout, variables' order, gradients' order, and for each the
#: shape keys of leaves that had the layout's dims, in a list of one).
_Skeleton = tuple[Layout, Order, Order, list[Any], list[Any]]
#: id(layout) -> its skeleton.
_SKELETONS: dict[int, _Skeleton] = {}
#: (id(variable names), id(gradient names)) -> the last Layout flattened with them.
_LAYOUTS: dict[tuple[int, int], Layout] = {}


def _remember(table: dict[Any, Any], key: Any, value: Any) -> None:
    if len(table) >= _KEEP:
        table.clear()  # a loop over many layouts: start again (each entry is a cache)
    table[key] = value


def _order_names(registry: Registry) -> tuple[str, ...]:
    """The names of ``registry``'s entries, most recent first (remembered per order)."""
    order = registry.order
    found = _ORDERS.get(id(order))
    if found is not None and found[0] is order:
        return found[1]
    names = tuple(registry.names())
    _remember(_ORDERS, id(order), (order, names))
    return names


def _quick_leaves(
    registry: Registry, kind: str
) -> tuple[list[Any], tuple[str, ...], tuple[tuple[int, ...], ...]] | None:
    """``_leaves`` with C-level loops, for a registry whose names have one entry each
    (``None`` otherwise). Tensors recorded with a version are checked as ``_leaves``
    checks them. A :class:`LazyRegistry` nobody read gives its leaves as they are."""
    if type(registry) is LazyRegistry and not registry.built:
        return list(registry.leaves), registry.leaf_names, registry.leaf_dims
    mapping = registry.map
    if registry.size != len(mapping):
        return None
    names = _order_names(registry)
    records = list(map(mapping.__getitem__, names))
    versions = list(map(_VERSION, records))
    if versions.count(None) != len(versions):
        for name, record in zip(names, records, strict=True):
            if record[2] is not None:
                read_record(record, f"{kind} `{name}`")
    return list(map(_TENSOR, records)), names, tuple(map(_DIMS, records))


def _same_layout(
    vnames: tuple[str, ...],
    vdims: tuple[tuple[int, ...], ...],
    gnames: tuple[str, ...],
    gdims: tuple[tuple[int, ...], ...],
    next_id: int,
    pin: tuple[str, str | None] | None,
    roles: Roles | None,
) -> Layout:
    """The :class:`Layout` of these parts: the one made last time for the same names
    when every part is equal (jax then compares an identical object), else a new one."""
    key = (id(vnames), id(gnames))
    last = _LAYOUTS.get(key)
    if (
        last is not None
        and last.variables is vnames
        and last.gradients is gnames
        and last.variable_dims == vdims
        and last.gradient_dims == gdims
        and last.next_id == next_id
        and last.pin == pin
        and last.roles is roles
    ):
        return last
    layout = Layout(vnames, vdims, gnames, gdims, next_id, pin, roles)
    _remember(_LAYOUTS, key, layout)
    return layout


def _quick_registry(
    names: tuple[str, ...],
    leaves: list[Any],
    order: Order,
    dims: tuple[tuple[int, ...], ...],
    seen: list[Any],
) -> Registry | None:
    """``_registry`` for names with one entry each whose leaves are arrays of one
    library that stores them as they are, never written in place (jax: not numpy, which
    copies a writeable array, nor torch, whose versions are recorded): a
    :class:`LazyRegistry` over the remembered ``order``. ``None`` when the leaves do
    not qualify.

    ``dims``: the layout's; ``seen[0]``: the :meth:`Backend.shape_keys` of leaves found
    to have exactly those dims before (kept alive there). Leaves with the very same key
    objects have those dims (a jitted loop's outputs: jax's avals), and their shapes
    are not read one by one."""
    if not leaves:
        return EMPTY
    kinds = set(map(type, leaves))
    if len(kinds) != 1:
        return None
    backend = BY_TYPE.get(next(iter(kinds)))
    if backend is None or backend is NUMPY or backend.versioned:
        return None
    keys = backend.shape_keys(leaves)
    known = seen[0]
    if (
        keys is None
        or known is None
        or len(keys) != len(known)
        or not all(map(operator.is_, keys, known))
    ):
        found = tuple(map(_SHAPE, leaves))
        if set(map(type, found)) != {tuple}:
            return None
        if found != dims:
            dims = found
        elif keys is not None:
            seen[0] = keys  # they stand for these dims from now on
    return LazyRegistry(names, dims, leaves, library_index(backend), order)


def _keys(registry: Literal["variables", "gradients"], names: Sequence[str]) -> list[EntryKey]:
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        occurrence = seen.get(name, 0)
        seen[name] = occurrence + 1
        keys.append(EntryKey(registry, name, occurrence))
    return keys


def _flatten_with_keys(ctx: RuntimeContext[Any]) -> tuple[list[tuple[EntryKey, Any]], Layout]:
    """Like :func:`_flatten`, each leaf with its :class:`EntryKey`. Cost: O(n)."""
    leaves, layout = _flatten(ctx)
    keys = _keys("variables", layout.variables) + _keys("gradients", layout.gradients)
    return list(zip(keys, leaves, strict=True)), layout


def _keep_numpy(x: Any) -> Any:
    """A numpy leaf as a context may hold it: read-only over an immutable buffer.

    An array that already is one (every array a context hands out after a lookup is) is
    kept, so an identity ``tree_map`` copies nothing; any other array is copied.
    """
    return NUMPY.freeze(x)


def _wrap(leaf: Any, dims: tuple[int, ...]) -> Entry:
    backend = BY_TYPE.get(type(leaf))
    if backend is None:
        try:
            backend = backend_of(leaf)
        except TypeError:
            backend = OPAQUE
    if backend is NUMPY:
        leaf = _keep_numpy(leaf)
    shape = getattr(leaf, "shape", None)
    if type(shape) is tuple:  # numpy, jax, ShapeDtypeStruct: a tuple already
        dims = shape
    elif isinstance(shape, tuple):  # torch.Size
        dims = tuple(shape)
    elif shape is not None:
        with contextlib.suppress(TypeError, ValueError):  # not ints: keep the entry's
            dims = tuple(int(d) for d in shape)
    return fresh_entry(dims, leaf, backend)


def _registry(names: Sequence[str], dims: Sequence[Any], leaves: Sequence[Any]) -> Registry:
    items = [(name, _wrap(leaf, d)) for name, d, leaf in zip(names, dims, leaves, strict=True)]
    items.reverse()  # push_many puts the last item in front
    return EMPTY.push_many(items)


_BLANK: Final[RuntimeContext[Any]] = RuntimeContext()


def _unflatten(layout: Layout, children: Iterable[Any]) -> RuntimeContext[Any]:
    """A context with ``layout`` and ``children`` as its leaves, taken as they are.

    Cost: O(n log n); C-level loops for a remembered layout whose names have one entry
    each and whose leaves are arrays of one library (:func:`_quick_registry`).
    """
    leaves = list(children)
    nv = len(layout.variables)
    if len(leaves) != nv + len(layout.gradients):
        raise ValueError(
            f"a context with this layout has {nv + len(layout.gradients)} leaves, got {len(leaves)}"
        )
    v = g = None
    skeleton = _skeleton(layout)
    if skeleton is not None:
        _, vorder, gorder, vseen, gseen = skeleton
        v = _quick_registry(layout.variables, leaves[:nv], vorder, layout.variable_dims, vseen)
        if v is not None:
            g = _quick_registry(layout.gradients, leaves[nv:], gorder, layout.gradient_dims, gseen)
    if v is None or g is None:
        v = _registry(layout.variables, layout.variable_dims, leaves[:nv])
        g = _registry(layout.gradients, layout.gradient_dims, leaves[nv:])
    ctx = _BLANK._derive(v, g, layout.next_id)
    ctx._pin = layout.pin
    ctx._roles = layout.roles
    return ctx


def _skeleton(layout: Layout) -> _Skeleton | None:
    """``(layout, variables' order, gradients' order, [variables' keys], [gradients'
    keys])`` for a layout whose names have one entry each (remembered per layout
    object), else ``None``; the keys (``None`` at first) are those of leaves found to
    have the layout's dims (:func:`_quick_registry`)."""
    found = _SKELETONS.get(id(layout))
    if found is not None and found[0] is layout:
        return found
    v, g = layout.variables, layout.gradients
    if len(set(v)) != len(v) or len(set(g)) != len(g):
        return None
    skeleton: _Skeleton = (layout, _order_of(v), _order_of(g), [None], [None])
    _remember(_SKELETONS, id(layout), skeleton)
    # flattening a context built on this layout gives this very object back
    _remember(_LAYOUTS, (id(v), id(g)), layout)
    return skeleton


def _order_of(names: tuple[str, ...]) -> Order:
    """The order of a registry holding ``names`` (most recent first), remembered with
    its names so that flattening a context built on it finds them."""
    order = EMPTY.push_many((name, _PLACEHOLDER) for name in reversed(names)).order
    _remember(_ORDERS, id(order), (order, names))
    return order


#: A record standing for any value while an order is built (never stored).
_PLACEHOLDER: Final[Entry] = ((), None, None, 0, 0, None, 0)


def _unflatten_torch(children: Iterable[Any], layout: Layout) -> RuntimeContext[Any]:
    return _unflatten(layout, children)


def _layout_to_json(layout: Layout) -> str:
    """The layout as JSON, for ``torch.utils._pytree.treespec_dumps`` (torch.export)."""
    raw = layout._asdict()
    raw["roles"] = None if layout.roles is None else layout.roles.to_json()
    return json.dumps(raw)


def _layout_from_json(text: str) -> Layout:
    """The inverse of :func:`_layout_to_json`: lists back to tuples."""
    raw = json.loads(text)
    pin = raw["pin"]
    roles = raw.get("roles")
    return Layout(
        tuple(raw["variables"]),
        tuple(tuple(d) for d in raw["variable_dims"]),
        tuple(raw["gradients"]),
        tuple(tuple(d) for d in raw["gradient_dims"]),
        int(raw["next_id"]),
        None if pin is None else (pin[0], pin[1]),
        None if roles is None else Roles.from_json(roles),
    )


# ---------------------------------------------------------------------- registration

_LOCK: Final = threading.RLock()
_REGISTERED: Final[set[str]] = set()


def _register_jax() -> None:
    import jax.tree_util

    try:
        jax.tree_util.register_pytree_with_keys(
            RuntimeContext, _flatten_with_keys, _unflatten, flatten_func=_flatten
        )
    except ValueError as e:  # registered before this module was (re)loaded
        if "uplicate" not in str(e) and "already" not in str(e):
            raise


def _register_torch() -> None:
    import torch.utils._pytree as torch_pytree

    try:
        torch_pytree.register_pytree_node(
            RuntimeContext,
            _flatten,
            _unflatten_torch,
            serialized_type_name="torchlean.runtime.context.RuntimeContext",
            to_dumpable_context=_layout_to_json,
            from_dumpable_context=_layout_from_json,
            flatten_with_keys_fn=_flatten_with_keys,  # type: ignore[arg-type]
        )
    except ValueError as e:  # registered before this module was (re)loaded
        if "already" not in str(e):
            raise


_REGISTRARS: Final[dict[str, Callable[[], None]]] = {
    "jax": _register_jax,
    "torch": _register_torch,
}


def _register_one(library: str) -> None:
    with _LOCK:
        if library in _REGISTERED:
            return
        _REGISTRARS[library]()
        _REGISTERED.add(library)


def register(*libraries: Library) -> tuple[str, ...]:
    """Register :class:`RuntimeContext` as a pytree node with jax and/or torch now.

    With no argument, with each of jax and torch that is installed (importing it);
    a library named but not installed raises :class:`~torchlean.errors.BackendError`.
    Idempotent: registering twice does nothing. Returns the libraries registered so
    far. Registration also happens by itself when jax or torch is imported, so this is
    needed only where that could not be seen (see the module docstring). Cost: the
    import of each library the first time.
    """
    wanted = libraries or LIBRARIES
    for library in wanted:
        if library not in _REGISTRARS:
            raise ValueError(f"unknown pytree library {library!r}; expected 'jax' or 'torch'")
        try:
            _register_one(library)
        except ImportError as e:
            if libraries:
                raise BackendError(
                    f"cannot register RuntimeContext with {library}: {library} is not"
                    f" installed ({e})"
                ) from e
    return registered()


def registered() -> tuple[str, ...]:
    """The libraries :class:`RuntimeContext` is registered with, in a fixed order."""
    return tuple(lib for lib in LIBRARIES if lib in _REGISTERED)


def _register_quietly(library: str) -> None:
    """Register after an import; a failure warns instead of breaking that import."""
    try:
        _register_one(library)
    except Exception as e:  # pragma: no cover - a broken or unexpected library version
        warnings.warn(
            f"torchlean could not register RuntimeContext as a {library} pytree: {e!r};"
            " call torchlean.runtime.pytree.register() to see the error",
            RuntimeWarning,
            stacklevel=2,
        )
    if all(lib in _REGISTERED for lib in LIBRARIES):
        _WATCHER.uninstall()


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that registers right after jax or torch is imported.

    It finds nothing itself: for a watched top-level module it asks the finders after
    it for the real spec, and makes that spec's loader register once the module has
    executed. Every other import passes through untouched.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in _REGISTRARS or fullname in _REGISTERED:
            return None
        if getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = self._find_elsewhere(fullname, path, target)
        finally:
            self._local.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None  # not installed, or an exotic loader: let the import go on as usual
        if not _watch(spec, fullname):
            return None
        return spec

    def _find_elsewhere(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


def _watch(spec: ModuleSpec, library: str) -> bool:
    """Make ``spec``'s loader register ``library`` after the module executed."""
    loader: Any = spec.loader
    own = vars(loader) if hasattr(loader, "__dict__") else None
    if own is None or isinstance(loader, type):
        return False  # a class-level loader is shared: leave it alone
    had_own = "exec_module" in own
    original = loader.exec_module

    def exec_module(module: ModuleType) -> None:
        try:
            original(module)
        finally:
            if had_own:
                loader.exec_module = original
            else:
                del loader.exec_module
        if module.__name__ == library:
            _register_quietly(library)

    try:
        loader.exec_module = exec_module
    except (AttributeError, TypeError):  # pragma: no cover - a loader with __slots__
        return False
    return True


_WATCHER: Final = _ImportWatcher()


def _install() -> None:
    """Register with the libraries already imported and watch for the others."""
    for library in LIBRARIES:
        if library in sys.modules:
            _register_quietly(library)
    if not all(lib in _REGISTERED for lib in LIBRARIES):
        _WATCHER.install()


_install()

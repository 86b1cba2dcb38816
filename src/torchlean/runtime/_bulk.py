"""Whole-registry reads and a trusted batch replace, for the hot path of a training step.

An optimizer step reads the most recent entry of a few hundred names and replaces them
with tensors it wrote in place. The public batch edits
(:meth:`~torchlean.runtime.context.RuntimeContext.with_variables`) validate and wrap
every value one by one; the functions here do the same work with C-level loops over
the registry's records, for callers that already checked the layout once (a cached plan,
see :mod:`torchlean.optim._plan`). Every read is still checked against in-place writes.

Reading map:
- :func:`latest_names` -- the names of the most recent entries, first-registered order,
  cached per registry layout (O(1) when the names did not change).
- :func:`heads` -- the tensors, dims and library indices of the most recent entry of
  each name, checked against in-place writes; ``None`` when a name is missing or a
  tensor was written (the caller then takes its explaining path). :func:`expect_read`
  -- a read of names just written, to check versions only.
- :func:`library` -- the backend a :attr:`Heads.libraries` index names.
- :func:`replace_heads_trusted` -- a new context whose most recent entries of ``names``
  hold ``values``: tensors of the same library and dims as the entries they replace
  (written in place, or copies), adopted as they are; :func:`replace_heads_read` also
  returns the :class:`Heads` written, which the next :func:`heads` takes as ``last``
  (a registry still holding those records costs one version read per tensor). Replacing
  every entry of a library without versions (jax) gives a
  :class:`~torchlean.runtime._registry.LazyRegistry` (:func:`_replace_lazily`): no
  per-entry records are built unless something reads them.
- :func:`heads_unchecked` -- the records as :class:`Heads`, versions not checked.
- :func:`roles` -- the context's buffers-and-aliases record, shared by derived contexts
  (``is`` tells a cached layout that they did not change).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

from torchlean.runtime._registry import LazyRegistry, Order, Registry
from torchlean.runtime.any_tensor import LIBRARIES, VERSION_READERS
from torchlean.runtime.backends import Backend
from torchlean.runtime.context import RuntimeContext

__all__ = [
    "Heads",
    "expect_read",
    "heads",
    "heads_unchecked",
    "latest_names",
    "library",
    "replace_heads_read",
    "replace_heads_trusted",
    "roles",
]

_REST = operator.itemgetter(5)
_ID = operator.itemgetter(6)


class Heads(NamedTuple):
    """The most recent entry of each of some names, read and checked."""

    tensors: list[Any]
    dims: list[tuple[int, ...]]
    #: the index of each entry's backend (equal indices: the same array library)
    libraries: list[int]
    #: the registry's records (for :func:`replace_heads_trusted`)
    records: list[Any]
    #: the version each tensor had when read (or written)
    versions: tuple[Any, ...] = ()
    #: the records' other columns (run counts, older runs, ids), for a C-level rewrite
    counts: tuple[int, ...] = ()
    rests: tuple[Any, ...] = ()
    ids: tuple[int, ...] = ()
    #: the registry mapping the records were read from (or written to); ``None`` for
    #: a :class:`LazyRegistry` written without its records
    mapping: Any = None
    #: the registry read (or written): holding it, a context holds exactly these entries
    registry: Any = None


def _registry(ctx: RuntimeContext[Any], gradients: bool) -> Registry:
    # a donated context's registry raises DonatedContextError on the first attribute read
    registry: Registry = ctx._g if gradients else ctx._v
    registry.size  # noqa: B018
    return registry


def _holds(registry: Registry, read: Heads) -> bool:
    """Whether ``registry`` holds exactly the entries ``read`` was read from (or wrote);
    a :class:`LazyRegistry` is not built to tell."""
    if read.registry is registry:
        return True
    if type(registry) is LazyRegistry and not registry.built:
        return False
    return read.mapping is not None and read.mapping is registry.map


# The names and Heads of a variable read to expect (:func:`expect_read`): a heads() of
# the same names list (the same object) on the registry they came from checks only the
# versions (value_and_grad's inner context, then call_module's read of it).
_EXPECTED: list[tuple[Sequence[str], Heads] | None] = [None]


def expect_read(names: Sequence[str], read: Heads | None) -> None:
    """Until the next call, :func:`heads` of the variables ``names`` (this very list) on
    the registry ``read`` came from takes ``read`` as its ``last`` (versions checked
    only); ``None`` forgets it (the caller does once the expected read is over: what is
    remembered keeps its tensors alive). Cost: O(1)."""
    _EXPECTED[0] = None if read is None else (names, read)


# One remembered answer per registry kind: (order object, names). The order of a
# registry is shared by every context derived by replacing heads, so a training loop
# hits it at every step.
_NAMES: dict[bool, tuple[Order, int, list[str]]] = {}


def latest_names(ctx: RuntimeContext[Any], *, gradients: bool = False) -> list[str]:
    """The names of the most recent entries, in first-registered order (the names of
    :meth:`RuntimeContext.latest_variables` / ``latest_gradients``).

    Cost: O(1) when the registry's names are those of the previous call (a registry
    derived by replacing heads), else O(n). The list returned must not be changed.
    """
    registry = _registry(ctx, gradients)
    order = registry.order
    cached = _NAMES.get(gradients)
    if cached is not None and cached[0] is order and cached[1] == registry.size:
        return cached[2]
    names = list(registry.names())
    names.reverse()
    if len(names) != len(registry.map):
        names = list(dict.fromkeys(names))
    _NAMES[gradients] = (order, registry.size, names)
    return names


def heads(
    ctx: RuntimeContext[Any],
    names: Sequence[str],
    *,
    gradients: bool = False,
    last: Heads | None = None,
) -> Heads | None:
    """The tensor, dims and library of the most recent entry of each name.

    ``None`` when a name has no entry or a tensor was written in place since it was
    stored: the caller then reads the context through its public, explaining methods.
    ``last``: what an earlier call (or :func:`replace_heads_read`) gave for these names;
    when the registry still holds exactly those records, only the versions are read
    again and ``last`` itself is returned (``is`` tells the caller nothing changed).
    Without ``last``, what :func:`expect_read` was given for the same ``names`` list
    (the same object) serves as ``last`` on the registry it came from
    (``value_and_grad``'s inner context, read back by ``call_module`` or ``state_dict``).
    Cost: O(m) C-level steps for m names.
    """
    registry = _registry(ctx, gradients)
    if last is None and not gradients:
        expected = _EXPECTED[0]
        if expected is not None and expected[0] is names:
            last = expected[1]  # these names of this registry were just written
    if last is not None and last.versions and _holds(registry, last):
        reader = VERSION_READERS[last.libraries[0]]
        if reader is not None and tuple(map(reader, last.tensors)) != last.versions:
            return None
        return last
    mapping = registry.map
    try:
        records = list(map(mapping.__getitem__, names))
    except KeyError:
        return None
    if not records:
        return Heads([], [], [], [], mapping=mapping, registry=registry)
    dims, tensors, versions, libraries, counts, rests, ids = zip(*records, strict=True)
    first = libraries[0]
    if libraries.count(first) == len(libraries):
        reader = VERSION_READERS[first]
        if reader is not None and tuple(map(reader, tensors)) != versions:
            return None
        # one library: the versions are remembered for a later ``last`` read
        return Heads(
            list(tensors), list(dims), list(libraries), records,
            versions, counts, rests, ids, mapping, registry,
        )  # fmt: skip
    for record in records:
        version = record[2]
        if version is not None:
            reader = VERSION_READERS[record[3]]
            if reader is None or reader(record[1]) != version:
                return None
    return Heads(list(tensors), list(dims), list(libraries), records)


def replace_heads_trusted(
    ctx: RuntimeContext[Any],
    names: Sequence[str],
    values: Sequence[Any],
    *,
    gradients: bool = False,
    read: Heads | None = None,
) -> RuntimeContext[Any]:
    """``ctx`` with the most recent entry of each name holding the value of that name.

    Trusted: every name has an entry, and each value is a fresh result (stored without a
    copy) of the same array library and dims as the entry it replaces, e.g. the tensor
    an optimizer step wrote in place. Versions are recorded anew, so later writes are
    detected. Older, shadowed entries keep their values. ``read``: what :func:`heads`
    returned for these names of this context (saves reading the records again).
    Cost: O(m log n) for m names, in C-level loops.
    """
    return replace_heads_read(ctx, names, values, gradients=gradients, read=read)[0]


def replace_heads_read(
    ctx: RuntimeContext[Any],
    names: Sequence[str],
    values: Sequence[Any],
    *,
    gradients: bool = False,
    read: Heads | None = None,
) -> tuple[RuntimeContext[Any], Heads]:
    """:func:`replace_heads_trusted`, and the :class:`Heads` of the entries written (for
    the ``last`` of the next :func:`heads` of these names). Cost: as
    :func:`replace_heads_trusted`.
    """
    registry = _registry(ctx, gradients)
    if read is None or not _holds(registry, read):
        read = heads_unchecked(registry.map, names, registry)
    libraries = read.libraries
    one = bool(libraries) and libraries.count(libraries[0]) == len(libraries)
    if one and VERSION_READERS[libraries[0]] is None:
        lazy = _replace_lazily(ctx, registry, names, values, read, gradients)
        if lazy is not None:
            return lazy
    if names and not read.records:  # written lazily: the records are built now
        read = heads_unchecked(registry.map, names, registry)
    if one:
        reader = VERSION_READERS[libraries[0]]
        versions = (None,) * len(values) if reader is None else tuple(map(reader, values))
    else:
        versions = tuple(
            None if VERSION_READERS[i] is None else VERSION_READERS[i](v)  # type: ignore[misc]
            for i, v in zip(libraries, values, strict=True)
        )
    counts = read.counts
    rests: tuple[Any, ...] | None = None
    if counts and counts.count(1) == len(counts):
        # every name has one run of its own value: the records in one C-level zip
        rests = read.rests
        new = list(
            zip(read.dims, values, versions, libraries, counts, rests, read.ids, strict=True)
        )
    else:
        new = [
            (r[0], v, version, r[3], 1, r[5], r[6])
            if r[4] == 1
            else (r[0], v, version, r[3], 1, (r, r[4] - 1, r[5]), r[6])
            for r, v, version in zip(read.records, values, versions, strict=True)
        ]
    new_map = registry.map.update(zip(names, new, strict=True))
    registry = Registry(new_map, registry.order, registry.size)
    if gradients:
        out = ctx._derive(ctx._v, registry, ctx._next_id)
    else:
        out = ctx._derive(registry, ctx._g, ctx._next_id)
    if not new:
        return out, Heads([], [], [], [], mapping=new_map, registry=registry)
    wrote = Heads(
        list(values),
        read.dims,
        libraries,
        new,
        versions if one else (),
        counts if rests is not None else (1,) * len(new),
        rests if rests is not None else tuple(map(_REST, new)),
        read.ids if read.ids else tuple(map(_ID, new)),
        new_map,
        registry,
    )
    return out, wrote


# (id(names), id(order)) -> (a copy of names, order, the registry's names most recent
# first, the position in ``names`` of each of those): a plan replaces the same names
# step after step
_LAZY_ORDERS: dict[tuple[int, int], tuple[list[str], Order, tuple[str, ...], list[int]]] = {}
#: How many (names, order) pairs are remembered.
_KEEP = 16


def _replace_lazily(
    ctx: RuntimeContext[Any],
    registry: Registry,
    names: Sequence[str],
    values: Sequence[Any],
    read: Heads,
    gradients: bool,
) -> tuple[RuntimeContext[Any], Heads] | None:
    """:func:`replace_heads_read` for ``names`` that are every name of ``registry``, one
    entry each, of one library without versions (jax): the new registry is a
    :class:`LazyRegistry` over the values (its records and map built only if something
    reads it), so a step that replaces everything builds no per-entry records. ``None``
    when the registry or the names do not qualify. Cost: O(n) C-level steps."""
    n = len(names)
    if n == 0 or n != registry.size:
        return None
    found = _LAZY_ORDERS.get((id(names), id(registry.order)))
    if found is not None and found[1] is registry.order and found[0] == names:
        ordered, where = found[2], found[3]
    else:
        if type(registry) is LazyRegistry and not registry.built:
            ordered = registry.leaf_names
        elif len(registry.map) == n:
            ordered = tuple(registry.names())
        else:
            return None  # a name with several entries
        index = {name: i for i, name in enumerate(names)}
        if len(index) != n or not all(map(index.__contains__, ordered)):
            return None
        where = list(map(index.__getitem__, ordered))
        if len(_LAZY_ORDERS) >= _KEEP:
            _LAZY_ORDERS.clear()
        key = (id(names), id(registry.order))
        _LAZY_ORDERS[key] = (list(names), registry.order, ordered, where)
    leaves = list(map(values.__getitem__, where))
    dims = read.dims
    new = LazyRegistry(
        ordered, tuple(map(dims.__getitem__, where)), leaves, read.libraries[0], registry.order
    )
    if gradients:
        out = ctx._derive(ctx._v, new, ctx._next_id)
    else:
        out = ctx._derive(new, ctx._g, ctx._next_id)
    ones = (1,) * n
    wrote = Heads(
        list(values), dims, read.libraries, [],
        (None,) * n, ones, (None,) * n, ones, None, new,
    )  # fmt: skip
    return out, wrote


def heads_unchecked(mapping: Any, names: Sequence[str], registry: Any = None) -> Heads:
    """The records of ``names`` in ``mapping`` (the map of ``registry``) as
    :class:`Heads`, versions not checked (every name must have an entry). Cost: O(m)
    C-level steps."""
    records = list(map(mapping.__getitem__, names))
    if not records:
        return Heads([], [], [], [], mapping=mapping, registry=registry)
    dims, tensors, versions, libraries, counts, rests, ids = zip(*records, strict=True)
    return Heads(
        list(tensors), list(dims), list(libraries), records,
        versions, counts, rests, ids, mapping, registry,
    )  # fmt: skip


def library(index: int) -> Backend:
    """The backend a :attr:`Heads.libraries` index names. Cost: O(1)."""
    return LIBRARIES[index]


def roles(ctx: RuntimeContext[Any]) -> Any:
    """The context's :class:`~torchlean.runtime._roles.Roles` record (buffers and
    aliases), or ``None``; every context derived from it shares the same object, so
    ``is`` tells a cached layout that they did not change. Cost: O(1)."""
    return ctx._roles

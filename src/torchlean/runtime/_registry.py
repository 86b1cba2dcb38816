"""A persistent registry with the exact semantics of a Lean association list.

TorchLean keeps each registry as ``List (String × AnyTensor α)``: new entries go in
front, a lookup takes the first entry of a name, an update rewrites every entry of a
name in place in the list. Walking a list costs O(n) per operation; this module keeps
the same observable list in a form where every operation the runtime needs costs
O(log n), and where a new registry shares almost all of its structure with the old one.

Representation (all of it immutable once published):
- ``order``: the names of all entries, most recent first, as a cons list of chunks
  ``(names, older)`` ending in ``None``, where ``names`` is a tuple of at most
  :data:`CHUNK` names. Prepending copies at most one chunk and shares the rest; a chunk
  holds only strings, so Python's cycle collector stops tracking it, which keeps
  collections cheap in registries of millions of entries.
- ``map``: an :class:`immutables.Map` (a C hash array mapped trie) from each name to its
  record, an :data:`~torchlean.runtime.any_tensor.Entry`: a plain tuple holding the first
  entry's tensor (dims, tensor, version, library) and the values of the name's older
  entries, run-length encoded: the entry's own value repeated ``count`` times, then
  ``rest`` runs ``(record, count, older)``. A lookup reads the record itself; "set every
  entry of a name" collapses the runs into one, so it is O(log n) whatever the number k
  of entries of that name. A record of a numpy array holds only values the cycle
  collector does not track, so Python stops tracking it: collections stay cheap however
  many entries a registry holds (a torch tensor is tracked, so its record is too).
- ``size``: the number of entries.

The i-th entry of the Lean list is the i-th name of ``order`` paired with the next unused
value in that name's runs; :meth:`Registry.entries` walks both in O(n).

Reading map:
- :data:`~torchlean.runtime.any_tensor.Entry` -- the record stored for a name, with its
  runs (built in :mod:`torchlean.runtime.any_tensor`, like the ``AnyTensor`` wrappers
  :meth:`Registry.head` and :meth:`Registry.entries` hand out).
- :class:`Registry` -- ``push``, ``push_many``, ``head``, ``record``, ``set_all``,
  ``replace_heads``, ``entries``, ``names``, ``visible``, ``size``; :data:`EMPTY`.
- :class:`LazyRegistry` -- a registry of names with one entry each, its records built
  when first read (what a jax pytree unflattening makes).
- :class:`DonatedRegistry` -- stands in for the registries of a donated context.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any, Final

import immutables

from torchlean.runtime.any_tensor import AnyTensor, Entry, as_tensor, restamp

__all__ = ["CHUNK", "EMPTY", "DonatedRegistry", "LazyRegistry", "Registry"]

#: The names of all entries, most recent first, in chunks: ``(names, older)`` or ``None``.
Order = tuple[tuple[str, ...], "Order"] | None

#: The most names one chunk of ``order`` holds.
CHUNK: Final = 32

_new = object.__new__


def _prepend(order: Order, name: str) -> Order:
    if order is not None and len(order[0]) < CHUNK:
        return ((name, *order[0]), order[1])
    return ((name,), order)


class Registry:
    """An immutable registry of ``(name, AnyTensor)`` entries, most recent first."""

    __slots__ = ("map", "order", "size")

    def __init__(self, mapping: immutables.Map[str, Entry], order: Order, size: int) -> None:
        self.map = mapping
        self.order = order
        self.size = size

    def push(self, name: str, value: AnyTensor[Any] | Entry) -> Registry:
        """Prepend an entry (Lean's ``(name, value) :: registry``). Cost: O(log n)."""
        mapping = self.map
        node = mapping.get(name)
        if node is None:
            new = restamp(value, 1, None, 1)
        else:
            new = restamp(value, 1, (node, node[4], node[5]), node[6] + 1)
        order = self.order
        if order is not None and len(order[0]) < CHUNK:
            order = ((name, *order[0]), order[1])
        else:
            order = ((name,), order)
        registry: Registry = _new(Registry)
        registry.map = mapping.set(name, new)
        registry.order = order
        registry.size = self.size + 1
        return registry

    def push_many(self, items: Iterable[tuple[str, AnyTensor[Any] | Entry]]) -> Registry:
        """Prepend entries in order (the last item ends up in front). Cost: O(m log n)."""
        order = self.order
        size = self.size
        with self.map.mutate() as mutation:
            for name, value in items:
                node = mutation.get(name)
                if node is None:
                    mutation[name] = restamp(value, 1, None, 1)
                else:
                    mutation[name] = restamp(value, 1, (node, node[4], node[5]), node[6] + 1)
                order = _prepend(order, name)
                size += 1
            mapping = mutation.finish()
        return Registry(mapping, order, size)

    def head(self, name: str) -> AnyTensor[Any] | None:
        """The first entry named ``name``, or ``None``. Cost: O(log n)."""
        node = self.map.get(name)
        return None if node is None else as_tensor(node)

    def record(self, name: str) -> Entry | None:
        """The record of ``name`` (its first entry and older runs), or ``None``.

        Cost: O(log n).
        """
        return self.map.get(name)

    def set_all(self, name: str, value: AnyTensor[Any] | Entry) -> Registry:
        """Give every entry named ``name`` the value ``value``, keeping the order.

        Returns ``self`` when the name is absent (Lean's list map changes nothing).
        Cost: O(log n), whatever the number of entries of that name.
        """
        node = self.map.get(name)
        if node is None:
            return self
        new = restamp(value, node[6], None, node[6])
        registry: Registry = _new(Registry)
        registry.map = self.map.set(name, new)
        registry.order = self.order
        registry.size = self.size
        return registry

    def replace_heads(self, values: Iterable[tuple[str, AnyTensor[Any] | Entry]]) -> Registry:
        """Give the first entry of each name its new value; prepend absent names.

        Older entries of a name keep their values. Cost: O(m log n) for m values.
        """
        order = self.order
        added = 0
        with self.map.mutate() as mutation:
            for name, at in values:
                node = mutation.get(name)
                if node is None:
                    mutation[name] = restamp(at, 1, None, 1)
                    order = _prepend(order, name)
                    added += 1
                elif node[4] == 1:
                    mutation[name] = restamp(at, 1, node[5], node[6])
                else:
                    mutation[name] = restamp(at, 1, (node, node[4] - 1, node[5]), node[6])
            mapping = mutation.finish()
        return Registry(mapping, order, self.size + added)

    def names(self) -> Iterator[str]:
        """Every entry's name, most recent first (duplicates included). Cost: O(n)."""
        order = self.order
        while order is not None:
            chunk, order = order
            yield from chunk

    def entries(self) -> Iterator[tuple[str, AnyTensor[Any]]]:
        """Every entry as ``(name, value)``, most recent first. Cost: O(n).

        Entries of one run (e.g. every entry of a name after :meth:`set_all`) are one
        ``AnyTensor`` object, so a writer can store a shared tensor once.
        """
        cursors: dict[str, list[Any]] = {}
        mapping = self.map
        for name in self.names():
            cursor = cursors.get(name)
            if cursor is None:
                node = mapping[name]
                if node[6] == 1:
                    yield name, as_tensor(node)
                    continue
                cursor = cursors[name] = [as_tensor(node), node[4], node[5]]
            yield name, cursor[0]
            cursor[1] -= 1
            if cursor[1] == 0 and cursor[2] is not None:
                record, cursor[1], cursor[2] = cursor[2]
                cursor[0] = as_tensor(record)

    def visible(self) -> Iterator[tuple[str, AnyTensor[Any]]]:
        """The first entry of each name, names in the order they first appeared.

        Cost: O(n).
        """
        names = list(self.names())
        names.reverse()
        mapping = self.map
        for name in dict.fromkeys(names):
            yield name, as_tensor(mapping[name])

    def __len__(self) -> int:
        return self.size


EMPTY: Final = Registry(immutables.Map(), None, 0)


class LazyRegistry(Registry):
    """A registry of names with one entry each whose records are built when first read.

    What a jax pytree unflattening makes (:mod:`torchlean.runtime.pytree`): a jitted
    training step hands each output context straight to the next call, which flattens
    it again; the leaves, names and shapes are all that call reads, so the records (one
    tuple per entry) and the map are built only for a context something else reads.
    An optimizer step that replaces every entry of jax arrays makes one too
    (:mod:`torchlean.runtime._bulk`): the next step reads its leaves as it wrote them.
    The values are stored as they are: arrays of a library that is never written in
    place (no versions to record) and never copied on the way in (not numpy).
    """

    __slots__ = ("_map", "leaf_dims", "leaf_names", "leaves", "library")

    def __init__(
        self,
        names: tuple[str, ...],
        dims: tuple[tuple[int, ...], ...],
        leaves: list[Any],
        index: int,
        order: Order,
    ) -> None:
        self._map: immutables.Map[str, Entry] | None = None
        #: the names, most recent first (each once), their dims and values; the library's index
        self.leaf_names = names
        self.leaf_dims = dims
        self.leaves = leaves
        self.library = index
        self.order = order
        self.size = len(names)

    @property
    def map(self) -> immutables.Map[str, Entry]:
        """The records, built on the first read. Cost: O(n) once, then O(1)."""
        mapping = self._map
        if mapping is None:
            n = self.size
            records = zip(
                self.leaf_dims, self.leaves, repeat(None, n), repeat(self.library, n),
                repeat(1, n), repeat(None, n), repeat(1, n), strict=True,
            )  # fmt: skip
            mapping = self._map = immutables.Map(zip(self.leaf_names, records, strict=True))
        return mapping

    @map.setter
    def map(self, mapping: immutables.Map[str, Entry]) -> None:
        self._map = mapping

    @property
    def built(self) -> bool:
        """Whether the records were built (something read them)."""
        return self._map is not None


class DonatedRegistry:
    """Stands in for the registries of a context that was donated (handed over).

    Any use of it raises :class:`~torchlean.errors.DonatedContextError`. Swapping a
    donated context's registries for this object costs nothing on the hot paths of
    contexts that were never donated.
    """

    __slots__ = ("_why",)

    def __init__(self, why: str) -> None:
        self._why = why

    def __getattr__(self, attribute: str) -> Any:
        from torchlean.errors import DonatedContextError

        raise DonatedContextError(self._why)

"""``AnyTensor``: a tensor stored together with its shape (mirrors ``Runtime.AnyTensor``).

TorchLean's tensors are typed by their shape, so a registry that holds tensors of many
shapes stores each one in an existential wrapper that carries the shape beside it. In
Python the wrapper does the same job at run time: it checks once, when it is built, that
the tensor has the shape it claims, and it protects the tensor from writes.

This module is the only place an ``AnyTensor`` (or the registry's record of a name,
an :data:`Entry`) is built.

Reading map:
- :class:`AnyTensor` -- ``s`` (the :class:`~torchlean.spec.Shape`) and ``t`` (the tensor);
  ``dims``, ``backend``, ``dtype``, ``device``, ``library`` (the :class:`Backend`),
  ``placement`` and ``local_dims`` (a distributed tensor's layout and local shard).
- :data:`Entry` -- a registry's record of a name: a plain tuple (first entry's tensor,
  older runs), which the cycle collector does not track.
- :func:`fresh_entry` -- the record of a value a context has just taken (protected).
- :func:`restamp` -- a record with another position in a registry's runs.
- :func:`as_tensor` -- the ``AnyTensor`` a record stands for; :func:`read_record` --
  its tensor, checked against in-place writes.
- :data:`LIBRARIES`, :data:`VERSION_READERS`, :func:`library_index` -- the backends
  records name by index, and their version readers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

from torchlean.errors import ShapeMismatchError
from torchlean.runtime.backends import Backend, backend_of
from torchlean.spec.shape import Shape, ShapeLike, as_dims

__all__ = ["AnyTensor", "ArrayLike", "ArrayT", "Entry", "Runs", "fresh_entry", "restamp"]


class ArrayLike(Protocol):
    """Anything with a ``shape`` and a ``dtype``: numpy, torch and jax arrays."""

    @property
    def shape(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...


ArrayT = TypeVar("ArrayT", bound=ArrayLike)


class AnyTensor(Generic[ArrayT]):
    """A tensor and its shape. Mirrors ``Runtime.AnyTensor``.

    ``AnyTensor(s, t)`` checks that ``t`` has shape ``s`` and raises
    :class:`~torchlean.errors.ShapeMismatchError` when it does not. The tensor is
    protected as a context protects it (see :mod:`torchlean.runtime`): a numpy array is
    copied into a read-only buffer, a torch tensor is watched for in-place writes.
    """

    __slots__ = ("_backend", "_dims", "_s", "_t", "_version")
    _dims: tuple[int, ...]
    _s: Shape | None
    _t: ArrayT
    _backend: Backend
    _version: int | None

    def __init__(self, s: ShapeLike, t: ArrayT) -> None:
        backend = backend_of(t)
        dims = as_dims(s)
        actual = backend.dims(t)
        if actual != dims:
            raise ShapeMismatchError(
                f"AnyTensor: the tensor has shape {actual} but the shape given is {dims}"
            )
        stored = backend.freeze(t)
        self._dims = dims
        self._s = None
        self._t = stored
        self._backend = backend
        self._version = backend.version(stored) if backend.versioned else None

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape's dimensions as a tuple of ints, outermost first."""
        return self._dims

    @property
    def s(self) -> Shape:
        """The shape carried alongside the tensor (Lean's ``AnyTensor.s``)."""
        s = self._s
        if s is None:
            s = self._s = Shape(self._dims)
        return s

    @property
    def t(self) -> ArrayT:
        """The tensor (Lean's ``AnyTensor.t``); raises if it was written in place."""
        if self._version is not None:
            self._backend.check_intact(self._t, self._version, "a tensor")
        return self._t

    @property
    def backend(self) -> str:
        """The array library of the tensor: ``"numpy"``, ``"torch"`` or ``"jax"``."""
        return self._backend.name

    @property
    def library(self) -> Backend:
        """The :class:`~torchlean.runtime.backends.Backend` of the tensor's array library:
        everything that differs between numpy, torch and jax goes through it."""
        return self._backend

    @property
    def unchecked(self) -> ArrayT:
        """The tensor without the in-place check of :attr:`t` (for code that checked the
        whole context once, e.g. an optimizer step about to replace the tensor)."""
        return self._t

    @property
    def dtype(self) -> str:
        """The canonical dtype name of the tensor, e.g. ``"float32"``."""
        return self._backend.dtype_name(self._t)

    @property
    def device(self) -> str:
        """Where the tensor lives, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return self._backend.device(self._t)

    @property
    def placement(self) -> str | None:
        """How the tensor is laid out over processes or devices (a DTensor's placements
        and mesh, a sharded jax array's PartitionSpec and mesh), or ``None`` for a
        tensor on one device."""
        return self._backend.placement(self._t)

    @property
    def local_dims(self) -> tuple[int, ...] | None:
        """The shape of the part this process holds (a DTensor's local shard), or
        ``None`` when it holds the whole tensor (:attr:`dims`)."""
        return self._backend.local_dims(self._t)

    def __repr__(self) -> str:
        return f"AnyTensor(shape={self.dims}, dtype={self.dtype}, backend={self.backend})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (AnyTensor, (self.dims, self.t))


_new = object.__new__

#: A registry's record of a name (see :mod:`torchlean.runtime._registry`), a plain tuple
#: ``(dims, tensor, version, library, count, rest, total)``: the first entry's tensor
#: (its dims, the stored tensor, the version recorded when it was stored or ``None``, the
#: index of its :class:`Backend` in :data:`LIBRARIES`), then ``count`` (entries, this
#: one first, that have this value; 0 for a record in no registry yet), ``rest`` (the
#: older runs) and ``total`` (the number of entries of the name). A tuple of atomic
#: values is untracked by Python's cycle collector (numpy arrays, ints, tuples of ints
#: and ``None`` are atomic for it), so a registry of millions of numpy entries adds
#: almost nothing to every full collection.
Entry = tuple[tuple[int, ...], Any, "int | None", int, int, "Runs", int]

#: Older runs of a name's values in a registry: ``(record, count, older)`` or ``None``.
Runs = tuple[Entry, int, "Runs"] | None

#: Every backend a record names, by index (records hold the index, not the object, so
#: that they stay untracked by the cycle collector).
LIBRARIES: Final[list[Backend]] = []
#: For each backend in :data:`LIBRARIES`, a fast reader of a stored value's current
#: version (``None`` for an unversioned library).
VERSION_READERS: Final[list[Callable[[Any], Any] | None]] = []
_INDEX: Final[dict[Backend, int]] = {}


def library_index(backend: Backend) -> int:
    """The index of ``backend`` in :data:`LIBRARIES` (added on first use). Cost: O(1)."""
    index = _INDEX.get(backend)
    if index is None:
        index = _INDEX[backend] = len(LIBRARIES)
        LIBRARIES.append(backend)
        reader = None
        if backend.versioned:
            reader = getattr(backend, "_version_reader", None) or backend.version
        VERSION_READERS.append(reader)
    return index


def fresh_entry(dims: tuple[int, ...], stored: Any, backend: Backend) -> Entry:
    """The record of a value a context has just taken (already protected), in no registry.

    Cost: O(1).
    """
    index = _INDEX.get(backend)
    if index is None:
        index = library_index(backend)
    version = backend.version(stored) if backend.versioned else None
    return (dims, stored, version, index, 0, None, 0)


def restamp(value: AnyTensor[Any] | Entry, count: int, rest: Runs, total: int) -> Entry:
    """The record of ``value`` (a record or an ``AnyTensor``) as the first entry of a
    name, with ``count``, ``rest`` and ``total``. The tensor is shared. Cost: O(1)."""
    if type(value) is tuple:
        return (value[0], value[1], value[2], value[3], count, rest, total)
    assert isinstance(value, AnyTensor)
    index = _INDEX.get(value._backend)
    if index is None:
        index = library_index(value._backend)
    return (value._dims, value._t, value._version, index, count, rest, total)


def as_tensor(record: Entry) -> AnyTensor[Any]:
    """The ``AnyTensor`` a record stands for (a new wrapper; the tensor is shared).

    Cost: O(1).
    """
    at: AnyTensor[Any] = _new(AnyTensor)
    at._dims = record[0]
    at._s = None
    at._t = record[1]
    at._version = record[2]
    at._backend = LIBRARIES[record[3]]
    return at


def read_record(record: Entry, what: str) -> Any:
    """The tensor of ``record``; raises, naming ``what``, if it was written in place
    since it was stored. Cost: O(1)."""
    version = record[2]
    if version is not None:
        index = record[3]
        reader = VERSION_READERS[index]
        if reader is None or reader(record[1]) != version:
            LIBRARIES[index].check_intact(record[1], version, what)
    return record[1]

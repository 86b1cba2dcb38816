"""``AnyTensor``: a tensor stored together with its shape (mirrors ``Runtime.AnyTensor``).

TorchLean's tensors are typed by their shape, so a registry that holds tensors of many
shapes stores each one in an existential wrapper that carries the shape beside it. In
Python the wrapper does the same job at run time: it checks once, when it is built, that
the tensor has the shape it claims, and it protects the tensor from writes.

This module is the only place an ``AnyTensor`` (or the registry's :class:`Entry`, a
subclass that also carries a name's older values) is built.

Reading map:
- :class:`AnyTensor` -- ``s`` (the :class:`~torchlean.spec.Shape`) and ``t`` (the tensor);
  ``dims``, ``backend``, ``dtype``, ``device``, ``library`` (the :class:`Backend`).
- :class:`Entry` -- the first entry of a name in a registry, with its older runs.
- :func:`fresh_entry` -- wrap a value a context has just taken (protected already).
- :func:`restamp` -- an entry with another position in a registry's runs.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

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

    def __repr__(self) -> str:
        return f"AnyTensor(shape={self.dims}, dtype={self.dtype}, backend={self.backend})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (AnyTensor, (self.dims, self.t))


_new = object.__new__

#: Older runs of a name's values in a registry: ``(value, count, older)`` or ``None``.
Runs = tuple[AnyTensor[Any], int, "Runs"] | None


class Entry(AnyTensor[Any]):
    """The first entry of a name in a registry: its tensor, plus the older values.

    ``count`` entries (this one first) have this entry's value; older ones follow in
    ``rest``; ``total`` is the number of entries of the name. ``count == 0`` marks an
    entry that is in no registry yet.
    """

    __slots__ = ("count", "rest", "total")
    count: int
    rest: Runs
    total: int


def fresh_entry(dims: tuple[int, ...], stored: Any, backend: Backend) -> Entry:
    """An entry for a value a context has just taken (already protected), in no registry.

    Registries adopt a fresh entry as it is instead of copying it; callers publish it
    in one registry only. Cost: O(1).
    """
    e: Entry = _new(Entry)
    e._dims = dims
    e._s = None
    e._t = stored
    e._backend = backend
    e._version = backend.version(stored) if backend.versioned else None
    e.count = 0
    return e


def restamp(value: AnyTensor[Any], count: int, rest: Runs, total: int) -> Entry:
    """``value`` as the first entry of a name with ``count``, ``rest`` and ``total``.

    A fresh entry is adopted as it is; any other value is copied into a new entry (the
    tensor is shared). Cost: O(1).
    """
    if type(value) is Entry and value.count == 0:
        e = value
    else:
        e = _new(Entry)
        e._dims = value._dims
        e._s = value._s
        e._t = value._t
        e._backend = value._backend
        e._version = value._version
    e.count = count
    e.rest = rest
    e.total = total
    return e

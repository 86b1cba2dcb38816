"""``AnyTensor``: a tensor stored together with its shape (mirrors ``Runtime.AnyTensor``).

TorchLean's tensors are typed by their shape, so a registry that holds tensors of many
shapes stores each one in an existential wrapper that carries the shape beside it. In
Python the wrapper does the same job at run time: it checks once, when it is built, that
the tensor has the shape it claims, and it protects the tensor from writes.

Reading map:
- :class:`AnyTensor` -- ``s`` (the :class:`~torchlean.spec.Shape`) and ``t`` (the tensor).
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from torchlean.errors import ShapeMismatchError
from torchlean.runtime._backends import Backend, backend_of
from torchlean.spec.shape import Shape, ShapeLike, as_dims

__all__ = ["AnyTensor", "ArrayLike", "ArrayT"]


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

    @classmethod
    def _make(cls, dims: tuple[int, ...], stored: Any, backend: Backend) -> AnyTensor[Any]:
        """Wrap an already protected value whose dims were read from it (no checks)."""
        at: AnyTensor[Any] = _new(cls)
        at._dims = dims
        at._s = None
        at._t = stored
        at._backend = backend
        at._version = backend.version(stored) if backend.versioned else None
        return at

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

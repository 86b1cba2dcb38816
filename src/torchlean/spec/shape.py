"""Tensor shapes, mirroring TorchLean's ``Spec.Shape`` (``scalar | dim n s``).

Reading map:
- :class:`Shape` -- a frozen, hashable shape, equal by its dimensions.
- :data:`ShapeLike` -- a :class:`Shape` or a sequence of non-negative ints.
- :func:`as_dims` -- turn a ``ShapeLike`` into a validated tuple of ints.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Final, TypeAlias

from torchlean.errors import InvalidShapeError

__all__ = ["Shape", "ShapeLike", "as_dims"]


class Shape:
    """A tensor shape: ``scalar`` or ``dim n inner``. Mirrors ``Spec.Shape``.

    ``dims`` lists the dimensions outermost first (``()`` for a scalar). Shapes are
    immutable, hashable and equal when their dimensions are equal.
    """

    __slots__ = ("_dims",)
    _dims: tuple[int, ...]

    def __init__(self, dims: ShapeLike = ()) -> None:
        object.__setattr__(self, "_dims", as_dims(dims))

    @classmethod
    def scalar(cls) -> Shape:
        """The shape of a scalar. Mirrors ``Shape.scalar``."""
        return _SCALAR

    @classmethod
    def dim(cls, n: int, inner: ShapeLike) -> Shape:
        """``n`` copies of ``inner``. Mirrors ``Shape.dim n inner``."""
        return cls((_check_dim(n, 0, "dim"), *as_dims(inner)))

    @classmethod
    def of_list(cls, dims: Sequence[int]) -> Shape:
        """The shape with the given dimensions, outermost first."""
        return cls(dims)

    @property
    def dims(self) -> tuple[int, ...]:
        """The dimensions, outermost first; ``()`` for a scalar."""
        return self._dims

    @property
    def rank(self) -> int:
        """The number of dimensions."""
        return len(self._dims)

    @property
    def size(self) -> int:
        """The number of elements (1 for a scalar). Cost: O(rank)."""
        n = 1
        for d in self._dims:
            n *= d
        return n

    def pretty(self) -> str:
        """Lean's ``Shape.pretty``: ``dim 2 (dim 3 (scalar))``. Cost: O(rank)."""
        text = "scalar"
        for d in reversed(self._dims):
            text = f"dim {d} ({text})"
        return text

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Shape is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Shape):
            return self._dims == other._dims
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Shape", self._dims))

    def __iter__(self) -> Iterator[int]:
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __getitem__(self, index: int) -> int:
        return self._dims[index]

    def __repr__(self) -> str:
        return f"Shape({self._dims!r})"

    def __str__(self) -> str:
        return str(self._dims)

    def __reduce__(self) -> tuple[type[Shape], tuple[tuple[int, ...]]]:
        return (Shape, (self._dims,))


ShapeLike: TypeAlias = Shape | Sequence[int]


def _check_dim(d: object, index: int, where: str) -> int:
    if isinstance(d, bool) or not isinstance(d, int):
        try:
            d_int = operator.index(d)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidShapeError(
                f"shape {where} has a non-integer dimension {d!r} at index {index}"
            ) from None
        if isinstance(d, bool):
            raise InvalidShapeError(
                f"shape {where} has a non-integer dimension {d!r} at index {index}"
            )
        d = d_int
    if d < 0:
        raise InvalidShapeError(f"shape {where} has a negative dimension {d} at index {index}")
    return int(d)


def as_dims(shape: ShapeLike) -> tuple[int, ...]:
    """Validate ``shape`` and return its dimensions as a tuple of ints.

    Accepts a :class:`Shape` or any sequence of non-negative integers (numpy integers
    included). Raises :class:`~torchlean.errors.InvalidShapeError` for a negative or
    non-integer dimension and ``TypeError`` for something that is not a shape at all.
    Cost: O(rank).
    """
    if type(shape) is Shape:
        return shape._dims
    if isinstance(shape, Shape):
        return shape.dims
    if isinstance(shape, (str, bytes)) or not (
        isinstance(shape, Sequence)
        # array-like sequences, e.g. numpy arrays of ints
        or (hasattr(shape, "__len__") and hasattr(shape, "__getitem__"))
    ):
        raise TypeError(
            f"expected a shape (a Shape or a sequence of ints), got {type(shape).__name__}"
            f" {shape!r}"
        )
    if type(shape) is tuple and all(type(d) is int and d >= 0 for d in shape):
        return shape
    dims = tuple(shape)
    where = repr(dims) if len(dims) < 16 else f"of rank {len(dims)}"
    return tuple(_check_dim(d, i, where) for i, d in enumerate(dims))


_SCALAR: Final = Shape(())

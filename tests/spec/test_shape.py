"""Shape mirrors Spec.Shape: constructors, dims, rank, size, pretty, validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from torchlean.errors import InvalidShapeError
from torchlean.spec import Shape, as_dims


def test_scalar_has_no_dims() -> None:
    s = Shape.scalar()
    assert s.dims == ()
    assert s.rank == 0
    assert s.size == 1
    assert s.pretty() == "scalar"


def test_dim_nests_outermost_first() -> None:
    s = Shape.dim(2, Shape.dim(3, Shape.scalar()))
    assert s.dims == (2, 3)
    assert s.rank == 2
    assert s.size == 6
    assert s.pretty() == "dim 2 (dim 3 (scalar))"


def test_of_list_and_sequence_inner() -> None:
    assert Shape.of_list([4, 0, 5]).dims == (4, 0, 5)
    assert Shape.of_list([4, 0, 5]).size == 0
    assert Shape.dim(1, [2]).dims == (1, 2)


def test_equal_and_hashable_by_dims() -> None:
    assert Shape([2, 3]) == Shape((2, 3))
    assert Shape([2, 3]) != Shape([3, 2])
    assert len({Shape([2, 3]), Shape((2, 3)), Shape.scalar()}) == 2
    assert Shape([1]) != (1,)


def test_frozen() -> None:
    s = Shape([2])
    with pytest.raises(AttributeError):
        s._dims = (3,)  # type: ignore[misc]
    assert s.dims == (2,)


def test_pickle_round_trip() -> None:
    s = Shape([2, 3])
    assert pickle.loads(pickle.dumps(s)) == s


def test_numpy_integers_accepted() -> None:
    assert as_dims(np.array([2, 3])) == (2, 3)
    assert as_dims((np.int64(2),)) == (2,)
    assert type(as_dims((np.int64(2),))[0]) is int


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ((2, -1), r"shape \(2, -1\) has a negative dimension -1 at index 1"),
        ((2.5,), r"shape \(2.5,\) has a non-integer dimension 2.5 at index 0"),
        ((2.0,), r"shape \(2.0,\) has a non-integer dimension 2.0 at index 0"),
        ((True,), r"shape \(True,\) has a non-integer dimension True at index 0"),
        (("3",), r"shape \('3',\) has a non-integer dimension '3' at index 0"),
    ],
)
def test_invalid_dims_are_clear_errors(bad: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidShapeError, match=message):
        Shape(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        as_dims(bad)  # type: ignore[arg-type]


def test_dim_rejects_negative_n() -> None:
    with pytest.raises(InvalidShapeError, match="negative dimension -2"):
        Shape.dim(-2, Shape.scalar())


@pytest.mark.parametrize("bad", [3, "23", None, 2.0])
def test_not_a_shape_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="expected a shape"):
        as_dims(bad)  # type: ignore[arg-type]

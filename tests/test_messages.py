"""The exact text of the core's error messages (runtime context and shapes).

Each area pins its own messages beside this file (tests/test_messages_<area>.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from torchlean import RuntimeContext, Shape, empty_context
from torchlean.errors import (
    DonatedContextError,
    DTypeMismatchError,
    InvalidShapeError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.runtime import AnyTensor
from torchlean.runtime.context import donate


def _ctx() -> RuntimeContext:
    c = empty_context()
    c = c.register_variable("fc1.weight", np.zeros((3, 4), np.float32))
    c = c.register_variable("fc1.bias", np.zeros(3, np.float32))
    return c.register_gradient("fc1.bias", np.zeros(3, np.float32))


def _pinned() -> RuntimeContext:
    return empty_context(dtype="float32").register_variable("w", np.zeros(2, np.float32))


def _donated() -> RuntimeContext:
    c = _ctx()
    donate(c, to="adamw.step")
    return c


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    (
        "strict lookup, wrong shape",
        lambda: _ctx().variable("fc1.weight", (4, 3)),
        ShapeMismatchError,
        "variable `fc1.weight` has shape (3, 4) but (4, 3) was requested",
    ),
    (
        "strict lookup, typo",
        lambda: _ctx().variable("fc1.wieght"),
        UnknownNameError,
        "no variable `fc1.wieght`; did you mean `fc1.weight`?",
    ),
    (
        "strict lookup, far miss",
        lambda: _ctx().variable("zzz"),
        UnknownNameError,
        "no variable `zzz` (the context has 2 variable names)",
    ),
    (
        "strict gradient lookup, empty registry",
        lambda: empty_context().gradient("w"),
        UnknownNameError,
        "no gradient `w`; the context has no gradients",
    ),
    (
        "strict gradient lookup, wrong shape",
        lambda: _ctx().gradient("fc1.bias", Shape([4])),
        ShapeMismatchError,
        "gradient `fc1.bias` has shape (3,) but (4,) was requested",
    ),
    (
        "name not a str",
        lambda: _ctx().register_variable(3, np.zeros(1)),  # type: ignore[arg-type]
        TypeError,
        "variable name must be a str, got int 3",
    ),
    (
        "value not an array",
        lambda: _ctx().register_variable("w", [1.0, 2.0]),  # type: ignore[arg-type]
        TypeError,
        "variable `w`: expected an array (numpy.ndarray, torch.Tensor or jax.Array),"
        " got builtins.list [1.0, 2.0]",
    ),
    (
        "negative dim",
        lambda: _ctx().get_variable("fc1.bias", (-3,)),
        InvalidShapeError,
        "shape (-3,) has a negative dimension -3 at index 0",
    ),
    (
        "non-integer dim",
        lambda: Shape([2, 1.5]),  # type: ignore[list-item]
        InvalidShapeError,
        "shape (2, 1.5) has a non-integer dimension 1.5 at index 1",
    ),
    (
        "pinned dtype",
        lambda: _pinned().register_variable("b", np.zeros(2)),
        DTypeMismatchError,
        "variable `b` has dtype float64 but this context holds float32 only;"
        " convert it first (no silent casts)",
    ),
    (
        "accumulate, shape conflict",
        lambda: _ctx().accumulate_gradient("fc1.bias", np.zeros(4, np.float32)),
        ShapeMismatchError,
        "cannot accumulate into gradient `fc1.bias`: it has shape (3,)"
        " but the added gradient has shape (4,)",
    ),
    (
        "accumulate, dtype conflict",
        lambda: _ctx().accumulate_gradient("fc1.bias", np.zeros(3, np.float64)),
        DTypeMismatchError,
        "cannot accumulate into gradient `fc1.bias`: it has dtype float32"
        " but the added gradient has dtype float64",
    ),
    (
        "AnyTensor with the wrong shape",
        lambda: AnyTensor((2, 2), np.zeros(3)),
        ShapeMismatchError,
        "AnyTensor: the tensor has shape (3,) but the shape given is (2, 2)",
    ),
    (
        "donated context",
        lambda: _donated().get_variable("fc1.bias", (3,)),
        DonatedContextError,
        "this context was donated to adamw.step and can no longer be used;"
        " use the context that call returned",
    ),
    (
        "check() turned into an error",
        lambda: _ctx().register_gradient("ghost", np.zeros(1)).check().raise_if_problems(),
        TorchLeanError,
        "1 problem:\n- gradient `ghost` has no variable of that name",
    ),
]


@pytest.mark.parametrize(("what", "call", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_message(
    what: str, call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_errors_are_also_builtin_errors() -> None:
    assert issubclass(UnknownNameError, KeyError)
    assert issubclass(ShapeMismatchError, ValueError)
    assert issubclass(DTypeMismatchError, TypeError)
    for error in (UnknownNameError, ShapeMismatchError, DTypeMismatchError, InvalidShapeError):
        assert issubclass(error, TorchLeanError)

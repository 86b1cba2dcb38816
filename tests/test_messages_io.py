"""Pinned error messages of torchlean.io (exact texts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import torchlean.io as tio
from torchlean import empty_context
from torchlean.errors import ExpectationError, FormatError

MALFORMED = Path(__file__).parent / "io" / "malformed"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ragged.json", "tensor `w` has ragged nesting: [1] has 1 elements but [0] has 2"),
        ("meta_shape.json", "tensor `w` has shape (2,) but meta says (3,)"),
        (
            "duplicate_key.json",
            "duplicate key `w`"
            "; TorchLean's importer would accept the file (it keeps the last value);"
            " load(path, lean=True) reads it as Lean does",
        ),
        ("non_numeric.json", 'tensor `w` has a non-numeric leaf at [1]: "two"'),
        ("float_in_int.json", "tensor `w` has dtype int64 but holds 1.5 at [0]"),
        ("empty.json", "empty file, not JSON"),
        ("not_torch.pt", "not a valid PyTorch file (Unsupported operand 110)"),
        (
            "bad_layout.safetensors",
            "variables[0] (`w`) refers to tensor `nope`, which is not in the file",
        ),
    ],
)
def test_format_messages(name: str, message: str) -> None:
    path = MALFORMED / name
    with pytest.raises(FormatError) as info:
        tio.load(path)
    assert str(info.value) == f"{path}: {message}"


def test_non_finite_message(tmp_path: Path) -> None:
    a = np.zeros((2, 2), np.float32)
    a[0, 1] = np.nan
    path = tmp_path / "w.json"
    with pytest.raises(FormatError) as info:
        tio.save(empty_context().register_variable("w", a), path)
    assert str(info.value) == (
        f"{path}: tensor `w` has nan at flat index 1 (index (0, 1)); TorchLean's JSON"
        " holds finite numbers only, so nothing was written"
    )


def test_expectation_message() -> None:
    ctx = empty_context().register_variable("module.fc", np.ones(2, np.float32))
    ctx = ctx.register_variable("b", np.ones(3, np.float32))
    with pytest.raises(ExpectationError) as info:
        tio.check_expected(ctx, {"fc": (2,), "b": (2,)})
    assert str(info.value) == (
        "the weights do not match what is expected (3 problems):\n"
        "  missing `fc` (did you mean `module.fc`?)\n"
        "  unexpected `module.fc`\n"
        "  mismatched `b`: expected shape (2,), got (3,)\n"
        "  hint: the names differ by a `module.` prefix (a DataParallel checkpoint);"
        ' load with strip_prefix="module."'
    )


def test_jax_64_bit_message(tmp_path: Path) -> None:
    from torchlean.errors import BackendError

    path = tmp_path / "w.safetensors"
    tio.save(empty_context().register_variable("w", np.ones(2, np.float64)), path)
    with pytest.raises(BackendError, match=r"variable `w` has dtype float64 but JAX is running"):
        tio.load(path, backend="jax")

"""``context_to_string`` prints exactly what Lean's ``Runtime.contextToString`` prints:
``toString`` of each scalar (``Float`` is C++ ``std::to_string``, i.e. ``%f``) nested as
``Spec.pretty`` nests it."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import torchlean.runtime as rc
from torchlean import empty_context
from torchlean.runtime.printing import lean_scalar


def one(value: object) -> str:
    """The text of a context holding ``value`` alone, between ``[x: `` and ``]``."""
    text = empty_context().register_variable("x", value).context_to_string()
    assert text.startswith("Context(vars: [x: ") and text.endswith("], grads: [])")
    return text[len("Context(vars: [x: ") : -len("], grads: [])")]


def test_the_issue_example() -> None:
    ctx = (
        empty_context()
        .register_variable("x", np.float64(2.0))
        .register_variable("w", np.float64(3.0))
    )
    assert ctx.context_to_string() == "Context(vars: [w: 3.000000, x: 2.000000], grads: [])"
    assert rc.context_to_string(ctx) == ctx.context_to_string()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3.0, "3.000000"),
        (-0.75, "-0.750000"),
        (1e-5, "0.000010"),
        (1e-7, "0.000000"),
        (-1e-7, "-0.000000"),
        (1e20, "100000000000000000000.000000"),
        (-0.0, "-0.000000"),
        (0.0, "0.000000"),
        (0.5000005, "0.500000"),  # %f rounds the exact binary value: 0.500000499999...
        (1.0000005, "1.000001"),  # ... which is 1.000000500000000069... here
        (3.5e-6, "0.000003"),  # 0.00000349999999999999994...
        (np.inf, "inf"),
        (-np.inf, "-inf"),
        (np.nan, "NaN"),
        (-np.nan, "NaN"),
        (1.7976931348623157e308, f"{int(1.7976931348623157e308)}.000000"),  # every digit
    ],
)
def test_float64_prints_as_std_to_string(value: float, text: str) -> None:
    assert one(np.float64(value)) == text
    assert lean_scalar(value) == text


def test_a_nan_with_a_payload_or_a_sign_prints_nan() -> None:
    bits = np.array([0x7FF0000000000001, 0xFFF8000000000000, 0x7FF80000DEADBEEF], np.uint64)
    assert one(bits.view(np.float64)) == "[NaN, NaN, NaN]"
    assert one(np.array([np.nan, -np.nan], np.float32)) == "[NaN, NaN]"


def test_float32_prints_its_exact_value_widened_to_float64() -> None:
    # float32(0.1) is 0.100000001490116...; %f of that double is 0.100000
    assert one(np.float32(0.1)) == "0.100000"
    assert one(np.array([0.1, 16777217.0, 3.4e38], np.float32)) == (
        f"[0.100000, 16777216.000000, {int(np.float32(3.4e38))}.000000]"
    )


@pytest.mark.parametrize(
    ("dtype", "text"),
    [
        (np.float16, "[0.099976, 65504.000000, -inf]"),
        (ml_dtypes.bfloat16, "[0.100098, 65536.000000, -inf]"),
        (ml_dtypes.float8_e4m3fn, "[0.101562, 448.000000, NaN]"),  # e4m3fn has no inf
        (ml_dtypes.float8_e5m2, "[0.093750, 57344.000000, -inf]"),
    ],
)
def test_narrow_floats_print_through_float64(dtype: object, text: str) -> None:
    values = np.array([0.1, 65504.0 if dtype is np.float16 else 65536.0, -np.inf])
    if dtype is ml_dtypes.float8_e4m3fn:
        values[1] = 448.0
    if dtype is ml_dtypes.float8_e5m2:
        values[1] = 57344.0
    assert one(values.astype(dtype)) == text


def test_bools_and_integers() -> None:
    assert one(np.array([True, False])) == "[true, false]"
    assert one(np.bool_(True)) == "true"
    assert (
        one(np.array([-(2**63), 2**63 - 1], np.int64))
        == "[-9223372036854775808, 9223372036854775807]"
    )
    assert one(np.array([2**64 - 1], np.uint64)) == "[18446744073709551615]"
    assert one(np.array([-128, 0, 127], np.int8)) == "[-128, 0, 127]"
    assert one(np.int32(7)) == "7"


def test_complex_prints_as_the_pair_re_im() -> None:
    assert one(np.array([1 - 2j, complex(0, -0.5), -0.5j], np.complex128)) == (
        "[(1.000000, -2.000000), (0.000000, -0.500000), (-0.000000, -0.500000)]"
    )
    assert one(np.complex64(complex(np.inf, np.nan))) == "(inf, NaN)"
    assert lean_scalar(1 + 1j) == "(1.000000, 1.000000)"


@pytest.mark.parametrize(
    ("shape", "text"),
    [
        ((), "0.000000"),
        ((0,), "[]"),
        ((0, 3), "[]"),
        ((2, 0), "[[], []]"),
        ((2, 1, 0), "[[[]], [[]]]"),
        ((1, 1, 1), "[[[0.000000]]]"),
        ((2, 2), "[[0.000000, 0.000000], [0.000000, 0.000000]]"),
    ],
)
def test_nesting_as_spec_pretty(shape: tuple[int, ...], text: str) -> None:
    assert one(np.zeros(shape)) == text


def test_a_rank_3_tensor_and_both_registries() -> None:
    ctx = (
        empty_context()
        .register_variable("t", np.arange(8, dtype=np.int64).reshape(2, 2, 2))
        .register_gradient("t", np.full((2, 2, 2), -0.25, np.float32))
    )
    assert ctx.context_to_string() == (
        "Context(vars: [t: [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]], grads: [t: "
        "[[[-0.250000, -0.250000], [-0.250000, -0.250000]], "
        "[[-0.250000, -0.250000], [-0.250000, -0.250000]]]])"
    )


def test_the_empty_context() -> None:
    assert empty_context().context_to_string() == "Context(vars: [], grads: [])"


def test_a_non_contiguous_view_prints_in_logical_order() -> None:
    a = np.arange(6, dtype=np.float64).reshape(2, 3).T
    assert one(a) == "[[0.000000, 3.000000], [1.000000, 4.000000], [2.000000, 5.000000]]"

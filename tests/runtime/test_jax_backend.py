"""jax arrays (and tracers) as context values: storage, dtypes, devices, jit."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from torchlean import empty_context
from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    ShapeMismatchError,
    UnknownNameError,
)
from torchlean.runtime.backends import backend_of


def test_a_jax_array_is_stored_as_it_is():
    x = jnp.arange(6.0).reshape(2, 3)
    ctx = empty_context().register_variable("w", x)
    assert ctx["w"] is x
    at = ctx.var_registry[0][1]
    assert (at.backend, at.dtype, at.dims, at.device) == ("jax", "float32", (2, 3), "cpu")


def test_a_shape_dtype_struct_is_not_an_array():
    with pytest.raises(TypeError, match="variable `s`: expected an array"):
        empty_context().register_variable("s", jax.ShapeDtypeStruct((2,), jnp.float32))


def test_shape_checked_lookups():
    ctx = empty_context().register_variable("w", jnp.ones((2, 3)))
    assert ctx.get_variable("w", (2, 3)) is not None
    assert ctx.get_variable("w", (3, 2)) is None
    with pytest.raises(ShapeMismatchError, match=re.escape("has shape (2, 3) but (6,)")):
        ctx.variable("w", (6,))
    with pytest.raises(UnknownNameError, match="no variable `v`"):
        ctx.variable("v")


@pytest.mark.parametrize(
    ("dtype", "name", "text"),
    [
        (jnp.float32, "float32", "[1.500000, -2.000000]"),
        (jnp.float16, "float16", "[1.500000, -2.000000]"),
        (jnp.bfloat16, "bfloat16", "[1.500000, -2.000000]"),
        (jnp.int32, "int32", "[1, -2]"),
    ],
)
def test_dtypes_are_named_and_rendered(dtype, name, text):
    ctx = empty_context().register_variable("w", jnp.array([1.5, -2.0]).astype(dtype))
    assert ctx.var_registry[0][1].dtype == name
    assert ctx.context_to_string() == f"Context(vars: [w: {text}], grads: [])"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_check_counts_non_finite_values(dtype):
    x = jnp.array([jnp.nan, jnp.inf, 1.0]).astype(dtype)
    report = empty_context().register_variable("w", x).check()
    assert [p.message for p in report] == ["variable `w` has 1 NaN and 1 infinite values"]


def test_accumulate_gradient_adds_jax_arrays():
    ctx = (
        empty_context()
        .register_variable("w", jnp.zeros(2))
        .register_gradient("w", jnp.array([1.0, 2.0]))
        .accumulate_gradient("w", jnp.array([10.0, 20.0]))
    )
    assert np.array_equal(ctx.gradient("w"), [11.0, 22.0])
    assert ctx.gradients[0][1].backend == "jax"
    with pytest.raises(DTypeMismatchError, match="it is a jax array but the added gradient is a"):
        ctx.accumulate_gradient("w", np.ones(2, dtype=np.float32))


def test_a_deleted_array_renders_as_a_stand_in():
    x = jnp.ones(3)
    ctx = empty_context().register_variable("w", x)
    x.delete()  # what donating a buffer to a jitted function does
    assert ctx.context_to_string() == (
        "Context(vars: [w: <deleted jax array float32 (3,)>], grads: [])"
    )
    assert ctx.check().ok


def test_a_jax_pin_by_name_pins_jax():
    ctx = empty_context(dtype="float32").register_variable("w", jnp.ones(2))
    with pytest.raises(DTypeMismatchError, match="is a numpy array but this context holds jax"):
        ctx.register_variable("x", np.ones(2, dtype=np.float32))
    with pytest.raises(DTypeMismatchError, match="has dtype int32 but this context holds float32"):
        ctx.register_variable("x", jnp.ones(2, dtype=jnp.int32))


# ---------------------------------------------------------------- tracers


def test_a_context_built_from_tracers_inside_jit():
    seen = {}

    @jax.jit
    def step(w, g):
        ctx = (
            empty_context()
            .register_variable("w", w)
            .register_gradient("w", g)
            .accumulate_gradient("w", g)
        )
        at = ctx.var_registry[0][1]
        seen["backend"] = at.backend
        seen["device"] = at.device
        seen["text"] = ctx.context_to_string()
        seen["ok"] = ctx.check().ok
        return ctx.variable("w", (3,)) - 0.5 * ctx.gradient("w")

    out = step(jnp.ones(3), jnp.ones(3))
    assert np.array_equal(out, [0.0, 0.0, 0.0])
    assert seen == {
        "backend": "jax",
        "device": "traced",
        "text": "Context(vars: [w: <traced float32 (3,)>], grads: [w: <traced float32 (3,)>])",
        "ok": True,
    }


def test_a_tracer_beside_a_numpy_array_is_not_a_mixed_device():
    @jax.jit
    def f(w):
        ctx = empty_context().register_variable("n", np.ones(2)).register_variable("w", w)
        assert ctx.check().ok
        return w

    f(jnp.ones(2))


def test_to_numpy_refuses_a_tracer():
    @jax.jit
    def f(w):
        at = empty_context().register_variable("w", w).var_registry[0][1]
        with pytest.raises(BackendError, match="has no data to read"):
            at._backend.to_numpy(at.t)
        return w

    f(jnp.ones(2))


def test_grad_tracers_are_jax_values():
    def loss(w):
        ctx = empty_context().register_variable("w", w)
        return (ctx["w"] ** 2).sum()

    assert np.allclose(jax.grad(loss)(jnp.array([1.0, -2.0])), [2.0, -4.0])


def test_the_backend_of_jax_types_is_cached_without_importing_jax_again():
    x = jnp.ones(1)
    assert backend_of(x) is backend_of(jnp.zeros(2))
    assert backend_of(x).name == "jax"


# ---------------------------------------------------------------- device names


class _Device:
    def __init__(self, platform: str, id: int, local_hardware_id: int | None) -> None:
        self.platform = platform
        self.id = id
        self.local_hardware_id = local_hardware_id


@pytest.mark.parametrize(
    ("platform", "id", "local", "name"),
    [
        ("cpu", 0, 0, "cpu"),
        ("cpu", 5, None, "cpu"),
        ("gpu", 0, 0, "cuda:0"),
        ("gpu", 9, 1, "cuda:1"),  # the local CUDA ordinal, as torch numbers it
        ("cuda", 2, None, "cuda:2"),
        ("rocm", 0, 0, "cuda:0"),
        ("tpu", 3, 3, "tpu:3"),
    ],
)
def test_jax_device_names_are_canonical(platform, id, local, name):
    from torchlean.runtime.backends.jax import _device_name as _jax_device_name

    assert _jax_device_name(_Device(platform, id, local)) == name


def test_the_jax_cpu_device_is_plain_cpu():
    assert str(jax.devices("cpu")[0]) != "cpu"  # jax says "cpu:0" or "TFRT_CPU_0"...
    x = jax.device_put(jnp.ones(2), jax.devices("cpu")[0])
    assert empty_context().register_variable("x", x).var_registry[0][1].device == "cpu"

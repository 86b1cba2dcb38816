"""torch tensors as context values: storage, the in-place promise, dtypes, devices."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from torchlean import empty_context
from torchlean.errors import (
    BackendError,
    DTypeMismatchError,
    InPlaceModificationError,
    ShapeMismatchError,
    UnknownNameError,
)
from torchlean.runtime import AnyTensor
from torchlean.runtime.backends import backend_of

WRITTEN = "modified in place after it was stored"


def ctx_with(name: str, value: torch.Tensor):  # type: ignore[no-untyped-def]
    return empty_context().register_variable(name, value)


# ---------------------------------------------------------------- storage


def test_a_tensor_is_stored_without_a_copy():
    t = torch.arange(6.0).reshape(2, 3)
    out = ctx_with("w", t)["w"]
    assert out.data_ptr() == t.data_ptr()
    assert torch.equal(out, t)
    assert type(out) is torch.Tensor


def test_a_parameter_is_stored_detached():
    p = torch.nn.Parameter(torch.ones(2, 3))
    ctx = ctx_with("p", p)
    out = ctx["p"]
    assert type(out) is torch.Tensor
    assert not out.requires_grad
    assert out.grad_fn is None
    assert out.data_ptr() == p.data_ptr()
    assert ctx.var_registry[0][1].backend == "torch"


def test_a_tensor_that_requires_grad_is_stored_detached():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3  # a non-leaf with a grad_fn
    ctx = ctx_with("y", y).register_gradient("y", x)
    assert not ctx["y"].requires_grad
    assert ctx["y"].grad_fn is None
    assert not ctx.gradient("y").requires_grad
    assert torch.equal(ctx["y"], torch.tensor([3.0, 6.0]))


def test_an_inference_tensor_is_stored_as_a_clone_and_stays_unchanged():
    with torch.inference_mode():
        t = torch.ones(3)
    ctx = ctx_with("t", t)
    with torch.inference_mode():
        t.add_(1)  # allowed in inference mode, and invisible to a version counter
    assert torch.equal(ctx["t"], torch.ones(3))
    assert not ctx["t"].is_inference()


def test_any_tensor_checks_the_shape_and_detaches():
    p = torch.nn.Parameter(torch.ones(2))
    at = AnyTensor((2,), p)
    assert at.dims == (2,)
    assert not at.t.requires_grad
    with pytest.raises(ShapeMismatchError):
        AnyTensor((3,), p)


def test_a_tensor_subclass_from_another_module_is_a_torch_value():
    class Mine(torch.Tensor):
        pass

    t = torch.ones(2).as_subclass(Mine)
    assert backend_of(t).name == "torch"
    assert ctx_with("m", t).var_registry[0][1].backend == "torch"


# ---------------------------------------------------------------- in-place writes


def _write_directly(t: torch.Tensor) -> None:
    t.add_(1)


def _write_through_a_view(t: torch.Tensor) -> None:
    t.view(-1)[0] = 100.0


def _write_through_a_transpose(t: torch.Tensor) -> None:
    t.T.mul_(2)


def _write_by_index(t: torch.Tensor) -> None:
    t[1, 1] = -1.0


def _write_through_a_detached_alias(t: torch.Tensor) -> None:
    t.detach().zero_()


def _write_under_no_grad(t: torch.Tensor) -> None:
    with torch.no_grad():
        t.copy_(torch.zeros_like(t))


WRITES = [
    _write_directly,
    _write_through_a_view,
    _write_through_a_transpose,
    _write_by_index,
    _write_through_a_detached_alias,
    _write_under_no_grad,
]


@pytest.mark.parametrize("write", WRITES)
def test_a_write_after_registration_is_refused_on_the_next_read(write):
    t = torch.ones(2, 2)
    ctx = ctx_with("w", t)
    write(t)
    with pytest.raises(InPlaceModificationError, match=r"variable `w` was " + WRITTEN):
        ctx.variable("w")


@pytest.mark.parametrize("write", WRITES)
def test_a_write_to_a_looked_up_tensor_is_refused_on_the_next_read(write):
    ctx = ctx_with("w", torch.ones(2, 2))
    write(ctx["w"])
    with pytest.raises(InPlaceModificationError):
        ctx["w"]


def test_a_parameter_updated_by_an_optimizer_is_refused():
    p = torch.nn.Parameter(torch.ones(3))
    ctx = ctx_with("p", p)
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    with pytest.raises(InPlaceModificationError, match="variable `p`"):
        ctx["p"]


def _reads(ctx):  # type: ignore[no-untyped-def]
    """Every way of reading a stored tensor through a context."""
    return {
        "variable": lambda: ctx.variable("w"),
        "getitem": lambda: ctx["w"],
        "get_variable": lambda: ctx.get_variable("w", (3,)),
        "state_dict": lambda: ctx.state_dict(),
        "gradient": lambda: ctx.gradient("w"),
        "get_gradient": lambda: ctx.get_gradient("w", (3,)),
        "gradient_state_dict": lambda: ctx.state_dict(gradients=True),
        "any_tensor": lambda: ctx.var_registry[0][1].t,
        "to_string": lambda: ctx.context_to_string(),
        "check": lambda: ctx.check(),
        "accumulate": lambda: ctx.accumulate_gradient("w", torch.ones(3)),
    }


@pytest.mark.parametrize(
    "read",
    [
        "variable",
        "getitem",
        "get_variable",
        "state_dict",
        "any_tensor",
        "to_string",
        "check",
    ],
)
def test_every_read_of_a_written_variable_raises(read):
    t = torch.ones(3)
    ctx = ctx_with("w", t).register_gradient("w", torch.zeros(3))
    t.add_(1)
    with pytest.raises(InPlaceModificationError):
        _reads(ctx)[read]()


@pytest.mark.parametrize(
    "read", ["gradient", "get_gradient", "gradient_state_dict", "to_string", "check", "accumulate"]
)
def test_every_read_of_a_written_gradient_raises(read):
    g = torch.ones(3)
    ctx = ctx_with("w", torch.zeros(3)).register_gradient("w", g)
    g.mul_(2)
    with pytest.raises(InPlaceModificationError, match="gradient `w`"):
        _reads(ctx)[read]()


def test_every_context_holding_the_tensor_refuses_it_others_do_not():
    t = torch.ones(3)
    before = empty_context().register_variable("b", torch.zeros(1))
    ctx = before.register_variable("w", t)
    later = ctx.register_variable("x", torch.zeros(2))
    t.add_(1)
    for c in (ctx, later):
        with pytest.raises(InPlaceModificationError):
            c["w"]
    assert torch.equal(later["x"], torch.zeros(2))
    assert torch.equal(before["b"], torch.zeros(1))


def test_out_of_place_work_and_a_registered_clone_are_fine():
    t = torch.ones(3)
    ctx = ctx_with("w", t.clone())
    _ = ctx["w"] + 1
    _ = ctx["w"].mul(2)
    t.add_(5)
    assert torch.equal(ctx["w"], torch.ones(3))


def test_setting_a_fresh_value_makes_the_entry_readable_again():
    t = torch.ones(3)
    ctx = ctx_with("w", t)
    t.add_(1)
    fixed = ctx.set_variable("w", torch.full((3,), 7.0))
    assert torch.equal(fixed["w"], torch.full((3,), 7.0))
    with pytest.raises(InPlaceModificationError):
        ctx["w"]


# ---------------------------------------------------------------- operations


def test_shape_checked_lookups():
    ctx = ctx_with("w", torch.ones(2, 3))
    assert ctx.get_variable("w", (3, 2)) is None
    assert ctx.get_variable("w", torch.Size([2, 3])) is not None
    with pytest.raises(ShapeMismatchError, match=re.escape("has shape (2, 3) but (3, 2)")):
        ctx.variable("w", (3, 2))
    with pytest.raises(UnknownNameError, match="did you mean `w`"):
        ctx.variable("ww")


def test_accumulate_gradient_adds_without_touching_either_tensor():
    g1 = torch.tensor([1.0, 2.0])
    g2 = torch.tensor([10.0, 20.0])
    ctx = ctx_with("w", torch.zeros(2)).register_gradient("w", g1)
    out = ctx.accumulate_gradient("w", g2)
    assert torch.equal(out.gradient("w"), torch.tensor([11.0, 22.0]))
    assert torch.equal(ctx.gradient("w"), g1)
    assert torch.equal(g1, torch.tensor([1.0, 2.0]))
    assert torch.equal(g2, torch.tensor([10.0, 20.0]))
    g2.add_(1)  # the sum is a tensor of its own
    assert torch.equal(out.gradient("w"), torch.tensor([11.0, 22.0]))


def test_accumulate_gradient_refuses_another_dtype_library_or_device():
    ctx = ctx_with("w", torch.zeros(2)).register_gradient("w", torch.ones(2))
    with pytest.raises(DTypeMismatchError, match="dtype float32 but the added gradient"):
        ctx.accumulate_gradient("w", torch.ones(2, dtype=torch.float64))
    with pytest.raises(DTypeMismatchError, match="torch array but the added gradient is a numpy"):
        ctx.accumulate_gradient("w", np.ones(2, dtype=np.float32))
    with pytest.raises(BackendError, match="it is on cpu but the added gradient is on meta"):
        ctx.accumulate_gradient("w", torch.ones(2, device="meta"))


# ---------------------------------------------------------------- dtypes and rendering


@pytest.mark.parametrize(
    ("dtype", "name", "text"),
    [
        (torch.float32, "float32", "[1.500000, -2.000000]"),
        (torch.float64, "float64", "[1.500000, -2.000000]"),
        (torch.float16, "float16", "[1.500000, -2.000000]"),
        (torch.bfloat16, "bfloat16", "[1.500000, -2.000000]"),
        (torch.int64, "int64", "[1, -2]"),
        (torch.int8, "int8", "[1, -2]"),
        (
            torch.complex64,
            "complex64",
            "[(1.500000, 0.000000), (-2.000000, 0.000000)]",
        ),
    ],
)
def test_dtypes_are_named_and_rendered(dtype, name, text):
    t = torch.tensor([1.5, -2.0]).to(dtype)
    ctx = ctx_with("w", t)
    assert ctx.var_registry[0][1].dtype == name
    assert ctx.context_to_string() == f"Context(vars: [w: {text}], grads: [])"


def test_bfloat16_renders_the_exact_stored_value():
    ctx = ctx_with("w", torch.tensor([0.1], dtype=torch.bfloat16))
    # bfloat16(0.1) is 0.10009765625; Lean's %f of that value is 0.100098.
    assert ctx.context_to_string() == "Context(vars: [w: [0.100098]], grads: [])"


def test_bool_and_float8_render():
    ctx = ctx_with("b", torch.tensor([True, False])).register_variable(
        "f", torch.tensor([1.0, 0.5]).to(torch.float8_e4m3fn)
    )
    assert ctx.context_to_string() == (
        "Context(vars: [f: [1.000000, 0.500000], b: [true, false]], grads: [])"
    )


def test_a_conjugated_tensor_renders_its_values():
    ctx = ctx_with("c", torch.tensor([1 + 2j]).conj())
    assert ctx.context_to_string() == "Context(vars: [c: [(1.000000, -2.000000)]], grads: [])"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_counts_non_finite_values(dtype):
    t = torch.tensor([float("nan"), float("inf"), 1.0, float("nan")]).to(dtype)
    report = ctx_with("w", t).check()
    assert [p.kind for p in report] == ["non-finite"]
    assert report.problems[0].message == "variable `w` has 2 NaN and 1 infinite values"


def test_check_leaves_integers_alone():
    assert ctx_with("i", torch.tensor([1, 2])).check().ok


# ---------------------------------------------------------------- devices


def test_cpu_is_cpu_in_every_library():
    import jax.numpy as jnp

    ctx = (
        empty_context()
        .register_variable("n", np.ones(2))
        .register_variable("t", torch.ones(2))
        .register_variable("j", jnp.ones(2))
    )
    assert {at.device for _, at in ctx.var_registry} == {"cpu"}
    assert ctx.check().ok


def test_a_meta_tensor_beside_a_cpu_one_is_reported():
    ctx = (
        empty_context()
        .register_variable("cpu_w", torch.ones(2))
        .register_variable("meta_w", torch.ones(2, device="meta"))
    )
    assert ctx.var_registry[0][1].device == "meta"
    report = ctx.check()
    assert [p.kind for p in report] == ["mixed-devices"]
    assert report.problems[0].message == (
        "tensors are on several devices: meta (variable `meta_w`), cpu (variable `cpu_w`)"
    )


def test_meta_tensors_alone_are_not_mixed_and_render_as_stand_ins():
    ctx = ctx_with("w", torch.empty(2, 3, device="meta")).register_gradient(
        "w", torch.empty(2, 3, device="meta")
    )
    assert ctx.check().ok
    assert ctx.context_to_string() == (
        "Context(vars: [w: <meta tensor float32 (2, 3)>], grads: [w: <meta tensor float32 (2, 3)>])"
    )
    assert "vars=[w: (2, 3) float32]" in repr(ctx)


def test_to_numpy_refuses_a_meta_tensor():
    at = ctx_with("w", torch.empty(2, device="meta")).var_registry[0][1]
    with pytest.raises(BackendError, match="has no data to read"):
        at._backend.to_numpy(at.t)


def test_a_meta_tensor_written_in_place_is_still_refused():
    t = torch.empty(2, device="meta")
    ctx = ctx_with("w", t)
    t.add_(1)
    with pytest.raises(InPlaceModificationError):
        ctx["w"]


# ---------------------------------------------------------------- pinning


def test_a_torch_dtype_pin_pins_torch():
    ctx = empty_context(dtype=torch.float32)
    assert ctx.dtype == "float32"
    ok = ctx.register_variable("w", torch.ones(2))
    with pytest.raises(DTypeMismatchError, match="is a numpy array but this context holds torch"):
        ctx.register_variable("w", np.ones(2, dtype=np.float32))
    with pytest.raises(DTypeMismatchError, match="has dtype float64"):
        ok.register_variable("x", torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("pin", ["float32", np.float32, np.dtype("float32")])
def test_a_numpy_or_string_pin_pins_the_library_of_the_first_tensor(pin):
    import jax.numpy as jnp

    ctx = empty_context(dtype=pin).register_variable("w", torch.ones(2))
    with pytest.raises(DTypeMismatchError, match="is a numpy array but this context holds torch"):
        ctx.register_gradient("w", np.ones(2, dtype=np.float32))
    with pytest.raises(DTypeMismatchError, match="is a jax array but this context holds torch"):
        ctx.set_variable("w", jnp.ones(2, dtype=jnp.float32))
    first_numpy = empty_context(dtype=pin).register_variable("w", np.ones(2, dtype=np.float32))
    with pytest.raises(DTypeMismatchError, match="is a torch array but this context holds numpy"):
        first_numpy.register_variable("x", torch.ones(2))


def test_an_unpinned_context_mixes_libraries():
    import jax.numpy as jnp

    ctx = (
        empty_context()
        .register_variable("n", np.ones(2, dtype=np.float32))
        .register_variable("t", torch.ones(2, dtype=torch.float64))
        .register_variable("j", jnp.ones(2, dtype=jnp.int32))
    )
    assert [at.backend for _, at in ctx.var_registry] == ["jax", "torch", "numpy"]
    assert ctx.context_to_string() == (
        "Context(vars: [j: [1, 1], t: [1.000000, 1.000000], n: [1.000000, 1.000000]], grads: [])"
    )


class _OnDevice:
    def __init__(self, device: str) -> None:
        self.device = torch.device(device)


@pytest.mark.parametrize(
    ("device", "name"),
    [
        ("cpu", "cpu"),
        ("cuda:0", "cuda:0"),
        ("cuda:3", "cuda:3"),
        ("meta", "meta"),
        ("mps:0", "mps:0"),
    ],
)
def test_torch_device_names_are_canonical(device, name):
    assert backend_of(torch.ones(1)).device(_OnDevice(device)) == name

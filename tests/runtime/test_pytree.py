"""A context is a pytree for JAX and for PyTorch: round trips, transforms, key paths."""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.utils._pytree as torch_pytree
from hypothesis import given, settings
from hypothesis import strategies as st

from torchlean import RuntimeContext, empty_context
from torchlean.errors import (
    BackendError,
    DonatedContextError,
    InPlaceModificationError,
    ShapeMismatchError,
)
from torchlean.runtime import pytree
from torchlean.runtime.context import donate
from torchlean.runtime.pytree import EntryKey, Layout

# ---------------------------------------------------------------- helpers


def layout(ctx: RuntimeContext[Any]) -> tuple[Any, ...]:
    """Everything about a context except the values themselves."""

    def entries(registry: tuple[tuple[str, Any], ...]) -> list[tuple[Any, ...]]:
        return [(name, at.dims, at.dtype, at.backend) for name, at in registry]

    return (
        entries(ctx.var_registry),
        entries(ctx.gradients),
        ctx.next_id,
        (ctx.dtype, ctx.library),
    )


def values(ctx: RuntimeContext[Any]) -> list[np.ndarray[Any, Any]]:
    return [np.asarray(at.t) for _, at in ctx.var_registry + ctx.gradients]


def sample() -> RuntimeContext[Any]:
    """Shadowed names in both registries, an update, several shapes."""
    return (
        empty_context()
        .register_variable("w", np.arange(3.0, dtype=np.float32))
        .register_variable("b", np.ones((2, 2), dtype=np.float32))
        .register_variable("w", np.full(3, 5.0, dtype=np.float32))
        .register_gradient("w", np.ones(3, dtype=np.float32))
        .register_gradient("b", np.zeros((2, 2), dtype=np.float32))
        .register_gradient("w", np.full(3, 2.0, dtype=np.float32))
        .register_variable("s", np.float32(4.0))
    )


def torch_sample() -> RuntimeContext[Any]:
    return (
        empty_context()
        .register_variable("w", torch.arange(3.0))
        .register_variable("b", torch.ones(2, 2))
        .register_variable("w", torch.full((3,), 5.0))
        .register_gradient("w", torch.ones(3))
    )


# ---------------------------------------------------------------- round trips

NAMES = st.sampled_from(["w", "b", "fc1.weight", "fc1.bias", ""])
SHAPES = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
DTYPES = st.sampled_from(["float32", "float64", "float16", "int32", "int64", "bool", "uint8"])
OPS = st.lists(
    st.tuples(st.sampled_from(["variable", "gradient", "set"]), NAMES, SHAPES, DTYPES),
    max_size=12,
)


def build(ops: list[tuple[str, str, tuple[int, ...], str]], kind: str) -> RuntimeContext[Any]:
    ctx = empty_context()
    for i, (op, name, shape, dtype) in enumerate(ops):
        array = (np.arange(int(np.prod(shape)), dtype=np.float64) + i).reshape(shape)
        value: Any = array.astype(dtype)
        if kind == "torch":
            value = torch.from_numpy(value.copy())
        elif kind == "jax":
            value = jnp.asarray(value)
        if op == "variable":
            ctx = ctx.register_variable(name, value)
        elif op == "gradient":
            ctx = ctx.register_gradient(name, value)
        else:
            ctx = ctx.set_variable(name, value)
    return ctx


def jax_round_trip(ctx: RuntimeContext[Any]) -> tuple[RuntimeContext[Any], list[Any]]:
    leaves, treedef = jax.tree_util.tree_flatten(ctx)
    return jax.tree_util.tree_unflatten(treedef, leaves), leaves


def torch_round_trip(ctx: RuntimeContext[Any]) -> tuple[RuntimeContext[Any], list[Any]]:
    leaves, spec = torch_pytree.tree_flatten(ctx)
    return torch_pytree.tree_unflatten(leaves, spec), leaves


ROUND_TRIPS = {"jax": jax_round_trip, "torch": torch_round_trip}


@pytest.mark.parametrize("library", ["jax", "torch"])
@pytest.mark.parametrize("kind", ["numpy", "torch", "jax"])
@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_flatten_then_unflatten_gives_the_same_context(library, kind, ops):
    ctx = build(ops, kind)
    out, leaves = ROUND_TRIPS[library](ctx)
    assert layout(out) == layout(ctx)
    assert out.variable_names() == ctx.variable_names()
    assert out.gradient_names() == ctx.gradient_names()
    assert len(leaves) == ctx.context_size() + ctx.gradient_count()
    for a, b in zip(values(out), values(ctx), strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)
    # Nothing is copied: the leaves are the stored tensors themselves.
    stored = [at._t for _, at in out.var_registry + out.gradients]
    assert all(x is y for x, y in zip(stored, leaves, strict=True))


@pytest.mark.parametrize("library", ["jax", "torch"])
@pytest.mark.parametrize("pin", ["float32", np.float32, torch.float32])
def test_the_pin_survives_a_round_trip(library, pin):
    value: Any = torch.ones(2) if str(pin).startswith("torch") else np.ones(2, np.float32)
    ctx = empty_context(dtype=pin).register_variable("w", value)
    out, _ = ROUND_TRIPS[library](ctx)
    assert (out.dtype, out.library) == (ctx.dtype, ctx.library)
    assert out.dtype == "float32"
    empty, _ = ROUND_TRIPS[library](empty_context(dtype=pin))
    pinned = empty_context(dtype=pin)
    assert (empty.dtype, empty.library) == (pinned.dtype, pinned.library)


def test_the_layout_is_the_aux_data():
    treedef = jax.tree_util.tree_structure(sample())
    assert treedef.num_leaves == 7
    assert "Layout(variables=('s', 'w', 'b', 'w')" in str(treedef)
    assert treedef == jax.tree_util.tree_structure(jax.tree_util.tree_map(jnp.asarray, sample()))
    other = sample().register_variable("x", np.ones(1))
    assert treedef != jax.tree_util.tree_structure(other)
    assert hash(Layout((), (), (), (), 0, None)) == hash(Layout((), (), (), (), 0, None))


# ---------------------------------------------------------------- jax transforms


def test_jax_tree_map_keeps_names_order_shadowing_and_next_id():
    ctx = sample()
    out = jax.tree_util.tree_map(lambda x: x * 2, ctx)
    assert layout(out) == layout(ctx)
    assert np.array_equal(out["w"], [10.0, 10.0, 10.0])
    shadowed = out.var_registry[3]
    assert shadowed[0] == "w"
    assert np.array_equal(shadowed[1].t, [0.0, 2.0, 4.0])
    assert np.array_equal(out.gradient("w"), [4.0, 4.0, 4.0])


def test_jax_jit_takes_and_returns_a_context():
    ctx = sample()
    step = jax.jit(lambda c: c.set_variable("b", c["b"] + c.gradient("b") + 1.0))
    out = step(ctx)
    assert isinstance(out, RuntimeContext)
    assert out.variable_names() == ctx.variable_names()
    assert out.gradient_names() == ctx.gradient_names()
    assert out.next_id == ctx.next_id == 4
    assert (out.dtype, out.library) == (ctx.dtype, ctx.library)
    assert np.array_equal(out["b"], np.full((2, 2), 2.0))
    assert out.var_registry[0][1].backend == "jax"
    assert np.array_equal(step(ctx)["b"], out["b"])  # cached: same layout


def test_jax_grad_of_a_sum_of_squares_is_twice_the_values():
    ctx = (
        empty_context()
        .register_variable("w", jnp.array([1.0, -2.0, 3.0]))
        .register_variable("b", jnp.array(0.5))
    )

    def loss(c: RuntimeContext[Any]) -> Any:
        return (c["w"] ** 2).sum() + c["b"] ** 2

    grads = jax.grad(loss)(ctx)
    assert grads.variable_names() == ["b", "w"]
    assert np.allclose(grads["w"], [2.0, -4.0, 6.0])
    assert np.allclose(grads["b"], 1.0)
    assert np.allclose(jax.jit(jax.grad(loss))(ctx)["w"], 2 * ctx["w"])


def test_jax_vmap_over_a_context():
    ctx = empty_context().register_variable("w", jnp.ones((4, 3)))
    out = jax.vmap(lambda c: c.set_variable("w", c["w"].sum() * jnp.ones(3)))(ctx)
    assert out.var_registry[0][1].dims == (4, 3)
    assert np.array_equal(out["w"], np.full((4, 3), 3.0))


def test_optax_steps_a_context_of_parameters():
    params = empty_context().register_variable("w", jnp.array([1.0, 2.0]))
    opt = optax.sgd(0.5)
    state = opt.init(params)
    grads = jax.grad(lambda c: (c["w"] ** 2).sum())(params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert new.variable_names() == ["w"]
    assert np.allclose(new["w"], [0.0, 0.0])


def test_key_paths_name_each_entry():
    paths = [
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(sample())
    ]
    assert paths == [
        ".variables['s']",
        ".variables['w']",
        ".variables['b']",
        ".variables['w']#1",
        ".gradients['w']",
        ".gradients['b']",
        ".gradients['w']#1",
    ]
    key = EntryKey("variables", "w", 1)
    assert np.array_equal(key.get(sample()), [0.0, 1.0, 2.0])
    with pytest.raises(KeyError):
        EntryKey("gradients", "s").get(sample())


def test_tree_map_with_path_can_treat_variables_and_gradients_apart():
    def decay(path: Any, x: Any) -> Any:
        return x * 0.5 if path[-1].registry == "variables" else x

    out = jax.tree_util.tree_map_with_path(decay, sample())
    assert np.array_equal(out["w"], [2.5, 2.5, 2.5])
    assert np.array_equal(out.gradient("w"), [2.0, 2.0, 2.0])


# ---------------------------------------------------------------- any leaves


def test_unflatten_accepts_any_leaves_and_keeps_the_entry_shapes():
    ctx = sample()
    treedef = jax.tree_util.tree_structure(ctx)
    sentinel = object()
    out = treedef.unflatten([sentinel] * treedef.num_leaves)
    assert out.variable_names() == ctx.variable_names()
    assert [at.dims for _, at in out.var_registry] == [at.dims for _, at in ctx.var_registry]
    assert out.get_variable("b", (2, 2)) is sentinel
    assert out.next_id == ctx.next_id
    assert out.check().ok
    assert repr(sentinel) in out.context_to_string()


def test_none_leaves_round_trip():
    ctx = sample()
    nones = jax.tree_util.tree_map(lambda x: None, ctx)
    assert jax.tree_util.tree_leaves(nones) == []
    assert nones.variable_names() == ctx.variable_names()
    assert nones.get_variable("w", (3,)) is None
    assert nones.var_registry[1][1].dims == (3,)
    assert nones.context_to_string().startswith("Context(vars: [s: None, w: None")
    again = jax.tree_util.tree_map(lambda x: x, nones)
    assert again.variable_names() == ctx.variable_names()
    torch_nones = torch_pytree.tree_map(lambda x: None, ctx)
    assert torch_nones.gradient_names() == ctx.gradient_names()


def test_eval_shape_gives_shape_dtype_structs():
    ctx = sample()
    shapes = jax.eval_shape(lambda c: c.set_variable("b", jnp.ones((5,))), ctx)
    b = shapes["b"]
    assert isinstance(b, jax.ShapeDtypeStruct)
    assert shapes.var_registry[2][1].dims == (5,)
    assert shapes.var_registry[2][1].dtype == "float32"
    assert "ShapeDtypeStruct(shape=(5,), dtype=float32)" in shapes.context_to_string()


def test_a_leaf_of_another_shape_gives_the_entry_that_shape():
    out = jax.tree_util.tree_map(lambda x: jnp.zeros((7,)), sample())
    assert {at.dims for _, at in out.var_registry} == {(7,)}


def test_remembered_avals_stand_for_the_layout_dims_and_nothing_else():
    ctx = RuntimeContext.from_state_dict({"w": jnp.ones((3, 2)), "b": jnp.zeros(2)})
    ctx = ctx.with_gradients([("w", jnp.ones((3, 2)))], adopt=True)
    step = jax.jit(lambda c: jax.tree_util.tree_map(lambda x: x + 1, c))
    for _ in range(3):  # the outputs' avals are remembered with the layout
        ctx = step(ctx)
    leaves, treedef = jax.tree_util.tree_flatten(ctx)
    skeleton = pytree._skeleton(treedef.node_data()[1])
    assert skeleton is not None
    assert all(map(operator.is_, skeleton[3][0], [x.aval for x in leaves[:2]]))
    assert [at.dims for _, at in ctx.var_registry] == [(2,), (3, 2)]
    # other shapes or dtypes under the same layout: the shapes are read
    for fn, dims, grads in (
        (lambda x: x[None], [(1, 2), (1, 3, 2)], [(1, 3, 2)]),
        (lambda x: x.sum(), [(), ()], [()]),
        (lambda x: x.astype(jnp.int32), [(2,), (3, 2)], [(3, 2)]),
    ):
        out = jax.tree_util.tree_map(fn, ctx)
        assert [at.dims for _, at in out.var_registry] == dims
        assert [at.dims for _, at in out.gradients] == grads
        assert jax.tree_util.tree_structure(out).node_data()[1].variable_dims == tuple(dims)
    with pytest.raises(ShapeMismatchError, match=r"variable `w` has shape \(3, 2\)"):
        step(ctx).variable("w", (2, 3))


# ---------------------------------------------------------------- protection


def test_numpy_leaves_are_protected_like_registered_ones():
    made: list[np.ndarray[Any, Any]] = []

    def double(x: Any) -> Any:
        y = np.array(x) * 2
        made.append(y)
        return y

    out = jax.tree_util.tree_map(double, sample())
    made[1][...] = 99.0  # the caller's array...
    assert np.array_equal(out["w"], [10.0, 10.0, 10.0])  # ...was copied
    with pytest.raises(ValueError, match="read-only"):
        out["w"][0] = 1.0


def test_an_identity_tree_map_copies_no_numpy_array():
    ctx = sample()
    out = jax.tree_util.tree_map(lambda x: x, ctx)
    assert out["w"] is ctx["w"]


@pytest.mark.parametrize("flatten", [jax.tree_util.tree_leaves, torch_pytree.tree_leaves])
def test_flattening_refuses_a_tensor_written_in_place(flatten):
    t = torch.ones(3)
    ctx = empty_context().register_variable("w", t)
    t.add_(1)
    with pytest.raises(InPlaceModificationError, match="variable `w`"):
        flatten(ctx)


def test_a_donated_context_cannot_be_flattened():
    ctx = sample()
    donate(ctx, to="a test")
    with pytest.raises(DonatedContextError):
        jax.tree_util.tree_leaves(ctx)


# ---------------------------------------------------------------- torch


def test_torch_tree_map_keeps_names_order_shadowing_and_next_id():
    ctx = torch_sample()
    out = torch_pytree.tree_map(lambda t: t * 2, ctx)
    assert layout(out) == layout(ctx)
    assert torch.equal(out["w"], torch.full((3,), 10.0))
    assert torch.equal(out.var_registry[2][1].t, torch.tensor([0.0, 2.0, 4.0]))


def test_torch_key_paths():
    pairs, _ = torch_pytree.tree_flatten_with_path(torch_sample())
    assert [torch_pytree.keystr(path) for path, _ in pairs] == [
        ".variables['w']",
        ".variables['b']",
        ".variables['w']#1",
        ".gradients['w']",
    ]


def test_a_torch_treespec_survives_json_serialization():
    ctx = torch_sample()
    leaves, spec = torch_pytree.tree_flatten(ctx)
    again = torch_pytree.treespec_loads(torch_pytree.treespec_dumps(spec))
    assert again == spec
    assert layout(torch_pytree.tree_unflatten(leaves, again)) == layout(ctx)


def test_torch_func_grad_through_a_context():
    ctx = empty_context().register_variable("w", torch.tensor([1.0, -2.0]))
    grads = torch.func.grad(lambda c: (c["w"] ** 2).sum())(ctx)
    assert torch.equal(grads["w"], torch.tensor([2.0, -4.0]))


def test_a_torch_leaf_keeps_requires_grad_and_is_still_watched():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    out = torch_pytree.tree_map(lambda t: p * 3, torch_sample())
    w = out["w"]
    assert w.requires_grad
    w.sum().backward()
    assert torch.equal(p.grad, torch.tensor([3.0, 3.0]))
    leaf = torch.zeros(3)
    watched = torch_pytree.tree_map(lambda t: leaf, torch_sample())
    leaf.add_(1)
    with pytest.raises(InPlaceModificationError):
        watched["w"]


# ---------------------------------------------------------------- registration


def test_register_is_idempotent():
    assert pytree.register() == ("jax", "torch")
    assert pytree.register() == ("jax", "torch")
    assert pytree.register("jax") == ("jax", "torch")
    assert pytree.registered() == ("jax", "torch")


def test_register_refuses_an_unknown_library():
    with pytest.raises(ValueError, match="unknown pytree library 'tensorflow'"):
        pytree.register("tensorflow")  # type: ignore[arg-type]


def test_register_names_a_missing_library(monkeypatch):
    def missing() -> None:
        raise ImportError("No module named 'jax'")

    monkeypatch.setitem(pytree._REGISTRARS, "jax", missing)
    monkeypatch.setattr(pytree, "_REGISTERED", set())
    with pytest.raises(BackendError, match="jax is not installed"):
        pytree.register("jax")
    assert pytree.register() == ("torch",)  # a missing library is skipped quietly


# ---------------------------------------------------------------- the quick paths


def jax_context() -> RuntimeContext[Any]:
    """Names with one entry each (the quick paths' case), gradients for some."""
    ctx = RuntimeContext.empty().with_variables(
        {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3), "s": jnp.asarray(2.0)}
    )
    return ctx.with_gradients({"w": jnp.full((2, 3), 0.5), "s": jnp.asarray(1.0)})


def test_a_jax_round_trip_builds_records_only_when_read():
    from torchlean.runtime._registry import LazyRegistry

    ctx = jax_context()
    leaves, treedef = jax.tree_util.tree_flatten(ctx)
    back = jax.tree_util.tree_unflatten(treedef, [x + 1 for x in leaves])
    assert type(back._v) is LazyRegistry and not back._v.built
    # flattening it again reads no record, and gives the very same layout object
    again, layout_again = pytree._flatten(back)
    assert not back._v.built and not back._g.built
    assert layout_again is pytree._flatten(back)[1]
    assert [float(np.sum(x)) for x in again] == [float(np.sum(x + 1)) for x in leaves]
    # reading it builds the records: the context is the one an eager build gives
    assert layout(back) == layout(ctx)
    assert back._v.built
    np.testing.assert_array_equal(np.asarray(back["w"]), np.arange(6.0).reshape(2, 3) + 1)
    np.testing.assert_array_equal(np.asarray(back.gradient("s")), 2.0)
    assert back.variable_names() == ctx.variable_names()
    edited = back.set_variable("b", jnp.zeros(3)).register_variable("new", jnp.ones(1))
    assert edited.variable_names() == ["new", *ctx.variable_names()]
    np.testing.assert_array_equal(np.asarray(edited["b"]), np.zeros(3))


def test_a_jitted_step_loop_keeps_the_layout_object():
    ctx = jax_context()
    step = jax.jit(lambda c: jax.tree_util.tree_map(lambda x: x * 2, c))
    layouts = []
    for _ in range(3):
        ctx = step(ctx)
        layouts.append(jax.tree_util.tree_structure(ctx))
    assert layouts[0] == layouts[1] == layouts[2]
    np.testing.assert_array_equal(np.asarray(ctx["b"]), np.full(3, 8.0))
    assert step._cache_size() == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "leaves",
    [
        pytest.param(lambda xs: [np.asarray(x) for x in xs], id="numpy (copied)"),
        pytest.param(lambda xs: [torch.tensor(np.asarray(x)) for x in xs], id="torch (versioned)"),
        pytest.param(lambda xs: [None for _ in xs], id="none"),
        pytest.param(lambda xs: [*xs[:-1], np.asarray(xs[-1])], id="two libraries"),
    ],
)
def test_leaves_the_quick_path_does_not_take_build_as_before(leaves):
    from torchlean.runtime._registry import LazyRegistry

    ctx = jax_context()
    flat, treedef = jax.tree_util.tree_flatten(ctx)
    back = jax.tree_util.tree_unflatten(treedef, leaves(flat))
    assert type(back._v) is not LazyRegistry
    assert [name for name, _ in back.var_registry] == [name for name, _ in ctx.var_registry]


def test_a_shadowed_layout_takes_the_full_path():
    from torchlean.runtime._registry import LazyRegistry

    ctx = jax_context().register_variable("b", jnp.zeros(3))
    flat, treedef = jax.tree_util.tree_flatten(ctx)
    back = jax.tree_util.tree_unflatten(treedef, flat)
    assert type(back._v) is not LazyRegistry
    assert layout(back) == layout(ctx)

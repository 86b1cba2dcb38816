"""Unit tests of every seed operation and its edge cases, on numpy arrays."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import torchlean.runtime.functions as rc
from torchlean import RuntimeContext, Shape, empty_context
from torchlean.errors import (
    DTypeMismatchError,
    InvalidShapeError,
    ShapeMismatchError,
    UnknownNameError,
)
from torchlean.runtime import AnyTensor


def f32(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


@pytest.fixture
def ctx() -> RuntimeContext:
    c = empty_context()
    c = rc.register_variable(c, "w", f32(3.0))
    c = rc.register_variable(c, "x", f32([1.0, 2.0]))
    return rc.register_gradient(c, "w", f32(0.1))


# ---------------------------------------------------------------- empty


def test_empty_context() -> None:
    for c in (empty_context(), RuntimeContext.empty(), RuntimeContext()):
        assert c.var_registry == ()
        assert c.gradients == ()
        assert c.next_id == 0
        assert rc.context_size(c) == 0
        assert rc.gradient_count(c) == 0
        assert rc.variable_names(c) == []
        assert rc.gradient_names(c) == []
        assert rc.is_valid_context(c)
        assert rc.context_to_string(c) == "Context(vars: [], grads: [])"


# ---------------------------------------------------------------- register / get


def test_register_prepends_and_counts(ctx: RuntimeContext) -> None:
    assert rc.variable_names(ctx) == ["x", "w"]
    assert ctx.next_id == 2
    assert [n for n, _ in ctx.var_registry] == ["x", "w"]
    assert all(isinstance(at, AnyTensor) for _, at in ctx.var_registry)
    assert ctx.var_registry[0][1].s == Shape([2])
    assert ctx.var_registry[1][1].s == Shape.scalar()


def test_register_gradient_leaves_next_id(ctx: RuntimeContext) -> None:
    c = rc.register_gradient(ctx, "x", f32([0.0, 0.0]))
    assert c.next_id == ctx.next_id == 2
    assert rc.gradient_names(c) == ["x", "w"]


def test_get_with_matching_and_other_shape(ctx: RuntimeContext) -> None:
    np.testing.assert_array_equal(rc.get_variable(ctx, "x", (2,)), [1.0, 2.0])
    np.testing.assert_array_equal(rc.get_variable(ctx, "x", Shape([2])), [1.0, 2.0])
    np.testing.assert_array_equal(rc.get_variable(ctx, "x", [2]), [1.0, 2.0])
    assert rc.get_variable(ctx, "x", (3,)) is None
    assert rc.get_variable(ctx, "x", ()) is None
    assert rc.get_variable(ctx, "nope", (2,)) is None
    assert rc.get_variable(ctx, "w", ()) == np.float32(3.0)
    assert rc.get_gradient(ctx, "w", Shape.scalar()) == np.float32(0.1)
    assert rc.get_gradient(ctx, "x", (2,)) is None


def test_shadowing_most_recent_wins(ctx: RuntimeContext) -> None:
    c = rc.register_variable(ctx, "x", f32([[5.0]]))
    assert rc.variable_names(c) == ["x", "x", "w"]
    assert rc.context_size(c) == 3
    assert c.next_id == 3
    np.testing.assert_array_equal(rc.get_variable(c, "x", (1, 1)), [[5.0]])
    # The older entry has the requested shape, but only the first match counts.
    assert rc.get_variable(c, "x", (2,)) is None
    assert rc.has_variable(c, "x")


def test_set_replaces_every_entry_and_keeps_order(ctx: RuntimeContext) -> None:
    c = rc.register_variable(ctx, "x", f32([[5.0]]))
    c2 = rc.set_variable(c, "x", f32([7.0, 8.0, 9.0]))
    assert rc.variable_names(c2) == ["x", "x", "w"]
    values = [at.t.tolist() for _, at in c2.var_registry]
    assert values == [[7.0, 8.0, 9.0], [7.0, 8.0, 9.0], 3.0]
    assert c2.next_id == c.next_id
    # set may change the shape
    assert rc.get_variable(c2, "x", (3,)) is not None
    assert rc.get_variable(c2, "x", (1, 1)) is None


def test_set_on_absent_name_changes_nothing(ctx: RuntimeContext) -> None:
    c = rc.set_variable(ctx, "nope", f32(1.0))
    assert rc.variable_names(c) == rc.variable_names(ctx)
    assert c.next_id == ctx.next_id
    assert rc.context_to_string(c) == rc.context_to_string(ctx)
    g = rc.set_gradient(ctx, "nope", f32(1.0))
    assert rc.gradient_names(g) == ["w"]


def test_set_then_register_then_set_again() -> None:
    c = empty_context()
    for v in (1.0, 2.0, 3.0):
        c = rc.register_variable(c, "a", f32(v))
    c = rc.set_variable(c, "a", f32(9.0))
    c = rc.register_variable(c, "a", f32(4.0))
    assert [at.t.item() for _, at in c.var_registry] == [4.0, 9.0, 9.0, 9.0]
    c = c.register_variable("b", f32(0.0))
    assert [(n, at.t.item()) for n, at in c.var_registry] == [
        ("b", 0.0),
        ("a", 4.0),
        ("a", 9.0),
        ("a", 9.0),
        ("a", 9.0),
    ]


def test_set_gradient_replaces_all_gradient_entries(ctx: RuntimeContext) -> None:
    c = rc.register_gradient(ctx, "w", f32(0.2))
    c = rc.set_gradient(c, "w", f32([1.0]))
    assert [at.t.tolist() for _, at in c.gradients] == [[1.0], [1.0]]
    assert rc.get_gradient(c, "w", (1,)) is not None


def test_clear_gradients_only_gradients(ctx: RuntimeContext) -> None:
    c = rc.clear_gradients(ctx)
    assert c.gradients == ()
    assert rc.gradient_count(c) == 0
    assert rc.variable_names(c) == ["x", "w"]
    assert c.next_id == 2
    assert rc.gradient_count(ctx) == 1


def test_has_variable(ctx: RuntimeContext) -> None:
    assert rc.has_variable(ctx, "w")
    assert not rc.has_variable(ctx, "W")
    assert "w" in ctx
    assert "nope" not in ctx
    assert 3 not in ctx  # type: ignore[operator]


def test_is_valid_context_names_only(ctx: RuntimeContext) -> None:
    assert rc.is_valid_context(ctx)
    # a gradient of another shape still counts: the Lean check is about names only
    c = rc.register_gradient(ctx, "x", f32([[1.0, 2.0, 3.0]]))
    assert rc.is_valid_context(c)
    c = rc.register_gradient(ctx, "ghost", f32(1.0))
    assert not rc.is_valid_context(c)


def test_stale_gradient_after_variable_re_registered(ctx: RuntimeContext) -> None:
    # The gradient of `w` was computed for the scalar `w`; re-registering `w` with another
    # shape leaves that gradient in place, as in Lean, and check() reports it.
    c = rc.register_variable(ctx, "w", f32([1.0, 2.0, 3.0]))
    assert rc.is_valid_context(c)
    assert rc.get_gradient(c, "w", ()) == np.float32(0.1)
    report = c.check()
    assert [p.kind for p in report] == ["shape-mismatch"]
    assert "gradient `w` has shape () but its variable has shape (3,)" in str(report)


def test_empty_name_and_zero_size_and_scalar() -> None:
    c = empty_context().register_variable("", np.zeros((0, 3), np.float32))
    assert rc.variable_names(c) == [""]
    got = rc.get_variable(c, "", (0, 3))
    assert got is not None
    assert got.shape == (0, 3)
    assert rc.get_variable(c, "", (0,)) is None
    assert rc.context_to_string(c) == "Context(vars: [: []], grads: [])"
    c = c.register_variable("s", np.float64(2.5))
    assert c.variable("s", ()).shape == ()
    c = c.register_variable("z", np.zeros((2, 0), np.float32))
    assert rc.context_to_string(c) == "Context(vars: [z: [[], []], s: 2.500000, : []], grads: [])"


# ---------------------------------------------------------------- context_to_string


def test_context_to_string_seed_example(ctx: RuntimeContext) -> None:
    assert rc.context_to_string(ctx) == (
        "Context(vars: [x: [1.000000, 2.000000], w: 3.000000], grads: [w: 0.100000])"
    )


def test_context_to_string_nested_and_ints() -> None:
    c = empty_context().register_variable("m", np.array([[1, 2], [3, 4]]))
    c = c.register_variable("b", np.array([True, False]))
    assert (
        rc.context_to_string(c)
        == "Context(vars: [b: [true, false], m: [[1, 2], [3, 4]]], grads: [])"
    )


def test_context_to_string_shows_shadowed_entries() -> None:
    c = empty_context().register_variable("a", f32(1.0)).register_variable("a", f32(2.0))
    assert rc.context_to_string(c) == "Context(vars: [a: 2.000000, a: 1.000000], grads: [])"


# ---------------------------------------------------------------- immutability


def test_every_operation_leaves_the_old_context(ctx: RuntimeContext) -> None:
    before = rc.context_to_string(ctx)
    ops = [
        lambda c: c.register_variable("x", f32(0.0)),
        lambda c: c.set_variable("x", f32([9.0, 9.0])),
        lambda c: c.register_gradient("x", f32([1.0, 1.0])),
        lambda c: c.set_gradient("w", f32(5.0)),
        lambda c: c.clear_gradients(),
        lambda c: c.accumulate_gradient("w", f32(1.0)),
        lambda c: c.accumulate_gradient("x", f32([1.0, 1.0])),
    ]
    for op in ops:
        new = op(ctx)
        assert new is not ctx
        assert rc.context_to_string(ctx) == before
        assert ctx.next_id == 2


def test_caller_array_written_after_register_changes_nothing() -> None:
    a = f32([1.0, 2.0])
    c = empty_context().register_variable("a", a)
    a[0] = 100.0
    np.testing.assert_array_equal(c.variable("a"), [1.0, 2.0])


def test_looked_up_array_is_read_only() -> None:
    c = empty_context().register_variable("a", f32([1.0, 2.0]))
    got = c.variable("a")
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 5.0
    with pytest.raises(ValueError, match="WRITEABLE"):
        got.flags.writeable = True
    via_get = rc.get_variable(c, "a", (2,))
    assert via_get is not None
    with pytest.raises(ValueError, match="read-only"):
        via_get += 1
    at = c.var_registry[0][1]
    with pytest.raises(ValueError, match="read-only"):
        at.t[0] = 3.0
    np.testing.assert_array_equal(c.variable("a"), [1.0, 2.0])


def test_registering_a_view_copies_it() -> None:
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    c = empty_context().register_variable("row", base[0])
    base[0, 0] = 42.0
    np.testing.assert_array_equal(c.variable("row"), [0.0, 1.0, 2.0])


def test_copy_and_pickle() -> None:
    c = empty_context(dtype="float32").register_variable("a", f32(1.0))
    c = c.register_variable("a", f32([2.0])).register_gradient("a", f32([0.5]))
    assert copy.copy(c) is c
    assert copy.deepcopy(c) is c
    back = pickle.loads(pickle.dumps(c))
    assert rc.context_to_string(back) == rc.context_to_string(c)
    assert back.next_id == c.next_id == 2
    assert back.dtype == "float32"


# ---------------------------------------------------------------- strict lookups


def test_strict_lookup(ctx: RuntimeContext) -> None:
    np.testing.assert_array_equal(ctx.variable("x"), [1.0, 2.0])
    np.testing.assert_array_equal(ctx.variable("x", (2,)), [1.0, 2.0])
    np.testing.assert_array_equal(ctx["x"], [1.0, 2.0])
    assert ctx.gradient("w", ()) == np.float32(0.1)
    with pytest.raises(UnknownNameError) as info:
        ctx.variable("y")
    assert isinstance(info.value, KeyError)
    with pytest.raises(ShapeMismatchError) as info2:
        ctx.variable("x", (3,))
    assert isinstance(info2.value, ValueError)
    with pytest.raises(KeyError):
        ctx["nope"]


def test_unknown_name_suggests_prefix_match() -> None:
    c = empty_context().register_variable("module.fc1.weight", f32(1.0))
    with pytest.raises(UnknownNameError, match=r"did you mean `module\.fc1\.weight`"):
        c.variable("fc1.weight")


# ---------------------------------------------------------------- accumulate


def test_accumulate_registers_when_absent_then_adds() -> None:
    c = empty_context().register_variable("w", f32([1.0, 1.0]))
    c = c.accumulate_gradient("w", f32([1.0, 2.0]))
    c = c.accumulate_gradient("w", f32([0.5, 0.5]))
    assert rc.gradient_count(c) == 1
    np.testing.assert_array_equal(c.gradient("w"), [1.5, 2.5])
    assert c.gradient("w").dtype == np.float32


def test_accumulate_touches_only_the_most_recent_entry() -> None:
    c = empty_context().register_gradient("g", f32(1.0)).register_gradient("g", f32(2.0))
    c = c.set_gradient("g", f32(3.0)).register_gradient("g", f32(10.0))
    c = c.accumulate_gradient("g", f32(1.0))
    assert [at.t.item() for _, at in c.gradients] == [11.0, 3.0, 3.0]
    c2 = empty_context().register_gradient("g", f32(1.0)).register_gradient("g", f32(2.0))
    c2 = c2.set_gradient("g", f32(3.0)).accumulate_gradient("g", f32(1.0))
    assert [at.t.item() for _, at in c2.gradients] == [4.0, 3.0]


def test_accumulate_conflicts() -> None:
    c = empty_context().register_gradient("g", f32([1.0]))
    with pytest.raises(ShapeMismatchError):
        c.accumulate_gradient("g", f32([1.0, 2.0]))
    with pytest.raises(DTypeMismatchError):
        c.accumulate_gradient("g", np.array([1.0]))


# ---------------------------------------------------------------- dtype pinning


def test_pinned_dtype_refuses_other_dtypes() -> None:
    for pin in ("float32", np.float32, np.dtype("float32")):
        c = empty_context(dtype=pin)
        assert c.dtype == "float32"
        c = c.register_variable("a", f32(1.0))
        with pytest.raises(DTypeMismatchError):
            c.register_variable("b", np.float64(1.0))
        with pytest.raises(DTypeMismatchError):
            c.set_variable("a", np.array(1, dtype=np.int32))
        with pytest.raises(DTypeMismatchError):
            c.register_gradient("a", np.float16(1.0))
        assert rc.variable_names(c) == ["a"]
    with pytest.raises(TypeError, match="dtype must be"):
        empty_context(dtype="not-a-dtype")


def test_unpinned_context_mixes_dtypes() -> None:
    c = empty_context().register_variable("a", f32(1.0)).register_variable("b", np.int8(1))
    assert c.dtype is None
    assert c.var_registry[0][1].dtype == "int8"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad_name", [1, None, b"w", ("w",)])
def test_names_must_be_str(ctx: RuntimeContext, bad_name: object) -> None:
    calls = [
        lambda: ctx.register_variable(bad_name, f32(1.0)),  # type: ignore[arg-type]
        lambda: ctx.set_variable(bad_name, f32(1.0)),  # type: ignore[arg-type]
        lambda: ctx.register_gradient(bad_name, f32(1.0)),  # type: ignore[arg-type]
        lambda: ctx.set_gradient(bad_name, f32(1.0)),  # type: ignore[arg-type]
        lambda: ctx.get_variable(bad_name, ()),  # type: ignore[arg-type]
        lambda: ctx.get_gradient(bad_name, ()),  # type: ignore[arg-type]
        lambda: ctx.has_variable(bad_name),  # type: ignore[arg-type]
        lambda: ctx.variable(bad_name),  # type: ignore[arg-type]
        lambda: ctx.accumulate_gradient(bad_name, f32(1.0)),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError, match=f"name must be a str, got {type(bad_name).__name__}"):
            call()


def test_unhashable_name_is_a_clear_type_error(ctx: RuntimeContext) -> None:
    with pytest.raises(TypeError, match="variable name must be a str, got list"):
        ctx.get_variable(["w"], ())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="variable name must be a str, got list"):
        ctx.has_variable(["w"])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_value", [1.0, [1.0, 2.0], "w", None, object()])
def test_values_must_be_arrays(ctx: RuntimeContext, bad_value: object) -> None:
    with pytest.raises(TypeError, match="variable `v`: expected an array"):
        ctx.register_variable("v", bad_value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="gradient `v`: expected an array"):
        ctx.register_gradient("v", bad_value)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_shape", [(-1,), (2.5,), ("a",)])
def test_lookups_reject_bad_shapes(ctx: RuntimeContext, bad_shape: tuple[object, ...]) -> None:
    for name in ("x", "absent"):
        with pytest.raises(InvalidShapeError):
            ctx.get_variable(name, bad_shape)  # type: ignore[arg-type]
        with pytest.raises(InvalidShapeError):
            ctx.get_gradient(name, bad_shape)  # type: ignore[arg-type]
    with pytest.raises(InvalidShapeError):
        ctx.variable("x", bad_shape)  # type: ignore[arg-type]


def test_failed_operation_changes_nothing(ctx: RuntimeContext) -> None:
    before = rc.context_to_string(ctx)
    with pytest.raises(TypeError):
        ctx.register_variables([("a", f32(1.0)), ("b", "not an array")])  # type: ignore[list-item]
    assert rc.context_to_string(ctx) == before


def test_not_iterable(ctx: RuntimeContext) -> None:
    with pytest.raises(TypeError, match="not iterable"):
        list(ctx)  # type: ignore[call-overload]


# ---------------------------------------------------------------- additions


def test_register_variables_is_repeated_register(ctx: RuntimeContext) -> None:
    items = [("a", f32(1.0)), ("b", f32([2.0])), ("a", f32(3.0))]
    bulk = ctx.register_variables(items)
    one_by_one = ctx
    for name, value in items:
        one_by_one = one_by_one.register_variable(name, value)
    assert rc.context_to_string(bulk) == rc.context_to_string(one_by_one)
    assert bulk.next_id == one_by_one.next_id == 5


def test_state_dict_and_from_state_dict() -> None:
    c = RuntimeContext.from_state_dict({"a": f32(1.0), "b": f32([2.0])})
    c = c.register_variable("a", f32(5.0))
    sd = c.state_dict()
    assert list(sd) == ["a", "b"]
    assert sd["a"] == 5.0
    assert c.register_gradient("b", f32([1.0])).state_dict(gradients=True)["b"].tolist() == [1.0]


def test_repr_is_short_summary() -> None:
    c = empty_context(dtype="float32")
    for i in range(100):
        c = c.register_variable(f"layer{i}.weight", np.zeros((64, 64), np.float32))
    text = repr(c)
    assert text.startswith("RuntimeContext(100 variables, 0 gradients, next_id=100, dtype=float32")
    assert "layer99.weight: (64, 64) float32" in text
    assert "... 94 more" in text
    assert len(text) < 600


def test_check_reports_everything() -> None:
    c = empty_context().register_variable("w", f32([1.0, np.nan, np.inf]))
    c = c.register_gradient("w", np.array([1.0, 2.0, 3.0]))
    c = c.register_gradient("ghost", f32(1.0))
    report = c.check()
    assert not report
    assert not report.ok
    kinds = sorted(p.kind for p in report)
    assert kinds == ["dtype-mismatch", "non-finite", "orphan-gradient"]
    assert "variable `w` has 1 NaN and 1 infinite values" in str(report)
    assert "gradient `ghost` has no variable of that name" in str(report)
    assert "gradient `w` has dtype float64 but its variable has dtype float32" in str(report)
    assert report.for_entry("gradient", "ghost")[0].kind == "orphan-gradient"
    assert empty_context().check().ok


def test_object_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="variable `o`: expected an array of numbers, got a numpy"):
        empty_context().register_variable("o", np.array([1, "a"], dtype=object))


def test_storing_a_looked_up_array_again_copies_nothing() -> None:
    c = empty_context().register_variable("a", f32([1.0, 2.0]))
    got = c.variable("a")
    c2 = c.set_variable("a", got).register_gradient("a", got)
    assert c2.variable("a") is got
    assert c2.gradient("a") is got
    # and it still cannot be written, by anyone
    with pytest.raises(ValueError, match="WRITEABLE"):
        got.setflags(write=True)


def test_a_read_only_array_the_caller_owns_is_still_copied() -> None:
    owner = f32([1.0, 2.0])
    owner.setflags(write=False)
    view = owner.view()
    c = empty_context().register_variable("a", view)
    owner.setflags(write=True)
    owner[0] = 99.0
    np.testing.assert_array_equal(c.variable("a"), [1.0, 2.0])


@pytest.mark.parametrize("bad", ["floa},2", ",orch.bool", "torch.nope", "no-such-dtype"])
def test_pinning_a_garbage_dtype_name_is_a_clear_error(bad: str) -> None:
    with pytest.raises(TypeError, match="dtype must be a numpy, torch or jax dtype"):
        empty_context(dtype=bad)

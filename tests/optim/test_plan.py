"""The cached pairing plan: made once per layout, rebuilt when the layout changes, and
every promise of the pairing path kept on the fast path."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.errors import (
    DonatedContextError,
    DTypeMismatchError,
    InPlaceModificationError,
    ShapeMismatchError,
    TorchLeanError,
    UnknownNameError,
)
from torchlean.runtime import _bulk
from torchlean.runtime._registry import LazyRegistry

SHAPES = {"w": (3, 2), "b": (2,), "s": ()}


def make(backend: str = "torch") -> RuntimeContext[Any]:
    # arrays given up (adopt=True): in-place steps may write them from the first step on
    g = torch.Generator().manual_seed(0)
    values: dict[str, Any] = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    if backend == "jax":
        values = {k: jnp.asarray(v.numpy()) for k, v in values.items()}
    if backend == "numpy":
        values = {k: v.numpy() for k, v in values.items()}
    return RuntimeContext.empty().with_variables(values, adopt=True)


def with_grads(ctx: RuntimeContext[Any], scale: float = 0.1) -> RuntimeContext[Any]:
    items = []
    for name, at in ctx.latest_variables():
        t = at.t
        items.append((name, t * 0 + scale))
    return ctx.with_gradients(items, adopt=True)


class Counting:
    """Counts the optimizer's pairing-path calls."""

    def __init__(self, opt: optim.Optimizer) -> None:
        self.calls = 0
        original = opt._gather

        def gather(*args: Any) -> Any:
            self.calls += 1
            return original(*args)

        opt._gather = gather  # type: ignore[method-assign]


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("donate", [True, False])
def test_the_pairing_runs_once_per_layout(backend: str, donate: bool) -> None:
    opt = optim.adamw(lr=0.1)
    counting = Counting(opt)
    ctx = with_grads(make(backend))
    state = opt.init(ctx)
    for _ in range(5):
        ctx, state = opt.step(ctx, state, donate=donate)
        ctx = with_grads(ctx)
    assert counting.calls == 1
    assert int(np.asarray(state["count"])) == 5


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
def test_reduce_partial_changes_nothing_for_values_of_one_process(backend: str) -> None:
    # no Partial placements to reduce: the same update, through the pairing path
    # (tests/dist/test_partial.py reduces DTensor gradients on 2 ranks)
    opt, ref = optim.adamw(lr=0.1), optim.adamw(lr=0.1)
    counting = Counting(opt)
    ctx = with_grads(make(backend))
    got, _ = opt.step(ctx, opt.init(ctx), donate=False, reduce_partial=True)
    want, _ = ref.step(ctx, ref.init(ctx), donate=False)
    assert counting.calls == 1
    for name, value in want.state_dict().items():
        assert np.array_equal(np.asarray(got[name]), np.asarray(value)), name


def test_a_new_shape_under_the_same_name_is_paired_again_and_refused() -> None:
    opt = optim.adam(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    ctx, state = opt.step(ctx, state)
    ctx = ctx.with_variables([("w", torch.zeros(2, 3))]).with_gradients([("w", torch.zeros(2, 3))])
    with pytest.raises(ShapeMismatchError, match="optimizer state of `w` has shape"):
        opt.step(ctx, state)


def test_a_gradient_of_another_dtype_is_refused_after_a_planned_step() -> None:
    opt = optim.sgd(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    ctx, state = opt.step(ctx, state)
    ctx = ctx.with_gradients([("b", torch.zeros(2, dtype=torch.float64))])
    with pytest.raises(DTypeMismatchError, match="gradient `b` is torch float64"):
        opt.step(ctx, state)


def test_a_missing_state_entry_is_refused_after_a_planned_step() -> None:
    opt = optim.adamw(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    ctx, state = opt.step(ctx, state)
    ctx = ctx.register_variable("extra", torch.zeros(1)).register_gradient("extra", torch.ones(1))
    with pytest.raises(UnknownNameError, match="variable `extra` has no optimizer state"):
        opt.step(ctx, state)


def test_a_write_in_place_between_planned_steps_is_detected() -> None:
    opt = optim.adamw(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    ctx, state = opt.step(ctx, state)
    ctx = with_grads(ctx)
    ctx, state = opt.step(ctx, state)
    ctx = with_grads(ctx)
    ctx.variable("w").add_(1)  # a write behind the context's back
    with pytest.raises(InPlaceModificationError, match="modified in place"):
        opt.step(ctx, state)


def test_a_moment_written_in_place_is_detected_on_the_planned_path() -> None:
    opt = optim.adamw(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    ctx, state = opt.step(ctx, state)
    ctx = with_grads(ctx)
    state.variable("exp_avg/b").mul_(2)
    with pytest.raises(InPlaceModificationError):
        opt.step(ctx, state)


def test_planned_steps_donate_and_older_contexts_see_the_writes() -> None:
    opt = optim.adamw(lr=0.1)
    base = make()
    ctx = with_grads(base)
    state = opt.init(ctx)
    ctx2, state2 = opt.step(ctx, state)
    ctx3 = with_grads(ctx2)
    opt.step(ctx3, state2)
    for donated in (ctx, state, ctx3, state2):
        with pytest.raises(DonatedContextError):
            donated.variable_names()
    with pytest.raises(InPlaceModificationError):
        base.variable("w")


def test_aliases_are_refused_under_donation_even_with_a_plan() -> None:
    opt = optim.sgd(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    ctx, state = opt.step(ctx, state)  # the plan of this layout is made
    shared = torch.ones(2)
    aliased = ctx.with_variables([("b", shared), ("w", torch.ones(3, 2))])
    aliased = aliased.with_variables([("s", shared[0])])
    aliased = with_grads(aliased)
    fresh = opt.init(aliased)
    # `s` is a view into `b`'s buffer: an in-place step would write it twice
    with pytest.raises(TorchLeanError, match="share one buffer"):
        opt.step(aliased, fresh)


def test_step_counters_of_a_state_read_from_elsewhere_are_gathered() -> None:
    opt = optim.adam(lr=0.1)
    ctx = with_grads(make())
    state = opt.init(ctx)
    # counters as separate tensors (as a file gives them)
    state = state.with_variables([(f"step/{k}", torch.tensor(0.0)) for k in SHAPES], adopt=True)
    assert state["step/w"]._base is None
    ctx, state = opt.step(ctx, state)
    assert state["step/w"]._base is not None and state["step/w"]._base is state["step/b"]._base
    ctx, state = opt.step(with_grads(ctx), state)
    assert [float(state[f"step/{k}"]) for k in SHAPES] == [2.0, 2.0, 2.0]


def test_init_makes_counters_views_of_one_buffer() -> None:
    state = optim.adamw().init(make())
    assert state["step/w"]._base is state["step/s"]._base is not None
    assert state["step/w"].shape == ()


# ---------------------------------------------------------------------- runtime._bulk


def test_heads_reads_and_checks() -> None:
    ctx = make().register_variable("w", torch.zeros(1))  # shadows `w`
    read = _bulk.heads(ctx, ["w", "b"])
    assert read is not None
    assert read.dims == [(1,), (2,)]
    assert read.libraries[0] == read.libraries[1]
    assert _bulk.heads(ctx, ["nope"]) is None
    ctx.variable("b").add_(1)
    assert _bulk.heads(ctx, ["w", "b"]) is None


def test_replace_heads_trusted_keeps_shadowed_entries_and_records_versions() -> None:
    old = torch.zeros(2)
    ctx = RuntimeContext.empty().register_variable("b", old).register_variable("b", torch.ones(2))
    new_value = torch.full((2,), 5.0)
    new = _bulk.replace_heads_trusted(ctx, ["b"], [new_value])
    assert [float(at.t[0]) for _, at in new.var_registry] == [5.0, 0.0]
    assert new.next_id == ctx.next_id == 2
    assert float(ctx["b"][0]) == 1.0  # the old context is unchanged
    new_value.add_(1)
    with pytest.raises(InPlaceModificationError):
        new.variable("b")


def test_latest_names_follows_first_registration() -> None:
    ctx = make().register_variable("w", torch.zeros(1)).register_variable("z", torch.zeros(1))
    assert _bulk.latest_names(ctx) == ["w", "b", "s", "z"]
    assert _bulk.latest_names(ctx) is _bulk.latest_names(ctx)
    assert _bulk.latest_names(ctx, gradients=True) == []


def entries(ctx: RuntimeContext[Any]) -> list[tuple[str, tuple[int, ...], list[float]]]:
    return [(n, at.dims, np.asarray(at.t).ravel().tolist()) for n, at in ctx.var_registry]


def test_replacing_every_jax_entry_builds_the_records_only_when_read() -> None:
    ctx = make("jax")  # names w, b, s: one entry each
    names = ["s", "w", "b"]  # another order than the registry's
    fresh = [jnp.full(SHAPES[n], i + 1.0) for i, n in enumerate(names)]
    new, wrote = _bulk.replace_heads_read(ctx, names, fresh)
    assert isinstance(new._v, LazyRegistry) and not new._v.built
    # the next step, handed this context and what it wrote, reads nothing again
    assert _bulk.heads(new, names, last=wrote) is wrote
    again, wrote2 = _bulk.replace_heads_read(new, names, [x + 1 for x in fresh], read=wrote)
    assert not new._v.built and isinstance(again._v, LazyRegistry)
    # read like any context: the same entries as the public batch edit gives
    want = ctx.with_variables(list(zip(names, [x + 1 for x in fresh], strict=True)), adopt=True)
    assert entries(again) == entries(want)
    assert again.next_id == ctx.next_id
    with pytest.raises(ShapeMismatchError, match=r"variable `w` has shape \(3, 2\)"):
        again.variable("w", (2, 3))  # a lookup still checks the shape it returns
    # once built, the written heads still serve the next read
    assert _bulk.heads(again, names, last=wrote2) is wrote2
    assert float(ctx["s"]) != float(again["s"])  # the first context is unchanged


def test_replacing_some_or_shadowed_jax_entries_keeps_the_eager_records() -> None:
    ctx = make("jax")
    some, _ = _bulk.replace_heads_read(ctx, ["w"], [jnp.zeros((3, 2))])
    assert not isinstance(some._v, LazyRegistry)
    shadowed = ctx.register_variable("b", jnp.ones(2))
    new, _ = _bulk.replace_heads_read(
        shadowed, ["w", "b", "s"], [jnp.zeros(s) for s in [(3, 2), (2,), ()]]
    )
    assert not isinstance(new._v, LazyRegistry)
    assert [n for n, _ in new.var_registry] == ["b", "s", "b", "w"]
    assert np.asarray(new.var_registry[2][1].t).tolist() == np.asarray(ctx["b"]).tolist()


def test_planned_jax_steps_hand_on_unbuilt_registries_and_keep_every_value() -> None:
    opt, ref = optim.adamw(lr=0.1), optim.adamw(lr=0.1)
    ctx = with_grads(make("jax"))
    state = opt.init(ctx)
    want = with_grads(make("jax"))
    want_state = ref.init(want)
    for _ in range(4):
        ctx, state = opt.step(ctx, state)
        want, want_state = ref.step(want, want_state, donate=False)
    assert isinstance(ctx._v, LazyRegistry) and not ctx._v.built
    assert isinstance(state._v, LazyRegistry) and not state._v.built
    assert entries(ctx) == entries(want)
    assert entries(state) == entries(want_state)
    assert ctx.gradient_names() == want.gradient_names()

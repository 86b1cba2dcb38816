"""No context ever changes silently: donation is loud, ``donate=False`` changes nothing."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad
from torchlean.errors import DonatedContextError, InPlaceModificationError, ShapeMismatchError


def loss(ctx: RuntimeContext[Any], x: Any) -> Any:
    return ((x @ ctx["w"] + ctx["b"]) ** 2).sum()


def start(backend: str) -> tuple[RuntimeContext[Any], Any]:
    w = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    b = np.ones(2, np.float32)
    x = np.ones((4, 3), np.float32)
    if backend == "torch":
        arrays = [torch.tensor(w), torch.tensor(b), torch.tensor(x)]
    else:
        arrays = [jnp.asarray(w), jnp.asarray(b), jnp.asarray(x)]
    return RuntimeContext.from_state_dict({"w": arrays[0], "b": arrays[1]}), arrays[2]


def host(x: Any) -> np.ndarray:
    return x.numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def snapshot(ctx: RuntimeContext[Any]) -> dict[str, np.ndarray]:
    out = {f"v:{k}": host(v) for k, v in ctx.state_dict().items()}
    out |= {f"g:{k}": host(v) for k, v in ctx.state_dict(gradients=True).items()}
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("make", [optim.sgd, optim.adam, optim.adamw])
def test_without_donation_nothing_changes(backend: str, make: Any) -> None:
    ctx0, x = start(backend)
    opt = make(lr=0.1)
    state = opt.init(ctx0)
    _, ctx = value_and_grad(loss)(ctx0, x)
    before = (snapshot(ctx0), snapshot(ctx), snapshot(state))
    new, new_state = opt.step(ctx, state, donate=False)
    assert_same(before[0], snapshot(ctx0))
    assert_same(before[1], snapshot(ctx))
    assert_same(before[2], snapshot(state))
    assert not np.array_equal(host(new["w"]), before[1]["v:w"])
    assert int(host(new_state["count"])) == 1


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_donation_is_loud(backend: str) -> None:
    ctx0, x = start(backend)
    opt = optim.adamw(lr=0.1)
    state = opt.init(ctx0)
    _, ctx = value_and_grad(loss)(ctx0, x)
    new, new_state = opt.step(ctx, state)  # donate=True is the default
    for old in (ctx, state):
        with pytest.raises(DonatedContextError, match=r"donated to adamw\.step"):
            old.variable("w" if old is ctx else "count")
        with pytest.raises(DonatedContextError):
            old.state_dict()
    # the arrays the user registered are theirs: the first step updated copies, so the
    # context the gradients came from is intact
    np.testing.assert_array_equal(
        host(ctx0["w"]), np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    )
    # the new context and state are sound and keep working; from now on the step
    # updates what torchlean allocated in place, and a context sharing it is stale
    assert new.check().ok and new_state.check().ok
    _, ctx2 = value_and_grad(loss)(new, x)
    ctx3, _ = opt.step(ctx2, new_state)
    assert ctx3["w"].shape == (3, 2)
    error = InPlaceModificationError if backend == "torch" else RuntimeError
    with pytest.raises(error):
        host(new["w"])


def test_a_stale_context_names_the_step_that_took_it_over() -> None:
    ctx0, x = start("torch")
    opt = optim.sgd(lr=0.1)
    fresh = {k: v.clone() for k, v in ctx0.state_dict().items()}
    ctx0 = RuntimeContext.empty().with_variables(fresh, adopt=True)  # opt in: given up
    w = fresh["w"]
    _, ctx = value_and_grad(loss)(ctx0, x)
    new, _ = opt.step(ctx, opt.init(ctx0))
    assert new["w"] is w  # updated in place: the caller gave the tensor up
    with pytest.raises(
        InPlaceModificationError,
        match=r"updated in place by sgd\.step \(donate=True\).*Use the context sgd\.step"
        r" returned, or pass donate=False",
    ):
        ctx0.variable("w")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_donation_never_touches_what_the_user_registered(backend: str) -> None:
    ctx0, x = start(backend)
    mine = {k: host(v) for k, v in ctx0.state_dict().items()}
    originals = ctx0.state_dict()
    opt = optim.adam(lr=0.1)
    ctx, state = ctx0, opt.init(ctx0)
    for _ in range(3):
        _, ctx = value_and_grad(loss)(ctx, x)
        ctx, state = opt.step(ctx, state)
    for k, v in originals.items():
        np.testing.assert_array_equal(host(v), mine[k])  # neither deleted nor written
    assert not np.array_equal(host(ctx["w"]), mine["w"])


def test_numpy_contexts_step_and_donate() -> None:
    w = np.ones((2, 2), np.float32)
    ctx = RuntimeContext.from_state_dict({"w": w}).register_gradient(
        "w", np.ones((2, 2), np.float32)
    )
    opt = optim.sgd(lr=0.5)
    state = opt.init(ctx)
    kept = snapshot(ctx)
    new, _ = opt.step(ctx, state, donate=False)
    assert_same(kept, snapshot(ctx))
    np.testing.assert_array_equal(new["w"], np.full((2, 2), 0.5, np.float32))
    assert not new["w"].flags.writeable
    opt.step(ctx, state)
    with pytest.raises(DonatedContextError):
        ctx.variable("w")


@pytest.mark.parametrize("donate", [True, False])
def test_a_bad_gradient_updates_nothing(donate: bool) -> None:
    ctx, _ = start("torch")
    opt = optim.adam(lr=0.1)
    state = opt.init(ctx)
    ctx = ctx.register_gradient("b", torch.ones(2)).register_gradient("w", torch.ones(2, 3))
    before = (snapshot(ctx), snapshot(state))
    with pytest.raises(ShapeMismatchError, match="nothing was updated"):
        opt.step(ctx, state, donate=donate)
    assert_same(before[0], snapshot(ctx))  # neither changed nor donated
    assert_same(before[1], snapshot(state))


def test_frozen_variable_without_gradient_is_not_updated() -> None:
    ctx0, x = start("torch")
    opt = optim.sgd(lr=0.1, momentum=0.9)
    state = opt.init(ctx0)
    b0 = ctx0["b"].clone()
    _, ctx = value_and_grad(loss, frozen=["b"])(ctx0, x)
    new, new_state = opt.step(ctx, state)
    torch.testing.assert_close(new["b"], b0)
    assert float(new_state["step/b"]) == 0.0 and float(new_state["step/w"]) == 1.0


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
def test_a_step_without_gradients_only_counts(backend: str) -> None:
    if backend == "numpy":
        ctx = RuntimeContext.from_state_dict({"w": np.ones(2, np.float32)})
    else:
        ctx, _ = start(backend)
    opt = optim.adam(lr=0.1)
    new, state = opt.step(ctx, opt.init(ctx), donate=False)
    assert_same(snapshot(ctx), snapshot(new))
    counter = "step/w" if backend == "torch" else "step"  # jax and numpy share one
    assert int(host(state["count"])) == 1 and float(host(state[counter])) == 0.0

"""The optimizers on jax contexts under jax's transformations, against optax.

``jax.grad`` of a function that takes optimizer steps (meta-learning: the gradient of the
trained weights with respect to the initial ones), ``jax.vmap`` over a batch of contexts,
and a context captured by closure into ``jax.jit``: each gives optax's numbers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad

W = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3) / 10
B = jnp.ones(3, dtype=jnp.float32)
X = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32).reshape(4, 2)


def loss(ctx: RuntimeContext[Any], x: Any) -> Any:
    return jnp.sum(jnp.tanh(x @ ctx["w"] + ctx["b"]) ** 2)


def plain(p: dict[str, Any], x: Any) -> Any:
    return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


CASES = [
    (lambda: optim.adamw(lr=0.1), lambda: optax.adamw(0.1, weight_decay=0.01)),
    (lambda: optim.adam(lr=0.1), lambda: optax.adam(0.1)),
    (
        lambda: optim.sgd(lr=0.1, momentum=0.9, nesterov=True),
        lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    ),
    (
        lambda: optim.adamw(lr=0.1, clip=0.5),
        lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(0.1, weight_decay=0.01)),
    ),
]


def trained(opt: optim.Optimizer, w0: Any, x: Any, steps: int = 3) -> Any:
    ctx = RuntimeContext.from_state_dict({"w": w0, "b": B + 0})
    state = opt.init(ctx)
    for _ in range(steps):
        _, ctx = value_and_grad(loss)(ctx, x)
        ctx, state = opt.step(ctx, state)  # donate=True, the default
    return ctx["w"]


def trained_optax(opt: Any, w0: Any, x: Any, steps: int = 3) -> Any:
    p = {"w": w0, "b": B + 0}
    s = opt.init(p)
    for _ in range(steps):
        u, s = opt.update(jax.grad(plain)(p, x), s, p)
        p = optax.apply_updates(p, u)
    return p["w"]


@pytest.mark.parametrize(("ours", "ref"), CASES)
def test_jax_grad_through_donating_steps_gives_optax_numbers(ours: Any, ref: Any) -> None:
    # before: the eager step donated the concrete arrays among the tracers (the moments
    # of init, the counters) and the backward pass read them again: "Array has been
    # deleted with shape=float32[2,3]"
    opt, reference = ours(), ref()
    got = jax.grad(lambda w0: jnp.sum(trained(opt, w0, X) ** 2))(W + 0)
    want = jax.grad(lambda w0: jnp.sum(trained_optax(reference, w0, X) ** 2))(W + 0)
    # second order through sqrt(v) + eps: float32 rounding of the two formulas shows
    assert jnp.allclose(got, want, rtol=1e-4, atol=1e-5), (got, want)
    # and the eager step outside any transformation still donates
    ctx = RuntimeContext.from_state_dict({"w": W + 0, "b": B + 0})
    state = opt.init(ctx)
    _, ctx = value_and_grad(loss)(ctx, X)
    old = [v.unchecked for _, v in state.latest_variables()]
    opt.step(ctx, state)
    assert any(a.is_deleted() for a in old)


@pytest.mark.parametrize(("ours", "ref"), CASES)
def test_vmap_over_contexts_gives_optax_numbers_per_member(ours: Any, ref: Any) -> None:
    opt, reference = ours(), ref()
    ws = jnp.stack([W, 2 * W, -W])
    xs = jnp.stack([X, 2 * X, X[::-1]])
    got = jax.vmap(lambda w0, x: trained(opt, w0, x))(ws, xs)
    for i in range(3):
        want = trained_optax(reference, ws[i], xs[i])
        assert jnp.allclose(got[i], want, rtol=1e-5, atol=1e-6)
    # contexts themselves batched: vmap of the step over a stacked context
    ctxs = jax.vmap(lambda w0: RuntimeContext.from_state_dict({"w": w0, "b": B + 0}))(ws)
    states = jax.vmap(opt.init)(ctxs)

    def step(c: Any, s: Any, x: Any) -> Any:
        _, c = value_and_grad(loss)(c, x)
        return opt.step(c, s)

    for _ in range(3):
        ctxs, states = jax.vmap(step)(ctxs, states, xs)
    assert jnp.allclose(ctxs["w"], got, rtol=1e-6, atol=1e-7)

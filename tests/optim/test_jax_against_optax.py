"""The optimizers on jax contexts against optax, six steps of ``value_and_grad`` and
``step``: eagerly (donated and not) and inside a user's ``jax.jit`` (donated and not),
float32 and bfloat16 parameters, with clipping, the weight-decay mask and a schedule."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad

NAMES = ("w1", "b1", "w2", "b2")


def start(dtype: Any) -> dict[str, Any]:
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "w1": (jax.random.normal(k[0], (4, 8)) * 0.5).astype(dtype),
        "b1": jnp.zeros(8, dtype),
        "w2": (jax.random.normal(k[1], (8, 3)) * 0.5).astype(dtype),
        "b2": jnp.zeros(3, dtype),
    }


def plain(p: dict[str, Any], x: Any, y: Any) -> Any:
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)


def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    return plain({n: ctx[n] for n in NAMES}, x, y)


def batch(i: int, dtype: Any) -> tuple[Any, Any]:
    x = jax.random.normal(jax.random.PRNGKey(100 + i), (16, 4)).astype(dtype)
    return x, jnp.sin(x[:, :3])


def mask(p: dict[str, Any]) -> dict[str, bool]:
    return {n: n.startswith("w") for n in p}


CASES: dict[str, tuple[Any, Any]] = {
    "adamw": (
        lambda: optim.adamw(lr=1e-2, weight_decay=0.1),
        lambda: optax.adamw(1e-2, weight_decay=0.1),
    ),
    "sgd nesterov": (
        lambda: optim.sgd(lr=0.1, momentum=0.9, nesterov=True),
        lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    ),
    "adamw mask": (
        lambda: optim.adamw(lr=1e-2, weight_decay=0.1, no_decay=("b*",)),
        lambda: optax.adamw(1e-2, weight_decay=0.1, mask=mask),
    ),
    "adamw clip": (
        lambda: optim.adamw(lr=1e-2, weight_decay=0.1, clip=0.05),
        lambda: optax.chain(optax.clip_by_global_norm(0.05), optax.adamw(1e-2, weight_decay=0.1)),
    ),
    "adamw schedule": (
        lambda: optim.adamw(lr=optim.warmup_cosine(1e-2, 2, 6), weight_decay=0.1),
        lambda: optax.adamw(optax.warmup_cosine_decay_schedule(0, 1e-2, 2, 6, 0), weight_decay=0.1),
    ),
    "sgd momentum clip": (
        lambda: optim.sgd(lr=0.1, momentum=0.9, clip=0.05),
        lambda: optax.chain(optax.clip_by_global_norm(0.05), optax.sgd(0.1, momentum=0.9)),
    ),
}
MODES = ["eager", "eager, donated", "jit", "jit, donated"]


# bfloat16 in two modes only (the suite's time)
COMBOS = [(m, "float32") for m in MODES] + [("eager", "bfloat16"), ("jit, donated", "bfloat16")]


@pytest.mark.parametrize(("mode", "dtype"), COMBOS)
@pytest.mark.parametrize("case", list(CASES))
def test_jax_steps_match_optax(case: str, mode: str, dtype: str) -> None:
    ours, theirs = CASES[case][0](), CASES[case][1]()
    donate = mode.endswith("donated")
    p = start(dtype)
    ctx = RuntimeContext.from_state_dict({k: jnp.array(v, copy=True) for k, v in p.items()})
    state = ours.init(ctx)
    s = theirs.init(p)

    def step(c: Any, st: Any, x: Any, y: Any) -> Any:
        return ours.step(value_and_grad(loss)(c, x, y)[1], st, donate=donate)

    if mode.startswith("jit"):
        step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    for i in range(6):
        x, y = batch(i, dtype)
        ctx, state = step(ctx, state, x, y)
        u, s = theirs.update(jax.grad(plain)(p, x, y), s, p)
        p = optax.apply_updates(p, u)
    # bfloat16: torch's order of operations against optax's, a few units in the last place
    tol = 2e-5 if dtype == "float32" else 1e-2
    for name in NAMES:
        assert ctx[name].dtype == jnp.dtype(dtype)
        err = float(jnp.max(jnp.abs(ctx[name].astype(jnp.float32) - p[name].astype(jnp.float32))))
        assert err <= tol, (name, err)

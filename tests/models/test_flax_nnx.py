"""A flax nnx model trains in a context exactly as with optax (issue 12's end-to-end test).

The parameters of an ``nnx`` MLP go into a context with ``RuntimeContext.from_pytree``
(dotted names from the key paths), the loss rebuilds the module from ``ctx.to_pytree()``
with ``nnx.merge``, and torchlean's AdamW runs beside ``optax.adamw`` on the same seed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad

STEPS = 20


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(4, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.l2(jax.nn.relu(self.l1(x)))


def batch(i: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(i)
    x = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 32))
    return x, y


def test_an_nnx_mlp_trains_as_with_optax() -> None:
    graphdef, params = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)

    def ce(p: Any, x: Any, y: Any) -> Any:
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # the optax loop
    tx = optax.adamw(1e-2, weight_decay=1e-2)
    ref, opt_state = params, tx.init(params)
    ref_losses = []
    for i in range(STEPS):
        loss, grads = jax.value_and_grad(ce)(ref, *batch(i))
        updates, opt_state = tx.update(grads, opt_state, ref)
        ref = optax.apply_updates(ref, updates)
        ref_losses.append(float(loss))

    # the same loop through a context
    ctx = RuntimeContext.from_pytree(params)
    assert sorted(ctx.variable_names()) == [
        "l1.bias.value",
        "l1.kernel.value",
        "l2.bias.value",
        "l2.kernel.value",
    ]
    opt = optim.adamw(lr=1e-2, weight_decay=1e-2)
    state = opt.init(ctx)
    step = value_and_grad(lambda c, x, y: ce(c.to_pytree(), x, y))
    losses = []
    for i in range(STEPS):
        loss, ctx = step(ctx, *batch(i))
        ctx, state = opt.step(ctx, state)
        losses.append(float(loss))

    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-6)
    ours = ctx.to_pytree()
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # and the trained parameters drive the module again
    model = nnx.merge(graphdef, ours)
    assert model(batch(0)[0]).shape == (32, 3)

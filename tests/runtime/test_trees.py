"""Nested parameter trees in and out of a context (haiku/linen dicts, a hand-written
pytree with a static field, lists)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad
from torchlean.errors import TorchLeanError


def linen_params() -> dict[str, Any]:
    return {
        "params": {
            "Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
            "layers": [{"w": jnp.full((4,), 2.0)}, {"w": jnp.full((4,), 3.0)}],
        }
    }


def test_nested_dicts_round_trip() -> None:
    tree = linen_params()
    ctx = RuntimeContext.from_pytree(tree)
    assert ctx.variable_names()[::-1] == [
        "params.Dense_0.bias",
        "params.Dense_0.kernel",
        "params.layers.0.w",
        "params.layers.1.w",
    ]
    back = ctx.to_pytree()
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    np.testing.assert_array_equal(
        back["params"]["layers"][1]["w"], tree["params"]["layers"][1]["w"]
    )


def test_structure_survives_training() -> None:
    tree = linen_params()

    def loss(ctx: RuntimeContext[Any]) -> Any:
        p = ctx.to_pytree()["params"]
        return jnp.sum(p["Dense_0"]["kernel"] ** 2) + jnp.sum(p["layers"][0]["w"])

    ctx = RuntimeContext.from_pytree(tree)
    opt = optim.adam(lr=0.1)
    state = opt.init(ctx)
    for _ in range(3):
        _, ctx = value_and_grad(loss)(ctx)
        ctx, state = opt.step(ctx, state)
    out = ctx.to_pytree()
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    assert float(out["params"]["Dense_0"]["kernel"][0, 0]) < 1.0
    # the user's tree was neither deleted nor changed by the donated steps
    np.testing.assert_array_equal(tree["params"]["Dense_0"]["kernel"], np.ones((3, 4)))


def test_a_hand_written_pytree_keeps_its_static_leaves() -> None:
    class Module:
        def __init__(self, weight: Any, act: Any) -> None:
            self.weight, self.act = weight, act

    jax.tree_util.register_pytree_with_keys(
        Module,
        lambda m: (
            (
                (jax.tree_util.GetAttrKey("weight"), m.weight),
                (jax.tree_util.GetAttrKey("act"), m.act),
            ),
            None,
        ),
        lambda _, children: Module(*children),
    )
    model = [Module(jnp.ones(2), jax.nn.relu), Module(jnp.zeros(3), jax.nn.gelu)]
    ctx = RuntimeContext.from_pytree(model)
    assert sorted(ctx.variable_names()) == ["0.weight", "1.weight"]
    back = ctx.with_variables({"1.weight": jnp.ones(3)}).to_pytree()
    assert back[1].act is jax.nn.gelu and float(back[1].weight.sum()) == 3.0
    assert ctx.to_pytree(like=model)[0].act is jax.nn.relu


def test_without_a_structure_names_split_at_dots() -> None:
    ctx = RuntimeContext.from_state_dict({"a.b": np.ones(1), "a.c": np.zeros(1)})
    assert set(ctx.to_pytree()["a"]) == {"b", "c"}


def test_leaf_names_that_collide_are_refused() -> None:
    with pytest.raises(TorchLeanError, match=r"both have the dotted name `a\.b`"):
        RuntimeContext.from_pytree({"a": {"b": jnp.ones(1)}, "a.b": jnp.ones(1)})

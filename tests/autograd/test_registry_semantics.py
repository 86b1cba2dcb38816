"""value_and_grad against a list model of the registries (Hypothesis)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchlean import RuntimeContext
from torchlean.autograd import value_and_grad

NAMES = ["a", "b", "c", "d"]
entries = st.lists(
    st.tuples(st.sampled_from(NAMES), st.integers(1, 3), st.integers(-3, 3)), max_size=6
)


def build(variables: list[Any], gradients: list[Any]) -> RuntimeContext[torch.Tensor]:
    ctx = RuntimeContext.empty()
    for name, size, value in variables:
        ctx = ctx.register_variable(name, torch.full((size,), float(value)))
    for name, size, value in gradients:
        ctx = ctx.register_gradient(name, torch.full((size,), float(value)))
    return ctx


def loss(ctx: RuntimeContext[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for i, name in enumerate(dict.fromkeys(reversed(ctx.variable_names()))):
        total = total + (i + 1) * (ctx[name] ** 2).sum()
    return total


@settings(max_examples=60, deadline=None)
@given(variables=entries, gradients=entries, accumulate=st.booleans())
def test_gradients_follow_the_list_model(
    variables: list[Any], gradients: list[Any], accumulate: bool
) -> None:
    ctx = build(variables, gradients)
    before_v = [(n, at.t.tolist()) for n, at in ctx.var_registry]
    before_g = [(n, at.t.tolist()) for n, at in ctx.gradients]
    try:
        _, new = value_and_grad(loss, accumulate=accumulate)(ctx)
    except ValueError:
        # accumulating into a gradient of another shape is refused, as accumulate_gradient does
        assert accumulate
        return
    # the input context is untouched, and the variables are those of the input
    assert [(n, at.t.tolist()) for n, at in ctx.var_registry] == before_v
    assert [(n, at.t.tolist()) for n, at in ctx.gradients] == before_g
    assert [(n, at.t.tolist()) for n, at in new.var_registry] == before_v
    # the list model: the visible variable of each name, in first-registered order
    visible = {n: np.array(v) for n, v in reversed(before_v)}
    order = list(dict.fromkeys(n for n, _ in reversed(before_v)))
    model = list(before_g)
    for i, name in enumerate(order):
        grad = (2 * (i + 1) * visible[name]).tolist()
        for j, (n, old) in enumerate(model):
            if n == name:  # the most recent entry of that name
                model[j] = (n, (np.array(old) + grad).tolist() if accumulate else grad)
                break
        else:
            model.insert(0, (name, grad))
    assert [(n, at.t.tolist()) for n, at in new.gradients] == model

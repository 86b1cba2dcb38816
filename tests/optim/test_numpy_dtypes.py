"""The optimizers on numpy contexts (gradients given: numpy has no autograd) against
``torch.optim`` in float16, float32 and float64, five steps with weight decay, momentum,
nesterov, dampening and amsgrad: the variables stay in their dtype and equal torch's
within a unit in the last place of that dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim

CASES: dict[str, tuple[Any, Any]] = {
    "sgd": (lambda: optim.sgd(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd nesterov wd": (
        lambda: optim.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    ),
    "sgd dampening": (
        lambda: optim.sgd(lr=0.1, momentum=0.9, dampening=0.3),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3),
    ),
    "adam wd": (
        lambda: optim.adam(lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    ),
    "adam amsgrad": (
        lambda: optim.adam(lr=0.01, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    ),
    "adamw": (lambda: optim.adamw(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    "adamw amsgrad": (
        lambda: optim.adamw(lr=0.01, amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
    ),
}
ULPS = {"float16": 2.0, "float32": 8.0, "float64": 8.0}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_numpy_optimizers_match_torch_in_each_float_dtype(case: str, dtype: str) -> None:
    ours, theirs = CASES[case]
    rng = np.random.RandomState(0)
    start = {"w": rng.randn(4, 3).astype(dtype), "b": rng.randn(3).astype(dtype)}
    grads = [{k: rng.randn(*v.shape).astype(dtype) for k, v in start.items()} for _ in range(5)]
    ctx = RuntimeContext.from_state_dict({k: v.copy() for k, v in start.items()})
    opt = ours()
    state = opt.init(ctx)
    params = {k: torch.tensor(v.copy()) for k, v in start.items()}
    reference = theirs(list(params.values()))
    for g in grads:
        ctx = ctx.clear_gradients()
        for name, value in g.items():
            ctx = ctx.register_gradient(name, value.copy())
        ctx, state = opt.step(ctx, state)
        for name, value in g.items():
            params[name].grad = torch.tensor(value)
        reference.step()
    eps = float(np.finfo(dtype).eps)
    for name, p in params.items():
        got = ctx[name]
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype)
        want = p.detach().numpy()
        scale = np.maximum(np.abs(want.astype(np.float64)), 1.0)
        err = np.abs(got.astype(np.float64) - want.astype(np.float64)) / scale
        assert float(err.max()) <= ULPS[dtype] * eps, (name, float(err.max()) / eps)

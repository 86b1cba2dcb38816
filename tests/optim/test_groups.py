"""Parameter groups, the weight-decay mask and clipping against torch.optim's param
groups and clip_grad_norm_ (same gradients, 30 steps)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.errors import UnknownNameError

SHAPES = {"enc.weight": (4, 3), "enc.bias": (4,), "norm.weight": (4,), "head.weight": (2, 4)}
STEPS = 30


def data() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grads = [{k: torch.randn(s, generator=g) * 3 for k, s in SHAPES.items()} for _ in range(STEPS)]
    return init, grads


# (id, torch class, torch param groups (by name lists) + defaults, our constructor+kwargs, clip)
CASES: list[tuple[str, Any, list[dict[str, Any]], dict[str, Any], Any, float | None]] = [
    (
        "adamw-no-decay",
        torch.optim.AdamW,
        [
            {"params": ["enc.weight", "head.weight"]},
            {"params": ["enc.bias", "norm.weight"], "weight_decay": 0.0},
        ],
        {"lr": 0.01, "weight_decay": 0.1},
        lambda: optim.adamw(lr=0.01, weight_decay=0.1, no_decay=("*.bias", "norm.*")),
        None,
    ),
    (
        "adam-groups-lr",
        torch.optim.Adam,
        [
            {"params": ["enc.weight", "enc.bias"], "lr": 0.001, "betas": (0.8, 0.9)},
            {"params": ["norm.weight", "head.weight"]},
        ],
        {"lr": 0.02, "weight_decay": 0.01},
        lambda: optim.adam(
            lr=0.02,
            weight_decay=0.01,
            groups=[{"params": "enc.*", "lr": 0.001, "betas": (0.8, 0.9)}],
        ),
        None,
    ),
    (
        "sgd-groups-clip",
        torch.optim.SGD,
        [
            {"params": ["head.weight"], "lr": 0.2, "momentum": 0.5},
            {"params": ["enc.weight", "enc.bias", "norm.weight"]},
        ],
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
        lambda: optim.sgd(
            lr=0.05,
            momentum=0.9,
            weight_decay=0.01,
            groups=[{"params": ["head.*"], "lr": 0.2, "momentum": 0.5}],
            clip=1.0,
        ),
        1.0,
    ),
    (
        "adamw-clip-schedule",
        torch.optim.AdamW,
        [{"params": list(SHAPES)}],
        {"lr": 0.01},
        lambda: optim.adamw(lr=0.01, clip=0.5),
        0.5,
    ),
]


@pytest.mark.parametrize("donate", [True, False])
@pytest.mark.parametrize(
    ("torch_cls", "groups", "defaults", "make", "clip"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_matches_torch(
    torch_cls: Any,
    groups: list[dict[str, Any]],
    defaults: dict[str, Any],
    make: Any,
    clip: float | None,
    donate: bool,
) -> None:
    init, grads = data()
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    ref = torch_cls(
        [g | {"params": [params[n] for n in g["params"]]} for g in groups], fused=True, **defaults
    )
    opt = make()
    ctx = RuntimeContext.from_state_dict({k: v.clone() for k, v in init.items()})
    state = opt.init(ctx)
    for step in range(STEPS):
        for k, p in params.items():
            p.grad = grads[step][k].clone()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        ref.step()
        ctx = ctx.with_gradients({k: grads[step][k].clone() for k in SHAPES}, adopt=True)
        ctx, state = opt.step(ctx, state, donate=donate)
    for k, p in params.items():
        torch.testing.assert_close(ctx[k], p.detach(), rtol=1e-6, atol=1e-7, msg=k)
    assert int(state["count"]) == STEPS


def test_clip_gradients_is_clip_grad_norm() -> None:
    _, grads = data()
    g = grads[0]
    ctx = RuntimeContext.from_state_dict({k: torch.zeros(s) for k, s in SHAPES.items()})
    ctx = ctx.with_gradients(g)
    clipped, norm = optim.clip_gradients(ctx, 1.0)
    tensors = [t.clone() for t in g.values()]
    want = torch.nn.utils.clip_grad_norm_(
        [torch.zeros(1).requires_grad_() for _ in tensors], 1.0
    )  # (no grads: 0)
    assert float(want) == 0.0
    ps = [torch.zeros_like(t).requires_grad_() for t in tensors]
    for p, t in zip(ps, tensors, strict=True):
        p.grad = t
    total = torch.nn.utils.clip_grad_norm_(ps, 1.0)
    assert float(norm) == float(total)
    for (name, _), p in zip(g.items(), ps, strict=True):
        assert torch.equal(clipped.gradient(name), p.grad)
    assert torch.equal(ctx.gradient("enc.weight"), g["enc.weight"])  # ctx unchanged


def test_clip_gradients_numpy_and_jax_agree() -> None:
    import jax.numpy as jnp

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    for conv in (np.asarray, jnp.asarray):
        ctx = RuntimeContext.from_state_dict({k: conv(np.zeros_like(v)) for k, v in arrays.items()})
        ctx = ctx.with_gradients({k: conv(v) for k, v in arrays.items()})
        clipped, norm = optim.clip_gradients(ctx, 2.0)
        total = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in arrays.values()))
        np.testing.assert_allclose(float(norm), total, rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(clipped.gradient("a")), arrays["a"] * 2.0 / (total + 1e-6), rtol=1e-5
        )


def test_a_group_pattern_that_matches_nothing_raises_at_init() -> None:
    ctx = RuntimeContext.from_state_dict({k: torch.zeros(s) for k, s in SHAPES.items()})
    with pytest.raises(UnknownNameError, match=r"`decoder\.\*` matches no parameter"):
        optim.adam(groups=[{"params": "decoder.*", "lr": 0.1}]).init(ctx)
    with pytest.raises(ValueError, match="unknown hyperparameter 'amsgrad'"):
        optim.adam(groups=[{"params": "enc.*", "amsgrad": True}])
    with pytest.raises(ValueError, match="cannot change which moments"):
        optim.sgd(groups=[{"params": "enc.*", "momentum": 0.9}])


def test_buffers_get_no_state_and_no_update() -> None:
    ctx = RuntimeContext.from_state_dict(
        {"w": torch.ones(2), "running_var": torch.ones(2)}
    ).mark_buffers("running_*")
    opt = optim.adamw(lr=0.1, weight_decay=0.5)
    state = opt.init(ctx)
    assert "exp_avg/running_var" not in state.variable_names()
    assert ctx.buffers() == ["running_var"]

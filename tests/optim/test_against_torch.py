"""Every optimizer against its torch.optim reference: 100 steps on the same gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, optim

SHAPES = {"fc.weight": (5, 3), "fc.bias": (5,), "scale": ()}
STEPS = 100


def data() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grads = [{k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return init, grads


WARMUP = optim.warmup_cosine(0.05, 10, STEPS, final=0.005)
COSINE = optim.cosine_decay(0.1, 60, final=0.01)
LINEAR = optim.linear_warmup(0.01, 20)

# (id, torch class, torch kwargs, our constructor, our kwargs, schedule or None)
CASES: list[tuple[str, Any, dict[str, Any], Callable[..., optim.Optimizer], Any]] = [
    ("sgd", torch.optim.SGD, {"lr": 0.05}, optim.sgd, None),
    ("sgd-momentum", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, optim.sgd, None),
    (
        "sgd-nesterov-wd",
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        optim.sgd,
        None,
    ),
    (
        "sgd-dampening",
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.5, "weight_decay": 0.01},
        optim.sgd,
        None,
    ),
    ("sgd-cosine", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, optim.sgd, COSINE),
    ("adam", torch.optim.Adam, {"lr": 0.01}, optim.adam, None),
    (
        "adam-wd-amsgrad",
        torch.optim.Adam,
        {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
        optim.adam,
        None,
    ),
    (
        "adam-betas",
        torch.optim.Adam,
        {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6},
        optim.adam,
        None,
    ),
    ("adamw", torch.optim.AdamW, {"lr": 0.01}, optim.adamw, None),
    ("adamw-wd", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.2}, optim.adamw, None),
    ("adamw-warmup-cosine", torch.optim.AdamW, {"lr": 0.05}, optim.adamw, WARMUP),
    ("adam-linear-warmup", torch.optim.Adam, {"lr": 0.01}, optim.adam, LINEAR),
]


def reference(torch_cls: Any, kwargs: dict[str, Any], schedule: Any) -> dict[str, np.ndarray]:
    init, grads = data()
    params = [init[k].clone().requires_grad_(True) for k in SHAPES]
    opt = torch_cls(params, **kwargs)
    base = kwargs["lr"]
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step) / base)
        if schedule is not None
        else None
    )
    for g in grads:
        for p, k in zip(params, SHAPES, strict=True):
            p.grad = g[k].clone()
        opt.step()
        if sched is not None:
            sched.step()
    return {k: p.detach().numpy() for p, k in zip(params, SHAPES, strict=True)}


CONVERT: dict[str, Callable[[torch.Tensor], Any]] = {
    "torch": lambda t: t.clone(),
    "numpy": lambda t: t.numpy().copy(),
    "jax": lambda t: jnp.asarray(t.numpy()),
}


def ours(
    make: Callable[..., optim.Optimizer],
    kwargs: dict[str, Any],
    schedule: Any,
    backend: str,
    donate: bool,
    flat: bool = False,
) -> dict[str, np.ndarray]:
    init, grads = data()
    conv = CONVERT[backend]
    if schedule is not None:
        kwargs = {**kwargs, "lr": schedule}
    opt = make(**kwargs)
    ctx = RuntimeContext.from_state_dict({k: conv(v) for k, v in init.items()})
    if flat:
        ctx = optim.flatten(ctx)
    state = opt.init(ctx)
    for g in grads:
        ctx = ctx.clear_gradients()
        if flat:  # one flat gradient, as value_and_grad gives it for a flat context
            views = torch.cat([g[k].reshape(-1) for k in SHAPES]).split(
                [g[k].numel() for k in SHAPES]
            )
            items = [(k, v.view(g[k].shape)) for k, v in zip(SHAPES, views, strict=True)]
            ctx = ctx.with_gradients(items, adopt=True)
        else:
            for k in SHAPES:
                ctx = ctx.register_gradient(k, conv(g[k]))
        ctx, state = opt.step(ctx, state, donate=donate)
    assert int(np.asarray(state["count"])) == STEPS
    return {k: np.asarray(v) for k, v in ctx.state_dict().items()}


@pytest.mark.parametrize("backend", ["torch", "torch-flat", "numpy", "jax"])
@pytest.mark.parametrize(
    ("case", "torch_cls", "kwargs", "make", "schedule"), CASES, ids=[c[0] for c in CASES]
)
def test_matches_torch_optim(
    case: str, torch_cls: Any, kwargs: dict[str, Any], make: Any, schedule: Any, backend: str
) -> None:
    expected = reference(torch_cls, kwargs, schedule)
    flat = backend == "torch-flat"
    backend = backend.removesuffix("-flat")
    for donate in (True, False) if backend == "torch" else (backend == "jax",):
        got = ours(make, kwargs, schedule, backend, donate, flat)
        for name in SHAPES:
            np.testing.assert_allclose(
                got[name],
                expected[name],
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{case} {backend} donate={donate} {name}",
            )


def test_defaults_are_torch_defaults() -> None:
    p = [torch.zeros(1)]
    for ours_, theirs in (
        (optim.adam(), torch.optim.Adam(p)),
        (optim.adamw(), torch.optim.AdamW(p)),
        (optim.sgd(), torch.optim.SGD(p)),
    ):
        d = theirs.defaults
        h = ours_.hyper
        assert h.lr == d["lr"] and h.weight_decay == d["weight_decay"]
        if "betas" in d:
            assert (h.beta1, h.beta2, h.eps, h.amsgrad) == (*d["betas"], d["eps"], d["amsgrad"])
        else:
            assert (h.momentum, h.dampening, h.nesterov) == (
                d["momentum"],
                d["dampening"],
                d["nesterov"],
            )


def test_schedules() -> None:
    assert LINEAR(0) == 0.0 and LINEAR(10) == pytest.approx(0.005) and LINEAR(50) == 0.01
    assert COSINE(0) == pytest.approx(0.1) and COSINE(60) == pytest.approx(0.01)
    assert COSINE(30) == pytest.approx(0.055)
    assert WARMUP(10) == pytest.approx(0.05) and WARMUP(STEPS) == pytest.approx(0.005)
    traced = np.asarray(WARMUP(jnp.arange(0, STEPS + 1)))
    np.testing.assert_allclose(traced, [WARMUP(i) for i in range(STEPS + 1)], rtol=1e-5)


def test_a_whole_training_step_under_jax_jit() -> None:
    import jax

    from torchlean.autograd import value_and_grad

    def loss(ctx: RuntimeContext[Any], x: Any) -> Any:
        return ((x @ ctx["w"] + ctx["b"]) ** 2).sum()

    opt = optim.adamw(lr=optim.warmup_cosine(0.1, 2, 10))

    @jax.jit
    def train_step(ctx: Any, state: Any, x: Any) -> Any:
        value, ctx = value_and_grad(loss)(ctx, x)
        ctx, state = opt.step(ctx, state, donate=False)
        return value, ctx, state

    ctx = RuntimeContext.from_state_dict({"w": jnp.ones((3, 2)), "b": jnp.zeros(2)})
    state = opt.init(ctx)
    x = jnp.ones((4, 3))
    values = []
    for _ in range(4):
        value, ctx, state = train_step(ctx, state, x)
        values.append(float(value))
    assert values[0] == values[1] == 72.0  # the warm-up starts at lr 0
    assert values[3] < values[2] < values[1]
    assert int(state["count"]) == 4 and ctx.gradient_names() == ["b", "w"]


@pytest.mark.parametrize("backend", ["torch", "jax", "numpy"])
@pytest.mark.parametrize(
    ("torch_cls", "make", "kwargs"),
    [
        (torch.optim.SGD, optim.sgd, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1}),
        (torch.optim.Adam, optim.adam, {"lr": 0.01}),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_a_parameter_without_gradient_at_some_steps(
    torch_cls: Any, make: Any, kwargs: dict[str, Any], backend: str
) -> None:
    # torch skips a parameter whose .grad is None: its moments and step count stay put
    init, grads = data()
    params = [init[k].clone().requires_grad_(True) for k in SHAPES]
    opt = torch_cls(params, **kwargs)
    ours_opt = make(**kwargs)
    conv = CONVERT[backend]
    ctx = RuntimeContext.from_state_dict({k: conv(v) for k, v in init.items()})
    state = ours_opt.init(ctx)
    for i, g in enumerate(grads[:30]):
        present = [k for k in SHAPES if k != "fc.bias" or i % 3 == 2]
        for p, k in zip(params, SHAPES, strict=True):
            p.grad = g[k].clone() if k in present else None
        opt.step()
        ctx = ctx.clear_gradients()
        for k in present:
            ctx = ctx.register_gradient(k, conv(g[k]))
        ctx, state = ours_opt.step(ctx, state)
    for p, k in zip(params, SHAPES, strict=True):
        np.testing.assert_allclose(np.asarray(ctx[k]), p.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert float(np.asarray(state["step/fc.bias"])) == 10.0

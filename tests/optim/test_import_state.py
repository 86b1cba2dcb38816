"""Importing optimizer state: k steps in torch.optim (or optax), import, k more in
torchlean beside k more in torch (optax): the parameters agree within float32 tolerance;
the imported state has init's layout; every problem is named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from torchlean import RuntimeContext, optim
from torchlean.errors import ExpectationError, ShapeMismatchError, UnknownNameError

SHAPES = {"enc.weight": (4, 3), "enc.bias": (4,), "norm.weight": (4,), "head.weight": (2, 4)}
K = 4


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name, shape in SHAPES.items():
            self.register_parameter(
                name.replace(".", "_"), torch.nn.Parameter(torch.randn(shape, generator=g))
            )


def params() -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.nn.Parameter(torch.randn(s, generator=g)) for k, s in SHAPES.items()}


def grads(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) * 2 for k, s in SHAPES.items()} for _ in range(n)]


def torch_steps(
    opt: Any, ps: dict[str, torch.nn.Parameter], gs: list[dict[str, torch.Tensor]]
) -> None:
    for step in gs:
        for k, p in ps.items():
            p.grad = step[k].clone()
        opt.step()


def ours_steps(
    opt: optim.Optimizer,
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
    gs: list[dict[str, Any]],
) -> tuple[RuntimeContext[Any], RuntimeContext[Any]]:
    for step in gs:
        ctx = ctx.with_gradients(list(step.items()))
        ctx, state = opt.step(ctx, state)
    return ctx, state


def context_of(ps: dict[str, torch.nn.Parameter]) -> RuntimeContext[Any]:
    return RuntimeContext.empty().with_variables([(k, p.detach().clone()) for k, p in ps.items()])


TORCH_CASES: list[tuple[str, Callable[[list[Any]], Any]]] = [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05)),
    ("sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (
        "sgd-nesterov",
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    ),
    ("sgd-dampening", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adam-amsgrad-decay", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    ("adamw-amsgrad", lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True)),
]


@pytest.mark.parametrize(("how"), ["state_dict", "object"])
@pytest.mark.parametrize(("case", "make"), TORCH_CASES, ids=[c for c, _ in TORCH_CASES])
def test_torch_continues_identically(case: str, make: Callable[[list[Any]], Any], how: str) -> None:
    ps = params()
    opt = make(list(ps.values()))
    gs = grads(2 * K)
    torch_steps(opt, ps, gs[:K])
    ctx = context_of(ps)
    source = opt.state_dict() if how == "state_dict" else opt
    ours, state = optim.import_torch_state(source, ctx, names=list(ps))
    ctx, state = ours_steps(ours, ctx, state, gs[K:])
    torch_steps(opt, ps, gs[K:])
    for k, p in ps.items():
        np.testing.assert_allclose(ctx[k].numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)
    for k, s in opt.state_dict()["state"].items():
        name = list(ps)[k]
        for slot, value in s.items():
            if slot != "step" and value is not None:
                np.testing.assert_allclose(
                    state[f"{slot}/{name}"].numpy(), value.numpy(), rtol=1e-5, atol=1e-7
                )


def test_layout_is_inits() -> None:
    ps = params()
    opt = torch.optim.AdamW(list(ps.values()), lr=0.01, amsgrad=True)
    torch_steps(opt, ps, grads(3))
    ctx = context_of(ps)
    ours, state = optim.import_torch_state(opt, ctx, names=list(ps))
    fresh = ours.init(ctx)
    got = [(n, at.dtype, at.dims, at.device) for n, at in state.latest_variables()]
    want = [(n, at.dtype, at.dims, at.device) for n, at in fresh.latest_variables()]
    assert got == want
    assert int(state["count"]) == 3
    assert float(state["step/enc.weight"]) == 3.0
    assert (
        repr(ours)
        == "adamw(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=True)"
    )


def test_imported_arrays_are_copies() -> None:
    ps = params()
    opt = torch.optim.Adam(list(ps.values()), lr=0.01)
    torch_steps(opt, ps, grads(2))
    ctx = context_of(ps)
    _, state = optim.import_torch_state(opt, ctx, names=list(ps))
    before = state["exp_avg/enc.weight"].clone()
    torch_steps(opt, ps, grads(1, seed=5))  # torch writes its moments in place
    assert torch.equal(state["exp_avg/enc.weight"], before)


def test_model_by_identity_with_groups() -> None:
    model = Net()
    named = dict(model.named_parameters())
    decay = [named["enc_weight"], named["head_weight"]]
    rest = [named["enc_bias"], named["norm_weight"]]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.0, "lr": 0.02}, {"params": decay}],
        lr=0.01,
        weight_decay=0.1,
    )
    gs = [{k.replace(".", "_"): v for k, v in step.items()} for step in grads(2 * K)]
    torch_steps(opt, named, gs[:K])
    ctx = RuntimeContext.from_module(model)
    ours, state = optim.import_torch_state(opt, ctx, model=model)
    ctx, state = ours_steps(ours, ctx, state, gs[K:])
    torch_steps(opt, named, gs[K:])
    for k, p in named.items():
        np.testing.assert_allclose(ctx[k].numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)
    # the same with a torchlean optimizer that agrees
    ctx = RuntimeContext.from_module(model)
    mine = optim.adamw(
        lr=0.01,
        weight_decay=0.1,
        groups=[{"params": ["enc_bias", "norm_weight"], "lr": 0.02}],
        no_decay=["enc_bias", "norm_weight"],
    )
    got, _ = optim.import_torch_state(opt, ctx, model=model, optimizer=mine)
    assert got is mine


def test_state_dict_with_model_one_group() -> None:
    model = Net()
    named = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    torch_steps(opt, named, [{k.replace(".", "_"): v for k, v in s.items()} for s in grads(2)])
    ctx = RuntimeContext.from_module(model)
    _, state = optim.import_torch_state(opt.state_dict(), ctx, model=model, count=2)
    assert int(state["count"]) == 2
    assert float(state["step/enc_weight"]) == 2.0


def test_hyperparameters_that_differ_are_named() -> None:
    ps = params()
    opt = torch.optim.AdamW(
        [
            {"params": [ps["enc.weight"], ps["head.weight"]]},
            {"params": [ps["enc.bias"], ps["norm.weight"]], "weight_decay": 0.0},
        ],
        lr=0.01,
    )
    torch_steps(opt, ps, grads(1))
    ctx = context_of(ps)
    names = ["enc.weight", "head.weight", "enc.bias", "norm.weight"]
    with pytest.raises(ExpectationError) as e:
        optim.import_torch_state(opt, ctx, names=names, optimizer=optim.adamw(lr=0.02, eps=1e-6))
    tail = "in the torchlean optimizer for 2 parameters"
    first, second = "(`enc.weight`, `head.weight`)", "(`enc.bias`, `norm.weight`)"
    assert str(e.value) == "\n".join(
        [
            "import_torch_state: the hyperparameters differ:",
            f"- eps is 1e-08 in torch's param_groups[0] but 1e-06 {tail} {first}",
            f"- lr is 0.01 in torch's param_groups[0] but 0.02 {tail} {first}",
            f"- eps is 1e-08 in torch's param_groups[1] but 1e-06 {tail} {second}",
            f"- weight_decay is 0.0 in torch's param_groups[1] but 0.01 {tail} {second}",
            f"- lr is 0.01 in torch's param_groups[1] but 0.02 {tail} {second}",
            "(pass optimizer=None to build the optimizer from torch's param groups)",
        ]
    )
    with pytest.raises(
        ExpectationError, match="the torch state is adamw's but the optimizer is sgd"
    ):
        optim.import_torch_state(opt, ctx, names=names, optimizer=optim.sgd())


def test_schedule_compared_at_count() -> None:
    ps = params()
    opt = torch.optim.Adam(list(ps.values()), lr=0.01)
    torch_steps(opt, ps, grads(3))
    ctx = context_of(ps)
    mine = optim.adam(lr=lambda c: 0.01 if c >= 3 else 0.0)
    assert optim.import_torch_state(opt, ctx, names=list(ps), optimizer=mine)[0] is mine
    with pytest.raises(ExpectationError, match=r"lr \(the schedule at count 2\) is 0.01"):
        optim.import_torch_state(opt, ctx, names=list(ps), optimizer=mine, count=2)


def adam_state_dict() -> tuple[dict[str, Any], dict[str, torch.nn.Parameter]]:
    ps = params()
    opt = torch.optim.Adam(list(ps.values()), lr=0.01)
    torch_steps(opt, ps, grads(1))
    return opt.state_dict(), ps


def test_errors_are_collected_and_named() -> None:
    sd, ps = adam_state_dict()
    sd["state"][7] = {"step": torch.tensor(1.0)}
    sd["state"][1]["exp_avg"] = torch.zeros(5)
    del sd["state"][2]["exp_avg_sq"]
    sd["param_groups"][0]["decoupled_weight_decay"] = False
    with pytest.raises(UnknownNameError) as e:
        optim.import_torch_state(sd, context_of(ps), names=list(ps))
    assert str(e.value).strip("'\"") == "\n".join(
        [
            "import_torch_state: 2 problems:",
            "- the state has an entry for parameter index 7, which no param group lists"
            " (the groups list 0..3)",
            "- the state of parameter 2 (`norm.weight`) has no exp_avg_sq (it has exp_avg,"
            " step); nothing was imported",
        ]
    )
    del sd["state"][7]
    sd["state"][2]["exp_avg_sq"] = torch.zeros(4)
    with pytest.raises(
        ShapeMismatchError,
        match=r"exp_avg/enc.bias has shape \(5,\) but variable `enc.bias` has shape \(4,\)",
    ):
        optim.import_torch_state(sd, context_of(ps), names=list(ps))


def test_names_and_kind_errors() -> None:
    sd, ps = adam_state_dict()
    ctx = context_of(ps)
    with pytest.raises(
        ExpectationError,
        match="names has 3 names but the optimizer's param groups hold 4 parameters",
    ):
        optim.import_torch_state(sd, ctx, names=list(ps)[:3])
    with pytest.raises(
        UnknownNameError,
        match=r"no variable `enc.wieght` in the context; did you mean `enc\.weight`",
    ):
        optim.import_torch_state(sd, ctx, names=["enc.wieght", *list(ps)[1:]])
    plain = torch.optim.SGD(list(ps.values()), lr=0.1).state_dict()  # no state at all
    with pytest.raises(UnknownNameError, match=r"no variable `head\.w` in the context"):
        optim.import_torch_state(plain, ctx, names=[*list(ps)[:3], "head.w"])
    with pytest.raises(TypeError, match="pass exactly one of names="):
        optim.import_torch_state(sd, ctx)
    del sd["param_groups"][0]["decoupled_weight_decay"]
    with pytest.raises(ExpectationError, match="does not say whether it is Adam or AdamW"):
        optim.import_torch_state(sd, ctx, names=list(ps))
    assert optim.import_torch_state(sd, ctx, names=list(ps), optimizer=optim.adam(lr=0.01))
    sd["param_groups"][0]["maximize"] = True
    with pytest.raises(ExpectationError, match="maximize=True"):
        optim.import_torch_state(sd, ctx, names=list(ps), optimizer=optim.adam(lr=0.01))
    sgd = torch.optim.SGD(list(ps.values()), lr=0.1, momentum=0.9)
    torch_steps(sgd, ps, grads(1))
    with pytest.raises(ExpectationError, match="holds momentum_buffer, which adam does not keep"):
        optim.import_torch_state(
            {
                "state": sgd.state_dict()["state"],
                "param_groups": adam_state_dict()[0]["param_groups"],
            },
            ctx,
            names=list(ps),
        )


# ---------------------------------------------------------------------- optax


def jax_params() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "enc": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "bias": jnp.zeros(4)},
        "head": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
    }


def jax_grads(n: int, like: dict[str, Any]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    return [
        jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.normal(size=x.shape) * 2, jnp.float32), like
        )
        for _ in range(n)
    ]


OPTAX_CASES = [
    (
        "adam",
        lambda: optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-6),
        lambda: optim.adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    ),
    (
        "adamw",
        lambda: optax.adamw(0.01, weight_decay=0.1),
        lambda: optim.adamw(lr=0.01, weight_decay=0.1),
    ),
    (
        "adamw-injected",
        lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=0.01, weight_decay=0.1),
        lambda: optim.adamw(lr=0.01, weight_decay=0.1),
    ),
]


@pytest.mark.parametrize(("case", "tx", "ours"), OPTAX_CASES, ids=[c for c, _, _ in OPTAX_CASES])
def test_optax_continues_identically(case: str, tx: Any, ours: Any) -> None:
    transform = tx()
    p = jax_params()
    s = transform.init(p)
    gs = jax_grads(2 * K, p)
    for g in gs[:K]:
        u, s = transform.update(g, s, p)
        p = optax.apply_updates(p, u)
    ctx = RuntimeContext.from_pytree(p)
    opt, state = optim.import_optax_state(s, ctx, optimizer=ours())
    assert int(state["count"]) == K
    assert state.variable_entry("exp_avg/enc.kernel") is not None
    for g in gs[K:]:
        flat = RuntimeContext.from_pytree(g).latest_variables()
        ctx = ctx.with_gradients([(n, at.t) for n, at in flat])
        ctx, state = opt.step(ctx, state)
        u, s = transform.update(g, s, p)
        p = optax.apply_updates(p, u)
    for name, at in RuntimeContext.from_pytree(p).latest_variables():
        np.testing.assert_allclose(np.asarray(ctx[name]), np.asarray(at.t), rtol=1e-5, atol=1e-6)


def test_optax_errors() -> None:
    p = jax_params()
    ctx = RuntimeContext.from_pytree(p)
    with pytest.raises(ExpectationError, match=r"expected one optax ScaleByAdamState .* found 0"):
        optim.import_optax_state(optax.sgd(0.1, momentum=0.9).init(p), ctx, optimizer=optim.adam())
    with pytest.raises(ExpectationError, match="optax's amsgrad keeps a bias-corrected nu_max"):
        optim.import_optax_state(optax.amsgrad(0.1).init(p), ctx, optimizer=optim.adam())
    with pytest.raises(ExpectationError, match="continues adam or adamw without amsgrad"):
        optim.import_optax_state(optax.adam(0.1).init(p), ctx, optimizer=optim.sgd())
    with pytest.raises(UnknownNameError, match="no variable `x` in the context"):
        optim.import_optax_state(
            optax.adam(0.1).init(p), ctx, optimizer=optim.adam(), names=["x", "enc.kernel", "head"]
        )

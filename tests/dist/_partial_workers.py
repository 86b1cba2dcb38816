"""Workers of the ``Partial`` gradient tests (run by ``torch.multiprocessing``, gloo,
CPU): gradients with ``Partial`` placements reduced by the optimizer step on request
(``step(..., reduce_partial=True)``), refused without it."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from _workers import bits, join

BATCH = 6
STEPS = 2


def start() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    return {"w": layer.weight.detach().clone(), "b": layer.bias.detach().clone()}


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1 + step)
    return torch.randn(BATCH, 4, generator=g), torch.randn(BATCH, 3, generator=g)


def loss(c: Any, xs: Any, ys: Any) -> Any:
    v = c.state_dict()
    return ((xs @ v["w"].T + v["b"] - ys) ** 2).mean()


def reference() -> dict[str, torch.Tensor]:
    """``STEPS`` adamw steps in one process, on the whole batches."""
    from torchlean import optim
    from torchlean.autograd import value_and_grad
    from torchlean.runtime import RuntimeContext

    ctx = RuntimeContext.empty().with_variables(list(start().items()))
    opt = optim.adamw(lr=0.1)
    state = opt.init(ctx)
    for i in range(STEPS):
        _, ctx = value_and_grad(loss)(ctx, *batch(i))
        ctx, state = opt.step(ctx, state)
    return ctx.state_dict()


def partial_worker(rank: int, world: int, port: int) -> None:
    mesh = join(rank, world, port)
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    from torchlean import optim
    from torchlean.autograd import value_and_grad
    from torchlean.errors import TorchLeanError
    from torchlean.runtime import RuntimeContext

    # data-parallel through DTensor: replicated parameters, each rank its part of the
    # batch; DTensor's autograd leaves the gradients Partial(sum)
    ctx = RuntimeContext.empty().with_variables(
        [(k, distribute_tensor(v, mesh, [Replicate()])) for k, v in start().items()]
    )
    n = BATCH // world
    mine = slice(rank * n, (rank + 1) * n)

    def local(i: int) -> tuple[Any, ...]:
        return tuple(DTensor.from_local(t[mine], mesh, [Shard(0)]) for t in batch(i))

    grad_fn = value_and_grad(loss)
    _, first = grad_fn(ctx, *local(0))
    grads = first.state_dict(gradients=True)
    assert [g.placements for g in grads.values()] == [(Partial("sum"),)] * 2, grads
    # check() says the step can reduce them (the same text as the step's refusal), and
    # the context view shows check()'s problems
    hint = (
        "gradient `{0}` is laid out as P(sum) on {1} but its variable as R on {1};"
        " redistribute it explicitly (e.g. grad.redistribute(var.device_mesh,"
        " var.placements) for a DTensor, jax.device_put(grad, var.sharding) for a jax"
        " array), or let the optimizer step reduce its Partial placements:"
        " step(..., reduce_partial=True) or fit(..., reduce_partial=True) (one collective"
        " per such gradient, on every rank)"
    )
    report = first.check()
    assert [p.kind for p in report] == ["placement-mismatch"] * 2
    assert [p.message for p in report] == [hint.format(k, mesh) for k in ("b", "w")], report
    from torchlean.widgets import summarize

    assert summarize(first).problems == report.problems
    # a Shard(1) gradient of a replicated variable is no pending reduction: no hint
    other = first.with_gradients(
        [("w", distribute_tensor(grads["w"].full_tensor(), mesh, [Shard(1)]))]
    )
    (moved,) = [p for p in other.check() if p.name == "w"]
    assert moved.message.endswith("for a jax array)"), moved.message

    # without the opt-in: refused, naming it; nothing updated (no collective either)
    opt = optim.adamw(lr=0.1)
    state = opt.init(ctx)
    try:
        opt.step(first, state)
    except TorchLeanError as e:
        problem = "- " + hint
        assert str(e) == (
            "optimizer step: 2 problems:\n"
            f"{problem.format('w', mesh)}\n{problem.format('b', mesh)}; nothing was updated"
        ), str(e)
    else:
        raise AssertionError("the step accepted Partial gradients without reduce_partial")

    # with it: every step reduces them (an all-reduce each) and equals the one-process step
    ref = reference()
    got = ctx
    for i in range(STEPS):
        _, got = grad_fn(got, *local(i))
        got, state = opt.step(got, state, reduce_partial=True)
    for name, value in got.state_dict().items():
        assert value.placements == (Replicate(),), (name, value.placements)
        # float32 rounding only: the two ranks' partial sums add in another order
        assert torch.allclose(value.to_local(), ref[name], rtol=1e-5, atol=1e-6), name
        assert not torch.equal(value.to_local(), start()[name]), name  # it moved
    assert got.state_dict(gradients=True)["w"].placements == (Partial("sum"),)  # kept

    # steps of one layout (reduced by hand) and then a Partial one: refused (the step's
    # cached plan, optim/_plan.py, keys on placements; none is made for this state,
    # which mixes libraries: `count` and the step counters are plain tensors)
    planned = optim.adamw(lr=0.1)
    reduced = first.with_gradients(
        [(k, g.redistribute(placements=[Replicate()])) for k, g in grads.items()]
    )
    pstate = planned.init(ctx)
    for _ in range(2):
        planned.step(reduced, pstate, donate=False)
    assert not planned._plans.plans  # the state mixes libraries: no plan
    try:
        planned.step(first, pstate, donate=False)
    except TorchLeanError as e:
        assert str(e).endswith(hint.format("b", mesh) + "; nothing was updated"), e
    else:
        raise AssertionError("a repeated step accepted Partial gradients")
    # a state of DTensors only (the plain counters replicated): the plan is made, and
    # it compares placements, so a Partial gradient still reaches the refusal
    whole_state = pstate.with_variables(
        [
            (k, v if isinstance(v, DTensor) else distribute_tensor(v, mesh, [Replicate()]))
            for k, v in pstate.state_dict().items()
        ]
    )
    for _ in range(2):
        planned.step(reduced, whole_state, donate=False)
    (plan,) = planned._plans.plans
    assert plan.placements == [str(Replicate()) + f" on {mesh}"] * 2, plan.placements
    try:
        planned.step(first, whole_state, donate=False)
    except TorchLeanError as e:
        assert str(e).endswith(hint.format("b", mesh) + "; nothing was updated"), e
    else:
        raise AssertionError("a planned step accepted Partial gradients")

    # a user's own Partial gradient of a Shard(0) variable: one reduce-scatter, bitwise
    # equal to the one-process step on the sum (values exact in float32)
    whole = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6) / 8
    base = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6).flip(0) / 16
    sharded = RuntimeContext.empty().with_variables(
        [("v", distribute_tensor(whole, mesh, [Shard(0)]))]
    )
    mine_grad = DTensor.from_local(base * (rank + 1), mesh, [Partial()], run_check=False)
    sopt = optim.adamw(lr=0.1)
    new, _ = sopt.step(
        sharded.with_gradients([("v", mine_grad)]), sopt.init(sharded), reduce_partial=True
    )
    plain = RuntimeContext.empty().with_variables([("v", whole.clone())])
    expect, _ = sopt.step(plain.with_gradients([("v", base * 3)]), sopt.init(plain))
    v = new.state_dict()["v"]
    assert v.placements == (Shard(0),), v.placements
    assert torch.equal(bits(v.full_tensor()), bits(expect.state_dict()["v"]))

    # another placement is not a pending reduction: refused even when asked
    moved = sharded.with_gradients([("v", distribute_tensor(base, mesh, [Shard(1)]))])
    try:
        sopt.step(moved, sopt.init(sharded), reduce_partial=True)
    except TorchLeanError as e:
        assert "is laid out as S(1)" in str(e) and "reduce_partial" not in str(e), e
    else:
        raise AssertionError("reduce_partial=True redistributed a Shard(1) gradient")
    dist.barrier()  # every rank done before any leaves (see _workers.leave)
    dist.destroy_process_group()

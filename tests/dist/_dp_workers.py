"""Workers of the data-parallel tests (run by ``torch.multiprocessing``, gloo, CPU).

Each worker joins a gloo group on its own port, checks with plain ``assert`` (a failure
fails the spawn, and so the test) and leaves the group. The model, the data and the
loss are shared with the one-process halves in :mod:`test_data_parallel`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from _workers import WORLD, free_port, spawn  # one spawner for every dist test

__all__ = ["WORLD", "free_port", "spawn"]

BATCH = 8


def join(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def make_ctx() -> Any:
    """A float32 weight and bias and a float64 scale: two (device, dtype) buckets."""
    from torchlean.runtime import RuntimeContext

    g = torch.Generator().manual_seed(0)
    return RuntimeContext.empty().with_variables(
        [
            ("w", torch.randn(4, 3, generator=g)),
            ("b", torch.randn(3, generator=g)),
            ("s", torch.randn(2, generator=g, dtype=torch.float64)),
        ]
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of ``step`` (deterministic: resumed runs see the same data)."""
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 4, generator=g), torch.randn(BATCH, 3, generator=g)


def half(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the batch of ``step``."""
    x, y = batch(step)
    n = BATCH // world
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def loss(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w, b, s = ctx.variable("w"), ctx.variable("b"), ctx.variable("s")
    return (x @ w + b - y).pow(2).mean() + 0.1 * (s**2).sum().float()


def sum_loss(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w, b, s = ctx.variable("w"), ctx.variable("b"), ctx.variable("s")
    return (x @ w + b - y).pow(2).sum() + 0.1 * (s**2).sum().float()


def train(ctx: Any, steps: int, data: Any, **kw: Any) -> Any:
    from torchlean import optim
    from torchlean import train as tr

    return tr.fit(
        ctx, loss, optim.sgd(lr=0.05, momentum=0.9), data, steps=steps, progress=False, **kw
    )


def grad(ctx: Any, name: str) -> torch.Tensor:
    at = ctx.gradient_entry(name)
    assert at is not None, name
    return at.t


def params(ctx: Any) -> dict[str, torch.Tensor]:
    return {n: at.t.clone() for n, at in ctx.latest_variables()}


def grad_worker(rank: int, world: int, port: int, root: str) -> None:
    """The reduced gradients equal the full batch's; one all-reduce per dtype; the
    loss reaching no variable is an error; fit resumes from the latest complete folder
    (bitwise), from a folder saved by one process (1 -> 2), and saves for 2 -> 1."""
    join(rank, world, port)
    from torchlean.autograd import value_and_grad
    from torchlean.errors import TorchLeanError

    x, y = batch(0)
    hx, hy = half(0, rank, world)
    for fn, reduce, full_scale in ((loss, "mean", 1.0), (sum_loss, "sum", 1.0)):
        full_loss, full = value_and_grad(fn)(make_ctx(), x, y)
        calls: list[int] = []
        real = dist.all_reduce

        def counting(t: Any, *a: Any, calls: list[int] = calls, real: Any = real, **k: Any) -> Any:
            calls.append(t.numel())
            return real(t, *a, **k)

        dist.all_reduce = counting  # type: ignore[assignment]
        try:
            got_loss, got = value_and_grad(fn, reduce=reduce)(make_ctx(), hx, hy)
        finally:
            dist.all_reduce = real
        assert calls == [4 * 3 + 3 + 1, 2], calls  # float32 bucket (+ loss), float64 bucket
        # the regulariser is counted once per rank: its share of the reduced loss
        extra = 0.0 if reduce == "mean" else 0.1 * float((make_ctx().variable("s") ** 2).sum())
        assert abs(float(got_loss) - float(full_loss) - extra) < 1e-4 * full_scale, (
            got_loss,
            full_loss,
        )
        for name in ("w", "b"):
            a, b = grad(got, name), grad(full, name)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, a, b)
        s_got, s_full = grad(got, "s"), grad(full, "s")
        factor = 1.0 if reduce == "mean" else float(world)  # each rank adds s's gradient
        assert torch.allclose(s_got, s_full * factor, rtol=1e-12), (s_got, s_full)

    try:
        value_and_grad(lambda c, x, y: (x * 2).sum(), reduce="mean")(make_ctx(), hx, hy)
    except TorchLeanError as e:
        assert str(e) == (
            "value_and_grad(<lambda>) (reduce='mean'): the loss depends on none of the"
            " variables `w`, `b`, `s`, so every gradient would be zero; compute the loss"
            " from the context the function receives (ctx.get_variable / functional_call"
            " on it), not from tensors captured outside it"
        ), e
    else:
        raise AssertionError("a loss reaching no variable was reduced")

    def data(step: int) -> Any:
        return half(step, rank, world)

    # uninterrupted: 6 steps
    want = params(train(make_ctx(), 6, data, reduce="mean").ctx)
    # 4 steps with folders at 2 and 4; a crashed save and a folder without its layout
    run = os.path.join(root, "run")
    first = train(
        make_ctx(), 4, data, reduce="mean", checkpoint_dir=run, checkpoint_every=2, distributed=True
    )
    assert [p.name for p in first.checkpoints] == ["step-000002", "step-000004"]
    if rank == 0:
        os.makedirs(os.path.join(run, "step-000005.partial"))
        os.makedirs(os.path.join(run, "step-000010"))
        open(os.path.join(run, "step-000010", "junk"), "w").close()
    dist.barrier()
    second = train(
        make_ctx(),
        6,
        data,
        reduce="mean",
        checkpoint_dir=run,
        checkpoint_every=2,
        distributed=True,
        resume=True,
        keep_last=2,
    )
    assert second.step == 6 and len(second.losses) == 2, second
    got = params(second.ctx)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    dist.barrier()
    names = sorted(os.listdir(run))
    assert names == ["step-000004", "step-000005.partial", "step-000006", "step-000010"], names

    # 1 -> 2: the folder of 2 one-process steps, resumed here to 4 steps
    one = train(
        make_ctx(),
        4,
        data,
        reduce="mean",
        checkpoint_dir=os.path.join(root, "one"),
        checkpoint_every=2,
        distributed=True,
        resume=True,
    )
    assert one.step == 4 and len(one.losses) == 2
    ref = params(train(make_ctx(), 4, batch).ctx)  # one process, whole batches
    for name, value in params(one.ctx).items():
        assert torch.allclose(value, ref[name], rtol=1e-5, atol=1e-6), name

    # for 2 -> 1: 4 steps saved by 2 processes
    train(
        make_ctx(),
        4,
        data,
        reduce="mean",
        checkpoint_dir=os.path.join(root, "two"),
        checkpoint_every=4,
        distributed=True,
    )
    dist.barrier()  # every rank done before any leaves (see _workers.leave)
    dist.destroy_process_group()

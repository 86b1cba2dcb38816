"""Workers of the FSDP2 tests (run by ``torch.multiprocessing``, gloo, CPU): a small MLP
sharded by ``fully_shard``, its DTensor parameters trained one torchlean step."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from _workers import join

BATCH = 6


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 4, generator=g), torch.randn(BATCH, 3, generator=g)


def step(ctx: Any, loss: Any, *args: Any) -> Any:
    """One value_and_grad + adamw step (not donated); the new context."""
    from torchlean import optim
    from torchlean.autograd import value_and_grad

    _, ctx = value_and_grad(loss)(ctx, *args)
    opt = optim.adamw(lr=0.1)
    new, _ = opt.step(ctx, opt.init(ctx), donate=False)
    return new


def fsdp_worker(rank: int, world: int, port: int) -> None:
    mesh = join(rank, world, port)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Replicate, Shard

    from torchlean.errors import TorchLeanError
    from torchlean.runtime import RuntimeContext

    model = mlp()
    template = copy.deepcopy(model)  # unsharded: functional_call runs on the context's
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    ctx = RuntimeContext.from_state_dict(dict(model.named_parameters()))
    w = ctx.variable_entry("0.weight")
    assert w is not None and w.backend == "dtensor" and w.dims == (8, 4), w
    assert w.local_dims == (4, 4), w

    x, y = batch()
    n = BATCH // world
    # each rank its part of the batch
    x_local = DTensor.from_local(x[rank * n : (rank + 1) * n], mesh, [Shard(0)])
    y_local = DTensor.from_local(y[rank * n : (rank + 1) * n], mesh, [Shard(0)])

    def loss(c: Any, xs: Any, ys: Any) -> Any:
        # FSDP's all-gather: its backward reduce-scatters into Shard(0) gradients
        full = {k: v.redistribute(placements=[Replicate()]) for k, v in c.state_dict().items()}
        out = torch.func.functional_call(template, full, (xs,))
        return ((out - ys) ** 2).mean().full_tensor()

    new = step(ctx, loss, x_local, y_local)
    got = {k: v.full_tensor() for k, v in new.state_dict().items()}  # for the comparison only

    def plain_loss(c: Any, xs: Any, ys: Any) -> Any:
        return ((torch.func.functional_call(template, c.state_dict(), (xs,)) - ys) ** 2).mean()

    ref = step(RuntimeContext.from_module(mlp()), plain_loss, x, y).state_dict()
    assert list(got) == list(ref) or set(got) == set(ref), (list(got), list(ref))
    for name, value in ref.items():
        assert torch.allclose(got[name], value, rtol=1e-5, atol=1e-6), name
        assert not torch.equal(value, template.state_dict()[name]), name  # it moved

    # functional_call on the FSDP module itself: FSDP's own parameters, not the context's
    def fsdp_loss(c: Any, xs: Any, ys: Any) -> Any:
        return ((torch.func.functional_call(model, c.state_dict(), (xs,)) - ys) ** 2).mean()

    try:
        step(ctx, fsdp_loss, x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n])
    except TorchLeanError as e:
        assert "FSDP2 module, after fully_shard, swaps its own sharded parameters in" in str(e)
        assert "the loss depends on none of the variables `" in str(e), e
    else:
        raise AssertionError("functional_call on an FSDP2 module gave zero gradients")
    dist.barrier()  # every rank done before any leaves (see _workers.leave)
    dist.destroy_process_group()

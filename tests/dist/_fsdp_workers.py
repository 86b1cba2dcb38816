"""Workers of the FSDP2 tests (run by ``torch.multiprocessing``, gloo, CPU): a small MLP
with a buffer, sharded by ``fully_shard``, taken by ``RuntimeContext.from_module`` and
trained a few torchlean steps by the recipe of docs/distributed.md."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from _workers import join

BATCH = 6
STEPS = 3


class Scaled(torch.nn.Module):
    """An MLP whose output is multiplied by a buffer (FSDP2 leaves buffers unsharded)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        )
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


class Tied(torch.nn.Module):
    """An embedding and an output layer sharing one weight (GPT-2's tie)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(6, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight


def mlp() -> Scaled:
    torch.manual_seed(0)
    return Scaled()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1 + step)
    return torch.randn(BATCH, 4, generator=g), torch.randn(BATCH, 3, generator=g)


def train(ctx: Any, loss: Any, batches: list[tuple[Any, ...]]) -> tuple[Any, list[Any]]:
    """``STEPS`` value_and_grad + adamw steps (donated); the last context, the losses."""
    from torchlean import optim
    from torchlean.autograd import value_and_grad

    opt = optim.adamw(lr=0.1)
    state = opt.init(ctx)
    grad_fn = value_and_grad(loss)
    losses = []
    for args in batches:
        value, ctx = grad_fn(ctx, *args)
        losses.append(value)
        ctx, state = opt.step(ctx, state)
    return ctx, losses


def sharded_mlp(mesh: Any, *, per_layer: bool = True) -> Scaled:
    """:func:`mlp` under ``fully_shard`` (each Linear first when ``per_layer``)."""
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    if per_layer:
        for layer in model.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def recipe_loss(mesh: Any) -> Any:
    """The documented recipe's loss: an unsharded module of the same class (on meta: no
    memory), run by functional_call on the context's DTensors all-gathered (FSDP's
    all-gather; the backward reduce-scatters into Shard(0) gradients) and the buffers as
    replicated; the squared error's mean as a plain tensor."""
    from torch.distributed.tensor import DTensor, Replicate

    with torch.device("meta"):
        template = Scaled()

    def loss(c: Any, xs: Any, ys: Any) -> Any:
        full = {
            k: v.redistribute(placements=[Replicate()])
            if isinstance(v, DTensor)
            else DTensor.from_local(v, mesh, [Replicate()], run_check=False)
            for k, v in c.state_dict().items()
        }
        out = torch.func.functional_call(template, full, (xs,))
        return ((out - ys) ** 2).mean().full_tensor()

    return loss


def fsdp_worker(rank: int, world: int, port: int) -> None:
    mesh = join(rank, world, port)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    from torchlean.errors import TorchLeanError
    from torchlean.runtime import RuntimeContext

    model = sharded_mlp(mesh)
    ctx = RuntimeContext.from_module(model)
    assert list(ctx.state_dict()) == list(model.state_dict()), list(ctx.state_dict())
    assert ctx.buffers() == ["scale"], ctx.buffers()
    w = ctx.variable_entry("net.0.weight")
    assert w is not None and w.backend == "dtensor" and w.dims == (8, 4), w
    assert w.local_dims == (4, 4) and w.placement is not None, w
    assert w.placement.startswith("S(0) on DeviceMesh"), w.placement
    scale = ctx.variable_entry("scale")
    assert scale is not None and scale.backend == "torch", scale
    # a copy: the module's own shards are not the context's
    assert w.t.to_local().data_ptr() != model.net[0].weight.to_local().data_ptr()

    loss = recipe_loss(mesh)  # the documented recipe

    n = BATCH // world
    mine = slice(rank * n, (rank + 1) * n)
    local = [
        tuple(DTensor.from_local(t[mine], mesh, [Shard(0)]) for t in batch(i)) for i in range(STEPS)
    ]
    new, losses = train(ctx, loss, local)
    grads = new.state_dict(gradients=True)
    assert [g.placements for g in grads.values()] == [(Shard(0),)] * 4, grads
    got = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in new.state_dict().items()}

    def plain_loss(c: Any, xs: Any, ys: Any) -> Any:
        return ((torch.func.functional_call(mlp(), c.state_dict(), (xs,)) - ys) ** 2).mean()

    ref, ref_losses = train(
        RuntimeContext.from_module(mlp()), plain_loss, [batch(i) for i in range(STEPS)]
    )
    start = mlp().state_dict()
    for a, b in zip(losses, ref_losses, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=0), (a, b)
    for name, value in ref.state_dict().items():
        # float32 rounding only (the ranks' partial sums add in another order): <= 6e-8
        assert torch.allclose(got[name], value, rtol=1e-5, atol=1e-6), name
        if name != "scale":
            assert not torch.equal(value, start[name]), name  # it moved
    assert torch.equal(got["scale"], start["scale"])  # a buffer: never updated

    # functional_call on the FSDP module itself: FSDP's own parameters, not the context's
    def fsdp_loss(c: Any, xs: Any, ys: Any) -> Any:
        return ((torch.func.functional_call(model, c.state_dict(), (xs,)) - ys) ** 2).mean()

    x, y = batch(0)
    try:
        train(RuntimeContext.from_module(model), fsdp_loss, [(x[mine], y[mine])])
    except TorchLeanError as e:
        assert "FSDP2 module, after fully_shard, swaps its own sharded parameters in" in str(e)
        assert "the loss depends on none of the variables `" in str(e), e
    else:
        raise AssertionError("functional_call on an FSDP2 module gave zero gradients")

    # a tie under fully_shard: one sharded variable and its alias
    tied = Tied()
    fully_shard(tied, mesh=mesh)
    tctx = RuntimeContext.from_module(tied)
    assert list(tctx.state_dict()) == ["emb.weight"], list(tctx.state_dict())
    assert tctx.aliases() == {"head.weight": "emb.weight"}, tctx.aliases()
    e = tctx.variable_entry("emb.weight")
    assert e is not None and e.backend == "dtensor" and e.local_dims == (3, 4), e
    dist.barrier()  # every rank done before any leaves (see _workers.leave)
    dist.destroy_process_group()

"""Workers of the ``fit`` on DTensor contexts tests (run by ``torch.multiprocessing``,
gloo, CPU): an FSDP2 context trained by ``fit`` with checkpoint folders, resumed, equal
to an uninterrupted run; ``Partial`` gradients reduced by ``fit(reduce_partial=True)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from _fsdp_workers import batch, recipe_loss, sharded_mlp
from _workers import bits, join, leave

STEPS = 4


def fsdp_fit_worker(rank: int, world: int, port: int, folder: str) -> None:
    mesh = join(rank, world, port)
    from torch.distributed.tensor import DTensor, Shard

    from torchlean import optim
    from torchlean.errors import BackendError
    from torchlean.io.distributed import is_checkpoint_folder
    from torchlean.runtime import RuntimeContext
    from torchlean.train import fit

    model = sharded_mlp(mesh)
    loss = recipe_loss(mesh)

    n = 6 // world
    mine = slice(rank * n, (rank + 1) * n)

    def data(step: int) -> tuple[Any, ...]:
        return tuple(DTensor.from_local(t[mine], mesh, [Shard(0)]) for t in batch(step))

    def run(steps: int, where: str, **kw: Any) -> Any:
        seen: list[int] = []
        result = fit(
            RuntimeContext.from_module(model),
            loss,
            optim.adamw(lr=0.1),
            data,
            steps=steps,
            progress=False,
            checkpoint_dir=Path(folder) / where,
            checkpoint_every=2,
            distributed=True,
            on_step=lambda info: seen.append(info.step),
            **kw,
        )
        return result, seen

    # uninterrupted: 4 steps, folders at 2 and 4
    whole, seen = run(STEPS, "whole")
    assert seen == [1, 2, 3, 4], seen
    assert [p.name for p in whole.checkpoints] == ["step-000002", "step-000004"]
    assert all(is_checkpoint_folder(p) for p in whole.checkpoints)
    # interrupted after 2, resumed from the folder of step 2 (every rank loads its shards)
    cut, seen = run(2, "cut")
    assert cut.losses == whole.losses[:2], (cut.losses, whole.losses)
    rest, seen = run(STEPS, "cut", resume=True)
    assert seen == [3, 4] and rest.step == STEPS, seen
    assert rest.losses == whole.losses[2:], (rest.losses, whole.losses)
    for got, want in ((rest.ctx, whole.ctx), (rest.state, whole.state)):
        assert list(got.state_dict()) == list(want.state_dict())
        for name, value in want.state_dict().items():
            other = got.state_dict()[name]
            if isinstance(value, DTensor):  # this rank's shard, in the same placements
                assert other.placements == value.placements, name
                value, other = value.to_local(), other.to_local()
            assert torch.equal(bits(value), bits(other)), name
    w = rest.ctx.variable_entry("net.0.weight")
    assert w is not None and w.placement is not None and w.placement.startswith("S(0)"), w
    assert w.local_dims == (4, 4), w

    # checkpoint files of DTensors: refused before the first step, nothing written
    try:
        fit(
            RuntimeContext.from_module(model),
            loss,
            optim.adamw(lr=0.1),
            data,
            steps=1,
            progress=False,
            checkpoint_dir=Path(folder) / "files",
            checkpoint_every=1,
        )
    except BackendError as e:
        assert str(e).startswith("fit: variable `net.0.weight` (<DTensor float32 (8, 4)"), e
        assert str(e).endswith(
            "; pass distributed=True (every process calls fit and"
            " writes its shards into checkpoint folders)"
        ), e
    else:
        raise AssertionError("fit wrote DTensors into checkpoint files")
    assert not (Path(folder) / "files").exists()
    leave()


def fsdp_resume_on_one(rank: int, world: int, port: int, folder: str) -> None:
    """The 2-rank folder of step 2 resumed by one process (an FSDP2 module on a mesh of
    one): its last two steps equal the 2-rank run's (its folder of step 4) within
    float32 rounding."""
    mesh = join(rank, world, port)
    from torch.distributed.tensor import DTensor, Replicate

    from torchlean import io, optim
    from torchlean.runtime import RuntimeContext
    from torchlean.train import fit

    model = sharded_mlp(mesh, per_layer=False)
    loss = recipe_loss(mesh)

    def data(step: int) -> tuple[Any, ...]:
        return tuple(DTensor.from_local(t, mesh, [Replicate()]) for t in batch(step))

    saved = Path(folder) / "whole"
    got = fit(
        RuntimeContext.from_module(model),
        loss,
        optim.adamw(lr=0.1),
        data,
        steps=STEPS,
        progress=False,
        checkpoint_dir=Path(folder) / "one",
        distributed=True,
        resume=saved / "step-000002",
    )
    assert got.step == STEPS and len(got.losses) == 2, got
    want = io.load(saved / "step-000004", backend="torch").state_dict()
    for prefix, ctx in (("model/", got.ctx), ("optim/", got.state)):
        for name, value in ctx.state_dict().items():
            if isinstance(value, DTensor):
                value = value.full_tensor()
            assert torch.allclose(value, want[prefix + name], rtol=1e-5, atol=1e-6), name
    leave()


def partial_fit_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Replicated DTensor parameters, a Shard(0) batch: Partial(sum) gradients, reduced
    by fit(reduce_partial=True); the steps equal the one-process steps, and a run cut
    after one step and resumed from its folder equals the uninterrupted run bitwise."""
    mesh = join(rank, world, port)
    import _partial_workers as pw
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    from torchlean import optim
    from torchlean.errors import TorchLeanError
    from torchlean.runtime import RuntimeContext
    from torchlean.train import fit

    def ctx() -> Any:
        return RuntimeContext.empty().with_variables(
            [(k, distribute_tensor(v, mesh, [Replicate()])) for k, v in pw.start().items()]
        )

    n = pw.BATCH // world
    mine = slice(rank * n, (rank + 1) * n)

    def data(step: int) -> tuple[Any, ...]:
        return tuple(DTensor.from_local(t[mine], mesh, [Shard(0)]) for t in pw.batch(step))

    # without the option: the step's refusal, naming it; nothing trained
    try:
        fit(ctx(), pw.loss, optim.adamw(lr=0.1), data, steps=pw.STEPS, progress=False)
    except TorchLeanError as e:
        assert "or let the optimizer step reduce its Partial placements" in str(e), e
        assert "fit(..., reduce_partial=True)" in str(e), e
    else:
        raise AssertionError("fit accepted Partial gradients without reduce_partial")

    def run(steps: int, **kw: Any) -> Any:
        return fit(
            ctx(),
            pw.loss,
            optim.adamw(lr=0.1),
            data,
            steps=steps,
            progress=False,
            reduce_partial=True,
            **kw,
        )

    got = run(pw.STEPS)
    where = {"checkpoint_dir": Path(folder) / "partial", "distributed": True}
    run(1, checkpoint_every=1, **where)
    resumed = run(pw.STEPS, resume=True, **where)
    assert resumed.losses == got.losses[1:], (resumed.losses, got.losses)
    for (name, value), other in zip(
        got.ctx.state_dict().items(), resumed.ctx.state_dict().values(), strict=True
    ):
        assert other.placements == value.placements, name
        assert torch.equal(bits(value.to_local()), bits(other.to_local())), name
    ref = pw.reference()
    for name, value in got.ctx.state_dict().items():
        assert value.placements == (Replicate(),), (name, value.placements)
        # float32 rounding only: the two ranks' partial sums add in another order
        assert torch.allclose(value.to_local(), ref[name], rtol=1e-5, atol=1e-6), name
    grads = got.ctx.state_dict(gradients=True)
    assert [g.placements for g in grads.values()] == [(Partial("sum"),)] * 2  # as given
    # two micro-batches a step: the Partial gradients add up, then the step reduces them
    two = fit(
        ctx(),
        pw.loss,
        optim.adamw(lr=0.1),
        data,
        steps=1,
        accumulate=2,
        progress=False,
        reduce_partial=True,
    )
    plain = RuntimeContext.empty().with_variables(list(pw.start().items()))
    ref2 = fit(
        plain, pw.loss, optim.adamw(lr=0.1), pw.batch, steps=1, accumulate=2, progress=False
    ).ctx.state_dict()
    for name, value in two.ctx.state_dict().items():
        assert torch.allclose(value.to_local(), ref2[name], rtol=1e-5, atol=1e-6), name
    leave()

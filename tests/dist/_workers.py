"""Worker functions of the multi-process tests (run by ``torch.multiprocessing``).

Each worker joins a gloo group of its own port, runs its checks with plain ``assert``
(a failure fails the spawn, and so the test), and leaves the group.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(fn: Callable[..., None], *args: Any, world: int = WORLD, timeout: float = 120) -> None:
    """Run ``fn(rank, world, port, *args)`` on ``world`` processes; fail after ``timeout``.

    The port is free when it is chosen, but another process (a second test run on the
    machine) may take it before rank 0 binds it: that one failure is retried on a new
    port, once."""
    for attempt in (1, 2):
        try:
            _spawn_once(fn, args, world, timeout)
            return
        except mp.ProcessRaisedException as e:
            if attempt == 2 or "address already in use" not in str(e).lower():
                raise


def _spawn_once(fn: Callable[..., None], args: tuple[Any, ...], world: int, timeout: float) -> None:
    port = free_port()
    pc = mp.spawn(fn, args=(world, port, *args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not pc.join(timeout=1):
        if time.monotonic() > deadline:
            for p in pc.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{fn.__name__} did not end within {timeout} s")


def leave() -> None:
    """Wait for every rank, then leave the group: a rank that destroyed its group while
    another was still in a collective (the end of a DCP load) aborts the other."""
    dist.barrier()
    dist.destroy_process_group()


def join(rank: int, world: int, port: int) -> Any:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor import init_device_mesh

    return init_device_mesh("cpu", (world,))


def weights() -> dict[str, torch.Tensor]:
    """The whole tensors every test saves: distinct values, so chunk-order bugs show."""
    return {
        "w": torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6) / 7,
        "b": torch.arange(5, dtype=torch.float64) - 2.5,
        "e": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
    }


def sharded_context(mesh: Any, dims: tuple[int, int] = (0, 0)) -> Any:
    """A context of DTensors: `w` sharded on ``dims[0]``, `b` replicated, `e` sharded
    on ``dims[1]``, a shadowed `w`, a gradient of `w`, and a plain tensor `n`."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from torchlean.runtime import RuntimeContext

    full = weights()
    ctx = RuntimeContext.empty().with_variables([("w", torch.zeros(8, 6))])
    ctx = ctx.register_variable("w", distribute_tensor(full["w"], mesh, [Shard(dims[0])]))
    ctx = ctx.with_variables(
        [
            ("b", distribute_tensor(full["b"], mesh, [Replicate()])),
            ("e", distribute_tensor(full["e"], mesh, [Shard(dims[1])])),
            ("n", torch.ones(3)),
        ]
    )
    grad = distribute_tensor(full["w"] * 2, mesh, [Shard(dims[0])])
    return ctx.with_gradients([("w", grad)])


def runtime_worker(rank: int, world: int, port: int) -> None:
    """Placement, local shapes, local views, collective check, in-place writes through
    the shard, placement mismatches, the donated step."""
    mesh = join(rank, world, port)
    from torch.distributed.tensor import Shard, distribute_tensor

    from torchlean import optim
    from torchlean.errors import InPlaceModificationError, TorchLeanError

    ctx = sharded_context(mesh)
    w = ctx.variable_entry("w")
    assert w is not None
    assert w.backend == "dtensor" and w.dims == (8, 6) and w.local_dims == (4, 6), w
    assert w.placement is not None and w.placement.startswith("S(0) on DeviceMesh")
    n = ctx.variable_entry("n")
    assert n is not None and n.placement is None and n.local_dims is None
    text = ctx.context_to_string()
    assert f"w: <local shard (4, 6) of (8, 6), {w.placement}: [[" in text, text
    report = ctx.check()
    assert report.ok and report.scope == f"local shards of rank {rank} of 2", report
    assert str(report) == f"no problems found (values read: local shards of rank {rank} of 2)"
    html = ctx._repr_html_()
    assert "local shards of rank" in html

    # a NaN in rank 1's shard only: local answers differ, the collective one agrees
    full = weights()["w"].clone()
    full[7, 5] = float("nan")
    bad = ctx.register_variable("w", distribute_tensor(full, mesh, [Shard(0)]))
    assert bool(bad.check()) is (rank == 0)
    summed = bad.check(collective=True)
    assert [p.message for p in summed] == ["variable `w` has 1 NaN value"], summed
    assert summed.scope == "summed over 2 processes"

    # a write through the local shard is seen
    raw = weights()["w"].clone()
    dt = distribute_tensor(raw, mesh, [Shard(0)])
    written = ctx.register_variable("v", dt)
    dt.to_local().add_(1)
    try:
        written.get_variable("v", (8, 6))
    except InPlaceModificationError:
        pass
    else:
        raise AssertionError("a write through to_local() was not detected")

    # a gradient laid out differently: reported by check, refused by the step
    opt = optim.adamw(lr=0.1)
    state = opt.init(ctx)
    moved = ctx.with_gradients([("w", distribute_tensor(weights()["w"], mesh, [Shard(1)]))])
    kinds = [p.kind for p in moved.check()]
    assert kinds == ["placement-mismatch"], kinds
    try:
        opt.step(moved, opt.init(moved), donate=False)
    except TorchLeanError as e:
        assert "is laid out as S(1)" in str(e) and "nothing was updated" in str(e), e
    else:
        raise AssertionError("the step accepted a gradient of another placement")

    # the donated step on DTensors equals the copying one
    expect, _ = opt.step(ctx, state, donate=False)
    got, _ = opt.step(ctx, state, donate=True)
    a, b = expect.get_variable("w", (8, 6)), got.get_variable("w", (8, 6))
    assert torch.equal(a.to_local(), b.to_local())
    assert not torch.equal(a.to_local(), weights()["w"].chunk(2)[rank])
    leave()


def checkpoint_worker(rank: int, world: int, port: int, folder: str, single: str) -> None:
    """Save Shard(0) (blocking and async); load 2->2 as Shard(1); load 1->2."""
    mesh = join(rank, world, port)
    from torchlean import io
    from torchlean.io.distributed import save_async

    ctx = sharded_context(mesh)
    io.save(ctx, os.path.join(folder, "blocking"), distributed=True)
    handle = save_async(ctx, os.path.join(folder, "async"))
    handle.wait(timeout=60)
    assert handle.done()
    like = sharded_context(mesh, dims=(1, 1))
    for name in ("blocking", "async", single):
        got = io.load(os.path.join(folder, name), like=like)
        _same(got, ctx, like)
    leave()


def _same(got: Any, saved: Any, like: Any) -> None:
    """``got`` holds ``saved``'s values bitwise, laid out as ``like``."""
    assert got.next_id == saved.next_id
    assert [n for n, _ in got.var_registry] == [n for n, _ in saved.var_registry]
    assert [n for n, _ in got.gradients] == [n for n, _ in saved.gradients]
    pairs = [
        *zip(got.var_registry, saved.var_registry, strict=True),
        *zip(got.gradients, saved.gradients, strict=True),
    ]
    for (name, a), (_, b) in pairs:
        x, y = a.t, b.t
        want = like.variable_entry(name)
        if hasattr(y, "full_tensor"):
            y = y.full_tensor()
        if hasattr(x, "full_tensor"):
            assert a.placement == want.placement, (name, a.placement, want.placement)
            x = x.full_tensor()
        assert x.dtype == y.dtype, name
        assert torch.equal(bits(x), bits(y)), name


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (a bitwise comparison, NaN and -0.0 included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def plain_context() -> Any:
    """:func:`sharded_context`'s entries as whole tensors, in one process."""
    from torchlean.runtime import RuntimeContext

    full = weights()
    ctx = RuntimeContext.empty().with_variables([("w", torch.zeros(8, 6))])
    ctx = ctx.register_variable("w", full["w"])
    ctx = ctx.with_variables([("b", full["b"]), ("e", full["e"]), ("n", torch.ones(3))])
    return ctx.with_gradients([("w", full["w"] * 2)])

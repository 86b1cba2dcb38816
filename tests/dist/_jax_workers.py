"""Workers of test_jax_sharded.py, run as ``python _jax_workers.py MODE ...`` in a fresh
process: the number of host devices (``XLA_FLAGS``) is fixed before jax is imported.

- ``views DIR``: 8 devices, explicit mesh axes: placement, printing, views, check().
- ``orbax DIR``: 8 devices: save under one sharding, restore under another and on one
  device, bitwise; inspect reads orbax's metadata only; save_async (orbax's own)
  returns after the copy, one in flight; a folder whose layout misses a key is refused.
- ``multi PROCESS PORT DIR``: one of 2 processes x 4 devices (``jax.distributed``):
  local shards printed and checked, check(collective=True), an orbax save (blocking
  and asynchronous) and a restore under another sharding.
"""

from __future__ import annotations

import os
import sys

MODE = sys.argv[1]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + (
    "4" if MODE == "multi" else "8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

if MODE == "multi":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{sys.argv[3]}",
        num_processes=2,
        process_id=int(sys.argv[2]),
        initialization_timeout=30,
    )

import io as _io  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from torchlean import io  # noqa: E402
from torchlean.errors import FormatError  # noqa: E402
from torchlean.runtime.functions import (  # noqa: E402
    context_to_string,
    empty_context,
    register_gradient,
    register_variable,
)

warnings.simplefilter("ignore")  # orbax's and jax's own notices


def values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def context(sharding: NamedSharding, bias: NamedSharding) -> object:
    ctx = empty_context()
    ctx = register_variable(ctx, "w", put(values((8, 4), 0), sharding))
    ctx = register_variable(ctx, "b", put(values((8,), 1), bias))
    ctx = register_variable(ctx, "w", put(values((8, 4), 2), sharding))  # shadows
    return register_gradient(ctx, "w", put(values((8, 4), 3), sharding))


def views(folder: str) -> None:
    from rich.console import Console

    mesh = jax.make_mesh((4, 2), ("x", "y"))  # explicit axes: jax's default
    sharding = NamedSharding(mesh, P("x", "y"))
    ctx = context(sharding, NamedSharding(mesh, P("x")))
    at = ctx.variable_entry("w")
    assert at.placement == (
        "P('x', 'y') on Mesh('x': 4, 'y': 2, axis_types=(Explicit, Explicit))"
    ), at.placement
    assert at.local_dims is None  # one process holds all of it
    # trailing unsharded axes do not count: P('x', None) is P('x')
    b2 = NamedSharding(mesh, P("x", None))
    assert at.library.placement(put(values((8, 4), 0), b2)) == at.library.placement(
        put(values((8, 4), 0), NamedSharding(mesh, P("x")))
    )
    text = context_to_string(ctx)
    plain = empty_context()
    for name, a in reversed(list(ctx.var_registry)):
        plain = register_variable(plain, name, np.asarray(a.t))
    plain = register_gradient(plain, "w", np.asarray(ctx.gradient_entry("w").t))
    assert text == context_to_string(plain)
    console = Console(file=_io.StringIO(), width=120)
    console.print(ctx)
    shown = console.file.getvalue()
    assert "(8, 4)" in shown and "no problems found" in shown, shown
    assert "(8, 4)" in ctx._repr_html_()
    report = ctx.check()
    assert not report.problems and report.scope is None, report
    # a gradient laid out differently is reported, and the step refuses it
    other = ctx.with_gradients([("w", put(values((8, 4), 3), NamedSharding(mesh, P("y", "x"))))])
    kinds = [p.kind for p in other.check().problems]
    assert kinds == ["placement-mismatch"], kinds
    planned_steps(mesh)
    # a NaN in one shard
    bad = values((8, 4), 4)
    bad[7, 3] = np.nan
    nan_ctx = ctx.with_variables([("w", put(bad, sharding))])
    (problem,) = nan_ctx.check().problems
    assert problem.kind == "non-finite", problem
    (problem,) = nan_ctx.check(collective=True).problems
    assert problem.kind == "non-finite", problem
    print("views ok")


def planned_steps(explicit: object) -> None:
    """The step's cached plan (optim/_plan.py) keys on placements: after two planned
    steps of one layout, a gradient sharded otherwise is refused by torchlean's check
    (explicit mesh axes: jax's own error otherwise; auto axes: a silent reshard)."""
    from jax.sharding import AxisType

    from torchlean import optim
    from torchlean.errors import TorchLeanError

    auto = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    for mesh in (explicit, auto):
        row, col = NamedSharding(mesh, P("x")), NamedSharding(mesh, P("y"))
        ctx = empty_context().with_variables([("w", put(values((8, 4), 5), row))])
        opt = optim.adamw(lr=0.1)
        state = opt.init(ctx)
        for seed in (6, 7):
            grads = ctx.with_gradients([("w", put(values((8, 4), seed), row))])
            new, state = opt.step(grads, state, donate=False)
            assert new.variable_entry("w").placement == ctx.variable_entry("w").placement
        assert len(opt._plans.plans) == 1  # the fast path ran
        moved = ctx.with_gradients([("w", put(values((8, 4), 8), col))])
        try:
            opt.step(moved, state, donate=False)
        except TorchLeanError as e:
            assert str(e).startswith("optimizer step: gradient `w` is laid out as P('y')"), e
            assert str(e).endswith("; nothing was updated"), e
        else:
            raise AssertionError("a planned step took a gradient sharded otherwise")
        # donated: once the plan saw the update keep its placements, it no longer reads
        # what it wrote, and still reads every new gradient
        ctx = empty_context().with_variables([("w", put(values((8, 4), 5), row))], adopt=True)
        state = opt.init(ctx)
        for seed in (6, 7, 8, 9):
            grads = ctx.with_gradients([("w", put(values((8, 4), seed), row))])
            ctx, state = opt.step(grads, state)
        (plan,) = opt._plans.plans
        assert plan.settled and plan.placements == [ctx.variable_entry("w").placement]
        moved = ctx.with_gradients([("w", put(values((8, 4), 8), col))])
        try:
            opt.step(moved, state)
        except TorchLeanError as e:
            assert str(e).startswith("optimizer step: gradient `w` is laid out as P('y')"), e
        else:
            raise AssertionError("a settled plan took a gradient sharded otherwise")
        # the bulk read of placements answers as the one-by-one read
        library = ctx.variable_entry("w").library
        mixed = [put(values((8, 4), 1), row), jnp.zeros(3), put(values((8, 4), 2), col)]
        for arrays in (mixed, mixed[1:2] * 3, mixed[::2], []):
            assert library.placements(arrays) == list(map(library.placement, arrays))


def orbax(folder: str) -> None:
    mesh = jax.make_mesh((8,), ("x",))
    ctx = context(NamedSharding(mesh, P("x")), NamedSharding(mesh, P()))
    path = os.path.join(folder, "ckpt.orbax")
    io.save(ctx, path)
    assert sorted(os.listdir(folder)) == ["ckpt.orbax"]  # no .partial left
    assert io.format_of(path) == "orbax"
    io.save(ctx, path)  # over an older folder
    assert sorted(os.listdir(folder)) == ["ckpt.orbax"]
    other = jax.make_mesh((2, 4), ("a", "b"))
    like = context(NamedSharding(other, P("b", "a")), NamedSharding(other, P("a")))
    got = io.load(path, like=like)
    whole = io.load(path, backend="jax")
    as_numpy = io.load(path)
    for loaded in (got, whole, as_numpy):
        assert [n for n, _ in loaded.var_registry] == ["w", "b", "w"]
        assert [n for n, _ in loaded.gradients] == ["w"]
        assert loaded.next_id == ctx.next_id
        pairs = list(
            zip(
                ctx.var_registry + ctx.gradients,
                loaded.var_registry + loaded.gradients,
                strict=True,
            )
        )
        for (_, a), (_, b) in pairs:
            assert np.asarray(a.t).tobytes() == np.asarray(b.t).tobytes()
    assert got.variable_entry("w").t.sharding == like.variable_entry("w").t.sharding
    assert len(whole.variable_entry("w").t.sharding.device_set) == 1
    inspect_and_async(folder, ctx, path)
    # a layout that lost a key: refused before any array is read
    layout_path = os.path.join(path, "torchlean-orbax.json")
    with open(layout_path) as f:
        layout = json.load(f)
    layout["keys"].pop("b")
    layout["variables"] = [p for p in layout["variables"] if p[1] != "b"]
    with open(layout_path, "w") as f:
        json.dump(layout, f)
    try:
        io.load(path)
    except FormatError as e:
        assert "orbax array `t1` is not in the layout" in str(e), e
    else:
        raise AssertionError("a missing key was not refused")
    io.save(ctx, path)
    with open(layout_path) as f:
        layout = json.load(f)
    layout["keys"]["b"]["shape"] = [9]  # orbax refuses the target; the reason is named
    with open(layout_path, "w") as f:
        json.dump(layout, f)
    for read in (io.load, io.inspect):
        try:
            read(path)
        except FormatError as e:
            assert str(e) == (
                f"{path}: the arrays do not match the layout: `b` has shape (8,) in the"
                " arrays, (9,) in the layout"
            ), e
        else:
            raise AssertionError("a reshaped key was not refused")
    print("orbax ok")


def _same(a: object, b: object) -> None:
    pairs = zip(a.var_registry + a.gradients, b.var_registry + b.gradients, strict=True)  # type: ignore[attr-defined]
    for (n, x), (m, y) in pairs:
        assert n == m and np.asarray(x.t).tobytes() == np.asarray(y.t).tobytes(), n


def inspect_and_async(folder: str, ctx: object, path: str) -> None:
    """inspect reads orbax's metadata only; save_async returns after orbax's copy, at
    most one in flight, and its folder appears complete."""
    import shutil

    from torchlean.io import orbax as orbax_io

    checkpointer = orbax_io._orbax()
    restores = []
    restore = checkpointer.restore
    checkpointer.restore = lambda *a, **k: restores.append(1) or restore(*a, **k)
    try:
        fs = io.inspect(path)
        assert [(e.name, e.registry, e.shadowed, e.shape, e.dtype) for e in fs.entries] == [
            ("w", "variable", False, (8, 4), "float32"),
            ("b", "variable", False, (8,), "float32"),
            ("w", "variable", True, (8, 4), "float32"),
            ("w", "gradient", False, (8, 4), "float32"),
        ], fs.entries
        assert fs.next_id == ctx.next_id and restores == []  # type: ignore[attr-defined]
        w = fs.tensor("w")
        assert restores == [1]
        assert w.tobytes() == np.asarray(ctx.variable_entry("w").t).tobytes()  # type: ignore[attr-defined]
        fs.tensor("b")
        assert restores == [1]  # restored once
    finally:
        checkpointer.restore = restore
    mesh = jax.make_mesh((8,), ("x",))
    fresh = context(NamedSharding(mesh, P("x")), NamedSharding(mesh, P()))
    first, second = os.path.join(folder, "a.orbax"), os.path.join(folder, "b.orbax")
    handle = orbax_io.save_async(fresh, first)
    for _, at in fresh.var_registry + fresh.gradients:  # type: ignore[attr-defined]
        at.t.delete()  # orbax has its copy: the arrays may go
    later = orbax_io.save_async(ctx, second)  # waits for the first
    assert handle.done() and io.format_of(first) == "orbax"
    later.wait()
    assert later.done() and not os.path.exists(second + ".partial")
    _same(io.load(first), context(NamedSharding(mesh, P("x")), NamedSharding(mesh, P())))
    _same(io.load(second), ctx)
    shutil.rmtree(first)
    shutil.rmtree(second)


def multi(folder: str) -> None:
    rank = jax.process_index()
    mesh = jax.make_mesh((8,), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    w = values((8, 4), 0)
    bad = w.copy()
    bad[6, 0] = np.nan  # in process 1's rows (4..7)
    ctx = empty_context()
    ctx = register_variable(ctx, "w", put(bad, sharding))
    ctx = register_variable(ctx, "b", put(values((8,), 1), NamedSharding(mesh, P())))
    at = ctx.variable_entry("w")
    assert at.local_dims == (4, 4), at.local_dims
    assert not at.t.is_fully_addressable
    text = context_to_string(ctx)
    assert text.startswith("Context(vars: [b: <local shard (8,) of (8,), P() on Mesh('x': 8"), text
    assert "w: <local shard (4, 4) of (8, 4), P('x') on Mesh(" in text, text
    from rich.console import Console

    console = Console(file=_io.StringIO(), width=140)
    console.print(ctx)
    assert "process " + str(rank) + " of 2" in console.file.getvalue()
    local = ctx.check()
    assert local.scope == f"local shards of process {rank} of 2", local.scope
    assert [p.kind for p in local.problems] == (["non-finite"] if rank == 1 else [])
    summed = ctx.check(collective=True)
    assert summed.scope == "summed over 2 processes", summed.scope
    (problem,) = summed.problems
    assert problem.kind == "non-finite", problem
    good = ctx.with_variables([("w", put(w, sharding))])
    path = os.path.join(folder, "multi.orbax")
    io.save(good, path)
    other = jax.make_mesh((2, 4), ("a", "b"))  # another mesh: a reshard on restore
    like = empty_context()
    zeros = np.zeros((8, 4), np.float32)
    like = register_variable(like, "w", put(zeros, NamedSharding(other, P("b", "a"))))
    like = register_variable(like, "b", put(zeros[:, 0], NamedSharding(other, P("a"))))
    got = io.load(path, like=like)
    for name, want in (("w", w), ("b", values((8,), 1))):
        value = got.variable_entry(name).t
        assert value.sharding == like.variable_entry(name).t.sharding
        for shard in value.addressable_shards:
            assert np.asarray(shard.data).tobytes() == want[shard.index].tobytes(), name
    # orbax's asynchronous save by both processes: process 0 finishes the folder in
    # orbax's commit step, before orbax's closing barrier lets process 1 return
    from torchlean.io.orbax import save_async

    later = os.path.join(folder, "async.orbax")
    save_async(good, later).wait()
    assert io.format_of(later) == "orbax" and not os.path.exists(later + ".partial")
    got = io.load(later, like=like)
    for shard in got.variable_entry("w").t.addressable_shards:
        assert np.asarray(shard.data).tobytes() == w[shard.index].tobytes()
    print(f"multi {rank} ok", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if MODE == "views":
        views(sys.argv[2])
    elif MODE == "orbax":
        orbax(sys.argv[2])
    else:
        multi(sys.argv[4])

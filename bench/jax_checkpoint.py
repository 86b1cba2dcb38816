"""orbax checkpoint folders vs raw orbax on 8 host devices: save, restore, reshard.

Usage: PYTHONPATH=src python bench/jax_checkpoint.py [--mib 100] [--repeat 5]

Both sides hand the same sharded ``jax.Array``s (``P('x')`` over a mesh of 8 host
devices) to one ``ocp.StandardCheckpointer``; torchlean adds the context layout file,
the partial folder and its rename on save, and the layout-vs-metadata check on restore.
"restore" restores under the saving sharding, "reshard" onto another mesh
(``(2, 4)``, ``P('b', 'a')``); both sides restore with the same explicit target. Runs
are interleaved, each pair in both orders (torchlean first, then raw first, ...); medians
and their ratios.
"async" times the blocking part of orbax's asynchronous save on both sides
(``torchlean.io.orbax.save_async`` and ``StandardCheckpointer.save``), each waited for
outside the timed part, in both orders; "inspect" reads the layout and orbax's metadata
(torchlean) vs orbax's metadata alone (raw). Each row ends with the medians of this
process's CPU time over the same intervals (every thread; less sensitive than wall
time to the other processes of a shared machine) and their ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from torchlean import io
from torchlean.io.orbax import save_async
from torchlean.runtime.functions import empty_context, register_variable

warnings.simplefilter("ignore")


def arrays(mib: int, sharding: NamedSharding, count: int = 16) -> dict[str, Any]:
    rows = mib * (1 << 20) // 4 // count // 1024
    rows -= rows % 8
    rng = np.random.default_rng(0)
    out = {}
    for i in range(count):
        host = rng.standard_normal((rows, 1024), dtype=np.float32)
        out[f"layer{i}.weight"] = jax.device_put(host, sharding)
    return out


def context(values: dict[str, Any]) -> Any:
    ctx = empty_context()
    for name, value in values.items():
        ctx = register_variable(ctx, name, value)
    return ctx


#: CPU seconds of the last :func:`timed` call (this process, every thread).
CPU: list[float] = []


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of ``fn()`` (until its arrays are ready); its CPU seconds go
    to :data:`CPU`."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    jax.block_until_ready(out) if out is not None else None
    CPU[:] = [time.process_time() - cpu]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    mesh = jax.make_mesh((8,), ("x",))
    values = arrays(args.mib, NamedSharding(mesh, P("x")))
    ctx = context(values)
    other = jax.make_mesh((2, 4), ("a", "b"))
    like_values = {
        k: jax.device_put(v, NamedSharding(other, P("b", "a"))) for k, v in values.items()
    }
    like = context(like_values)
    raw = ocp.StandardCheckpointer()
    names = {k: f"t{i}" for i, k in enumerate(values)}  # the names torchlean gives orbax

    def target(source: dict[str, Any]) -> dict[str, Any]:
        return {
            names[k]: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
            for k, v in source.items()
        }

    same, moved = target(values), target(like_values)
    state = {names[k]: v for k, v in values.items()}
    times: dict[str, list[float]] = {}
    root = tempfile.mkdtemp(prefix="jaxckpt-")
    try:
        ours, theirs = os.path.join(root, "ours.orbax"), os.path.join(root, "raw")
        ours_async = os.path.join(root, "ours-async.orbax")
        theirs_async = os.path.join(root, "raw-async")
        for _ in range(args.repeat):
            for d in (ours, theirs):
                shutil.rmtree(d, ignore_errors=True)

            def raw_save() -> None:
                os.makedirs(theirs)
                raw.save(os.path.join(theirs, "arrays"), state)
                raw.wait_until_finished()

            runs = [
                ("save torchlean", lambda: io.save(ctx, ours)),
                ("save raw", raw_save),
                ("restore torchlean", lambda: list(io.load(ours, like=ctx).state_dict().values())),
                (
                    "restore raw",
                    lambda: list(raw.restore(os.path.join(theirs, "arrays"), same).values()),
                ),
                ("reshard torchlean", lambda: list(io.load(ours, like=like).state_dict().values())),
                (
                    "reshard raw",
                    lambda: list(raw.restore(os.path.join(theirs, "arrays"), moved).values()),
                ),
            ]
            flip = len(times.get("save raw", ())) % 2 == 1  # each pair in both orders
            for j in range(0, len(runs), 2):
                pair = runs[j : j + 2]
                for label, fn in reversed(pair) if flip else pair:
                    times.setdefault(label, []).append(timed(fn))
                    times.setdefault(label + " cpu", []).append(CPU[0])
            # the blocking part of orbax's asynchronous save (torchlean's save_async and
            # raw StandardCheckpointer.save), each waited for outside the timed part;
            # both orders, alternating
            sides = ("torchlean", "raw") if len(times["save raw"]) % 2 else ("raw", "torchlean")
            for side in sides:
                for d in (ours_async, theirs_async):
                    shutil.rmtree(d, ignore_errors=True)
                if side == "torchlean":
                    handle = None

                    def ours_async_save() -> None:
                        nonlocal handle
                        handle = save_async(ctx, ours_async)

                    times.setdefault("async torchlean", []).append(timed(ours_async_save))
                    times.setdefault("async torchlean cpu", []).append(CPU[0])
                    assert handle is not None
                    handle.wait()
                else:

                    def raw_async_save() -> None:
                        os.makedirs(theirs_async)
                        raw.save(os.path.join(theirs_async, "arrays"), state)

                    times.setdefault("async raw", []).append(timed(raw_async_save))
                    times.setdefault("async raw cpu", []).append(CPU[0])
                    raw.wait_until_finished()
            # inspect: the layout and orbax's metadata vs orbax's metadata alone
            runs = [
                ("inspect torchlean", lambda: io.inspect(ours).entries and None),
                ("inspect raw", lambda: raw.metadata(os.path.join(theirs, "arrays")) and None),
            ]
            for label, fn in runs:
                times.setdefault(label, []).append(timed(fn))
                times.setdefault(label + " cpu", []).append(CPU[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"8 host devices, {args.mib} MiB of float32 in {len(values)} arrays,"
        f" {args.repeat} interleaved runs"
    )
    for op in ("save", "restore", "reshard", "async", "inspect"):
        a, b = (statistics.median(times[f"{op} {side}"]) * 1e3 for side in ("torchlean", "raw"))
        ca, cb = (
            statistics.median(times[f"{op} {side} cpu"]) * 1e3 for side in ("torchlean", "raw")
        )
        print(
            f"{op:8} torchlean {a:7.1f} ms  raw orbax {b:7.1f} ms  ratio {a / b:.2f}x"
            f"   cpu {ca:6.1f} / {cb:6.1f} ms  {ca / cb:.2f}x"
        )


if __name__ == "__main__":
    main()

"""Checkpoint folders vs raw DCP on 2 gloo ranks (CPU): save, load, reshard, async, convert.

Usage: PYTHONPATH=src python bench/dist_checkpoint.py [--mib 100] [--repeat 5]

Both sides write the same DTensors (Shard(0) over 2 ranks) with DCP's safetensors
storage (``HuggingFaceStorageWriter(save_distributed=True)``), each into a fresh folder
(the previous run's folders are removed outside the timed part); torchlean adds the
layout file, the partial folder and its rename, and the header checks on load. Runs are
interleaved (torchlean, raw, torchlean, raw, ...) and medians printed with their ratio,
then the medians of the process's CPU time over the same intervals (rank 0's for the
2-rank rows) and their ratio: on a shared machine wall-clock times of one command vary
by a factor of 2-3 from run to run, CPU times much less.

- save, load (Shard(0) -> Shard(0)), reshard 2->2 (-> Shard(1)), 1->2 (a folder saved by
  one process, loaded as Shard(0)), 2->1 (one process, whole tensors): each rank's time
  between two barriers.
- async: the blocking part of ``save_async`` vs raw ``async_save`` (each on a gloo group
  of its own), then both are waited for outside the timed part.
- 2->1 reads the same bytes with the same reader (``HuggingFaceStorageReader``) into
  fresh whole tensors on both sides (raw: ``torch.empty_like`` inside the timed part).
- convert: ``torchlean convert DIR model.safetensors`` (reads, writes, checks the
  written header and bytes) vs ``dcp_to_torch_save`` of a raw DCP folder
  (``FileSystemWriter``) of the same tensors, in one process.
- the one-process pairs run in both orders, alternating.
"""

from __future__ import annotations

import argparse
import contextlib
import io as _io
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N = 16


def _raw_save(state: dict[str, Any], folder: str, *, no_dist: bool = False) -> None:
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict_saver import save

    writer = HuggingFaceStorageWriter(folder, save_distributed=True)
    save(state, storage_writer=writer, no_dist=no_dist)


def _raw_load(state: dict[str, Any], folder: str, *, no_dist: bool = False) -> None:
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict_loader import load

    load(state, storage_reader=HuggingFaceStorageReader(folder), no_dist=no_dist)


def _whole(mib: int) -> dict[str, torch.Tensor]:
    rows = mib * (1 << 20) // 4 // N // 1024
    gen = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(rows, 1024, generator=gen) for i in range(N)}


def _median(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _print(med: dict[str, float], ops: tuple[str, ...], raw: str = "raw dcp") -> None:
    """One row per operation: wall-clock medians and their ratio, then the medians of
    this process's CPU time over the same intervals (less sensitive to the other
    processes of a shared machine) and theirs."""
    for op in ops:
        tl, r = med[f"{op} torchlean"], med[f"{op} raw"]
        ctl, cr = med[f"{op} torchlean cpu"], med[f"{op} raw cpu"]
        print(
            f"{op:8s} torchlean {tl:7.1f} ms  {raw} {r:7.1f} ms  ratio {tl / r:.2f}x"
            f"   cpu {ctl:6.1f} / {cr:6.1f} ms  {ctl / cr:.2f}x"
        )


def worker(rank: int, port: int, mib: int, repeat: int, root: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict_saver import async_save
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from torchlean import io
    from torchlean.io.distributed import save_async
    from torchlean.runtime import RuntimeContext

    mesh = init_device_mesh("cpu", (2,))
    whole = _whole(mib)
    tensors = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in whole.items()}
    ctx = RuntimeContext.empty().with_variables(list(tensors.items()))
    like = RuntimeContext.empty().with_variables(
        [(k, distribute_tensor(torch.zeros_like(v), mesh, [Shard(1)])) for k, v in whole.items()]
    )
    raw_group = dist.new_group(backend="gloo")  # as save_async's own
    times: dict[str, list[float]] = {}

    def timed(label: str, fn: Any) -> Any:
        dist.barrier()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        dist.barrier()
        times.setdefault(label, []).append(time.perf_counter() - t)
        times.setdefault(label + " cpu", []).append(time.process_time() - c)
        return out

    def fresh(*names: str) -> list[str]:
        paths = [os.path.join(root, n) for n in names]
        if rank == 0:
            for p in paths:
                shutil.rmtree(p, ignore_errors=True)
        dist.barrier()
        return paths

    one_a, one_b = os.path.join(root, "tl-one"), os.path.join(root, "raw-one")
    raw_like = {k: torch.empty_like(at.t) for k, at in like.var_registry}

    def once(i: int) -> None:
        a, b, aa, ba = fresh("tl", "raw", "tl-async", "raw-async")
        timed("save torchlean", lambda: io.save(ctx, a, distributed=True))
        timed("save raw", lambda: _raw_save(dict(tensors), b))
        timed("load torchlean", lambda: io.load(a, like=ctx))
        timed(
            "load raw", lambda: _raw_load({k: torch.empty_like(v) for k, v in tensors.items()}, b)
        )
        timed("reshard torchlean", lambda: io.load(a, like=like))
        timed(
            "reshard raw",
            lambda: _raw_load({k: torch.empty_like(v) for k, v in raw_like.items()}, b),
        )
        timed("1->2 torchlean", lambda: io.load(one_a, like=ctx))
        timed(
            "1->2 raw",
            lambda: _raw_load({k: torch.empty_like(v) for k, v in tensors.items()}, one_b),
        )
        writer = HuggingFaceStorageWriter(ba, save_distributed=True)
        for side in ("torchlean", "raw") if i % 2 == 0 else ("raw", "torchlean"):  # both orders
            if side == "torchlean":
                timed("async torchlean", lambda: save_async(ctx, aa)).wait()
            else:
                timed(
                    "async raw",
                    lambda: async_save(
                        dict(tensors), storage_writer=writer, process_group=raw_group
                    ),
                ).result()
        dist.barrier()

    for i in range(repeat):
        once(i)
    if rank == 0:
        print(f"2 ranks, {mib} MiB of float32 in {N} tensors, {repeat} interleaved runs")
        _print(_median(times), ("save", "load", "reshard", "1->2", "async"))
    dist.destroy_process_group()


def one_process(mib: int, repeat: int, root: str) -> None:
    """2->1 loads of the workers' last folders, and convert vs dcp_to_torch_save."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict_saver import save

    from torchlean import io
    from torchlean.cli import main as cli

    whole = _whole(mib)
    a, b = os.path.join(root, "tl"), os.path.join(root, "raw")
    fs = os.path.join(root, "raw-fs")
    save(dict(whole), storage_writer=FileSystemWriter(fs), no_dist=True)
    times: dict[str, list[float]] = {}

    def timed(label: str, fn: Any) -> None:
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.setdefault(label, []).append(time.perf_counter() - t)
        times.setdefault(label + " cpu", []).append(time.process_time() - c)

    def convert_torchlean(out: str) -> None:
        with contextlib.redirect_stdout(_io.StringIO()):
            cli(["convert", a, out])

    for i in range(repeat):
        # both orders: whichever runs first after the previous round's frees pays the
        # page faults of memory the allocator returned to the system (in one fixed
        # order that alone made the 2->1 row read 5x)
        sides = ("torchlean", "raw") if i % 2 == 0 else ("raw", "torchlean")
        for side in sides:
            if side == "torchlean":
                timed("2->1 torchlean", lambda: io.load(a, backend="torch"))
            else:
                timed(
                    "2->1 raw",
                    lambda: _raw_load(
                        {k: torch.empty_like(v) for k, v in whole.items()}, b, no_dist=True
                    ),
                )
        out_a, out_b = os.path.join(root, f"m{i}.safetensors"), os.path.join(root, f"m{i}.pt")
        for side in sides:
            if side == "torchlean":
                timed("convert torchlean", lambda out=out_a: convert_torchlean(out))
            else:
                timed("convert raw", lambda out=out_b: dcp_to_torch_save(fs, out))
        os.unlink(out_a)
        os.unlink(out_b)
    _print(_median(times), ("2->1", "convert"), raw="raw    ")
    print("(convert raw: dcp_to_torch_save of a FileSystemWriter folder into a .pt)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # DCP's "assuming ... single process"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tempfile.mkdtemp(prefix="dist_ckpt_")
    try:
        from torchlean import io
        from torchlean.runtime import RuntimeContext

        whole = _whole(args.mib)  # the 1->2 folders, saved by one process
        io.save(
            RuntimeContext.empty().with_variables(list(whole.items())),
            os.path.join(root, "tl-one"),
            distributed=True,
        )
        _raw_save(dict(whole), os.path.join(root, "raw-one"), no_dist=True)
        mp.spawn(worker, args=(port, args.mib, args.repeat, root), nprocs=2)
        one_process(args.mib, args.repeat, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

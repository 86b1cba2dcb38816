"""Checkpoint folders vs raw DCP on 2 gloo ranks (CPU): save, load, reshard, async.

Usage: PYTHONPATH=src python bench/dist_checkpoint.py [--mib 100] [--repeat 5]

Both sides write the same DTensors (Shard(0) over 2 ranks) with DCP's safetensors
storage (``HuggingFaceStorageWriter(save_distributed=True)``); torchlean adds the layout
file, the partial folder and its rename, and the header checks on load. Runs are
interleaved (torchlean, raw, torchlean, raw, ...) and medians printed with their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _raw_save(state: dict[str, Any], folder: str) -> None:
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict_saver import save

    save(state, storage_writer=HuggingFaceStorageWriter(folder, save_distributed=True))


def _raw_load(state: dict[str, Any], folder: str) -> None:
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict_loader import load

    load(state, storage_reader=HuggingFaceStorageReader(folder))


def worker(rank: int, port: int, mib: int, repeat: int, root: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from torchlean import io
    from torchlean.io.distributed import save_async
    from torchlean.runtime import RuntimeContext

    mesh = init_device_mesh("cpu", (2,))
    n = 16
    rows = mib * (1 << 20) // 4 // n // 1024
    names = [f"layer{i}.weight" for i in range(n)]
    tensors = {k: distribute_tensor(torch.randn(rows, 1024), mesh, [Shard(0)]) for k in names}
    ctx = RuntimeContext.empty().with_variables(list(tensors.items()))
    like = RuntimeContext.empty().with_variables(
        [(k, distribute_tensor(torch.zeros(rows, 1024), mesh, [Shard(1)])) for k in names]
    )
    times: dict[str, list[float]] = {}

    def timed(label: str, fn: Any) -> None:
        dist.barrier()
        t = time.perf_counter()
        fn()
        dist.barrier()
        times.setdefault(label, []).append(time.perf_counter() - t)

    a, b = os.path.join(root, "tl"), os.path.join(root, "raw")
    for i in range(repeat):
        timed("save torchlean", lambda: io.save(ctx, a, distributed=True))
        if rank == 0:
            shutil.rmtree(b, ignore_errors=True)
        dist.barrier()
        timed("save raw dcp", lambda: _raw_save(dict(tensors), b))
        timed("load torchlean", lambda: io.load(a, like=ctx))
        timed(
            "load raw dcp",
            lambda: _raw_load({k: torch.empty_like(v) for k, v in tensors.items()}, b),
        )
        timed("reshard torchlean", lambda: io.load(a, like=like))
        timed(
            "reshard raw dcp",
            lambda: _raw_load({k: torch.empty_like(at.t) for k, at in like.var_registry}, b),
        )
        timed(
            "async block torchlean", lambda i=i: setattr(worker, "h", save_async(ctx, a + str(i)))
        )
        worker.h.wait()  # type: ignore[attr-defined]
        dist.barrier()
    if rank == 0:
        print(f"2 ranks, {mib} MiB of float32 in {n} tensors, {repeat} interleaved runs")
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for op in ("save", "load", "reshard"):
            tl, raw = med[f"{op} torchlean"], med[f"{op} raw dcp"]
            print(f"{op:8s} torchlean {tl:8.1f} ms   raw dcp {raw:8.1f} ms   ratio {tl / raw:.2f}x")
        print(f"async blocking part {med['async block torchlean']:8.1f} ms")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tempfile.mkdtemp(prefix="dist_ckpt_")
    try:
        mp.spawn(worker, args=(port, args.mib, args.repeat, root), nprocs=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

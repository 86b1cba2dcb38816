"""TorchLean JSON: torchlean.io.save/load against the reference path, side by side.

Reference save: ``tensor.tolist()`` + ``json.dump(indent=2)``; reference load:
``json.load`` + ``np.array(..., dtype=float32)`` per tensor. Both write and read the same
numbers (checked bit for bit). Run:

    PYTHONPATH=src python bench/io_json.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import torchlean.io as tio
from torchlean import RuntimeContext

REPEATS = int(os.environ.get("REPEATS", "7"))


def paired(
    a: Callable[[], Any], b: Callable[[], Any], repeats: int = REPEATS
) -> tuple[float, float]:
    """Median times of ``a`` and ``b``, run alternately so both see the same noise."""
    ta, tb = [], []
    for _ in range(repeats):
        for f, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def reference_save(state: dict[str, torch.Tensor], path: str) -> None:
    doc = {"params": {n: t.tolist() for n, t in state.items()}, "meta": {"dtype": "float32"}}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)


def reference_load(path: str) -> dict[str, np.ndarray[Any, Any]]:
    with open(path) as f:
        doc = json.load(f)
    return {n: np.array(v, dtype=np.float32) for n, v in doc["params"].items()}


def main() -> int:
    rng = np.random.default_rng(0)
    shapes = {
        "emb": (2048, 256),
        "fc1.weight": (512, 256),
        "fc1.bias": (512,),
        "fc2.weight": (256, 512),
    }
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    state = {n: torch.from_numpy(a) for n, a in arrays.items()}
    ctx = RuntimeContext.from_state_dict(arrays)
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = os.path.join(tmp, "ref.json")
        tl_path = os.path.join(tmp, "tl.json")
        ref_save, tl_save = paired(
            lambda: reference_save(state, ref_path), lambda: tio.save(ctx, tl_path)
        )
        ref_load, tl_load = paired(lambda: reference_load(ref_path), lambda: tio.load(tl_path))
        _, tl_load_ref_file = paired(lambda: None, lambda: tio.load(ref_path))
        # the same numbers, bit for bit, whichever path wrote or read them
        for path in (ref_path, tl_path):
            got = tio.load(path).state_dict()
            ref = reference_load(path)
            for n, a in arrays.items():
                assert got[n].tobytes() == a.tobytes() == ref[n].tobytes(), (path, n)
        sizes = (os.path.getsize(ref_path) / 1e6, os.path.getsize(tl_path) / 1e6)
    print(
        f"TorchLean JSON, {len(arrays)} tensors, {mb:.1f} MB float32 "
        f"(files: reference {sizes[0]:.1f} MB, torchlean {sizes[1]:.1f} MB); "
        f"median of {REPEATS}, alternating runs"
    )
    print(
        f"save  reference {ref_save:8.3f} s   torchlean {tl_save:8.3f} s   "
        f"speed-up {ref_save / tl_save:6.1f}x"
    )
    print(
        f"load  reference {ref_load:8.3f} s   torchlean {tl_load:8.3f} s   "
        f"speed-up {ref_load / tl_load:6.1f}x"
    )
    print(
        f"load of the reference's file by torchlean {tl_load_ref_file:8.3f} s   "
        f"speed-up {ref_load / tl_load_ref_file:6.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Save/load a context shaped like a small GPT-2 against raw safetensors and torch.save.

About 150 tensors and 120 MB of float32 (GPT-2's layout: 12 blocks, n_embd=448,
vocab 4096). Every contender writes and reads the same tensors in the same run, runs
alternate, and the medians are printed with ratios (torchlean time / baseline time:
below 1 is faster). torchlean's save is atomic (temporary file, fsync, rename); the
baselines write in place without fsync. Run:

    PYTHONPATH=src python bench/io_gpt2.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

import torchlean.io as tio
from torchlean import RuntimeContext

REPEATS = int(os.environ.get("REPEATS", "5"))


def gpt2_shapes(
    n_layer: int = 12, d: int = 448, vocab: int = 4096, ctx: int = 512
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d)}
    for i in range(n_layer):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,),
        }  # fmt: skip
    shapes |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}
    return shapes


def timed(contenders: dict[str, Callable[[], Any]]) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(REPEATS):
        for name, f in contenders.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, medians: dict[str, float], ours: str) -> None:
    print(title)
    for name, t in medians.items():
        ratio = "" if name == ours else f"   torchlean / this = {medians[ours] / t:5.2f}"
        print(f"  {name:34} {t * 1000:8.1f} ms{ratio}")


def main() -> int:
    rng = np.random.default_rng(0)
    shapes = gpt2_shapes()
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    tensors = {n: torch.from_numpy(a) for n, a in arrays.items()}
    ctx = RuntimeContext.from_state_dict(arrays)
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    print(
        f"GPT-2-shaped context: {len(arrays)} tensors, {mb:.1f} MB float32; "
        f"median of {REPEATS}, alternating runs"
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        tl = os.path.join(tmp, "tl.safetensors")
        raw = os.path.join(tmp, "raw.safetensors")
        pt = os.path.join(tmp, "state.pt")
        saves = timed({
            "torchlean.io.save (.safetensors)": lambda: tio.save(ctx, tl),
            "safetensors.numpy.save_file": lambda: safetensors.numpy.save_file(arrays, raw),
            "torch.save": lambda: torch.save(tensors, pt),
        })  # fmt: skip
        report("save", saves, "torchlean.io.save (.safetensors)")
        loads = timed({
            "torchlean.io.load (numpy)": lambda: tio.load(tl),
            "safetensors.numpy.load_file": lambda: safetensors.numpy.load_file(raw),
            "torch.load(weights_only=True)": lambda: torch.load(pt, weights_only=True),
        })  # fmt: skip
        report("load (numpy arrays)", loads, "torchlean.io.load (numpy)")
        loads_t = timed({
            "torchlean.io.load (torch)": lambda: tio.load(tl, backend="torch"),
            "safetensors.torch.load_file": lambda: safetensors.torch.load_file(raw),
            "torch.load(weights_only=True)": lambda: torch.load(pt, weights_only=True),
        })  # fmt: skip
        report("load (torch tensors)", loads_t, "torchlean.io.load (torch)")
        inspect = timed({"torchlean.io.inspect (header only)": lambda: tio.inspect(tl)})
        report("inspect", inspect, "torchlean.io.inspect (header only)")
        back = tio.load(tl).state_dict()
        assert all(back[n].tobytes() == a.tobytes() for n, a in arrays.items())
    return 0


if __name__ == "__main__":
    sys.exit(main())

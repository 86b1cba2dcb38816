"""Benchmark: 10,000 optimizer steps keeping every 100th context alive.

An AdamW step with ``donate=False`` returns a new context and a new optimizer state and
leaves the old ones as they were. Keeping old contexts alive must cost only the tensors
the step changed (the updated parameters, moments and counters) plus a few registry
nodes per changed name -- never a copy of the registry or of the unchanged tensors.

Two numpy contexts: ``small`` (20 tensors of 1,024 float32, all trained) and ``wide``
(10,000 tensors of 64 float32, of which 20 are trained, so a registry copy would be
expensive). For each, the script measures with tracemalloc the memory the 100 kept
snapshots (context and state) hold beyond the newest one, and prints, per kept snapshot:
the bytes held, the bytes of the tensors that differ from the previous kept snapshot
(counted by identity of the arrays), the difference (registry nodes), and what one full
copy of the tensors would cost. The memory
figures are exact (tracemalloc, one run); the step time is untraced, median of ``--repeat``.

Run: ``PYTHONPATH=src .venv/bin/python bench/scale_optim.py`` (``--steps 2000`` for a
short run).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np

from torchlean import RuntimeContext, empty_context, optim


def arrays(*contexts: RuntimeContext[Any]) -> dict[int, int]:
    """id -> nbytes of every array the contexts hold (variables and gradients)."""
    found: dict[int, int] = {}
    for ctx in contexts:
        for registry in (ctx.var_registry, ctx.gradients):
            for _, at in registry:
                found[id(at.t)] = at.t.nbytes
    return found


def build(tensors: int, size: int, trained: int) -> RuntimeContext[Any]:
    rng = np.random.default_rng(0)
    ctx: RuntimeContext[Any] = empty_context()
    for i in range(tensors):
        ctx = ctx.register_variable(f"layer{i}.weight", rng.standard_normal(size, np.float32))
    for i in range(trained):
        ctx = ctx.register_gradient(f"layer{i}.weight", rng.standard_normal(size, np.float32))
    return ctx


def memory(tensors: int, size: int, trained: int, steps: int, every: int) -> dict[str, float]:
    """Bytes the kept snapshots hold, traced by tracemalloc (deterministic: run once)."""
    ctx = build(tensors, size, trained)
    opt = optim.adamw(lr=1e-3)
    state = opt.init(ctx)
    gc.collect()
    tracemalloc.start()
    kept: list[tuple[RuntimeContext[Any], RuntimeContext[Any]]] = []
    base, _ = tracemalloc.get_traced_memory()
    for step in range(1, steps + 1):
        ctx, state = opt.step(ctx, state, donate=False)
        if step % every == 0:
            kept.append((ctx, state))
    del ctx, state
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    chain = [arrays(*snap) for snap in kept]
    changed = [
        [n for i, n in older.items() if i not in newer]
        for older, newer in itertools.pairwise(chain)
    ]
    per_snapshot = (held - base) / len(kept)
    changed_bytes = statistics.fmean(sum(c) for c in changed)
    changed_entries = statistics.fmean(len(c) for c in changed)
    return {
        "per_snapshot": per_snapshot,
        "changed": changed_bytes,
        "entries": changed_entries,
        "overhead": (per_snapshot - changed_bytes) / changed_entries,
        "tensors_copy": float(sum(chain[-1].values())),
        "names": float(len(chain[-1])),
    }


def step_time(tensors: int, size: int, trained: int, steps: int, repeat: int) -> float:
    """Median seconds per step, untraced."""
    times = []
    for _ in range(repeat):
        ctx = build(tensors, size, trained)
        opt = optim.adamw(lr=1e-3)
        state = opt.init(ctx)
        start = time.perf_counter()
        for _ in range(steps):
            ctx, state = opt.step(ctx, state, donate=False)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the step timing")
    args = parser.parse_args()
    print(
        f"{args.steps} AdamW steps (numpy, donate=False), every {args.every}th context and"
        " state kept. Per kept snapshot: bytes held, bytes of the tensors it does not"
        " share with the next kept one, and the rest per changed entry; against a copy"
        " of all tensors. The rest per entry stays the same at 20 and 10,000 entries:"
        " no registry is copied."
    )
    print(
        f"{'context':>33} {'held':>8} {'changed B':>9} {'changed n':>9} {'rest/entry':>10}"
        f" {'tensor copy':>11} {'entries':>7} {'step':>8}"
    )
    for label, tensors, size, trained in (
        ("small: 20 x 1024 f32", 20, 1024, 20),
        ("wide: 10000 x 64 f32, 20 trained", 10_000, 64, 20),
    ):
        m = memory(tensors, size, trained, args.steps, args.every)
        t = step_time(tensors, size, trained, min(args.steps, 1000), args.repeat)
        print(
            f"{label:>33} {m['per_snapshot']:>8.0f} {m['changed']:>9.0f}"
            f" {m['entries']:>9.0f} {m['overhead']:>10.0f}"
            f" {m['tensors_copy']:>11.0f} {m['names']:>7.0f} {t * 1e6:>6.0f}us"
        )


if __name__ == "__main__":
    main()

"""Benchmark: a context with a million variables.

Measures, at n = 10^3 ... 10^6 variables of shape (4,) float32:
- registration time (one ``register_variable`` at a time, and ``register_variables``);
- memory per entry (resident memory after minus before, divided by n), split into what
  the registry itself costs and what the stored numpy arrays cost;
- the time of a lookup (``get_variable``) and of an update (``set_variable``), which must
  stay O(log n);
- the memory of keeping many snapshots: 1,000 ``set_variable`` calls, each snapshot kept
  alive, against the size of one context.

Run: ``PYTHONPATH=src .venv/bin/python bench/scale.py`` (``--max 100000`` for a short run).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

import numpy as np

from torchlean import RuntimeContext, empty_context


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def median_op(fn: object, items: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for name in items:
            fn(name)  # type: ignore[operator]
        times.append((time.perf_counter() - start) / len(items))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=1_000_000, help="largest n")
    args = parser.parse_args()
    sizes = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= args.max]
    value = np.zeros(4, np.float32)
    print(
        f"{'n':>9} {'register':>10} {'bulk':>9} {'get':>8} {'set':>8} "
        f"{'bytes/entry':>12} {'of which arrays':>16}"
    )
    for n in sizes:
        names = [f"block{i // 12}.layer{i % 12}.weight" for i in range(n)]
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        ctx: RuntimeContext = empty_context()
        for name in names:
            ctx = ctx.register_variable(name, value)
        one_by_one = (time.perf_counter() - start) / n
        gc.collect()
        per_entry = (rss_bytes() - before) / n
        arrays_before = rss_bytes()
        kept = [value.copy() for _ in range(n)]
        kept = [a.view() for a in kept]
        arrays = (rss_bytes() - arrays_before) / n
        del kept
        start = time.perf_counter()
        bulk_ctx = empty_context().register_variables((name, value) for name in names)
        bulk = (time.perf_counter() - start) / n
        del bulk_ctx
        rng = np.random.default_rng(0)
        probes = [names[i] for i in rng.integers(0, n, size=2000)]
        get = median_op(lambda name, c=ctx: c.get_variable(name, (4,)), probes)
        set_ = median_op(lambda name, c=ctx: c.set_variable(name, value), probes[:500])
        print(
            f"{n:>9} {one_by_one * 1e6:>8.2f}us {bulk * 1e6:>7.2f}us {get * 1e6:>6.3f}us "
            f"{set_ * 1e6:>6.2f}us {per_entry:>12.0f} {arrays:>16.0f}"
        )
        if n == sizes[-1]:
            tracemalloc.start()
            snapshots = [ctx]
            for i in range(1000):
                snapshots.append(snapshots[-1].set_variable(probes[i], value))
            grown, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(
                f"1000 snapshots of the {n}-entry context, each one set_variable newer: "
                f"{grown / 1e6:.2f} MB in all, {grown / 1000:.0f} bytes per snapshot "
                f"(one context: {per_entry * n / 1e6:.0f} MB)"
            )


if __name__ == "__main__":
    main()

"""Benchmark: RuntimeContext operations against a plain dict and the Lean list model.

For n = 10^3, 10^4, 10^5 registered variables, values of shape (2, 3) float32 from each
array library (numpy and torch), times get / has / set / register on

- the RuntimeContext (immutable, persistent; a torch read includes the version check),
- a plain mutable dict (the floor for a name lookup in Python): ``d.get(name)`` for get,
  ``name in d`` for has, ``d[name] = value`` for set and register; and a dict that does
  the work immutability asks of a mutable dict: for get, look up ``(shape, value)`` and
  compare the shape; for set and register, store a read-only copy (numpy) or a clone
  (torch),
- a literal list model of the Lean definitions (what ``NN.Runtime.Context`` does).

Then the growth of registration, one ``register_variable`` at a time, from 10^4 to 10^6
entries, with the cyclic garbage collector's share: the same run with the collector
enabled and under ``gc.disable()``, and the collections ``gc.callbacks`` counted (and
their time) while it is enabled.

Every measurement is the median of several repeats, taken in this same process, each
context run back to back with its baseline; the ratios are what to read. Run:
``PYTHONPATH=src .venv/bin/python bench/context_ops.py`` (``--quick`` for a short run,
``--lib numpy`` for one library, ``--growth-max 100000`` for a shorter growth run).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from torchlean import empty_context

Shape = tuple[int, ...]


def per_op(run: Callable[[], int]) -> float:
    """Seconds per operation; ``run`` performs some operations and returns how many."""
    start = time.perf_counter()
    count = run()
    return (time.perf_counter() - start) / count


def paired(
    ours: Callable[[], int], base: Callable[[], int], repeats: int
) -> tuple[float, float, float]:
    """Median seconds per op of ``ours`` and ``base``, and the median of per-repeat ratios.

    The two are timed back to back in each repeat, so a burst of load on this shared
    machine hits both and the ratio stays meaningful.
    """
    ours_t, base_t, ratios = [], [], []
    for _ in range(repeats):
        a = per_op(ours)
        b = per_op(base)
        ours_t.append(a)
        base_t.append(b)
        ratios.append(a / b)
    return statistics.median(ours_t), statistics.median(base_t), statistics.median(ratios)


def lean_get(registry: list[tuple[str, tuple[Shape, Any]]], name: str, shape: Shape) -> Any:
    for n, (s, t) in registry:
        if n == name:
            return t if s == shape else None
    return None


def lean_set(registry: list[Any], name: str, value: Any) -> list[Any]:
    return [(n, (tuple(value.shape), value)) if n == name else (n, at) for n, at in registry]


def make_value(lib: str) -> tuple[Any, Callable[[Any], Any]]:
    """A (2, 3) float32 value of ``lib`` and how a mutable dict would protect it."""
    if lib == "numpy":
        value = np.zeros((2, 3), np.float32)

        def protect(x: Any) -> Any:
            copy = x.copy()
            copy.setflags(write=False)
            return copy

        return value, protect
    import torch

    return torch.zeros(2, 3), lambda x: x.clone()


def bench(lib: str, n: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    rng = np.random.default_rng(n)
    value, protect = make_value(lib)
    shape = (2, 3)
    names = [f"layer{i}.weight" for i in range(n)]
    probes = [names[i] for i in rng.integers(0, n, size=2000)]
    ctx = empty_context().register_variables((name, value) for name in names)
    plain: dict[str, Any] = {name: value for name in names}
    entries: dict[str, tuple[Shape, Any]] = {name: (shape, value) for name in names}
    lean = [(name, (shape, value)) for name in reversed(names)]
    get = ctx.get_variable
    has = ctx.has_variable
    set_ = ctx.set_variable
    dict_get = plain.get
    register_names = names[: min(n, 20_000)]

    def ctx_get() -> int:
        for name in probes:
            get(name, shape)
        return len(probes)

    def plain_get() -> int:
        for name in probes:
            dict_get(name)
        return len(probes)

    def registry_get() -> int:
        for name in probes:
            entry = entries.get(name)
            _ = entry[1] if entry is not None and entry[0] == shape else None
        return len(probes)

    def ctx_has() -> int:
        for name in probes:
            has(name)
        return len(probes)

    def plain_has() -> int:
        for name in probes:
            _ = name in plain
        return len(probes)

    def ctx_set() -> int:
        for name in probes[:500]:
            set_(name, value)
        return 500

    def plain_set() -> int:
        for name in probes[:500]:
            plain[name] = value
        return 500

    def copy_set() -> int:
        for name in probes[:500]:
            plain[name] = protect(value)
        return 500

    lean_probes = probes[: max(5, 20_000 // n)]

    def lean_get_all() -> int:
        for name in lean_probes:
            lean_get(lean, name, shape)
        return len(lean_probes)

    def lean_set_all() -> int:
        for name in lean_probes[:5]:
            lean_set(lean, name, value)
        return 5

    def register_all() -> int:
        c = empty_context()
        for name in register_names:
            c = c.register_variable(name, value)
        return len(register_names)

    def register_dict() -> int:
        d: dict[str, Any] = {}
        for name in register_names:
            d[name] = value
        return len(register_names)

    def register_copy() -> int:
        d: dict[str, Any] = {}
        for name in register_names:
            d[name] = protect(value)
        return len(register_names)

    return {
        "get": paired(ctx_get, plain_get, repeats),
        "get registry": paired(ctx_get, registry_get, repeats),
        "get lean": paired(lean_get_all, ctx_get, max(1, repeats // 2)),
        "has": paired(ctx_has, plain_has, repeats),
        "set": paired(ctx_set, plain_set, repeats),
        "set copy": paired(ctx_set, copy_set, repeats),
        "set lean": paired(lean_set_all, ctx_set, max(1, repeats // 2)),
        "register": paired(register_all, register_dict, max(1, repeats // 2)),
        "register copy": paired(register_all, register_copy, max(1, repeats // 2)),
    }


def register_run(value: Any, names: list[str]) -> float:
    start = time.perf_counter()
    c = empty_context()
    for name in names:
        c = c.register_variable(name, value)
    elapsed = time.perf_counter() - start
    del c
    return elapsed


def dict_run(value: Any, names: list[str]) -> float:
    start = time.perf_counter()
    d: dict[str, Any] = {}
    for name in names:
        d[name] = value
    return time.perf_counter() - start


def growth(lib: str, sizes: list[int], repeats: int) -> None:
    """Registration one entry at a time at each size, with the collector's share."""
    value, _ = make_value(lib)
    collections = [0, 0, 0]
    gc_time = [0.0]
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - started[0]
            collections[info["generation"]] += 1

    print(
        f"{lib}: registering n entries one by one (median of {repeats});"
        " dict = building the plain dict"
    )
    print(
        f"{'n':>9} {'gc on':>9} {'gc off':>9} {'gc share':>9} {'in gc cb':>9}"
        f" {'collections g0/g1/g2':>21} {'dict':>9} {'ratio':>6}"
    )
    on: dict[int, float] = {}
    for n in sizes:
        names = [f"block{i // 12}.layer{i % 12}.weight" for i in range(n)]
        gc.collect()
        ons, offs, cbs, dicts = [], [], [], []
        counts = (0, 0, 0)
        for _ in range(repeats):
            collections[:] = [0, 0, 0]
            gc_time[0] = 0.0
            gc.callbacks.append(watch)
            try:
                ons.append(register_run(value, names))
            finally:
                gc.callbacks.remove(watch)
            cbs.append(gc_time[0])
            counts = (collections[0], collections[1], collections[2])
            gc.collect()
            gc.disable()
            try:
                offs.append(register_run(value, names))
            finally:
                gc.enable()
            gc.collect()
            dicts.append(dict_run(value, names))
        t_on, t_off = statistics.median(ons), statistics.median(offs)
        t_cb, t_dict = statistics.median(cbs), statistics.median(dicts)
        on[n] = t_on
        share = max(0.0, 1 - t_off / t_on)
        print(
            f"{n:>9} {t_on:>8.3f}s {t_off:>8.3f}s {share:>8.0%} {t_cb / t_on:>8.0%}"
            f" {'/'.join(map(str, counts)):>21} {t_dict:>8.4f}s {t_on / t_dict:>5.1f}x"
        )
    first, last = sizes[0], sizes[-1]
    if last > first:
        print(
            f"  growth x{on[last] / on[first]:.1f} in time for x{last // first} the entries"
            f" (linear: x{last // first})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--lib", nargs="+", default=["numpy", "torch"], choices=["numpy", "torch"])
    parser.add_argument("--repeats", type=int, default=None, help="paired repeats per op")
    parser.add_argument(
        "--growth-max", type=int, default=None, help="largest n of the growth run (0: skip)"
    )
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    repeats = args.repeats or (3 if args.quick else 9)
    growth_max = (
        args.growth_max if args.growth_max is not None else (100_000 if args.quick else 1_000_000)
    )
    us = 1e6
    print("per operation, median of paired repeats; ratio = context / baseline")
    print("get: dict = d.get(name); dict+shape = a dict of (shape, value), shape compared")
    print("set, reg.: dict = d[name] = value; dict+copy = a read-only copy (numpy) or a")
    print("  clone (torch) stored, what immutability costs a mutable dict")
    print(
        f"{'lib':<6}{'n':>7}  {'op':<4} {'context':>9} {'dict':>9} {'ratio':>6}   "
        f"{'dict+':>10} {'ratio':>6}   {'Lean list':>10} {'ctx faster':>10}"
    )
    for lib in args.lib:
        for n in sizes:
            r = bench(lib, n, repeats)
            ours, base, ratio = r["get"]
            _, reg, reg_ratio = r["get registry"]
            lean_t, _, lean_ratio = r["get lean"]
            print(
                f"{lib:<6}{n:>7}  get  {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x   "
                f"{reg * us:>8.3f}us {reg_ratio:>5.1f}x   {lean_t * us:>8.1f}us"
                f" {lean_ratio:>9.0f}x"
            )
            ours, base, ratio = r["has"]
            print(f"{lib:<6}{n:>7}  has  {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x")
            ours, base, ratio = r["set"]
            _, copy_t, copy_ratio = r["set copy"]
            lean_t, _, lean_ratio = r["set lean"]
            print(
                f"{lib:<6}{n:>7}  set  {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x   "
                f"{copy_t * us:>8.3f}us {copy_ratio:>5.1f}x   {lean_t * us:>8.1f}us"
                f" {lean_ratio:>9.0f}x"
            )
            ours, base, ratio = r["register"]
            _, copy_t, copy_ratio = r["register copy"]
            print(
                f"{lib:<6}{n:>7}  reg. {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x   "
                f"{copy_t * us:>8.3f}us {copy_ratio:>5.1f}x   (up to 20000 entries)"
            )
    if growth_max:
        growth_sizes = [n for n in (10_000, 100_000, 1_000_000) if n <= growth_max]
        for lib in args.lib:
            growth(lib, growth_sizes, 3 if growth_max < 1_000_000 else 1)


if __name__ == "__main__":
    main()

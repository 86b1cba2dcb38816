"""Benchmark: RuntimeContext operations against a plain dict and the Lean list model.

For n = 10^3, 10^4, 10^5 registered variables, times get / has / set / register on

- the RuntimeContext (immutable, persistent),
- a plain mutable dict (the floor for a name lookup in Python): ``d.get(name)`` for get,
  ``name in d`` for has, ``d[name] = value`` for set; and a "dict registry" that does
  the same work as ``get_variable`` (look up the entry, compare its shape),
- a literal list model of the Lean definitions (what ``NN.Runtime.Context`` does).

Every measurement is the median of several repeats, taken in this same process; the
ratios are what to read. Run: ``PYTHONPATH=src .venv/bin/python bench/context_ops.py``
(``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from torchlean import empty_context

Shape = tuple[int, ...]


def per_op(run: Callable[[], int], repeats: int) -> float:
    """Median seconds per operation; ``run`` performs some operations and returns how many."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        times.append((time.perf_counter() - start) / count)
    return statistics.median(times)


def lean_get(registry: list[tuple[str, tuple[Shape, Any]]], name: str, shape: Shape) -> Any:
    for n, (s, t) in registry:
        if n == name:
            return t if s == shape else None
    return None


def lean_set(registry: list[Any], name: str, value: Any) -> list[Any]:
    return [(n, (value.shape, value)) if n == name else (n, at) for n, at in registry]


def paired(
    ours: Callable[[], int], base: Callable[[], int], repeats: int
) -> tuple[float, float, float]:
    """Median seconds per op of ``ours`` and ``base``, and the median of per-repeat ratios.

    The two are timed back to back in each repeat, so a burst of load on this shared
    machine hits both and the ratio stays meaningful.
    """
    ours_t, base_t, ratios = [], [], []
    for _ in range(repeats):
        a = per_op(ours, 1)
        b = per_op(base, 1)
        ours_t.append(a)
        base_t.append(b)
        ratios.append(a / b)
    return statistics.median(ours_t), statistics.median(base_t), statistics.median(ratios)


def bench(n: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    rng = np.random.default_rng(n)
    value = np.zeros((4, 4), np.float32)
    shape = value.shape
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
            copy = value.copy()
            copy.setflags(write=False)
            plain[name] = copy
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
        for name in names:
            c = c.register_variable(name, value)
        return n

    def register_dict() -> int:
        d: dict[str, Any] = {}
        for name in names:
            d[name] = value.copy()
        return n

    out = {
        "get": paired(ctx_get, plain_get, repeats),
        "get registry": paired(ctx_get, registry_get, repeats),
        "get lean": paired(lean_get_all, ctx_get, max(1, repeats // 2)),
        "has": paired(ctx_has, plain_has, repeats),
        "set": paired(ctx_set, plain_set, repeats),
        "set copy": paired(ctx_set, copy_set, repeats),
        "set lean": paired(lean_set_all, ctx_set, max(1, repeats // 2)),
        "register": paired(register_all, register_dict, max(1, repeats // 2)),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    repeats = 3 if args.quick else 9
    us = 1e6
    print("per operation, median of paired repeats; ratio = context / baseline")
    print("dict+shape: get through a dict of (shape, array) with the shape compared;")
    print("  for set, a dict storing a read-only copy (what immutability costs a dict)")
    print(
        f"{'n':>7}  {'op':<4} {'context':>9} {'dict':>9} {'ratio':>6}   "
        f"{'dict+shape':>10} {'ratio':>6}   {'Lean list':>10} {'ctx faster':>10}"
    )
    register: dict[int, float] = {}
    for n in sizes:
        r = bench(n, repeats)
        ours, base, ratio = r["get"]
        _, reg, reg_ratio = r["get registry"]
        lean_t, _, lean_ratio = r["get lean"]
        print(
            f"{n:>7}  get  {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x   "
            f"{reg * us:>8.3f}us {reg_ratio:>5.1f}x   {lean_t * us:>8.1f}us {lean_ratio:>9.0f}x"
        )
        ours, base, ratio = r["has"]
        print(f"{n:>7}  has  {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x")
        ours, base, ratio = r["set"]
        _, copy_t, copy_ratio = r["set copy"]
        lean_t, _, lean_ratio = r["set lean"]
        print(
            f"{n:>7}  set  {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x   "
            f"{copy_t * us:>8.3f}us {copy_ratio:>5.1f}x   {lean_t * us:>8.1f}us {lean_ratio:>9.0f}x"
        )
        ours, base, ratio = r["register"]
        print(
            f"{n:>7}  reg. {ours * us:>7.3f}us {base * us:>7.3f}us {ratio:>5.1f}x"
            "   (dict: store a copy)"
        )
        register[n] = ours * n
    first, last = sizes[0], sizes[-1]
    growth = register[last] / register[first]
    nlogn = (last * np.log2(last)) / (first * np.log2(first))
    print(
        f"registering n variables one by one: x{growth:.1f} the time for x{last // first} "
        f"the entries (n log n: x{nlogn:.1f}; n: x{last // first})"
    )


if __name__ == "__main__":
    main()

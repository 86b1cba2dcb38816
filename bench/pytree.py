"""What a context costs as a pytree, against a plain dict of the same arrays.

Run: ``PYTHONPATH=src python bench/pytree.py``. A context of 150 small float32 jax
arrays (the overhead is per leaf, not per byte), measured side by side with a dict
holding the same arrays: ``tree_flatten``, ``tree_unflatten``, and the dispatch of a
jitted SGD-like step (flatten + cache lookup + unflatten around the compiled call).
Prints the median of several repeats and the ratio context / dict.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import torch
import torch.utils._pytree as torch_pytree

from torchlean import empty_context

N = 150
REPEATS = 7


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Median seconds per call over REPEATS runs of ``number`` calls."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def row(label: str, ctx_s: float, dict_s: float) -> None:
    print(
        f"{label:<34} context {ctx_s * 1e6:9.1f} us   dict {dict_s * 1e6:9.1f} us"
        f"   ratio {ctx_s / dict_s:5.2f}"
    )


def main() -> None:
    arrays = {f"layer{i // 2}.{'weight' if i % 2 else 'bias'}": jnp.ones((8, 8)) for i in range(N)}
    ctx = empty_context().register_variables(arrays)
    print(f"{N} float32 jax arrays; jax {jax.__version__}, torch {torch.__version__}")

    leaves_c, def_c = jax.tree_util.tree_flatten(ctx)
    leaves_d, def_d = jax.tree_util.tree_flatten(arrays)
    row(
        "jax tree_flatten",
        per_call(lambda: jax.tree_util.tree_flatten(ctx), 300),
        per_call(lambda: jax.tree_util.tree_flatten(arrays), 300),
    )
    row(
        "jax tree_unflatten",
        per_call(lambda: jax.tree_util.tree_unflatten(def_c, leaves_c), 300),
        per_call(lambda: jax.tree_util.tree_unflatten(def_d, leaves_d), 300),
    )

    @jax.jit
    def step(params: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: x * 0.9, params)

    jax.block_until_ready(step(ctx))
    jax.block_until_ready(step(arrays))
    row(
        "jax.jit step dispatch",
        per_call(lambda: jax.block_until_ready(step(ctx)), 100),
        per_call(lambda: jax.block_until_ready(step(arrays)), 100),
    )

    tensors = {k: torch.ones(8, 8) for k in arrays}
    tctx = empty_context().register_variables(tensors)
    row(
        "torch tree_map (x * 0.9)",
        per_call(lambda: torch_pytree.tree_map(lambda x: x * 0.9, tctx), 100),
        per_call(lambda: torch_pytree.tree_map(lambda x: x * 0.9, tensors), 100),
    )


if __name__ == "__main__":
    main()

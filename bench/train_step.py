"""A whole training step, context-based vs the idiomatic loop, torch and jax.

Model: MLP 784-1024-1024-10 (ReLU), cross-entropy, AdamW(lr=1e-3), batch 256, random
data. Variants, run interleaved in one process on their own copies of the same weights:

- torch, idiomatic: ``nn.Sequential`` + ``torch.optim.AdamW`` (default implementation, and
  ``fused=True``): ``zero_grad``, forward, ``backward``, ``step``.
- torch, torchlean: ``value_and_grad(loss)(ctx, x, y)`` then ``adamw.step(ctx, state)``
  (the default: donation, fused kernel).
- jax, optax: ``jax.jit`` of value_and_grad + ``optax.adamw`` update, params donated.
- jax, torchlean: ``jax.jit`` of ``value_and_grad`` + ``adamw.step`` on contexts (as
  ``torchlean.train.fit`` runs it), contexts donated.

Prints the median step time of each and the ratio to its baseline.
Run: PYTHONPATH=src python bench/train_step.py [--repeat 30] [--skip-jax] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIZES = (784, 1024, 1024, 10)
BATCH = 256


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
        bound = 1 / np.sqrt(a)
        out[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (b, a)).astype(np.float32)
        out[f"{2 * i}.bias"] = rng.uniform(-bound, bound, b).astype(np.float32)
    return out


def torch_variants() -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F

    from torchlean import RuntimeContext, optim
    from torchlean.autograd import value_and_grad

    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (BATCH,), generator=g)
    w = weights()

    def module_loop(**kw: Any) -> Callable[[], Any]:
        model = torch.nn.Sequential(
            torch.nn.Linear(784, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 10),
        )
        model.load_state_dict({k: torch.tensor(v) for k, v in w.items()})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **kw)

        def step() -> Any:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    def loss_fn(ctx: Any, x: Any, y: Any) -> Any:
        h = torch.relu(F.linear(x, ctx["0.weight"], ctx["0.bias"]))
        h = torch.relu(F.linear(h, ctx["2.weight"], ctx["2.bias"]))
        return F.cross_entropy(F.linear(h, ctx["4.weight"], ctx["4.bias"]), y)

    def context_loop() -> Callable[[], Any]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: torch.tensor(v) for k, v in w.items()})
        grad_fn = value_and_grad(loss_fn)
        box = [ctx, opt.init(ctx)]

        def step() -> Any:
            loss, c = grad_fn(box[0], x, y)
            box[0], box[1] = opt.step(c, box[1])
            return loss

        return step

    return {
        "torch nn.Module + AdamW (default)": module_loop(),
        "torch nn.Module + AdamW(fused=True)": module_loop(fused=True),
        "torch torchlean context + adamw": context_loop(),
    }


def jax_variants() -> dict[str, Callable[[], Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    from torchlean import RuntimeContext, optim
    from torchlean.autograd import value_and_grad

    key = jax.random.PRNGKey(1)
    x = jax.random.normal(key, (BATCH, SIZES[0]))
    y = jax.random.randint(key, (BATCH,), 0, SIZES[-1])

    def forward(p: Any, x: Any) -> Any:
        h = jax.nn.relu(x @ p["0.weight"].T + p["0.bias"])
        h = jax.nn.relu(h @ p["2.weight"].T + p["2.bias"])
        return h @ p["4.weight"].T + p["4.bias"]

    def loss_p(p: Any, x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    def optax_loop() -> Callable[[], Any]:
        tx = optax.adamw(1e-3, weight_decay=1e-2)
        params = {k: jnp.asarray(v) for k, v in weights().items()}
        box = [params, tx.init(params)]

        @jax.jit
        def update(p: Any, s: Any, x: Any, y: Any) -> Any:
            loss, g = jax.value_and_grad(loss_p)(p, x, y)
            u, s = tx.update(g, s, p)
            return loss, optax.apply_updates(p, u), s

        update = jax.jit(update, donate_argnums=(0, 1))

        def step() -> Any:
            loss, box[0], box[1] = update(box[0], box[1], x, y)
            return loss

        return step

    def context_loop() -> Callable[[], Any]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: jnp.asarray(v) for k, v in weights().items()})
        grad_fn = value_and_grad(lambda c, x, y: loss_p(c.state_dict(), x, y))

        def pure(c: Any, s: Any, x: Any, y: Any) -> Any:
            loss, c = grad_fn(c, x, y)
            c, s = opt.step(c, s, donate=False)
            return loss, c.clear_gradients(), s

        update = jax.jit(pure, donate_argnums=(0, 1))
        box = [ctx, opt.init(ctx)]

        def step() -> Any:
            loss, box[0], box[1] = update(box[0], box[1], x, y)
            return loss

        return step

    return {
        "jax optax.adamw loop (jit)": optax_loop(),
        "jax torchlean context + adamw (jit)": context_loop(),
    }


def measure(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    for f in variants.values():
        for _ in range(3):
            float(f())
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, f in variants.items():
            t0 = time.perf_counter()
            float(f())  # waits for the result
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--skip-jax", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import torch

    print(
        f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, AdamW; torch {torch.__version__}"
        f" ({torch.get_num_threads()} threads); medians of {args.repeat} interleaved steps"
    )
    med = measure(torch_variants(), args.repeat)
    base = med["torch nn.Module + AdamW (default)"]
    for name, m in med.items():
        print(f"{name:40s} {m * 1e3:8.2f} ms   ratio to nn.Module loop {m / base:5.3f}x")
    if not args.skip_jax:
        med = measure(jax_variants(), args.repeat)
        base = med["jax optax.adamw loop (jit)"]
        for name, m in med.items():
            print(f"{name:40s} {m * 1e3:8.2f} ms   ratio to optax loop {m / base:5.3f}x")


if __name__ == "__main__":
    main()

"""The per-step overhead: tiny tensors, so that the kernels cost nothing and only the
Python around them is left. Prints ratios to the reference measured in the same run.

- AdamW step on GPT-2's 148 tensors shrunk to tiny sizes (d_model 8, vocabulary 16,
  context 8): torchlean's default step, its flat-storage step and ``donate=False`` vs
  ``torch.optim.AdamW(fused=True).step()``; and the host time of each before its fused
  kernel is launched (on a GPU that time adds to the kernel's, the rest overlaps it).
- Training step (value_and_grad + step) of a tiny MLP 32-64-64-10 at batch 16: the
  default, the flat-storage and the captured step vs an ``nn.Module`` + fused AdamW loop.
- Around one replay of a recorded step (the recording a no-op, as the CPU records
  nothing): the host work of :class:`torchlean.train.CapturedStep` vs plain PyTorch's
  CUDA-graph recipe (batch copies, replay, loss clone), and the part of it before the
  replay is launched: on a GPU that part adds to the replayed kernels' time, the rest
  runs while they do.
- jax: the AdamW step on the same 148 arrays, the default call and inside a user's
  ``jax.jit``, vs ``optax.adamw``'s update under ``jax.jit`` (params and state donated);
  beside it the same optax update that also takes the gradients donated and returns
  them, as a jitted function of a context with gradients does (148 more outputs), a
  jitted identity over optax's arguments (jax's dispatch alone), and torchlean's step
  inside a jit given the gradients as optax is; and the operations of the compiled
  steps (each ``fusion`` is one CPU kernel).

Every variant updates its own copy of the same tensors; the variants run interleaved;
medians of ``--repeat`` rounds of ``--inner`` calls each.

Run: PYTHONPATH=src python bench/step_overhead.py [--repeat 50] [--inner 20] [--threads 1]
     [--skip-optim] [--skip-train] [--skip-replay] [--skip-jax]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from optim_step import gpt2_shapes
from optim_step import jax_variants as optim_jax_variants
from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad

Variants = dict[str, Callable[[], Any]]


def measure(variants: Variants, repeat: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each variant, rounds interleaved."""
    for f in variants.values():
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, f in variants.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def before_kernel(variants: Variants, repeat: int) -> dict[str, float]:
    """Median host seconds from the call to the launch of the fused AdamW kernel (the
    variants' first ``torch._fused_adamw_`` call): on a GPU, where the launch returns at
    once, that time adds to the kernel's and what follows runs while it does."""
    real = torch._fused_adamw_
    launched: list[float] = []

    def fused(*args: Any, **kwargs: Any) -> Any:
        launched.append(time.perf_counter())
        return real(*args, **kwargs)

    out: dict[str, float] = {}
    torch._fused_adamw_ = fused
    try:
        for name, f in variants.items():
            times = []
            for _ in range(repeat):
                launched.clear()
                t0 = time.perf_counter()
                f()
                times.append(launched[0] - t0)
            out[name] = statistics.median(times)
    finally:
        torch._fused_adamw_ = real
    return out


def report(title: str, med: dict[str, float], base: str) -> None:
    print(f"\n{title}")
    for name, m in med.items():
        print(f"  {name:52s} {m * 1e6:9.1f} us   {m / med[base]:5.2f}x")


def optimizer_variants() -> Variants:
    shapes = gpt2_shapes(8, 16, 8)
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    grads = {k: torch.randn(s, generator=g) * 0.01 for k, s in shapes.items()}

    def torch_fused() -> Callable[[], Any]:
        params = [t.clone().requires_grad_(True) for t in init.values()]
        for p, gr in zip(params, grads.values(), strict=True):
            p.grad = gr.clone()
        return torch.optim.AdamW(params, lr=1e-3, fused=True).step

    def ours(*, donate: bool, flat: bool) -> Callable[[], Any]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: t.clone() for k, t in init.items()})
        if flat:
            ctx = optim.flatten(ctx)
            flat_grad = torch.cat([gr.reshape(-1) for gr in grads.values()])
            views = flat_grad.split([gr.numel() for gr in grads.values()])
            gradients = [
                (k, v.view(gr.shape)) for (k, gr), v in zip(grads.items(), views, strict=True)
            ]
        else:
            gradients = [(k, gr.clone()) for k, gr in grads.items()]
        ctx = ctx.with_gradients(gradients, adopt=True)
        box = [ctx, opt.init(ctx)]

        def step() -> None:
            box[0], box[1] = opt.step(box[0], box[1], donate=donate)

        return step

    return {
        "torch AdamW(fused=True).step()": torch_fused(),
        "torchlean adamw step (default)": ours(donate=True, flat=False),
        "torchlean adamw step, flat storage": ours(donate=True, flat=True),
        "torchlean adamw step, donate=False": ours(donate=False, flat=False),
    }


def tiny_mlp() -> tuple[Any, Any, Any, dict[str, Any], Callable[..., Any]]:
    """``(x, y, model, weights, loss)``: an MLP 32-64-64-10 at batch 16, its weights as a
    state dict and its loss on a context."""
    import torch.nn.functional as F

    sizes = (32, 64, 64, 10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (16,), generator=g)
    model = torch.nn.Sequential(
        torch.nn.Linear(sizes[0], sizes[1]),
        torch.nn.ReLU(),
        torch.nn.Linear(sizes[1], sizes[2]),
        torch.nn.ReLU(),
        torch.nn.Linear(sizes[2], sizes[3]),
    )
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def loss_fn(ctx: Any, x: Any, y: Any) -> Any:
        h = torch.relu(F.linear(x, ctx["0.weight"], ctx["0.bias"]))
        h = torch.relu(F.linear(h, ctx["2.weight"], ctx["2.bias"]))
        return F.cross_entropy(F.linear(h, ctx["4.weight"], ctx["4.bias"]), y)

    return x, y, model, weights, loss_fn


def train_variants() -> Variants:
    import torch.nn.functional as F

    x, y, model, weights, loss_fn = tiny_mlp()
    fused = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def module_step() -> Any:
        fused.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        fused.step()
        return loss

    def ours(*, flat: bool) -> Callable[[], Any]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: v.clone() for k, v in weights.items()})
        if flat:
            ctx = optim.flatten(ctx)
        grad_fn = value_and_grad(loss_fn)
        box = [ctx, opt.init(ctx)]

        def step() -> Any:
            loss, c = grad_fn(box[0], x, y)
            box[0], box[1] = opt.step(c, box[1])
            return loss

        return step

    return {
        "nn.Module + AdamW(fused=True) loop": module_step,
        "torchlean value_and_grad + step (default)": ours(flat=False),
        "torchlean value_and_grad + step, flat storage": ours(flat=True),
    }


def replay_variants() -> Variants:
    """The host work around one replay of a recorded step, the recording replaced by a
    no-op (the CPU records nothing: ``Backend.capture`` is patched to "record" by running
    the step once and to replay by doing nothing). Plain PyTorch's CUDA-graph recipe
    (``bench/train_step.py``): copy the batch into the static inputs, replay, clone the
    loss. :class:`~torchlean.train.CapturedStep`: the same, plus checking that it was given
    the contexts it returned, bumping the version counters of what the replay wrote and
    building the new contexts. On a GPU the replay's kernels come on top of either."""
    from torchlean.runtime.backends.torch import TorchBackend
    from torchlean.train import CapturedStep

    x, y, _, weights, loss_fn = tiny_mlp()

    def plain() -> Callable[[], Any]:
        static_x, static_y, static_loss = x.clone(), y.clone(), torch.zeros(())
        starts = REPLAY_STARTS["plain CUDA-graph recipe, host work"] = []

        def step() -> Any:
            t0 = time.perf_counter()
            static_x.copy_(x)
            static_y.copy_(y)
            starts.append(time.perf_counter() - t0)  # graph.replay()
            return static_loss.detach().clone()

        return step

    def ours() -> Callable[[], Any]:
        starts = REPLAY_STARTS["torchlean CapturedStep, host work"] = []
        t0 = [0.0]

        def capture(self: Any, fn: Callable[[], Any], *, like: Any) -> Any:
            return fn(), lambda: starts.append(time.perf_counter() - t0[0])

        original = TorchBackend.capture
        TorchBackend.capture = capture  # type: ignore[method-assign]
        try:
            opt = optim.adamw(lr=1e-3)
            ctx = RuntimeContext.from_state_dict(weights)
            run = CapturedStep(loss_fn, opt)
            box = [ctx, opt.init(ctx)]
            for _ in range(4):  # two eager warm-up steps, the recording, a replay
                _, box[0], box[1] = run(box[0], box[1], (x, y))
        finally:
            TorchBackend.capture = original  # type: ignore[method-assign]

        def step() -> Any:
            t0[0] = time.perf_counter()
            loss, box[0], box[1] = run(box[0], box[1], (x, y))
            return loss

        return step

    return {
        "plain CUDA-graph recipe, host work": plain(),
        "torchlean CapturedStep, host work": ours(),
    }


#: per replay variant, the host seconds from the call to the replay's launch
REPLAY_STARTS: dict[str, list[float]] = {}


def jax_variants() -> Variants:
    """``bench/optim_step.py``'s jax rows on GPT-2's tiny arrays, with two more baselines:
    optax's update passing its gradients through, as a context returns them, and a
    jitted identity over optax's arguments (what jax's dispatch alone costs)."""
    import jax
    import jax.numpy as jnp
    import optax

    shapes = gpt2_shapes(8, 16, 8)
    variants = optim_jax_variants(shapes)
    init = {k: jax.random.normal(jax.random.PRNGKey(0), s) * 0.02 for k, s in shapes.items()}
    grads = {k: jnp.full(s, 0.01) for k, s in shapes.items()}

    def optax_jit_through() -> Callable[[], Any]:
        # as a context returns them: the gradients donated and returned by the call
        tx = optax.adamw(1e-3, weight_decay=1e-2)
        params = {k: jnp.array(v) for k, v in init.items()}
        box = [
            params,
            jax.tree.map(jnp.array, tx.init(params)),
            {k: jnp.array(g) for k, g in grads.items()},
        ]

        def update(p: Any, s: Any, g: Any) -> Any:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, g

        jitted = jax.jit(update, donate_argnums=(0, 1, 2))

        def step() -> None:
            box[0], box[1], box[2] = jitted(box[0], box[1], box[2])

        return step

    def identity_jit() -> Callable[[], Any]:
        # jax's dispatch alone: a jitted identity over optax's arguments, donated
        tx = optax.adamw(1e-3, weight_decay=1e-2)
        params = {k: jnp.array(v) for k, v in init.items()}
        box = [params, jax.tree.map(jnp.array, tx.init(params))]
        jitted = jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1))

        def step() -> None:
            box[0], box[1] = jitted(box[0], box[1], grads)

        return step

    first, *rest = variants.items()
    return dict(
        [
            first,
            ("optax, gradients donated and returned", optax_jit_through()),
            ("jax.jit identity over optax's arguments (dispatch)", identity_jit()),
            *rest,
        ]
    )


def hlo_counts() -> dict[str, Counter[str]]:
    """The operations of the compiled step (the entry computation of the optimized HLO):
    ``optax.adamw``'s update and torchlean's step inside a user's ``jax.jit`` (each
    ``fusion`` is one kernel on the CPU)."""
    import jax
    import jax.numpy as jnp
    import optax

    shapes = gpt2_shapes(8, 16, 8)
    params = {k: jnp.zeros(s) for k, s in shapes.items()}
    grads = {k: jnp.full(s, 0.01) for k, s in shapes.items()}
    tx = optax.adamw(1e-3, weight_decay=1e-2)

    def update(p: Any, s: Any, g: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    opt = optim.adamw(lr=1e-3)
    ctx = RuntimeContext.from_state_dict(params).with_gradients(grads)
    texts = {
        "optax.adamw update under jax.jit": jax.jit(update, donate_argnums=(0, 1))
        .lower(params, tx.init(params), grads)
        .compile()
        .as_text(),
        "torchlean adamw step inside a user's jax.jit": jax.jit(
            lambda c, s: opt.step(c, s, donate=False), donate_argnums=(0, 1)
        )
        .lower(ctx, opt.init(ctx))
        .compile()
        .as_text(),
    }
    counts: dict[str, Counter[str]] = {}
    for name, text in texts.items():
        entry = text[text.index("ENTRY") :]
        ops = re.findall(r"^\s*(?:ROOT )?%?[\w.\-]+ = \S+ ([\w\-]+)\(", entry, re.MULTILINE)
        counts[name] = Counter(ops)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--skip-optim", action="store_true", help="no torch AdamW step")
    parser.add_argument("--skip-jax", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-replay", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU, tiny tensors;"
        f" medians of {args.repeat} interleaved rounds of {args.inner} calls"
    )
    if not args.skip_optim:
        variants = optimizer_variants()
        med = measure(variants, args.repeat, args.inner)
        base = "torch AdamW(fused=True).step()"
        report("AdamW step, GPT-2's 148 tensors (tiny)", med, base)
        print("  host time before the fused kernel is launched (on a GPU: added to the kernel's)")
        for name, t in before_kernel(variants, args.repeat * args.inner).items():
            print(f"  {name:52s} {t * 1e6:9.1f} us")
    if not args.skip_train:
        med = measure(train_variants(), args.repeat, args.inner)
        base = "nn.Module + AdamW(fused=True) loop"
        report("training step, MLP 32-64-64-10, batch 16", med, base)
    if not args.skip_replay:
        med = measure(replay_variants(), args.repeat, args.inner)
        base = "plain CUDA-graph recipe, host work"
        report("around one replay of a recorded step (the replay a no-op), same MLP", med, base)
        ours = "torchlean CapturedStep, host work"
        extra = med[ours] - med[base]
        print(f"  {'torchlean CapturedStep: extra host work per replay':52s} {extra * 1e6:9.1f} us")
        before = {k: statistics.median(v) for k, v in REPLAY_STARTS.items()}
        print(
            f"  {'  of which before the replay is launched':52s}"
            f" {(before[ours] - before[base]) * 1e6:9.1f} us"
            "   (the rest runs while a GPU replays)"
        )
    if not args.skip_jax:
        med = measure(jax_variants(), args.repeat, args.inner)
        report("jax AdamW step, GPT-2's 148 arrays (tiny)", med, "optax.adamw update under jax.jit")
        print("\ncompiled step (optimized HLO, entry computation): operations")
        for name, ops in hlo_counts().items():
            detail = ", ".join(f"{op} {n}" for op, n in ops.most_common())
            print(f"  {name:52s} {sum(ops.values()):5d}   ({detail})")


if __name__ == "__main__":
    main()

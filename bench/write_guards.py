"""What the write guards of issue 10 cost, each measured beside the same work without it.

- ``torch.optim`` step hook: a fused ``torch.optim.AdamW`` step over the 148 tensors of
  a scaled GPT-2 (bench/optim_step.py's shapes), with torchlean's post-step hook (which
  bumps every parameter's version counter) and with the hook removed.
- numpy results over private ``bytes``: ``optim.adam`` step on a numpy context of the
  same tensors, storing its results with a copy (now) and without (the old ``adopt``,
  which left the memory's owner writeable up the ``.base`` chain).
- shared-buffer check of a donated step: ``optim.adamw`` step (donated, torch) with the
  byte-range comparison of every entry (now) and with none.

Each pair runs interleaved; the script prints medians and the median of the ratios.
Run: ``PYTHONPATH=src python bench/write_guards.py [--repeat 15] [--scale 4]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import torchlean.optim._optimizer as optimizer_module
from torchlean import RuntimeContext, optim
from torchlean.runtime.backends import NUMPY, backend_named
from torchlean.runtime.backends import torch as torch_backend_module


def shapes(scale: int) -> dict[str, tuple[int, ...]]:
    d, vocab, n_ctx = 768 // scale, 50257 // (6 * scale), 1024 // scale
    out: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (n_ctx, d)}
    for i in range(12):
        p = f"h.{i}."
        for name, shape in {
            "ln_1.weight": (d,), "ln_1.bias": (d,), "attn.c_attn.weight": (d, 3 * d),
            "attn.c_attn.bias": (3 * d,), "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
            "ln_2.weight": (d,), "ln_2.bias": (d,), "mlp.c_fc.weight": (d, 4 * d),
            "mlp.c_fc.bias": (4 * d,), "mlp.c_proj.weight": (4 * d, d), "mlp.c_proj.bias": (d,),
        }.items():  # fmt: skip
            out[p + name] = shape
    out |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}
    return out


def pair(a: Callable[[], None], b: Callable[[], None], repeat: int) -> tuple[float, float, float]:
    """Median seconds of ``a`` and ``b`` and median ratio; the two alternate going first."""
    ta, tb, ratios = [], [], []
    for i in range(repeat):
        times = {}
        for name, fn in (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a)):
            t0 = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t0
        ta.append(times["a"])
        tb.append(times["b"])
        ratios.append(times["a"] / times["b"])
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def report(what: str, a: str, b: str, result: tuple[float, float, float]) -> None:
    ta, tb, ratio = result
    print(f"{what}: {a} {ta * 1e3:.3f} ms, {b} {tb * 1e3:.3f} ms, ratio {ratio:.3f}")


def torch_hook(sh: dict[str, tuple[int, ...]], repeat: int) -> None:
    backend_named("torch")  # registers the hook
    params = [torch.nn.Parameter(torch.randn(s)) for s in sh.values()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    opt.step()
    handle = torch_backend_module._WATCHING[0]
    import torch.optim.optimizer as optimizer_base

    hooks = optimizer_base._global_optimizer_post_hooks

    def with_hook() -> None:
        hooks[handle.id] = bump
        opt.step()

    def without() -> None:
        hooks.pop(handle.id, None)
        opt.step()

    bump = hooks[handle.id]
    report("torch.optim fused AdamW step", "with hook", "without", pair(with_hook, without, repeat))
    hooks[handle.id] = bump
    t0 = time.perf_counter()
    for _ in range(1000):
        bump(opt, (), {})
    print(f"  the hook alone: {(time.perf_counter() - t0) * 1e3:.1f} us per step")


def old_adopt(x: Any) -> Any:
    """The numpy backend's adopt before this change (no copy; owner left writeable)."""
    if type(x) is not np.ndarray:
        return NUMPY.freeze(x)
    chain = [x]
    while isinstance(chain[-1].base, np.ndarray):
        chain.append(chain[-1].base)
    for a in chain:
        a.setflags(write=False)
    return x.view()


def numpy_step(sh: dict[str, tuple[int, ...]], repeat: int) -> None:
    rng = np.random.default_rng(0)
    ctx = RuntimeContext.from_state_dict(
        {n: rng.standard_normal(s, dtype=np.float32) for n, s in sh.items()}
    )
    ctx = ctx.with_gradients({n: rng.standard_normal(s, dtype=np.float32) for n, s in sh.items()})
    opt = optim.adam(lr=1e-3)
    state = opt.init(ctx)
    new_adopt = NUMPY.adopt

    def now() -> None:
        NUMPY.adopt = new_adopt  # type: ignore[method-assign]
        opt.step(ctx, state, donate=False)

    def before() -> None:
        NUMPY.adopt = old_adopt  # type: ignore[method-assign]
        opt.step(ctx, state, donate=False)

    report("numpy adam step", "over bytes", "old adopt", pair(now, before, repeat))
    NUMPY.adopt = new_adopt  # type: ignore[method-assign]


def donated_check(sh: dict[str, tuple[int, ...]], repeat: int) -> None:
    ctx = RuntimeContext.from_state_dict({n: torch.randn(s) for n, s in sh.items()})
    ctx = ctx.with_gradients({n: torch.randn(s) for n, s in sh.items()})
    opt = optim.adamw(lr=1e-3)
    state = opt.init(ctx)
    boxes = {"on": [ctx, state], "off": [ctx, state]}
    check = optimizer_module._unshared

    def run(key: str, fn: Any) -> Callable[[], None]:
        def go() -> None:
            optimizer_module._unshared = fn  # type: ignore[assignment]
            c, s = boxes[key]
            c, s = opt.step(c, s)
            boxes[key] = [c, s]

        return go

    boxes["off"] = list(opt.step(*opt.step(ctx, state, donate=False)))
    report(
        "donated torch adamw step",
        "with check",
        "without",
        pair(run("on", check), run("off", lambda *a: set()), repeat),
    )
    optimizer_module._unshared = check


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--scale", type=int, default=4, help="divide GPT-2 small's widths by this")
    args = parser.parse_args()
    sh = shapes(args.scale)
    print(f"{len(sh)} tensors, {sum(int(np.prod(s)) for s in sh.values()):,} parameters")
    torch_hook(sh, args.repeat)
    numpy_step(sh, args.repeat)
    donated_check(sh, args.repeat)


if __name__ == "__main__":
    main()

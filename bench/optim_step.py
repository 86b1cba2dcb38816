"""AdamW step on a GPT-2-shaped context: torchlean vs torch.optim and what the hardware allows.

The context has the 148 tensors of GPT-2 small with the real layout (wte, wpe, 12 blocks of
ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, then ln_f). ``--size small``
(the default) scales it down so that every variant's copy fits a small machine: d_model
768 -> 384, vocabulary 50257 -> 8192, context 1024 -> 256 (24.5M parameters);
``--size full`` is GPT-2 small (124M), ``--size tiny`` a toy for checking the script.

Variants, each on its own copy of the same tensors, run interleaved; medians of
CUDA-synchronized calls on a GPU; the effective bandwidth counts 7 x 4 bytes per parameter
(read parameter, gradient, two moments; write parameter, two moments):

- ``torch.optim.AdamW`` (``foreach=True``, ``fused=True``);
- torch's raw fused kernel (``torch._fused_adamw_``) over the 148 tensors, and over one flat
  buffer per parameter, gradient and moment;
- ``--compile``: a ``torch.compile``d AdamW update of the flat buffers;
- a device copy of the same bytes (the roofline);
- torchlean: the default step (donation), ``donate=False``, and flat storage
  (:func:`torchlean.optim.flatten`);
- ``--jax``: jax AdamW on the same shapes, torchlean's default call and inside a user's
  ``jax.jit`` (the context carrying its gradients in and out, and the gradients passed in
  as to optax) vs ``optax.adamw`` under ``jax.jit``.

Run: PYTHONPATH=src python bench/optim_step.py [--device cuda] [--size full] [--repeat 30]
     [--compile] [--jax] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from torchlean import RuntimeContext, optim

SIZES = {"tiny": (8, 16, 8), "small": (384, 8192, 256), "full": (768, 50257, 1024)}
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 1e-2


def gpt2_shapes(d: int, vocab: int, n_ctx: int, layers: int = 12) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (n_ctx, d)}
    for i in range(layers):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,),
            p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d),
            p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d),
            p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,),
            p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, 4 * d),
            p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (4 * d, d),
            p + "mlp.c_proj.bias": (d,),
        }
    shapes |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}
    return shapes


def timer(device: str) -> Callable[[Callable[[], Any]], float]:
    """Seconds one call takes, synchronized with the device."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(f: Callable[[], Any]) -> float:
        sync()
        t0 = time.perf_counter()
        f()
        sync()
        return time.perf_counter() - t0

    return timed


def measure(variants: dict[str, Callable[[], Any]], repeat: int, device: str) -> dict[str, float]:
    timed = timer(device)
    for f in variants.values():  # warm up (and compile)
        for _ in range(3):
            timed(f)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, f in variants.items():
            times[name].append(timed(f))
    return {k: statistics.median(v) for k, v in times.items()}


def torch_variants(
    init: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], *, compile: bool
) -> dict[str, Callable[[], Any]]:
    n = sum(t.numel() for t in init.values())
    device = next(iter(init.values())).device
    kw = {"lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "weight_decay": WD, "eps": EPS}

    def torch_optim(**options: bool) -> Callable[[], Any]:
        params = [t.clone().requires_grad_(True) for t in init.values()]
        for p, g in zip(params, grads.values(), strict=True):
            p.grad = g.clone()
        opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **options)
        return opt.step  # type: ignore[return-value]

    def raw(flat: bool) -> Callable[[], Any]:
        if flat:
            ps = [torch.cat([t.reshape(-1) for t in init.values()])]
            gs = [torch.cat([t.reshape(-1) for t in grads.values()])]
        else:
            ps = [t.clone() for t in init.values()]
            gs = [t.clone() for t in grads.values()]
        ms = [torch.zeros_like(p) for p in ps]
        vs = [torch.zeros_like(p) for p in ps]
        steps = [torch.zeros((), device=device) for _ in ps]

        def step() -> None:
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(ps, gs, ms, vs, [], steps, amsgrad=False, maximize=False, **kw)

        return step

    def compiled() -> Callable[[], Any]:
        p = torch.cat([t.reshape(-1) for t in init.values()])
        g = torch.cat([t.reshape(-1) for t in grads.values()])
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        t = torch.zeros((), device=device)

        @torch.compile(fullgraph=True)
        def update(p: Any, g: Any, m: Any, v: Any, t: Any) -> None:
            t.add_(1)
            p.mul_(1 - LR * WD)
            m.lerp_(g, 1 - BETAS[0])
            v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            bc1 = 1 - BETAS[0] ** t
            bc2 = 1 - BETAS[1] ** t
            denom = v.sqrt() / bc2.sqrt() + EPS
            p.sub_(LR / bc1 * m / denom)

        return lambda: update(p, g, m, v, t)

    def copy() -> Callable[[], Any]:
        src = torch.empty(n * 7 // 2, device=device)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    def ours(*, donate: bool, flat: bool) -> Callable[[], Any]:
        opt = optim.adamw(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
        ctx = RuntimeContext.from_state_dict({k: t.clone() for k, t in init.items()})
        if flat:
            ctx = optim.flatten(ctx)
            flat_grad = torch.cat([g.reshape(-1) for g in grads.values()])
            views = flat_grad.split([g.numel() for g in grads.values()])
            items = [(k, v.view(g.shape)) for (k, g), v in zip(grads.items(), views, strict=True)]
        else:
            items = [(k, g.clone()) for k, g in grads.items()]
        ctx = ctx.with_gradients(items, adopt=True)
        box = [ctx, opt.init(ctx)]

        def step() -> None:
            box[0], box[1] = opt.step(box[0], box[1], donate=donate)

        return step

    variants: dict[str, Callable[[], Any]] = {
        "torch AdamW(foreach=True).step()": torch_optim(foreach=True),
        "torch AdamW(fused=True).step()": torch_optim(fused=True),
        "torch._fused_adamw_, 148 tensors": raw(False),
        "torch._fused_adamw_, one flat buffer each": raw(True),
    }
    if compile:
        try:  # compiled here, so that a machine without a working compiler still measures
            f = compiled()
            f()
            variants["torch.compile'd update, flat buffers"] = f
        except Exception as e:  # any compiler failure leaves the row out
            print(f"  (torch.compile unavailable: {type(e).__name__}: {str(e)[:200]})")
    variants["device copy of the same bytes (roofline)"] = copy()
    variants["torchlean adamw step (default)"] = ours(donate=True, flat=False)
    variants["torchlean adamw step, donate=False"] = ours(donate=False, flat=False)
    variants["torchlean adamw step, flat storage"] = ours(donate=True, flat=True)
    return variants


def jax_variants(shapes: dict[str, tuple[int, ...]]) -> dict[str, Callable[[], Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    key = jax.random.PRNGKey(0)
    init = {k: jax.random.normal(key, s) * 0.02 for k, s in shapes.items()}
    grads = {k: jnp.full(s, 0.01) for k, s in shapes.items()}

    def optax_jit() -> Callable[[], Any]:
        tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD)
        params = {k: jnp.array(v) for k, v in init.items()}
        box = [params, jax.tree.map(jnp.array, tx.init(params))]

        def update(p: Any, s: Any, g: Any) -> Any:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        jitted = jax.jit(update, donate_argnums=(0, 1))

        def step() -> Any:
            box[0], box[1] = jitted(box[0], box[1], grads)
            return box[0]

        return step

    def ours(*, inside_jit: bool) -> Callable[[], Any]:
        opt = optim.adamw(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
        ctx = RuntimeContext.from_state_dict({k: jnp.array(v) for k, v in init.items()})
        ctx = ctx.with_gradients([(k, jnp.array(g)) for k, g in grads.items()], adopt=True)
        box = [ctx, opt.init(ctx)]
        jitted = jax.jit(lambda c, s: opt.step(c, s, donate=False), donate_argnums=(0, 1))

        def step() -> Any:
            if inside_jit:
                box[0], box[1] = jitted(box[0], box[1])
            else:
                box[0], box[1] = opt.step(box[0], box[1])
            return box[1]

        return step

    def ours_gradients_in() -> Callable[[], Any]:
        # as optax's update takes them: the gradients an argument, not carried by the
        # context in and out (a jitted training step makes them inside and clears them)
        opt = optim.adamw(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
        ctx = RuntimeContext.from_state_dict({k: jnp.array(v) for k, v in init.items()})
        names = list(grads)
        box = [ctx, opt.init(ctx)]

        def update(c: Any, s: Any, g: list[Any]) -> Any:
            c, s = opt.step(c.with_gradients(list(zip(names, g, strict=True))), s, donate=False)
            return c.clear_gradients(), s

        jitted = jax.jit(update, donate_argnums=(0, 1))
        arrays = list(grads.values())

        def step() -> Any:
            box[0], box[1] = jitted(box[0], box[1], arrays)
            return box[1]

        return step

    return {
        "optax.adamw update under jax.jit": optax_jit(),
        "torchlean adamw step (default call)": ours(inside_jit=False),
        "torchlean adamw step inside a user's jax.jit": ours(inside_jit=True),
        "  the same, gradients passed in as to optax": ours_gradients_in(),
    }


def jax_measure(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    import jax

    def timed(f: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        return time.perf_counter() - t0

    for f in variants.values():
        for _ in range(3):
            timed(f)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, f in variants.items():
            times[name].append(timed(f))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--full", action="store_true", help="the same as --size full")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile'd update")
    parser.add_argument("--jax", action="store_true", help="add jax AdamW vs optax")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "full" if args.full else args.size
    shapes = gpt2_shapes(*SIZES[size])
    g = torch.Generator().manual_seed(0)
    init = {k: (torch.randn(s, generator=g) * 0.02).to(args.device) for k, s in shapes.items()}
    grads = {k: (torch.randn(s, generator=g) * 0.01).to(args.device) for k, s in shapes.items()}
    n = sum(t.numel() for t in init.values())
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"AdamW step: {len(shapes)} tensors, {n / 1e6:.1f}M parameters ({size}), fp32, on"
        f" {where}; torch {torch.__version__}; medians of {args.repeat} interleaved"
        " synchronized calls; bandwidth = 7 x 4 B/param / time"
    )
    med = measure(torch_variants(init, grads, compile=args.compile), args.repeat, args.device)
    fused = med["torch AdamW(fused=True).step()"]
    print(f"\n  {'variant':46s} {'time':>10s} {'bandwidth':>10s} {'vs fused':>9s}")
    for name, m in med.items():
        print(f"  {name:46s} {m * 1e3:7.3f} ms {28 * n / m / 1e12:6.2f} TB/s {m / fused:8.2f}x")
    if args.jax:
        import jax

        del init, grads, med
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        med = jax_measure(jax_variants(shapes), args.repeat)
        base = med["optax.adamw update under jax.jit"]
        print(f"\n  jax {jax.__version__} on {jax.devices()[0]}")
        for name, m in med.items():
            print(f"  {name:46s} {m * 1e3:7.3f} ms {m / base:8.2f}x vs optax")


if __name__ == "__main__":
    main()

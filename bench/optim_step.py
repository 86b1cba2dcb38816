"""AdamW step on a GPT-2-shaped context vs torch.optim.AdamW (foreach and fused).

The context has the 148 tensors of GPT-2 small with the real layout (wte, wpe, 12 blocks of
ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, then ln_f), scaled down so that
four copies of parameters, gradients and two moments fit this machine: d_model 768 -> 384,
vocabulary 50257 -> 8192, context 1024 -> 256 (24.5M parameters instead of 124M).
``--full`` uses the real sizes. Every variant updates its own copy of the same tensors;
the variants run interleaved, and the script prints medians and ratios to fused.

Run: PYTHONPATH=src python bench/optim_step.py [--repeat 15] [--full] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from torchlean import RuntimeContext, optim


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--full", action="store_true", help="real GPT-2 small sizes (124M)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d, vocab, n_ctx = (768, 50257, 1024) if args.full else (384, 8192, 256)
    shapes = gpt2_shapes(d, vocab, n_ctx)
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    grads = {k: torch.randn(s, generator=g) * 0.01 for k, s in shapes.items()}
    n = sum(t.numel() for t in init.values())
    print(
        f"{len(shapes)} tensors, {n / 1e6:.1f}M parameters, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    def torch_variant(**kw: bool) -> Callable[[], None]:
        params = [t.clone().requires_grad_(True) for t in init.values()]
        for p, gr in zip(params, grads.values(), strict=True):
            p.grad = gr.clone()
        opt = torch.optim.AdamW(params, lr=1e-3, **kw)
        return opt.step  # type: ignore[return-value]

    def ours(donate: bool) -> Callable[[], None]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: t.clone() for k, t in init.items()})
        for k, gr in grads.items():
            ctx = ctx.register_gradient(k, gr.clone())
        box = [ctx, opt.init(ctx)]

        def step() -> None:
            box[0], box[1] = opt.step(box[0], box[1], donate=donate)

        return step

    variants = {
        "torch AdamW foreach=True": torch_variant(foreach=True),
        "torch AdamW fused=True": torch_variant(fused=True),
        "torchlean adamw step (default, donate=True)": ours(True),
        "torchlean adamw step donate=False": ours(False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():  # warm up
        f()
    for _ in range(args.repeat):
        for name, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    fused = statistics.median(times["torch AdamW fused=True"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:46s} median {med * 1e3:8.2f} ms   ratio to fused {med / fused:5.2f}x")


if __name__ == "__main__":
    main()

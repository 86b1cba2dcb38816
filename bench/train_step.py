"""A whole training step, context-based vs the idiomatic loop, eager and captured, torch and jax.

Model: MLP 784-1024-1024-10 (ReLU), cross-entropy, AdamW(lr=1e-3), random data, at each
``--batch`` (default 256 and 8192). Variants, run interleaved in one process on their own
copies of the same weights (medians of synchronized steps on a GPU):

- torch, idiomatic: ``nn.Sequential`` + ``torch.optim.AdamW(fused=True)``: ``zero_grad``,
  forward, ``backward``, ``step``; on CUDA also the same step captured in a CUDA graph
  (plain PyTorch: static inputs, ``capturable=True``, replayed);
- torch, torchlean: ``value_and_grad(loss)(ctx, x, y)`` then ``adamw.step(ctx, state)``
  (the default: donation, fused kernel), the same on flat storage, and the captured step
  (:class:`torchlean.train.CapturedStep`: a CUDA graph on CUDA, eager on the CPU);
- jax, optax: ``jax.jit`` of value_and_grad + ``optax.adamw`` update, params donated;
- jax, torchlean: ``jax.jit`` of ``value_and_grad`` + ``adamw.step`` on contexts (as
  ``torchlean.train.fit`` runs it), contexts donated.

Real models (``--models``, built as in tests/models/_nets.py): a ResNet-style CNN with
BatchNorm in train mode (width 32, 16x16 images, batch 64) and a GPT-2-style model with
tied embeddings (d 128, 4 layers, vocab 512, context 64, batch 16), AdamW(fused=True) in
both loops:

- idiomatic: ``model.train()``, forward, ``backward``, ``step``.
- torchlean: ``from_module`` + ``functional_call`` in the loss, ``value_and_grad``
  (``has_state=True`` for BatchNorm's running statistics) then ``adamw.step``.

- torchlean, call_module: the same with :func:`torchlean.autograd.call_module` in the
  loss instead of ``functional_call`` (the swap prepared once per module and layout).

``--models --host``: the same three loops on tiny configs (CNN width 8, 8x8 images,
batch 4; GPT d 32, 2 layers, vocab 50, batch 2x16) on the CPU with one thread, where the
kernels cost little and the host overhead shows: the median wall and CPU microseconds per
step, the ratio to the ``nn.Module`` loop and the extra microseconds (on CPU time, which
other processes on a busy machine move less than the wall time).

Prints the median step time of each and the ratio to its baseline (``--models``: and the
median minor page faults a step). The loops share one process, and with glibc's default
thresholds the page faults of memory its malloc gives back land on whichever loop touches
it next, which depends on the order of the loops, not on the loop (bench/_alloc.py): the
thresholds are held fixed unless ``--malloc default`` is given.
Run: PYTHONPATH=src python bench/train_step.py [--device cuda] [--batch 256 8192]
     [--repeat 30] [--skip-jax] [--threads N] [--sizes 784 1024 1024 10]
     PYTHONPATH=src python bench/train_step.py --models [--repeat 30] [--device cuda]
     PYTHONPATH=src python bench/train_step.py --models --host [--repeat 200] [--inner 5]
     PYTHONPATH=src python bench/train_step.py --models --alone 3 [--malloc default]
     (any of them with [--malloc default]: glibc's own malloc thresholds)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from _alloc import page_faults, steady_malloc

SIZES = (784, 1024, 1024, 10)


def weights(sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        bound = 1 / np.sqrt(a)
        out[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (b, a)).astype(np.float32)
        out[f"{2 * i}.bias"] = rng.uniform(-bound, bound, b).astype(np.float32)
    return out


def torch_variants(sizes: tuple[int, ...], batch: int, device: str) -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F

    from torchlean import RuntimeContext, optim
    from torchlean.autograd import value_and_grad
    from torchlean.train import CapturedStep

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(device)
    w = weights(sizes)
    cuda = device.startswith("cuda")

    def module(**kw: Any) -> tuple[Any, Any]:
        layers: list[Any] = []
        for a, b in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1]).to(device)
        model.load_state_dict({k: torch.tensor(v) for k, v in w.items()})
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True, **kw)

    def module_loop() -> Callable[[], Any]:
        model, opt = module()

        def step() -> Any:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    def module_graph() -> Callable[[], Any]:
        # the recipe of torch's CUDA graph docs: warm up on a side stream, then capture
        model, opt = module(capturable=True)
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(static_x), static_y).backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = F.cross_entropy(model(static_x), static_y)
            static_loss.backward()
            opt.step()

        # the graph reads the model's and the optimizer's memory: keep them alive
        def step(keep: tuple[Any, Any] = (model, opt)) -> Any:
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
            return static_loss.detach().clone()

        return step

    names = [f"{2 * i}" for i in range(len(sizes) - 1)]

    def loss_fn(ctx: Any, x: Any, y: Any) -> Any:
        h = x
        for i, name in enumerate(names):
            h = F.linear(h, ctx[f"{name}.weight"], ctx[f"{name}.bias"])
            if i < len(names) - 1:
                h = torch.relu(h)
        return F.cross_entropy(h, y)

    def context(flat: bool) -> tuple[Any, Any, Any]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: torch.tensor(v).to(device) for k, v in w.items()})
        if flat:
            ctx = optim.flatten(ctx)
        return opt, ctx, opt.init(ctx)

    def context_loop(flat: bool) -> Callable[[], Any]:
        opt, ctx, state = context(flat)
        grad_fn = value_and_grad(loss_fn)
        box = [ctx, state]

        def step() -> Any:
            loss, c = grad_fn(box[0], x, y)
            box[0], box[1] = opt.step(c, box[1])
            return loss

        return step

    def captured(flat: bool) -> Callable[[], Any]:
        opt, ctx, state = context(flat)
        run = CapturedStep(loss_fn, opt)
        box = [ctx, state]

        def step() -> Any:
            loss, box[0], box[1] = run(box[0], box[1], (x, y))
            return loss

        return step

    variants = {"nn.Module + AdamW(fused=True), eager": module_loop()}
    if cuda:
        variants["nn.Module + AdamW(fused), CUDA graph"] = module_graph()
    variants |= {
        "torchlean value_and_grad + step": context_loop(False),
        "torchlean, flat storage": context_loop(True),
        "torchlean CapturedStep" + ("" if cuda else " (eager on CPU)"): captured(False),
        "torchlean CapturedStep, flat storage": captured(True),
    }
    return variants


def jax_variants(sizes: tuple[int, ...], batch: int) -> dict[str, Callable[[], Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    from torchlean import RuntimeContext, optim
    from torchlean.autograd import value_and_grad

    key = jax.random.PRNGKey(1)
    x = jax.random.normal(key, (batch, sizes[0]))
    y = jax.random.randint(key, (batch,), 0, sizes[-1])
    n = len(sizes) - 1

    def forward(p: Any, x: Any) -> Any:
        h = x
        for i in range(n):
            h = h @ p[f"{2 * i}.weight"].T + p[f"{2 * i}.bias"]
            if i < n - 1:
                h = jax.nn.relu(h)
        return h

    def loss_p(p: Any, x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    def optax_loop() -> Callable[[], Any]:
        tx = optax.adamw(1e-3, weight_decay=1e-2)
        params = {k: jnp.asarray(v) for k, v in weights(sizes).items()}
        box = [params, jax.tree.map(jnp.array, tx.init(params))]

        def update(p: Any, s: Any, x: Any, y: Any) -> Any:
            loss, g = jax.value_and_grad(loss_p)(p, x, y)
            u, s = tx.update(g, s, p)
            return loss, optax.apply_updates(p, u), s

        jitted = jax.jit(update, donate_argnums=(0, 1))

        def step() -> Any:
            loss, box[0], box[1] = jitted(box[0], box[1], x, y)
            return loss

        return step

    def context_loop() -> Callable[[], Any]:
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_state_dict({k: jnp.asarray(v) for k, v in weights(sizes).items()})
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


def _nets() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tests" / "models" / "_nets.py"
    spec = importlib.util.spec_from_file_location("_nets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_variants(
    *, tiny: bool = False, device: str = "cpu"
) -> dict[str, dict[str, Callable[[], Any]]]:
    """``{model: {"idiomatic": step, "torchlean": step, "torchlean, call_module": step}}``
    for the BatchNorm CNN and the tied GPT-2 (``tiny``: the host-overhead configs)."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from torchlean import RuntimeContext, optim
    from torchlean.autograd import value_and_grad

    nets = _nets()
    g = torch.Generator().manual_seed(1)
    n, side, vocab, context_len, batch = (4, 8, 50, 16, 2) if tiny else (64, 16, 512, 64, 16)
    images = (
        torch.randn(n, 3, side, side, generator=g).to(device),
        torch.randint(0, 10, (n,), generator=g).to(device),
    )
    tokens = torch.randint(0, vocab, (batch, context_len + 1), generator=g).to(device)
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    try:
        from torchlean.autograd import call_module
    except ImportError:  # an older torchlean (a before/after comparison)
        call_module = None

    def cnn_loss(module: Any) -> Any:
        def loss(ctx: Any, x: Any, y: Any) -> Any:
            tensors = ctx.state_dict()
            out = functional_call(module, tensors, (x,))
            return F.cross_entropy(out, y), {n: tensors[n] for n in ctx.buffers()}

        return loss

    def gpt_loss(module: Any) -> Any:
        def loss(ctx: Any, idx: Any, targets: Any) -> Any:
            logits = functional_call(module, ctx.state_dict(), (idx,))
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

        return loss

    def cnn_prepared(module: Any) -> Any:
        def loss(ctx: Any, x: Any, y: Any) -> Any:
            out, state = call_module(module, ctx, x, state=True)
            return F.cross_entropy(out, y), state

        return loss

    def gpt_prepared(module: Any) -> Any:
        def loss(ctx: Any, idx: Any, targets: Any) -> Any:
            logits = call_module(module, ctx, idx)
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

        return loss

    def idiomatic(model: Any, batch: tuple[Any, Any], flat: bool) -> Callable[[], Any]:
        model = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

        def step() -> Any:
            opt.zero_grad()
            out = model(batch[0])
            loss = F.cross_entropy(out.flatten(0, 1) if flat else out, batch[1].flatten())
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    def context(model: Any, batch: tuple[Any, Any], loss: Any, state: bool) -> Callable[[], Any]:
        model = copy.deepcopy(model).train()
        opt = optim.adamw(lr=1e-3)
        ctx = RuntimeContext.from_module(model)
        grad_fn = value_and_grad(loss(model), has_state=state)
        box = [ctx, opt.init(ctx)]

        def step() -> Any:
            value, c = grad_fn(box[0], *batch)
            box[0], box[1] = opt.step(c, box[1])
            return value

        return step

    torch.manual_seed(0)
    cnn = nets.ResNet(width=8 if tiny else 32).to(device)
    gpt = nets.GPT(vocab=vocab, context=context_len, d=32 if tiny else 128, layers=2 if tiny else 4)
    gpt = gpt.to(device)
    out = {
        "ResNet-style CNN, BatchNorm (train)": {
            "idiomatic": idiomatic(cnn, images, False),
            "torchlean": context(cnn, images, cnn_loss, True),
        },
        "GPT-2-style, tied embeddings": {
            "idiomatic": idiomatic(gpt, (idx, targets), True),
            "torchlean": context(gpt, (idx, targets), gpt_loss, False),
        },
    }
    if call_module is not None:
        cnn_variants, gpt_variants = out.values()
        cnn_variants["torchlean, call_module"] = context(cnn, images, cnn_prepared, True)
        gpt_variants["torchlean, call_module"] = context(gpt, (idx, targets), gpt_prepared, False)
    return out


def measure_host(
    variants: dict[str, Callable[[], Any]], repeat: int, inner: int
) -> dict[str, tuple[float, float]]:
    """``{name: (median wall seconds, median CPU seconds)}`` per step: rounds of ``inner``
    steps, the variants interleaved. The process's CPU time counts only this process's
    work, so other processes on a busy machine move it less than the wall time."""
    for f in variants.values():
        for _ in range(10):
            f()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, f in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner):
                f()
            cpu[name].append((time.process_time() - c0) / inner)
            wall[name].append((time.perf_counter() - w0) / inner)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in variants}


def host_overhead(repeat: int, inner: int, malloc: str) -> None:
    """The host overhead of the context loop on tiny models (CPU, one thread), where the
    kernels cost little and the Python around them shows."""
    import torch

    torch.set_num_threads(1)
    print(
        f"host overhead, tiny models on CPU (CNN width 8, 8x8 images, batch 4; GPT d 32,"
        f" 2 layers, vocab 50, batch 2x16); torch {torch.__version__}, 1 thread;"
        f" medians of {repeat} interleaved rounds of {inner} steps; {malloc}"
    )
    head = f"{'wall':>9s} {'ratio':>6s} {'CPU':>9s} {'ratio':>6s} {'extra CPU':>9s}"
    print(f"{'model / loop':56s} {head}")
    for model, variants in model_variants(tiny=True).items():
        med = measure_host(variants, repeat, inner)
        base_wall, base_cpu = med["idiomatic"]
        for name, (w, c) in med.items():
            label = f"{model}: {'nn.Module loop' if name == 'idiomatic' else name}"
            print(
                f"{label:56s} {w * 1e6:7.0f}us {w / base_wall:5.3f}x {c * 1e6:7.0f}us"
                f" {c / base_cpu:5.3f}x {(c - base_cpu) * 1e6:+7.0f}us"
            )


def measure(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    return {k: t for k, (t, _) in measure_faults(variants, repeat).items()}


def measure_faults(
    variants: dict[str, Callable[[], Any]], repeat: int
) -> dict[str, tuple[float, float]]:
    """``{name: (median seconds, median minor page faults)}`` per step, interleaved."""
    for f in variants.values():
        for _ in range(4):
            float(f())
    times: dict[str, list[float]] = {k: [] for k in variants}
    faults: dict[str, list[int]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, f in variants.items():
            n0, t0 = page_faults(), time.perf_counter()
            float(f())  # waits for the result (a device sync)
            times[name].append(time.perf_counter() - t0)
            faults[name].append(page_faults() - n0)
    return {k: (statistics.median(times[k]), statistics.median(faults[k])) for k in variants}


def alone(rounds: int, argv: list[str]) -> None:
    """Each loop of ``--models`` in a process of its own (no loop before it to leave the
    allocator in a state), ``rounds`` processes per loop taken in turn: the median over all
    their steps of the step time and the minor page faults."""
    import json
    import subprocess
    import sys

    names = {m: list(v) for m, v in model_variants(tiny=True).items()}
    steps: dict[tuple[str, str], list[tuple[float, float]]] = {
        (m, n): [] for m, ns in names.items() for n in ns
    }
    for _ in range(rounds):
        for model, name in steps:
            command = [sys.executable, __file__, *argv, "--only", model, name]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            steps[model, name] += [tuple(x) for x in json.loads(out)]
    for model, ns in names.items():
        base = statistics.median(t for t, _ in steps[model, ns[0]])
        for name in ns:
            t = statistics.median(t for t, _ in steps[model, name])
            faults = statistics.median(f for _, f in steps[model, name])
            label = f"{model}: {'nn.Module loop' if name == 'idiomatic' else name}"
            print(f"{label:62s} {t * 1e3:8.2f} ms {t / base:6.3f}x {faults:8.0f} faults/step")


def only(model: str, name: str, repeat: int, device: str) -> None:
    """One loop of ``--models`` alone: its step times and page faults, as JSON."""
    import json

    f = model_variants(device=device)[model][name]
    for _ in range(4):
        float(f())
    out = []
    for _ in range(repeat):
        n0, t0 = page_faults(), time.perf_counter()
        float(f())
        out.append((time.perf_counter() - t0, page_faults() - n0))
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 8192])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--skip-jax", action="store_true")
    parser.add_argument("--models", action="store_true", help="the BatchNorm CNN and tied GPT-2")
    parser.add_argument(
        "--host",
        action="store_true",
        help="with --models: tiny configs on the CPU, one thread (the host overhead)",
    )
    parser.add_argument("--inner", type=int, default=5, help="with --host: steps per round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--malloc",
        choices=("steady", "default"),
        default="steady",
        help="hold glibc's malloc thresholds fixed (bench/_alloc.py) or leave its defaults",
    )
    parser.add_argument(
        "--alone",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="with --models: each loop in processes of its own, ROUNDS each (no interleaving)",
    )
    parser.add_argument("--only", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        if args.malloc == "steady":
            steady_malloc()
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        only(*args.only, args.repeat, args.device)
        return
    if args.models and args.alone:
        print(
            f"real models on {args.device}, each loop alone in {args.alone} processes of its"
            f" own, {args.repeat} steps each; medians over all steps; the malloc of each:"
            f" {'held steady' if args.malloc == 'steady' else 'glibc defaults'}"
        )
        argv = ["--repeat", str(args.repeat), "--device", args.device, "--malloc", args.malloc]
        alone(args.alone, [*argv, "--threads", str(args.threads)])
        return
    malloc = steady_malloc() if args.malloc == "steady" else "glibc malloc defaults"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.models and args.host:
        host_overhead(args.repeat, args.inner, malloc)
        return
    if args.models:
        print(
            f"real models on {args.device}, AdamW(fused=True); torch {torch.__version__}"
            f" ({torch.get_num_threads()} threads); medians of {args.repeat} interleaved"
            f" synchronized steps; {malloc}"
        )
        print(
            f"{'model':38s} {'nn.Module loop':>15s} {'torchlean loop':>15s}  overhead"
            "  page faults/step (nn.Module, torchlean)"
        )
        for model, variants in model_variants(device=args.device).items():
            med = measure_faults(variants, args.repeat)
            base, base_faults = med.pop("idiomatic")
            for name, (ours, faults) in med.items():
                label = model if name == "torchlean" else f"  {name.split(', ')[1]}"
                print(
                    f"{label:38s} {base * 1e3:12.2f} ms {ours * 1e3:12.2f} ms"
                    f"  {(ours / base - 1) * 100:+6.1f}%   {base_faults:6.0f} {faults:6.0f}"
                )
        return
    sizes = tuple(args.sizes)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"MLP {'-'.join(map(str, sizes))}, AdamW, on {where}; torch {torch.__version__};"
        f" medians of {args.repeat} interleaved synchronized steps; {malloc}"
    )
    for batch in args.batch:
        med = measure(torch_variants(sizes, batch, args.device), args.repeat)
        base = med["nn.Module + AdamW(fused=True), eager"]
        print(f"\n  batch {batch}")
        for name, m in med.items():
            print(f"  {name:44s} {m * 1e3:8.3f} ms   {m / base:6.3f}x eager nn.Module")
        graph = med.get("nn.Module + AdamW(fused), CUDA graph")
        ours = med.get("torchlean CapturedStep")
        if graph is not None and ours is not None:
            print(f"  {'torchlean CapturedStep / CUDA-graph nn.Module':44s} {ours / graph:20.3f}x")
    if not args.skip_jax:
        import jax

        print(f"\n  jax {jax.__version__} on {jax.devices()[0]}")
        for batch in args.batch:
            med = measure(jax_variants(sizes, batch), args.repeat)
            base = med["jax optax.adamw loop (jit)"]
            for name, m in med.items():
                print(f"  batch {batch:5d} {name:38s} {m * 1e3:8.3f} ms   {m / base:6.3f}x optax")


if __name__ == "__main__":
    main()

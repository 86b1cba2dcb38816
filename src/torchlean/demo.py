"""``torchlean demo``: train a small MLP on two moons, with everything in a context.

No downloads: the data set (two interleaving half circles with noise) is generated in
code from a fixed seed. The parameters and their gradients live in a
:class:`~torchlean.RuntimeContext`; :func:`torchlean.autograd.value_and_grad` fills the
gradients, :func:`torchlean.optim.adamw` updates the parameters, :func:`torchlean.train.fit`
runs the loop with a progress bar. The demo then prints the final context and the test
accuracy, and writes a checkpoint (safetensors), the weights (TorchLean JSON) and a PNG
of the loss curve and the decision boundary.

Reading map:
- :func:`cli_main` -- the command (``torchlean demo [--steps N] [--backend torch|jax]
  [--out DIR]``); returns the exit code.
- :func:`run` -- the same as a function; returns a :class:`DemoResult`.
- :func:`two_moons` -- the data set.
- :func:`init_mlp` -- the parameters of the MLP 2-64-64-2 as a context.
- ``_require``, ``_MissingDependency`` -- an optional library (matplotlib, torch,
  jax), or one line saying what to install: without matplotlib the demo still trains and
  writes the checkpoint and the weights, and says the plot needs ``torchlean[all]``.
- ``_LIBRARIES`` -- the model written once per array library (torch, jax): one row each.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from torchlean._validate import require_int, require_path
from torchlean.errors import TorchLeanError

__all__ = ["DemoResult", "cli_main", "init_mlp", "run", "two_moons"]

#: What to install for each optional library the demo uses.
INSTALL: Final = {
    "matplotlib": "pip install 'torchlean[all]'",
    "torch": "pip install 'torchlean[torch]'",
    "jax": "pip install 'torchlean[jax]'",
}

HIDDEN = 64
TRAIN_POINTS = 512
TEST_POINTS = 1024
SEED = 0


@dataclass
class DemoResult:
    """What :func:`run` produced, and where it wrote its files."""

    ctx: Any
    state: Any
    losses: list[float]
    accuracy: float
    checkpoint: Path
    weights: Path
    #: ``None`` when matplotlib is not installed (the plot is skipped, nothing else).
    plot: Path | None
    seconds: float


class _MissingDependency(TorchLeanError, ImportError):
    """An optional library that is not installed; the message says what to install."""


def _require(module: str, why: str) -> Any:
    """The module ``module`` imported, or :class:`_MissingDependency` saying
    ``<module> is not installed (needed <why>): pip install ...``."""
    import importlib

    if not isinstance(module, str) or module not in INSTALL:
        raise ValueError(f"require: module must be one of {', '.join(INSTALL)}, got {module!r}")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _MissingDependency(
            f"{module} is not installed (needed {why}): {INSTALL[module]}"
        ) from None


def two_moons(n: int, *, noise: float = 0.1, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of two interleaving half circles (float32) and their labels (int64).

    The same construction as scikit-learn's ``make_moons``, standardized. Cost: O(n).
    """
    require_int(n, "two_moons", "n", 2)
    rng = np.random.default_rng(seed)
    top = n // 2
    angle = np.concatenate([rng.uniform(0, np.pi, top), rng.uniform(0, np.pi, n - top)])
    x = np.where(np.arange(n) < top, np.cos(angle), 1 - np.cos(angle))
    y = np.where(np.arange(n) < top, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + rng.normal(0.0, noise, (n, 2))
    points = (points - np.array([0.5, 0.25])) / np.array([0.85, 0.5])
    labels = (np.arange(n) >= top).astype(np.int64)
    order = rng.permutation(n)
    return points[order].astype(np.float32), labels[order]


def _check_backend(backend: object) -> None:
    if not isinstance(backend, str) or backend not in _LIBRARIES:
        raise ValueError(f"the demo runs on backend 'torch' or 'jax', got {backend!r}")


def init_mlp(backend: str, *, seed: int = SEED) -> Any:
    """The MLP 2-64-64-2 (``fc1``, ``fc2``, ``fc3``), initialized as ``nn.Linear`` does.

    Cost: O(parameters)."""
    from torchlean import RuntimeContext

    _check_backend(backend)

    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, (fan_in, fan_out) in {
        "fc1": (2, HIDDEN),
        "fc2": (HIDDEN, HIDDEN),
        "fc3": (HIDDEN, 2),
    }.items():
        bound = 1.0 / np.sqrt(fan_in)
        params[f"{name}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        params[f"{name}.bias"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    convert = _LIBRARIES[backend].convert
    return RuntimeContext.from_state_dict({k: convert(v) for k, v in params.items()})


# ---------------------------------------------------------------------- the model, per library


def _torch_convert(array: np.ndarray) -> Any:
    return _require("torch", "for the demo's torch backend").from_numpy(array)


def _torch_model() -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F

    def logits(ctx: Any, x: Any) -> Any:
        h = torch.tanh(F.linear(x, ctx["fc1.weight"], ctx["fc1.bias"]))
        h = torch.tanh(F.linear(h, ctx["fc2.weight"], ctx["fc2.bias"]))
        return F.linear(h, ctx["fc3.weight"], ctx["fc3.bias"])

    def loss(ctx: Any, x: Any, y: Any) -> Any:
        return F.cross_entropy(logits(ctx, x), y)

    return logits, loss


@contextlib.contextmanager
def _torch_one_thread() -> Iterator[None]:
    torch = _require("torch", "for the demo's torch backend")

    # The model is tiny: one thread beats two that spin-wait on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _jax_convert(array: np.ndarray) -> Any:
    _require("jax", "for the demo's jax backend")
    import jax.numpy as jnp

    return jnp.asarray(array)


def _jax_model() -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp

    def logits(ctx: Any, x: Any) -> Any:
        h = jnp.tanh(x @ ctx["fc1.weight"].T + ctx["fc1.bias"])
        h = jnp.tanh(h @ ctx["fc2.weight"].T + ctx["fc2.bias"])
        return h @ ctx["fc3.weight"].T + ctx["fc3.bias"]

    def loss(ctx: Any, x: Any, y: Any) -> Any:
        logp = jax.nn.log_softmax(logits(ctx, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return logits, loss


@dataclass(frozen=True)
class _Library:
    """The demo written for one array library."""

    #: a numpy array as an array of the library
    convert: Callable[[np.ndarray], Any]
    #: ``() -> (logits(ctx, x), loss(ctx, x, y))``
    model: Callable[[], tuple[Any, Any]]
    #: how the command runs (torch: on one thread)
    running: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


_LIBRARIES: Final[dict[str, _Library]] = {
    "torch": _Library(_torch_convert, _torch_model, _torch_one_thread),
    "jax": _Library(_jax_convert, _jax_model),
}


def run(
    *,
    steps: int = 400,
    backend: str = "torch",
    out: str | Path = "torchlean-demo",
    progress: bool = True,
    batch: int = 128,
) -> DemoResult:
    """Train, evaluate and write the files; see the module docstring. Cost: ``steps``
    training steps of a 2-64-64-2 MLP on batches of ``batch`` points."""
    from torchlean import io, optim
    from torchlean.train import fit, save_checkpoint

    require_int(steps, "demo run", "steps", 1)
    require_int(batch, "demo run", "batch", 1)
    _check_backend(backend)
    require_path(out, "demo run", "out")

    began = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    library = _LIBRARIES[backend]
    convert = library.convert
    x_train, y_train = two_moons(TRAIN_POINTS, seed=SEED)
    x_test, y_test = two_moons(TEST_POINTS, seed=SEED + 1)
    xs, ys = convert(x_train), convert(y_train)
    logits, loss = library.model()
    batches = TRAIN_POINTS // batch

    def data(step: int) -> tuple[Any, Any]:
        i = (step % batches) * batch
        return xs[i : i + batch], ys[i : i + batch]

    def accuracy(ctx: Any) -> dict[str, float]:
        predicted = np.asarray(logits(ctx, convert(x_test))).argmax(1)
        return {"test acc": float((predicted == y_test).mean())}

    ctx = init_mlp(backend)
    optimizer = optim.adamw(lr=optim.warmup_cosine(0.02, max(1, steps // 20), steps + 1))
    result = fit(
        ctx,
        loss,
        optimizer,
        data,
        steps=steps,
        eval_fn=accuracy,
        eval_every=max(1, steps // 10),
        progress=progress,
        description="two moons",
    )
    acc = (
        result.evaluations[-1][1]["test acc"]
        if result.evaluations
        else accuracy(result.ctx)["test acc"]
    )
    checkpoint = out / "checkpoint.safetensors"
    save_checkpoint(checkpoint, result.ctx, result.state, result.step)
    weights = out / "weights.json"
    io.save(result.ctx.clear_gradients(), weights)
    plot: Path | None = out / "loss.png"
    try:
        _plot(out / "loss.png", result.losses, logits, result.ctx, convert, x_test, y_test, backend)
    except _MissingDependency:
        plot = None
    return DemoResult(
        result.ctx,
        result.state,
        result.losses,
        acc,
        checkpoint,
        weights,
        plot,
        time.perf_counter() - began,
    )


def _plot(
    path: Path,
    losses: list[float],
    logits: Any,
    ctx: Any,
    convert: Any,
    x: np.ndarray,
    y: np.ndarray,
    backend: str,
) -> None:
    matplotlib = _require("matplotlib", "to draw the demo's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    left.plot(np.arange(1, len(losses) + 1), losses, color="tab:blue", linewidth=1)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("cross-entropy loss (log scale)")
    left.set_title(f"training loss ({backend})")
    left.grid(True, which="both", alpha=0.3)
    grid = np.linspace(-2.5, 2.5, 200, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    z = np.asarray(logits(ctx, convert(points)))
    margin = (z[:, 1] - z[:, 0]).reshape(gx.shape)
    right.contourf(gx, gy, margin, levels=[-1e9, 0, 1e9], colors=["#cfe2f3", "#f4cccc"])
    right.contour(gx, gy, margin, levels=[0], colors="k", linewidths=1)
    right.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=6, edgecolors="none")
    right.set_title("decision boundary on the test set")
    right.set_xticks([])
    right.set_yticks([])
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.12)
    fig.savefig(path)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchlean demo",
        description=(
            "Train a small MLP on a two-moons data set generated in code (no downloads),"
            " with its parameters and gradients in a RuntimeContext; print the final context"
            " and the accuracy; write a checkpoint, the weights and a plot of the loss."
        ),
    )
    parser.add_argument(
        "--steps", type=int, default=400, metavar="N", help="training steps (default: 400)"
    )
    parser.add_argument(
        "--backend",
        choices=tuple(_LIBRARIES),
        default="torch",
        help="array library of the context (default: torch)",
    )
    parser.add_argument(
        "--out",
        default="torchlean-demo",
        metavar="DIR",
        help="where the files go (default: ./torchlean-demo)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def cli_main(argv: list[str]) -> int:
    """Run ``torchlean demo`` with the arguments ``argv``; return the exit code."""
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"cli_main: argv must be a list of str, got {argv!r}")
    args = _parser().parse_args(argv)
    if args.steps < 1:
        print("torchlean demo: error: --steps must be at least 1", file=sys.stderr)
        return 2
    with _LIBRARIES[args.backend].running():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from torchlean.widgets import rich_renderable

    console = Console()
    console.print(
        f"[bold]torchlean demo[/]: MLP 2-{HIDDEN}-{HIDDEN}-2 on two moons"
        f" ({TRAIN_POINTS} training points), {args.steps} steps of AdamW, {args.backend} backend"
    )
    result = run(
        steps=args.steps, backend=args.backend, out=args.out, progress=not args.no_progress
    )
    console.print(rich_renderable(result.ctx))
    console.print(
        f"final loss {result.losses[-1]:.4f}, test accuracy [bold]{result.accuracy:.1%}[/]"
        f" on {TEST_POINTS} points, {result.seconds:.1f} s"
    )
    console.print(f"checkpoint (parameters, AdamW state, step): {result.checkpoint}")
    console.print(f"weights (TorchLean JSON):                   {result.weights}")
    if result.plot is None:
        console.print(
            "loss curve and decision boundary (PNG):     not drawn: matplotlib is not"
            f" installed ({INSTALL['matplotlib']})",
            markup=False,
            soft_wrap=True,  # one line, whatever the width
        )
    else:
        console.print(f"loss curve and decision boundary (PNG):     {result.plot}")
    return 0

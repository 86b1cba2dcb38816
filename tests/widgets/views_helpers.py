"""Contexts the view tests draw (deterministic: snapshots depend on them)."""

from __future__ import annotations

from typing import Any

import numpy as np

import torchlean as tl

EVIL = "<script>document.documentElement.setAttribute('data-pwned','script')</script>"
EVIL_IMG = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">"


def sample_context() -> tl.RuntimeContext[Any]:
    """Variables with a shadowed entry, a NaN/inf, an int and a wide matrix; gradients
    with a shape mismatch and an orphan."""
    ctx = tl.empty_context()
    ctx = ctx.register_variable("fc1.weight", np.arange(12, dtype=np.float32).reshape(3, 4) / 8)
    ctx = ctx.register_variable("fc1.bias", np.array([0.5, -1.25, 2.0], dtype=np.float32))
    ctx = ctx.register_variable(
        "fc1.weight", np.linspace(-1, 1, 40, dtype=np.float32).reshape(4, 10)
    )
    ctx = ctx.register_variable("steps", np.array(7, dtype=np.int64))
    ctx = ctx.register_variable("bad", np.array([1.0, np.nan, np.inf, -2.0], dtype=np.float64))
    ctx = ctx.register_variable("embed", np.arange(5 * 100, dtype=np.float32).reshape(5, 100) / 100)
    ctx = ctx.register_gradient("fc1.weight", np.full((4, 10), 0.5, dtype=np.float32))
    ctx = ctx.register_gradient("fc1.bias", np.ones((2,), dtype=np.float32))
    ctx = ctx.register_gradient("ghost", np.zeros((1,), dtype=np.float32))
    return ctx


def evil_context() -> tl.RuntimeContext[Any]:
    """Names and values that would run a script if they were not escaped."""
    ctx = tl.empty_context()
    ctx = ctx.register_variable(EVIL, np.ones((2, 3), dtype=np.float32))
    ctx = ctx.register_variable(EVIL_IMG, np.zeros((2,), dtype=np.float32))
    ctx = ctx.register_gradient(EVIL, np.ones((2, 3), dtype=np.float32))
    return ctx


def resnet50_state_dict() -> dict[str, np.ndarray[Any, Any]]:
    """The 320 tensors of torchvision's ResNet-50 state dict (names, shapes, dtypes),
    filled with deterministic values: convolutions, batch norms with their running
    statistics and int64 ``num_batches_tracked``, and the classifier."""
    rng = np.random.default_rng(0)
    sd: dict[str, np.ndarray[Any, Any]] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        sd[name + ".weight"] = rng.standard_normal((out, inp, k, k), dtype=np.float32) * 0.01

    def bn(name: str, c: int) -> None:
        sd[name + ".weight"] = np.ones(c, np.float32)
        sd[name + ".bias"] = np.zeros(c, np.float32)
        sd[name + ".running_mean"] = np.zeros(c, np.float32)
        sd[name + ".running_var"] = np.ones(c, np.float32)
        sd[name + ".num_batches_tracked"] = np.array(0, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for layer, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            conv(p + ".conv1", width, inp, 1)
            bn(p + ".bn1", width)
            conv(p + ".conv2", width, width, 3)
            bn(p + ".bn2", width)
            conv(p + ".conv3", width * 4, width, 1)
            bn(p + ".bn3", width * 4)
            if b == 0:
                conv(p + ".downsample.0", width * 4, inp, 1)
                bn(p + ".downsample.1", width * 4)
            inp = width * 4
    sd["fc.weight"] = rng.standard_normal((1000, 2048), dtype=np.float32) * 0.01
    sd["fc.bias"] = np.zeros(1000, np.float32)
    return sd

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

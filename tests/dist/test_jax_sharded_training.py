"""Training jax arrays sharded over 2 host devices against optax (the worker,
:mod:`_jax_train_worker`, runs in a fresh process so that ``XLA_FLAGS`` comes before
jax). Before, the eager step refused the gradients of a sharded weight: jax's eager
differentiation returned them replicated, and ``value_and_grad`` passed them on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = os.path.join(os.path.dirname(__file__), "_jax_train_worker.py")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_sharded_weights_train_as_optax_eagerly_in_jit_and_in_fit() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.strip() == "sharded training ok"

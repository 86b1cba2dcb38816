"""``fit`` on jax contexts against a hand-written optax loop: buffers updated by the loss
(``has_state``, a flax-style batch statistic and an integer counter), ``accumulate``,
``clip``, ``frozen``, jitted and not, and resuming a checkpoint bit-exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from torchlean import RuntimeContext, optim
from torchlean.train import fit

NAMES = ("w", "v", "bn.mean", "bn.count")


def start() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((2, 8)).astype(np.float32),
        "v": rng.standard_normal((8, 1)).astype(np.float32),
        "bn.mean": np.zeros(8, np.float32),
        "bn.count": np.zeros((), np.int32),
    }


def model() -> RuntimeContext[Any]:
    ctx = RuntimeContext.from_state_dict({k: jnp.asarray(v) for k, v in start().items()})
    return ctx.mark_buffers(["bn.*"])


def forward(p: dict[str, Any], st: dict[str, Any], x: Any, y: Any) -> tuple[Any, Any]:
    h = jnp.tanh(x @ p["w"])
    m = h.mean(0)
    new = {"bn.mean": 0.9 * st["bn.mean"] + 0.1 * m, "bn.count": st["bn.count"] + 1}
    return jnp.mean(((h - m) @ p["v"] - y) ** 2), new


def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    return forward(
        {"w": ctx["w"], "v": ctx["v"]},
        {"bn.mean": ctx["bn.mean"], "bn.count": ctx["bn.count"]},
        x,
        y,
    )


def data(step: int) -> tuple[Any, Any]:
    x = jax.random.normal(jax.random.PRNGKey(step), (16, 2))
    return x, x[:, :1] * x[:, 1:]


def reference(opt: Any, steps: int, accumulate: int, frozen: tuple[str, ...]) -> Any:
    s0 = {k: jnp.asarray(v) for k, v in start().items()}
    p = {"w": s0["w"], "v": s0["v"]}
    st = {"bn.mean": s0["bn.mean"], "bn.count": s0["bn.count"]}
    s = opt.init(p)
    losses, i = [], 0
    for _ in range(steps):
        total, value = None, 0.0
        for _ in range(accumulate):
            batch = data(i)
            (lv, st), g = jax.value_and_grad(
                lambda p, st=st, batch=batch: forward(p, st, *batch), has_aux=True
            )(p)
            i += 1
            g = jax.tree.map(lambda a: a / accumulate, g)
            total = g if total is None else jax.tree.map(jnp.add, total, g)
            value += float(lv) / accumulate
        assert total is not None
        u, s = opt.update(total, s, p)
        u = {k: jnp.zeros_like(a) if k in frozen else a for k, a in u.items()}
        p = optax.apply_updates(p, u)
        losses.append(value)
    return {**p, **st}, losses


CASES = {
    "adamw": (
        lambda: optim.adamw(lr=0.05, weight_decay=0.1),
        optax.adamw(0.05, weight_decay=0.1),
        {},
    ),
    "accumulate": (
        lambda: optim.adamw(lr=0.05),
        optax.adamw(0.05, weight_decay=0.01),
        {"accumulate": 3},
    ),
    "clip": (
        lambda: optim.adamw(lr=0.05),
        optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(0.05, weight_decay=0.01)),
        {"clip": 0.1},
    ),
    "nesterov, clip, accumulate": (
        lambda: optim.sgd(lr=0.05, momentum=0.9, nesterov=True),
        optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(0.05, momentum=0.9, nesterov=True)),
        {"clip": 0.1, "accumulate": 2},
    ),
    "frozen": (lambda: optim.adam(lr=0.05), optax.adam(0.05), {"frozen": "v"}),
}


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_fit_on_jax_gives_optax_numbers(case: str, jit: bool) -> None:
    ours, theirs, kw = CASES[case]
    res = fit(model(), loss, ours(), data, steps=6, has_state=True, progress=False, jit=jit, **kw)
    frozen = ("v",) if "frozen" in kw else ()
    want, losses = reference(theirs, 6, kw.get("accumulate", 1), frozen)
    for name in NAMES:
        np.testing.assert_allclose(
            np.asarray(res.ctx[name]), np.asarray(want[name]), rtol=2e-6, atol=1e-6
        )
    assert res.ctx["bn.count"].dtype == jnp.int32 and int(res.ctx["bn.count"]) == 6 * kw.get(
        "accumulate", 1
    )
    np.testing.assert_allclose(res.losses, losses, rtol=1e-6, atol=1e-6)
    if frozen:
        np.testing.assert_array_equal(np.asarray(res.ctx["v"]), start()["v"])


@pytest.mark.parametrize("case", list(CASES))
def test_fit_on_jax_resumes_bit_exact(case: str, tmp_path: Path) -> None:
    ours, _, kw = CASES[case]
    common: dict[str, Any] = {"has_state": True, "progress": False, **kw}
    whole = fit(model(), loss, ours(), data, steps=6, **common)
    folder = {"checkpoint_dir": tmp_path, "checkpoint_every": 3}
    fit(model(), loss, ours(), data, steps=3, **folder, **common)
    res = fit(model(), loss, ours(), data, steps=6, resume=True, **folder, **common)
    for name in NAMES:
        np.testing.assert_array_equal(np.asarray(res.ctx[name]), np.asarray(whole.ctx[name]))
    for name, value in whole.state.latest_variables():
        np.testing.assert_array_equal(np.asarray(res.state[name]), np.asarray(value.unchecked))
    assert res.losses == whole.losses[3:]

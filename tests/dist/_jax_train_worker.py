"""Worker of test_jax_sharded_training.py, run as ``python _jax_train_worker.py`` in a
fresh process (2 host devices: ``XLA_FLAGS`` comes before jax): a weight sharded by rows
and one replicated (auto mesh axes) trained with AdamW five steps, eagerly (donated and
not), inside a user's ``jax.jit`` (donated and not) and by ``fit`` (jitted and not);
each against optax, and each keeps the layouts."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from torchlean import RuntimeContext, optim
from torchlean.autograd import value_and_grad
from torchlean.train import fit

mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Auto,))
ROW, REP = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())
rng = np.random.default_rng(0)
W = rng.standard_normal((4, 6)).astype(np.float32)
V = rng.standard_normal((6, 1)).astype(np.float32)


def model() -> RuntimeContext[Any]:
    return RuntimeContext.from_state_dict(
        {"w": jax.device_put(W, ROW), "v": jax.device_put(V, REP)}
    )


def plain(p: dict[str, Any], x: Any, y: Any) -> Any:
    return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)


def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    return plain({"w": ctx["w"], "v": ctx["v"]}, x, y)


def data(i: int) -> tuple[Any, Any]:
    x = jax.random.normal(jax.random.PRNGKey(i), (8, 4))
    return jax.device_put(x, REP), jax.device_put(x[:, :1], REP)


def main() -> None:
    reference = optax.adamw(0.05, weight_decay=0.01)
    p = {"w": jnp.asarray(W), "v": jnp.asarray(V)}
    s = reference.init(p)
    for i in range(5):
        u, s = reference.update(jax.grad(plain)(p, *data(i)), s, p)
        p = optax.apply_updates(p, u)
    for mode in ("eager", "eager, donate=False", "jit", "jit, donated", "fit", "fit, jit=False"):
        opt = optim.adamw(lr=0.05)
        if mode.startswith("fit"):
            ctx = fit(model(), loss, opt, data, steps=5, progress=False, jit=mode == "fit").ctx
        else:
            ctx = model()
            state = opt.init(ctx)

            def step(
                c: Any,
                s: Any,
                x: Any,
                y: Any,
                opt: Any = opt,
                donate: bool = mode != "eager, donate=False",
            ) -> Any:
                return opt.step(value_and_grad(loss)(c, x, y)[1], s, donate=donate)

            if mode.startswith("jit"):
                step = jax.jit(step, donate_argnums=(0, 1) if mode == "jit, donated" else ())
            for i in range(5):
                ctx, state = step(ctx, state, *data(i))
        for name in p:
            np.testing.assert_allclose(
                np.asarray(ctx[name]), np.asarray(p[name]), rtol=1e-5, atol=1e-6, err_msg=mode
            )
        assert ctx["w"].sharding.spec == P("x"), (mode, ctx["w"].sharding)
        assert ctx["v"].sharding.spec == P(), (mode, ctx["v"].sharding)
    print("sharded training ok", flush=True)


if __name__ == "__main__":
    main()

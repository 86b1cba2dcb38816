"""Device check of torch/jax context values on a GPU: `python3 scripts/gpu_check_arrays.py`.

Run from the repository root on a machine with CUDA torch and CUDA jax; it needs
`immutables` importable (a copy of the package may sit in build/gpu_deps/).
"""

import os
import sys


def main() -> None:
    sys.path[:0] = [os.path.abspath("build/gpu_deps"), os.path.abspath("src")]
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.utils._pytree as tp

    import torchlean as tl
    from torchlean.errors import BackendError, InPlaceModificationError

    print(sys.version.split()[0], torch.__version__, jax.__version__, np.__version__)
    print("cuda", torch.cuda.is_available(), jax.devices())
    gpu = jax.devices()[0]
    print("jax device", repr(gpu), gpu.platform, gpu.id, getattr(gpu, "local_hardware_id", None))

    t = torch.arange(4.0, device="cuda").reshape(2, 2)
    j = jax.device_put(jnp.arange(3.0), gpu)
    ctx = (
        tl.empty_context()
        .register_variable("t", t)
        .register_variable("j", j)
        .register_gradient("t", torch.ones(2, 2, device="cuda"))
    )
    devs = [(n, at.device) for n, at in ctx.var_registry + ctx.gradients]
    print("devices", devs)
    assert {d for _, d in devs} == {"cuda:0"}, devs
    text = ctx.context_to_string()
    print(text)
    assert (
        text == "Context(vars: [j: [0.0, 1.0, 2.0], t: [[0.0, 1.0], [2.0, 3.0]]],"
        " grads: [t: [[1.0, 1.0], [1.0, 1.0]]])"
    ), text
    assert ctx["t"].device.type == "cuda" and ctx["t"] is not None
    assert next(iter(ctx["j"].devices())).platform != "cpu"
    report = ctx.check()
    print("check", report)
    assert report.ok
    mixed = ctx.register_variable("c", np.ones(2)).register_variable("m", torch.ones(1))
    print("mixed", mixed.check())
    assert [p.kind for p in mixed.check()] == ["mixed-devices"]
    bad = (
        tl.empty_context()
        .register_variable(
            "tn", torch.tensor([float("nan"), 1.0], device="cuda", dtype=torch.bfloat16)
        )
        .register_variable("jn", jax.device_put(jnp.array([jnp.inf, 1.0]), gpu))
    )
    print("nonfinite", bad.check())
    assert [p.kind for p in bad.check()] == ["non-finite", "non-finite"]
    print(bad.context_to_string())
    acc = ctx.accumulate_gradient("t", torch.ones(2, 2, device="cuda"))
    assert acc.gradient("t").device.type == "cuda"
    assert torch.equal(acc.gradient("t").cpu(), torch.full((2, 2), 2.0))
    try:
        ctx.accumulate_gradient("t", torch.ones(2, 2))
    except BackendError as e:
        print("refused:", e)
    else:
        raise AssertionError("cpu into cuda accumulated")
    t.add_(1)
    try:
        ctx["t"]
    except InPlaceModificationError as e:
        print("refused:", str(e)[:60])
    else:
        raise AssertionError("in-place write not seen")
    jctx = tl.empty_context().register_variable("w", j)
    g = jax.jit(jax.grad(lambda c: (c["w"] ** 2).sum()))(jctx)
    print("grad", g.context_to_string(), g.var_registry[0][1].device)
    assert g.var_registry[0][1].device == "cuda:0"
    out = tp.tree_map(
        lambda x: x * 2, tl.empty_context().register_variable("w", torch.ones(2, device="cuda"))
    )
    assert out.var_registry[0][1].device == "cuda:0"
    print("GPU CHECK OK")


if __name__ == "__main__":
    main()

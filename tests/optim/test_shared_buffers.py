"""A donated step never updates one buffer twice and never leaves an unusable context.

Issue 10, cases 6 (overlapping byte ranges), 7 (shadowed and tied entries) and 13 (two
threads stepping one donated context).
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, io, optim
from torchlean.errors import DonatedContextError, TorchLeanError
from torchlean.train import fit


def usable(ctx: RuntimeContext[Any], tmp_path: Path) -> None:
    """Every route that reads every entry works."""
    pickle.loads(pickle.dumps(ctx))
    ctx.check()
    for _, at in ctx.var_registry:
        at.t  # noqa: B018
    for _, at in ctx.gradients:
        at.t  # noqa: B018
    io.save(ctx, tmp_path / "ctx.safetensors")


def test_overlapping_tensors_over_different_storages_are_refused() -> None:
    memory = np.arange(12, dtype=np.float32)
    qkv, k = torch.from_numpy(memory), torch.from_numpy(memory[2:6])
    assert qkv.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()
    ctx = RuntimeContext.from_state_dict({"qkv": qkv, "k": k})
    ctx = ctx.with_gradients({"qkv": -torch.ones(12), "k": -torch.ones(4)})
    opt = optim.sgd(lr=1.0)
    state = opt.init(ctx)
    with pytest.raises(TorchLeanError, match="variables `qkv` and `k` share one buffer"):
        opt.step(ctx, state)
    new, _ = opt.step(ctx, state, donate=False)  # ctx was not donated: nothing happened
    assert new["k"].tolist() == [3.0, 4.0, 5.0, 6.0]
    assert memory.tolist() == list(range(12))


def test_disjoint_views_of_one_storage_step_in_place() -> None:
    memory = torch.arange(8, dtype=torch.float32)
    ctx = RuntimeContext.from_state_dict({"a": memory[:4], "b": memory[4:]})
    ctx = ctx.with_gradients({"a": torch.ones(4), "b": torch.ones(4)})
    opt = optim.sgd(lr=1.0)
    new, _ = opt.step(ctx, opt.init(ctx))
    assert new["a"].tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert new["b"].tolist() == [3.0, 4.0, 5.0, 6.0]


def shared_cases(lib: str) -> dict[str, RuntimeContext[Any]]:
    def arr(*values: float) -> Any:
        x = np.array(values, np.float32)
        return torch.tensor(x) if lib == "torch" else jnp.asarray(x)

    w = arr(1, 2, 3)
    twice = RuntimeContext.empty().register_variable("w", w).register_variable("w", w)
    setv = RuntimeContext.empty().register_variable("w", arr(0, 0, 0))
    setv = setv.register_variable("w", arr(9, 9, 9)).set_variable("w", w)
    v = arr(4, 5, 6)
    frozen_tie = RuntimeContext.from_state_dict({"w": w, "tied": w, "v": v})
    grad_is_var = RuntimeContext.from_state_dict({"w": w}).with_gradients({"w": w})
    cases = {"twice": twice, "set_variable": setv, "frozen_tie": frozen_tie}
    cases = {k: c.with_gradients({"w": arr(1, 1, 1)}) for k, c in cases.items()}
    cases["grad_is_var"] = grad_is_var
    return cases


@pytest.mark.parametrize("lib", ["torch", "jax"])
@pytest.mark.parametrize("case", ["twice", "set_variable", "frozen_tie", "grad_is_var"])
def test_a_donated_step_returns_a_usable_context(lib: str, case: str, tmp_path: Path) -> None:
    opt = optim.adam(lr=0.1)
    ref_ctx = shared_cases(lib)[case]
    ref, _ = opt.step(ref_ctx, opt.init(ref_ctx), donate=False)
    ctx = shared_cases(lib)[case]
    new, state = opt.step(ctx, opt.init(ctx))
    usable(new, tmp_path)
    usable(state, tmp_path)
    for (n1, a), (n2, b) in zip(new.var_registry, ref.var_registry, strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(np.asarray(a.t), np.asarray(b.t), err_msg=n1)


def test_tied_jax_arrays_are_refused_clearly() -> None:
    w = jnp.ones(3)
    ctx = RuntimeContext.from_state_dict({"a": w, "b": w})
    ctx = ctx.with_gradients({"a": jnp.ones(3), "b": jnp.ones(3)})
    opt = optim.sgd(lr=0.1)
    with pytest.raises(TorchLeanError, match="variables `a` and `b` share one buffer"):
        opt.step(ctx, opt.init(ctx))


@pytest.mark.parametrize("lib", ["torch", "jax"])
def test_fit_checkpoints_a_context_with_a_shadowed_entry(lib: str, tmp_path: Path) -> None:
    ctx = shared_cases(lib)["twice"].clear_gradients()
    x = torch.ones(3) if lib == "torch" else jnp.ones(3)

    def loss(c: RuntimeContext[Any], x: Any) -> Any:
        return (c["w"] * x).sum()

    result = fit(
        ctx, loss, optim.sgd(lr=0.1), lambda i: (x,), steps=3, progress=False,
        checkpoint_dir=tmp_path, checkpoint_every=1,
    )  # fmt: skip
    assert len(result.checkpoints) == 3
    usable(result.ctx, tmp_path)
    np.testing.assert_allclose(np.asarray(result.ctx["w"]), [0.7, 1.7, 2.7], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(result.ctx.var_registry[1][1].t), [1, 2, 3])


@pytest.mark.parametrize("lib", ["torch", "jax"])
def test_two_threads_cannot_both_step_one_donated_context(lib: str) -> None:
    opt = optim.sgd(lr=1.0)
    for _ in range(30):
        w = torch.zeros(64) if lib == "torch" else jnp.zeros(64)
        g = torch.ones(64) if lib == "torch" else jnp.ones(64)
        ctx = RuntimeContext.from_state_dict({"w": w}).with_gradients({"w": g})
        state = opt.init(ctx)
        barrier = threading.Barrier(2)
        results: list[Any] = []

        def step(
            ctx: RuntimeContext[Any] = ctx,
            state: RuntimeContext[Any] = state,
            barrier: threading.Barrier = barrier,
            results: list[Any] = results,
        ) -> None:
            barrier.wait()
            try:
                results.append(opt.step(ctx, state)[0])
            except DonatedContextError as e:
                results.append(e)

        threads = [threading.Thread(target=step) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stepped = [r for r in results if isinstance(r, RuntimeContext)]
        assert len(stepped) == 1, results
        assert np.asarray(stepped[0]["w"]).tolist() == [-1.0] * 64

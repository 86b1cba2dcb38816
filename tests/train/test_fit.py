"""fit: training, evaluation, checkpoints, and resuming to the same numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchlean import RuntimeContext, io, optim
from torchlean.errors import DonatedContextError, ExpectationError
from torchlean.train import fit, latest_checkpoint, load_checkpoint, save_checkpoint


def torch_model() -> RuntimeContext[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return RuntimeContext.from_state_dict(
        {
            "fc1.weight": torch.randn(16, 2, generator=g) * 0.5,
            "fc1.bias": torch.zeros(16),
            "fc2.weight": torch.randn(2, 16, generator=g) * 0.5,
            "fc2.bias": torch.zeros(2),
        }
    )


def torch_loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    h = torch.relu(x @ ctx["fc1.weight"].T + ctx["fc1.bias"])
    h = torch.nn.functional.dropout(h, 0.2)  # uses torch's global RNG: resume must restore it
    return torch.nn.functional.cross_entropy(h @ ctx["fc2.weight"].T + ctx["fc2.bias"], y)


def torch_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 2, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def run(tmp: Path, steps: int, resume: bool, every: int = 5) -> Any:
    torch.manual_seed(123)
    return fit(
        torch_model(),
        torch_loss,
        optim.adamw(lr=optim.warmup_cosine(0.05, 4, 20)),
        torch_data,
        steps=steps,
        checkpoint_dir=tmp,
        checkpoint_every=every,
        resume=resume,
        progress=False,
    )


def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = run(tmp_path / "whole", 20, False)
    first = run(tmp_path / "split", 10, False)
    torch.manual_seed(999)  # the checkpoint's RNG state must win over whatever is current
    second = run(tmp_path / "split", 20, True)
    assert second.step == 20 and len(second.losses) == 10
    assert first.losses + second.losses == whole.losses
    for name, value in whole.ctx.state_dict().items():
        torch.testing.assert_close(second.ctx[name], value, rtol=0, atol=0)
    for name, value in whole.state.state_dict().items():
        torch.testing.assert_close(second.state[name], value, rtol=0, atol=0)
    assert [p.name for p in second.checkpoints] == [
        "step-000015.safetensors",
        "step-000020.safetensors",
    ]
    assert latest_checkpoint(tmp_path / "split") == tmp_path / "split" / "step-000020.safetensors"
    assert whole.losses[-1] < whole.losses[0]


def test_resume_with_iterable_data_skips_used_batches(tmp_path: Path) -> None:
    batches = [torch_data(i) for i in range(12)]

    def go(folder: str, steps: int, resume: bool) -> Any:
        torch.manual_seed(5)
        return fit(
            torch_model(),
            torch_loss,
            optim.sgd(lr=0.1, momentum=0.9),
            iter(batches),
            steps=steps,
            checkpoint_dir=tmp_path / folder,
            checkpoint_every=3,
            resume=resume,
            progress=False,
        )

    whole = go("whole", 12, False)
    go("split", 6, False)
    resumed = go("split", 12, True)
    assert resumed.losses == whole.losses[6:]


def test_evaluation_and_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[int] = []

    def evaluate(ctx: RuntimeContext[Any]) -> dict[str, float]:
        calls.append(1)
        x, y = torch_data(-1)
        logits = torch.relu(x @ ctx["fc1.weight"].T + ctx["fc1.bias"]) @ ctx["fc2.weight"].T
        return {"acc": float((logits.argmax(1) == y).float().mean())}

    result = fit(
        torch_model(),
        torch_loss,
        optim.adam(lr=0.01),
        torch_data,
        steps=7,
        eval_fn=evaluate,
        eval_every=3,
    )
    assert [s for s, _ in result.evaluations] == [3, 6, 7]
    assert 0.0 <= result.evaluations[-1][1]["acc"] <= 1.0
    assert "training" in capsys.readouterr().out


def test_donation_in_fit() -> None:
    ctx = torch_model()
    result = fit(
        ctx, torch_loss, optim.sgd(lr=0.1), torch_data, steps=2, progress=False, donate=False
    )
    assert ctx["fc1.bias"].abs().sum() == 0  # untouched
    assert result.ctx["fc1.bias"].abs().sum() > 0
    mine = ctx["fc1.bias"]
    fit(ctx, torch_loss, optim.sgd(lr=0.1), torch_data, steps=2, progress=False)
    with pytest.raises(DonatedContextError, match="donated to fit"):  # handed over, loudly
        ctx["fc1.bias"]
    assert mine.abs().sum() == 0  # the tensor the user registered was never written


def test_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    ctx = torch_model()
    opt = optim.adam()
    state = opt.init(ctx)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, ctx, state, 3)
    other = ctx.register_variable("extra", torch.ones(2)).set_variable("fc2.bias", torch.ones(3))
    with pytest.raises(ExpectationError, match=r"missing tensor `model/extra`") as info:
        load_checkpoint(path, other, state)
    assert "tensor `model/fc2.bias` is float32 (2,) but float32 (3,) is expected" in str(info.value)
    back, back_state, step = load_checkpoint(path, ctx, state)
    assert set(back_state.state_dict()) == set(state.state_dict())
    assert step == 3 and set(back.state_dict()) == set(ctx.state_dict())
    assert set(io.load(path).state_dict()) >= {"train/step", "train/torch_rng", "optim/count"}


def test_jax_contexts_train_under_one_jit(tmp_path: Path) -> None:
    def model() -> RuntimeContext[Any]:
        # fresh arrays each time: donation hands the registered arrays over to jax
        rng = np.random.default_rng(0)
        return RuntimeContext.from_state_dict(
            {
                "w": jnp.asarray(rng.standard_normal((2, 8)).astype(np.float32)),
                "v": jnp.asarray(rng.standard_normal((8, 1)).astype(np.float32)),
            }
        )

    def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
        return jnp.mean((jnp.tanh(x @ ctx["w"]) @ ctx["v"] - y) ** 2)

    def data(step: int) -> tuple[Any, Any]:
        x = jax.random.normal(jax.random.PRNGKey(step), (16, 2))
        return x, x[:, :1] * x[:, 1:]

    def go(folder: str, steps: int, resume: bool) -> Any:
        return fit(
            model(),
            loss,
            optim.adam(lr=0.05),
            data,
            steps=steps,
            checkpoint_dir=tmp_path / folder,
            checkpoint_every=5,
            resume=resume,
            progress=False,
        )

    whole = go("whole", 10, False)
    go("split", 5, False)
    resumed = go("split", 10, True)
    np.testing.assert_array_equal(np.asarray(resumed.ctx["w"]), np.asarray(whole.ctx["w"]))
    assert resumed.losses == whole.losses[5:]
    assert whole.losses[-1] < whole.losses[0]
    ctx = model()
    fit(ctx, loss, optim.adam(lr=0.05), data, steps=1, progress=False)
    with pytest.raises(DonatedContextError):
        ctx.variable("w")

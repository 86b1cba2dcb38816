"""Resuming on CUDA is exact: every GPU's random state is kept (issue 10, case 10).

CI has no GPU: this module is skipped there (the one skip the suite allows) and runs on
a machine with CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from torchlean import RuntimeContext, io, optim
from torchlean.train import fit

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)"
)


def model() -> RuntimeContext[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = {
        "fc1.weight": torch.randn(64, 8, generator=g) * 0.3,
        "fc1.bias": torch.zeros(64),
        "fc2.weight": torch.randn(2, 64, generator=g) * 0.3,
        "fc2.bias": torch.zeros(2),
    }
    return RuntimeContext.from_state_dict({k: v.cuda() for k, v in params.items()})


def loss(ctx: RuntimeContext[Any], x: Any, y: Any) -> Any:
    h = torch.relu(x @ ctx["fc1.weight"].T + ctx["fc1.bias"])
    h = torch.nn.functional.dropout(h, 0.5)  # draws from the GPU's generator
    noise = torch.randn_like(h) * 0.01  # and again
    return torch.nn.functional.cross_entropy((h + noise) @ ctx["fc2.weight"].T + ctx["fc2.bias"], y)


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(128, 8, generator=g)
    return x.cuda(), (x[:, 0] * x[:, 1] > 0).long().cuda()


def run(folder: Path, steps: int, resume: bool) -> Any:
    torch.manual_seed(123)
    return fit(
        model(),
        loss,
        optim.adamw(lr=0.01),
        data,
        steps=steps,
        checkpoint_dir=folder,
        checkpoint_every=4,
        resume=resume,
        progress=False,
    )


def test_resume_on_cuda_gives_the_uninterrupted_numbers(tmp_path: Path) -> None:
    whole = run(tmp_path / "whole", 16, False)
    first = run(tmp_path / "split", 8, False)
    torch.cuda.manual_seed_all(999)  # whatever the GPU's state is when resuming
    torch.rand(100, device="cuda")
    second = run(tmp_path / "split", 16, True)
    assert first.losses + second.losses == whole.losses
    for name, value in whole.ctx.state_dict().items():
        assert torch.equal(value, second.ctx[name]), name


def test_checkpoints_hold_every_gpu_state(tmp_path: Path) -> None:
    result = run(tmp_path, 4, False)
    saved = io.load(result.checkpoints[-1]).state_dict()["train/torch_device_rng"]
    assert saved.shape[0] == torch.cuda.device_count()


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_a_fused_step_on_gpu_parameters_is_detected(kind: Any) -> None:
    from torchlean.errors import InPlaceModificationError

    m = torch.nn.Linear(8, 4).cuda()
    ctx = RuntimeContext.from_state_dict(dict(m.named_parameters()))
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    kind(m.parameters(), lr=0.1, fused=True).step()
    with pytest.raises(InPlaceModificationError):
        ctx["weight"]


def test_a_donated_gpu_step_with_a_shadowed_entry_stays_usable(tmp_path: Path) -> None:
    w = torch.ones(4, device="cuda")
    ctx = RuntimeContext.empty().register_variable("w", w).register_variable("w", w)
    ctx = ctx.with_gradients({"w": torch.ones(4, device="cuda")})
    opt = optim.sgd(lr=0.5)
    new, _ = opt.step(ctx, opt.init(ctx))
    io.save(new, tmp_path / "x.safetensors")
    assert new["w"].tolist() == [0.5] * 4
    assert new.var_registry[1][1].t.tolist() == [1.0] * 4

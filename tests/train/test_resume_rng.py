"""Resuming draws the same random numbers and the same data order (issue 10, case 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from torchlean import io, optim
from torchlean.errors import BackendError
from torchlean.runtime.backends import backend_named
from torchlean.train import fit

from .test_fit import torch_loss, torch_model


def shuffled() -> DataLoader[Any]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    # shuffle=True without a generator: the order is drawn from torch's global RNG when
    # the iterator is made
    return DataLoader(
        TensorDataset(x, y),
        batch_size=8,
        shuffle=True,
        collate_fn=lambda items: tuple(default_collate(items)),
    )


def run(folder: Path, steps: int, resume: bool) -> Any:
    torch.manual_seed(123)
    return fit(
        torch_model(),
        torch_loss,
        optim.adamw(lr=0.05),
        shuffled(),
        steps=steps,
        checkpoint_dir=folder,
        checkpoint_every=3,
        resume=resume,
        progress=False,
    )


def test_resume_with_a_shuffled_loader_gives_the_uninterrupted_numbers(tmp_path: Path) -> None:
    whole = run(tmp_path / "whole", 12, False)
    first = run(tmp_path / "split", 6, False)
    torch.manual_seed(999)  # whatever is current when resuming must not matter
    torch.rand(5)
    second = run(tmp_path / "split", 12, True)
    assert first.losses + second.losses == whole.losses
    for name, value in whole.ctx.state_dict().items():
        assert torch.equal(value, second.ctx[name]), name


def test_checkpoints_keep_the_data_iterator_state(tmp_path: Path) -> None:
    result = run(tmp_path, 3, False)
    names = set(io.load(result.checkpoints[-1]).state_dict())
    assert {"train/torch_rng", "train/data_rng"} <= names


def test_more_gpu_states_than_gpus_is_refused() -> None:
    torch_backend = backend_named("torch")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows = torch.zeros((have + 1, 16), dtype=torch.uint8)
    with pytest.raises(BackendError, match=f"random state of {have + 1} GPUs but this process"):
        torch_backend.set_device_rng_state(rows)

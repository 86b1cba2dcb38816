"""``fit`` on DTensor contexts on 2 gloo processes: an FSDP2 context trained with
checkpoint folders, interrupted and resumed, bitwise equal to the uninterrupted run,
and resumed by one process;
``Partial`` gradients reduced by ``fit(reduce_partial=True)`` (workers in
:mod:`_fit_workers`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import _fit_workers as w
from _workers import spawn

from torchlean import optim
from torchlean.runtime import RuntimeContext
from torchlean.train import fit


def test_fsdp2_fit_resumes_from_folders_as_an_uninterrupted_run(tmp_path: Path) -> None:
    spawn(w.fsdp_fit_worker, str(tmp_path))
    # 2 -> 1: the folder of step 2, resumed by one process
    spawn(w.fsdp_resume_on_one, str(tmp_path), world=1)


def test_fit_reduces_partial_gradients_on_request(tmp_path: Path) -> None:
    spawn(w.partial_fit_worker, str(tmp_path))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"clip": 1.0},
            "fit: clip= scales the gradients before the step, where reduce_partial=True"
            " leaves them Partial (their norm would be a hidden collective); clip in the"
            " optimizer instead, after the reduction: optim.adamw(..., clip=max_norm)",
        ),
        (
            {"capture": True},
            "fit: capture=True records one plain step; it does not combine with"
            " accumulate, clip, has_aux, has_state, reduce or reduce_partial",
        ),
    ],
)
def test_reduce_partial_combinations(options: dict[str, object], message: str) -> None:
    ctx = RuntimeContext.empty().with_variables([("w", torch.ones(2))])
    with pytest.raises(ValueError) as e:
        fit(ctx, lambda c: 0.0, optim.sgd(), [()], steps=1, reduce_partial=True, **options)
    assert str(e.value) == message

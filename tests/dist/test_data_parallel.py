"""Data-parallel training on 2 gloo processes: ``value_and_grad(reduce=)`` and
``fit(distributed=True)``'s asynchronous checkpoint folders, resumed on 2 and on 1
process (the workers are in :mod:`_dp_workers`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import _dp_workers as w

from torchlean.autograd import value_and_grad
from torchlean.errors import BackendError, FormatError

# dcp.async_save without a process group warns in its executor thread (not caught by
# io.distributed's catch_warnings, which covers the calling thread's call only)
ONE_PROCESS_SAVE = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@ONE_PROCESS_SAVE
def test_data_parallel_on_two_ranks(tmp_path: Path) -> None:
    # 1 -> 2: a folder written by one process (no process group), 2 whole-batch steps
    first = w.train(
        w.make_ctx(),
        2,
        w.batch,
        checkpoint_dir=tmp_path / "one",
        checkpoint_every=2,
        distributed=True,
    )
    assert [p.name for p in first.checkpoints] == ["step-000002"]
    w.spawn(w.grad_worker, str(tmp_path))
    # 2 -> 1: the 2-process folder of step 4, resumed here to step 6 on whole batches
    got = w.train(
        w.make_ctx(), 6, w.batch, checkpoint_dir=tmp_path / "two", distributed=True, resume=True
    )
    assert got.step == 6 and len(got.losses) == 2
    ref = w.params(w.train(w.make_ctx(), 6, w.batch).ctx)
    for name, value in w.params(got.ctx).items():
        assert torch.allclose(value, ref[name], rtol=1e-5, atol=1e-6), name


def test_reduce_needs_a_process_group() -> None:
    x, y = w.batch(0)
    with pytest.raises(BackendError) as e:
        value_and_grad(w.loss, reduce="mean")(w.make_ctx(), x, y)
    assert str(e.value) == (
        "value_and_grad(reduce=...): no torch.distributed process group is initialised;"
        " call torch.distributed.init_process_group on every process first (or pass"
        " reduce=None in a single process)"
    )


def test_reduce_values() -> None:
    with pytest.raises(ValueError, match="reduce must be 'mean', 'sum' or None, got 'max'"):
        value_and_grad(w.loss, reduce="max")


@ONE_PROCESS_SAVE
def test_resume_from_a_folder_that_is_not_complete(tmp_path: Path) -> None:
    (tmp_path / "step-000002.partial").mkdir()
    with pytest.raises(FormatError, match="not a complete checkpoint folder"):
        w.train(
            w.make_ctx(),
            2,
            w.batch,
            checkpoint_dir=tmp_path,
            distributed=True,
            resume=tmp_path / "step-000002.partial",
        )
    # resume=True over nothing complete starts from step 0
    got = w.train(w.make_ctx(), 1, w.batch, checkpoint_dir=tmp_path, distributed=True, resume=True)
    assert got.step == 1 and len(got.losses) == 1


def test_distributed_needs_a_checkpoint_dir() -> None:
    with pytest.raises(ValueError, match="distributed=True writes checkpoint folders"):
        w.train(w.make_ctx(), 1, w.batch, distributed=True)

"""FSDP2 (``fully_shard``) on 2 gloo processes: one torchlean step on the sharded
parameters equals the one-process step on the whole batch; ``functional_call`` on the
FSDP module itself is an error, not zero gradients (workers in :mod:`_fsdp_workers`)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import _fsdp_workers as w
from _workers import spawn


def test_fsdp2_step_equals_one_process_step() -> None:
    spawn(w.fsdp_worker)

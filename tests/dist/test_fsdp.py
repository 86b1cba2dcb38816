"""FSDP2 (``fully_shard``) on 2 gloo processes: ``RuntimeContext.from_module`` of the
sharded module keeps its DTensors (buffers marked, ties as aliases), and three torchlean
steps by the documented recipe equal the one-process steps on the whole batch (float32 tolerance);
``functional_call`` on the FSDP module itself is an error, not zero gradients (workers
in :mod:`_fsdp_workers`)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import _fsdp_workers as w
from _workers import spawn


def test_fsdp2_from_module_steps_equal_one_process_steps() -> None:
    spawn(w.fsdp_worker)

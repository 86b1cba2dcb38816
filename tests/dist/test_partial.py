"""DTensor gradients with ``Partial`` placements on 2 gloo processes: the optimizer
step reduces them to their variables' placements only when asked
(``reduce_partial=True``), and the result equals the one-process step (workers in
:mod:`_partial_workers`)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import _partial_workers as w
from _workers import spawn


def test_partial_gradients_reduced_by_the_step_on_request() -> None:
    spawn(w.partial_worker)

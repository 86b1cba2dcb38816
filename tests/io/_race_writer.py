"""Saves context A, then B, then A ... over one path until told to stop (test helper).

Usage: ``python _race_writer.py PATH STOP_FILE``. Each save is atomic (a rename over
PATH), so a reader that opens PATH once sees A or B, never a mix. The contexts are made
by :func:`contexts`, which the test imports too.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np


def contexts() -> tuple[Any, Any]:
    """A and B: different names, next_id, values and sizes."""
    from torchlean import empty_context

    a = empty_context().register_variable("a.weight", np.full((64, 64), 1.0, np.float32))
    a = a.register_variable("a.bias", np.full(64, 1.5, np.float32))
    b = empty_context().register_variable("b.weight", np.full((256, 64), 2.0, np.float32))
    b = b.register_variable("b.bias", np.full(64, 2.5, np.float32))
    b = b.register_variable("b.extra", np.zeros(0, np.float32))
    return a, b


def main() -> None:
    import torchlean.io as tio

    path, stop = sys.argv[1], sys.argv[2]
    a, b = contexts()
    i = 0
    while not os.path.exists(stop):
        tio.save(a if i % 2 == 0 else b, path)
        i += 1


if __name__ == "__main__":
    main()

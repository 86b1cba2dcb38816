"""Pausing Python's cycle collector around a hot call that makes no garbage cycles.

An optimizer step on a context of a few hundred tensors allocates more container
objects than the collector's first threshold (700): the new arrays (jax makes one
Python object per output array) and the registry records that hold them. Each step
then starts a collection while the contexts of the step are alive; they are promoted,
and every few hundred steps that promotion starts a full collection of the whole heap
(hundreds of thousands of objects once jax and torch are imported: 100-200 ms each). The
step frees as many objects as it makes (the contexts it was given die with it), so with
the collector paused for its duration the counts balance and no collection starts at
all -- as with optax, whose step allocates fewer objects than the threshold. The
step makes no reference cycles, so pausing collects nothing later either.

Reading map:
- :data:`paused` -- ``with paused:`` runs its body with the collector disabled and
  restores it afterwards (only if it was enabled); nested and concurrent uses share
  one pause (a depth count under a lock), as ``torch.distributed.checkpoint`` does.
"""

from __future__ import annotations

import gc
import threading
from types import TracebackType
from typing import Final

__all__ = ["paused"]


class _Paused:
    """The collector disabled for the body of ``with``; re-entrant and thread-safe."""

    __slots__ = ("_depth", "_lock", "_resume")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                if self._resume:
                    gc.disable()
            self._depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._resume:
                self._resume = False
                gc.enable()


#: ``with paused:`` -- the cycle collector paused for the body (see the module docstring).
paused: Final = _Paused()

"""What a backend needs to run one optimizer update (see :meth:`Backend.updater`).

The optimizers (:mod:`torchlean.optim`) own the update maths, once per optimizer; the
backends own how it runs on their library: out of place on numpy, one ``jax.jit`` call
on jax, torch's fused in-place kernels on torch (with donation and version bumps).

Reading map:
- :class:`Update` -- the arrays one update reads: parameters, gradients, moment slots,
  per-parameter step counters and the step count.
- :class:`Updated` -- the arrays it returns (the same, less the gradients).
- :class:`UpdateRule` -- what an optimizer hands a backend: its learning rate, its maths
  over an array namespace (``arrays``) and its in-place kernels (``in_place``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

__all__ = ["Update", "UpdateRule", "Updated"]


class Update(NamedTuple):
    """The arrays of one optimizer update, one list entry per parameter."""

    params: list[Any]
    grads: list[Any]
    #: moment name (``exp_avg``...) -> one array per parameter
    slots: dict[str, list[Any]]
    #: per-parameter step counters (float32 0-d arrays, as torch.optim keeps them), or
    #: one counter shared by every parameter (a list of one array)
    steps: list[Any]
    #: the number of steps taken (an integer 0-d array, read by schedules)
    count: Any


class Updated(NamedTuple):
    """What an update returns: new parameters, slots, step counters and count."""

    params: list[Any]
    slots: dict[str, list[Any]]
    steps: list[Any]
    count: Any


class UpdateRule(Protocol):
    """One optimizer's update, in the two forms the backends run."""

    @property
    def lr(self) -> float | Callable[[Any], Any]:
        """The learning rate, or a schedule ``lr(count)``."""
        ...

    def arrays(self, xp: Any, update: Update) -> Updated:
        """The update out of place with the array namespace ``xp`` (numpy, jax.numpy)."""
        ...

    def in_place(self, lib: Any, lr: float, update: Update) -> None:
        """The update in place with the fused kernels of ``lib`` (torch), on parameters of
        one device and dtype whose ``steps`` were already incremented."""
        ...

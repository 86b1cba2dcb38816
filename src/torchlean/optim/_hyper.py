"""The hyperparameters of an optimizer: :class:`Hyper`.

Reading map:
- :class:`Hyper` -- frozen and keyword-only, named as in ``torch.optim``; hashable (a
  static argument of ``jax.jit``).
- :attr:`Hyper.slots` -- the per-parameter moments the optimizer state holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LR", "Hyper", "Kind"]

Kind = Literal["sgd", "adam", "adamw"]
LR = float | Callable[[Any], Any]


@dataclass(frozen=True, kw_only=True)
class Hyper:
    """An optimizer's hyperparameters, named as in ``torch.optim``."""

    kind: Kind
    lr: LR
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer kind must be sgd, adam or adamw, got {self.kind!r}")

    @property
    def slots(self) -> tuple[str, ...]:
        """The per-parameter moment slots the state holds, besides ``step``."""
        if self.kind == "sgd":
            return ("momentum_buffer",) if self.momentum != 0 else ()
        if self.amsgrad:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

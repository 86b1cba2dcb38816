"""The DTensor backend: ``torch.distributed.tensor.DTensor`` values, kept as they are.

A DTensor is one global tensor split (or replicated) over the processes of a device
mesh; each process holds its *local shard*. A context stores the DTensor itself: its
shape is the global shape (the Lean shape), and nothing torchlean does with it is a
hidden collective:

- printing, the views and ``check()`` read this process's local shard and say so
  (:meth:`DTensorBackend.data` is the local shard's values, :meth:`~DTensorBackend.local_dims`
  its shape); ``check(collective=True)`` called on every rank sums the counts
  (:meth:`~torchlean.runtime.backends.torch.TorchBackend.all_reduce_sum`);
- :meth:`DTensorBackend.to_numpy` refuses: the values span processes, and a file written
  from one shard would be wrong (``io.save(ctx, DIR, distributed=True)`` writes them);
- the version counter watched is the local tensor's, so ``dt.to_local().add_(1)`` is
  seen as any other in-place write;
- :meth:`DTensorBackend.placement` (placements and mesh) lets ``check()`` and the
  optimizer step compare a gradient with its variable instead of redistributing; a
  gradient whose only difference is ``Partial`` placements is reduced by the step when
  asked (``step(..., reduce_partial=True)``, :meth:`DTensorBackend.reduce_pending`).

Reading map:
- :class:`DTensorBackend` -- the backend (a :class:`TorchBackend` over the local shard).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from torchlean.errors import BackendError
from torchlean.runtime.backends._update import Update, Updated, UpdateRule
from torchlean.runtime.backends.torch import TorchBackend

__all__ = ["DTensorBackend"]


class DTensorBackend(TorchBackend):
    name = "dtensor"

    def __init__(self) -> None:
        super().__init__()
        from torch.distributed.tensor import DTensor

        self.DTensor = DTensor
        #: The backend of the local shards (plain torch tensors).
        self.plain = TorchBackend()

    # ------------------------------------------------------------------ storing

    def freeze(self, x: Any) -> Any:
        # DTensor.detach() gives its local tensor a version counter of its own; a
        # DTensor over ``local.detach()`` shares the caller's counter (and storage).
        local = x._local_tensor
        if not x.requires_grad and not local.requires_grad:
            return x
        return self.DTensor.from_local(
            local.detach(),
            x.device_mesh,
            x.placements,
            run_check=False,
            shape=x.shape,
            stride=x.stride(),
        )

    def adopt(self, x: Any) -> Any:
        return x

    def version(self, x: Any) -> int | None:
        return int(x._local_tensor._version)

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        self.plain.check_intact(x._local_tensor, version, what)

    #: The local shard's version (see :mod:`torchlean.runtime.any_tensor`).
    _version_reader = operator.attrgetter("_local_tensor._version")

    # ------------------------------------------------------------------ describing

    def device(self, x: Any) -> str:
        return self.plain.device(x._local_tensor)

    def stand_in(self, x: Any) -> str:
        return (
            f"<DTensor {self.dtype_name(x)} {self.dims(x)}, local shard"
            f" {self.local_dims(x)}, {self.placement(x)}>"
        )

    def is_contiguous(self, x: Any) -> bool:
        return bool(x._local_tensor.is_contiguous())

    def has_data(self, x: Any) -> bool:
        return self.plain.has_data(x._local_tensor)

    # ------------------------------------------------------------------ converting

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        """The values of this process's local shard (shape :meth:`local_dims`)."""
        return self.plain.data(x._local_tensor)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        raise BackendError(
            f"{self.stand_in(x)} holds values on several processes; torchlean never"
            " gathers them behind your back. Save it with io.save(ctx, DIR,"
            " distributed=True) on every rank, or read this rank's shard with"
            " .to_local() (or .full_tensor(), a collective, for the whole tensor)"
        )

    def from_numpy(self, array: np.ndarray[Any, Any], what: str) -> Any:
        raise BackendError(
            f"{what}: a DTensor is built from a mesh and placements, not from numpy;"
            " load with io.load(DIR, like=template) to get DTensors"
        )

    # ------------------------------------------------------------------ computing

    def nonfinite(self, x: Any) -> tuple[int, int]:
        """NaN and infinity counts of this process's local shard."""
        return self.plain.nonfinite(x._local_tensor)

    def nonfinite_owned(self, x: Any) -> tuple[int, int]:
        """The local counts when this process is the first holder of its shard (index
        0 along every mesh dimension that replicates it), else ``(0, 0)``: summed over
        every process they count each global element once."""
        from torch.distributed.tensor import Replicate

        coordinate = x.device_mesh.get_coordinate()
        if coordinate is None:
            return (0, 0)
        for dim, placement in enumerate(x.placements):
            if isinstance(placement, Replicate) and coordinate[dim] != 0:
                return (0, 0)
        return self.nonfinite(x)

    # ------------------------------------------------------------------ training

    def buffer_range(self, x: Any) -> tuple[Hashable, int, int] | None:
        """The local shard's byte range (a DTensor has no storage of its own); a plain
        tensor's (a step counter beside DTensor parameters) as torch gives it."""
        return self.plain.buffer_range(getattr(x, "_local_tensor", x))

    def updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """:meth:`TorchBackend.updater` on DTensors (torch's kernels run per shard), then
        the local shards' version counters are bumped (those a context watches)."""
        update = super().updater(rule, donate=donate)
        increment = self.torch._C._increment_version

        def run(arrays: Update) -> Updated:
            new = update(arrays)
            increment([p._local_tensor for p in new.params])
            for values in new.slots.values():
                increment([v._local_tensor for v in values if isinstance(v, self.DTensor)])
            return new

        return run

    # ------------------------------------------------------------------ distribution

    def local_dims(self, x: Any) -> tuple[int, ...] | None:
        """The shape of this process's local shard."""
        return tuple(x._local_tensor.shape)

    def placement(self, x: Any) -> str | None:
        """``"Shard(dim=0) on DeviceMesh((2,), 'cpu', ...)"``: the placements and the mesh."""
        placements = ", ".join(str(p) for p in x.placements)
        return f"{placements} on {x.device_mesh}"

    def local_value(self, x: Any) -> Any:
        """This process's local shard (a torch tensor sharing its storage and version)."""
        return x._local_tensor

    def all_reduce(self, values: list[Any], *, mean: bool) -> list[Any]:
        """Refused: a DTensor's gradient is reduced by its placements (a ``Partial``
        placement is left to the step), never by a flat all-reduce of local shards."""
        raise BackendError(
            "value_and_grad(reduce=...): the variables are DTensors, whose gradients"
            " are reduced through their placements; pass reduce=None (reduce= is for"
            " data-parallel training on plain, replicated torch tensors; gradients with"
            " Partial placements are reduced by optimizer.step(..., reduce_partial=True))"
        )

    def pending_reduction(self, gradient: Any, variable: Any) -> bool:
        """True when both are DTensors on one mesh and, mesh dimension by mesh dimension,
        the gradient's placement is the variable's or a ``Partial`` (and the variable's
        is not), at least one of them ``Partial``."""
        if not isinstance(gradient, self.DTensor) or not isinstance(variable, self.DTensor):
            return False
        if gradient.device_mesh != variable.device_mesh:
            return False
        pairs = list(zip(gradient.placements, variable.placements, strict=True))
        return any(g.is_partial() and not v.is_partial() for g, v in pairs) and all(
            g == v or (g.is_partial() and not v.is_partial()) for g, v in pairs
        )

    def reduce_pending(self, gradients: list[Any], variables: list[Any]) -> list[Any]:
        """``g.redistribute(v.device_mesh, v.placements)`` for each pair: DTensor's own
        reduction (an all-reduce to ``Replicate``, a reduce-scatter to ``Shard``), one
        collective per gradient, in the given order, outside autograd."""
        with self.torch.no_grad():
            return [
                g.redistribute(v.device_mesh, v.placements)
                for g, v in zip(gradients, variables, strict=True)
            ]

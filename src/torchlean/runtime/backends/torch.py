"""The PyTorch backend: tensors stored without a copy, watched by their version counter.

The stored tensor is the caller's tensor, detached (no copy), with its version counter
recorded. Writing it in place (through any view) bumps the counter, and every later read
through a context raises :class:`~torchlean.errors.InPlaceModificationError`. An
inference tensor has no version counter, so it is stored as a clone.

Reading map:
- :class:`TorchBackend` -- the backend (built on the first torch tensor a context sees).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from torchlean.errors import BackendError, InPlaceModificationError
from torchlean.runtime.backends._base import Backend
from torchlean.runtime.backends._update import Update, Updated, UpdateRule
from torchlean.runtime.dtypes import EXTENDED_FLOATS, bits_dtype, numpy_dtype

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    name = "torch"
    versioned = True
    differentiable = True

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self._bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
        _watch_optimizers(torch)

    # ------------------------------------------------------------------ storing

    def freeze(self, x: Any) -> Any:
        if x.is_inference():
            # An inference tensor has no version counter: keep a normal clone instead.
            with self.torch.inference_mode(False):
                return x.detach().clone()
        # detach() shares storage and the version counter with x, so a write through
        # the caller's tensor, or any view of it, is seen by check_intact.
        return x.detach()

    def adopt(self, x: Any) -> Any:
        # A fresh tensor the caller gives up is stored as it is: an autograd leaf keeps
        # requires_grad (autograd and torch.func see through a context).
        if x.is_inference():
            return self.freeze(x)
        return x

    def version(self, x: Any) -> int | None:
        try:
            return int(x._version)
        except RuntimeError:  # an inference tensor handed in by a pytree transform
            return None

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        if x._version != version:
            written = getattr(x, "_torchlean_written", None)
            if written is not None and written[1] == x._version:
                raise InPlaceModificationError(
                    f"{what} was updated in place by {written[0]} (donate=True), which took"
                    " over the context it was given; this context shares that buffer and"
                    f" can no longer be read. Use the context {written[0]} returned, or"
                    " pass donate=False to keep this one"
                )
            raise InPlaceModificationError(
                f"{what} was modified in place after it was stored in a context"
                f" (its version counter went from {version} to {x._version}); contexts"
                " never change, so the value can no longer be trusted. Register a copy"
                " (tensor.clone()) if you need to keep writing to it"
            )

    # ------------------------------------------------------------------ describing

    def dims(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def device(self, x: Any) -> str:
        device = x.device
        return "cpu" if device.type == "cpu" else str(device)

    def stand_in(self, x: Any) -> str:
        kind = "meta tensor" if x.device.type == "meta" else f"{type(x).__name__}"
        return f"<{kind} {self.dtype_name(x)} {self.dims(x)}>"

    def is_contiguous(self, x: Any) -> bool:
        return bool(x.is_contiguous())

    def has_data(self, x: Any) -> bool:
        """False for meta, fake and functorch-wrapped tensors (nothing to read)."""
        if x.device.type == "meta":
            return False
        name = type(x).__name__
        if name in ("FakeTensor", "FunctionalTensor"):
            return False
        return not self.torch._C._functorch.is_functorch_wrapped_tensor(x)

    # ------------------------------------------------------------------ converting

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        if not self.has_data(x):
            return None
        return self.to_numpy(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        torch = self.torch
        if not self.has_data(x):
            raise BackendError(f"{self.stand_in(x)} has no data to read")
        t = x.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.device.type != "cpu":
            t = t.to("cpu")  # a copy: the stored tensor stays where it is
        t = t.resolve_conj().resolve_neg()
        try:
            return t.numpy()  # type: ignore[no-any-return]
        except TypeError:
            pass  # a dtype numpy lacks: bfloat16, float8, complex32...
        name = self.dtype_name(t)
        size = EXTENDED_FLOATS.get(name)
        if size is not None:
            try:
                target = numpy_dtype(name)
            except TypeError:
                target = None
            if target is not None:
                return t.view(self._bits[size]).numpy().view(target)  # type: ignore[no-any-return]
        wide = torch.complex64 if t.is_complex() else torch.float32
        return t.to(wide).numpy()  # type: ignore[no-any-return]

    def from_numpy(self, array: np.ndarray[Any, Any], what: str) -> Any:
        torch = self.torch
        if isinstance(array, torch.Tensor):
            return array
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C", copy=True)
        name = array.dtype.name
        size = EXTENDED_FLOATS.get(name)
        if size is not None:
            target = getattr(torch, name, None)
            if target is None:
                raise BackendError(f"{what} has dtype {name}, which this torch does not have")
            t = torch.from_numpy(array.view(bits_dtype(size))).view(target)
        else:
            t = torch.from_numpy(array)
        return t

    # ------------------------------------------------------------------ computing

    def nonfinite(self, x: Any) -> tuple[int, int]:
        if not self.has_data(x):
            return (0, 0)
        t = x.detach()
        if not (t.is_floating_point() or t.is_complex()):
            return (0, 0)
        if t.layout != self.torch.strided:
            t = t.to_dense()
        # Counted where the tensor lives: a GPU tensor is not copied to the host.
        nan = int(self.torch.isnan(t).sum().item())
        inf = int(self.torch.isinf(t).sum().item())
        return (nan, inf)

    def zeros_like(self, x: Any) -> Any:
        return self.torch.zeros_like(x)

    def scalar(self, value: float | int, dtype: str, like: Any) -> Any:
        return self.torch.tensor(value, dtype=getattr(self.torch, dtype), device=like.device)

    #: The current version of a stored tensor, read in C (a context compares it with the
    #: version recorded at storing on every read; see :mod:`torchlean.runtime.any_tensor`).
    _version_reader = operator.attrgetter("_version")

    # ------------------------------------------------------------------ training

    def buffer_range(self, x: Any) -> tuple[Hashable, int, int] | None:
        """``(device index, first byte, one past the last)`` of the elements ``x`` reaches
        (strides included), from its data pointer: views of one storage and tensors over
        one memory through different storages (``torch.from_numpy`` of two slices of one
        array) compare alike. ``None`` for an empty tensor or one without data."""
        try:
            start = x.data_ptr()
        except RuntimeError:  # a tensor without storage (functorch, fake)
            return None
        if not start:  # a meta tensor (or an empty one)
            return None
        if x.is_contiguous():
            return (x.get_device(), start, start + x.nbytes)
        if x.numel() == 0:
            return None
        reach = 1 + sum((n - 1) * abs(s) for n, s in zip(x.shape, x.stride(), strict=True))
        return (x.get_device(), start, start + reach * x.element_size())

    def updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """The optimizer's fused kernels, one call per (device, dtype) group.

        ``donate=True`` updates the given tensors in place, as torch.optim does;
        ``donate=False`` updates clones. Either way the version counters of the written
        tensors are bumped, so every other context sharing a buffer sees the write.
        """
        torch = self.torch

        def update(arrays: Update) -> Updated:
            params, slots, steps, count = arrays.params, arrays.slots, arrays.steps, arrays.count
            lr = float(rule.lr(int(count.item())) if callable(rule.lr) else rule.lr)
            if donate:
                count.add_(1)
            else:
                params = [p.clone() for p in params]
                slots = {k: [t.clone() for t in v] for k, v in slots.items()}
                steps = [s.clone() for s in steps]
                count = count + 1
            grads = [g if g.is_contiguous() else g.contiguous() for g in arrays.grads]
            groups: dict[tuple[Any, Any], list[int]] = {}
            for i, p in enumerate(params):
                groups.setdefault((p.device, p.dtype), []).append(i)
            with torch.no_grad():
                for indices in groups.values():

                    def pick(xs: list[Any], ix: list[int] = indices) -> list[Any]:
                        return xs if len(ix) == len(xs) else [xs[i] for i in ix]

                    group_steps = pick(steps)
                    torch._foreach_add_(group_steps, 1)
                    group = Update(
                        pick(params),
                        pick(grads),
                        {k: pick(v) for k, v in slots.items()},
                        group_steps,
                        count,
                    )
                    rule.in_place(torch, lr, group)
            # The fused kernels write through data pointers without bumping version
            # counters; bump them so every other context that shares a buffer sees it.
            torch._C._increment_version(params)
            for values in slots.values():
                torch._C._increment_version(values)
            return Updated(params, slots, steps, count)

        return update

    def value_and_grad(
        self, fn: Callable[[list[Any]], Any], values: list[Any], *, has_aux: bool
    ) -> tuple[Any, list[Any]]:
        """``torch.autograd.grad`` on fresh requires-grad leaves sharing storage with
        ``values`` (no copy); the loss and torch tensors in ``aux`` come back detached."""
        torch = self.torch
        from torch.utils import _pytree

        leaves = [v.detach().requires_grad_(True) for v in values]
        with torch.enable_grad():
            out = fn(leaves)
            loss, aux = out if has_aux else (out, None)
            if not isinstance(loss, torch.Tensor):
                raise TypeError(
                    f"value_and_grad: fn must return a torch tensor, got {type(loss).__name__}"
                )
            if loss.requires_grad and leaves:
                raw = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
            else:
                raw = tuple(torch.zeros_like(leaf, requires_grad=False) for leaf in leaves)
        grads = [g.detach() for g in raw]
        value = loss.detach()
        if has_aux:
            aux = _pytree.tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, aux)
            return (value, aux), grads
        return value, grads

    def to_device(self, x: Any, device: str) -> Any:
        """``x`` itself when it is on ``device``, else ``x.to(device)``."""
        return x if str(x.device) == device else x.to(device)

    def rng_state(self) -> np.ndarray[Any, Any] | None:
        """``torch.get_rng_state()`` (the CPU generator) as numpy bytes."""
        return self.torch.get_rng_state().numpy()

    def set_rng_state(self, state: Any) -> None:
        """``torch.set_rng_state`` from a tensor or an array of bytes."""
        torch = self.torch
        torch.set_rng_state(state if isinstance(state, torch.Tensor) else torch.tensor(state))

    def device_rng_state(self) -> np.ndarray[Any, Any] | None:
        """``torch.cuda.get_rng_state_all()`` as one row per GPU, when CUDA has been
        started in this process (a process that never started it has drawn nothing from
        it, and reading the state would start it)."""
        cuda = self.torch.cuda
        if not (cuda.is_available() and cuda.is_initialized()):
            return None
        return np.stack([s.numpy() for s in cuda.get_rng_state_all()])

    def set_device_rng_state(self, state: Any) -> None:
        """``torch.cuda.set_rng_state_all`` from one row per GPU; raises
        :class:`~torchlean.errors.BackendError` when this process has fewer GPUs."""
        torch = self.torch
        rows = state if isinstance(state, torch.Tensor) else torch.tensor(np.asarray(state))
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if rows.shape[0] > have:
            raise BackendError(
                f"the checkpoint holds the random state of {rows.shape[0]} GPUs but this"
                f" process sees {have}; resume on a machine with as many GPUs"
            )
        torch.cuda.set_rng_state_all([row.contiguous() for row in rows.to(torch.uint8)])

    def copy(self, x: Any) -> Any:
        """``x.clone()`` (detached)."""
        return x.detach().clone()

    def note_written(self, values: list[Any], by: str) -> None:
        """Tag each tensor with ``(by, its version now)``: :meth:`check_intact` then blames
        the step, not the user, for that write."""
        for v in values:
            v._torchlean_written = (by, v._version)

    def clip_by_global_norm(self, arrays: list[Any], max_norm: float) -> tuple[list[Any], Any]:
        """``torch.nn.utils.get_total_norm`` and the scaling of ``clip_grads_with_norm_``,
        out of place (the same numbers as ``clip_grad_norm_``)."""
        torch = self.torch
        if not arrays:
            return [], torch.tensor(0.0)
        with torch.no_grad():
            total = torch.nn.utils.get_total_norm(arrays, 2.0)
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            groups: dict[tuple[Any, Any], list[int]] = {}
            for i, a in enumerate(arrays):
                groups.setdefault((a.device, a.dtype), []).append(i)
            out: list[Any] = [None] * len(arrays)
            for (device, _), ix in groups.items():
                scaled = torch._foreach_mul([arrays[i] for i in ix], coef.to(device))
                for i, t in zip(ix, scaled, strict=True):
                    out[i] = t
        return out, total


_WATCHING: list[Any] = []


def _watch_optimizers(torch: Any) -> None:
    """Make every ``torch.optim`` step visible to version counters (once per process).

    torch's fused kernels (``Adam``/``AdamW``/``SGD``/``Adagrad`` with ``fused=True``)
    and custom kernels of other optimizers write parameters through data pointers
    without bumping their version counters, so a context holding a parameter would not
    see the write. A global post-step hook bumps the counter of every parameter the
    optimizer holds after each step, as the unfused kernels already do: the next read
    through a context raises :class:`~torchlean.errors.InPlaceModificationError`.
    Cost: one C call over the parameter list per optimizer step.
    """
    if _WATCHING:
        return
    increment = torch._C._increment_version

    def bump(optimizer: Any, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        try:
            increment(params)
        except RuntimeError:  # an inference tensor (no version counter) among them
            for p in params:
                if not p.is_inference():
                    increment([p])

    from torch.optim.optimizer import register_optimizer_step_post_hook

    _WATCHING.append(register_optimizer_step_post_hook(bump))

"""The PyTorch backend: tensors stored without a copy, watched by their version counter.

The stored tensor is the caller's tensor, detached (no copy), with its version counter
recorded. Writing it in place (through any view) bumps the counter, and every later read
through a context raises :class:`~torchlean.errors.InPlaceModificationError`. An
inference tensor has no version counter, so it is stored as a clone.

Reading map:
- :class:`TorchBackend` -- the backend (built on the first torch tensor a context sees).
"""

from __future__ import annotations

import collections
import itertools
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
    # the fused kernels take a counter per parameter (views of one buffer per group)
    shared_step_counter = False

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
                    if _contiguous(group.params, list(group.slots.values())):
                        rule.in_place(torch, lr, group)
                    else:
                        _fused_any_layout(torch, rule, lr, group)
            # The fused kernels write through data pointers without bumping version
            # counters; bump them so every other context that shares a buffer sees it.
            torch._C._increment_version(params)
            for values in slots.values():
                torch._C._increment_version(values)
            return Updated(params, slots, steps, count)

        return update

    def value_and_grad(
        self,
        fn: Callable[[list[Any]], Any],
        values: list[Any],
        *,
        has_aux: bool,
        unreached: Callable[[bool], Exception] | None = None,
    ) -> tuple[Any, list[Any]]:
        """``torch.autograd.grad`` on fresh requires-grad leaves sharing storage with
        ``values`` (no copy; values that tile a flat buffer are views of one leaf, the
        buffer, see :meth:`grad_leaves`); the loss and torch tensors in ``aux`` come back
        detached. ``unreached(loss.requires_grad)`` is raised when there are leaves and
        the backward pass reaches none of them (``loss`` not requiring grad, or every
        gradient ``None``); else unreached leaves get zeros."""
        torch = self.torch
        leaves, roots, spread = self.grad_leaves(values)
        with torch.enable_grad():
            out = fn(leaves)
            loss, aux = out if has_aux else (out, None)
            if not isinstance(loss, torch.Tensor):
                raise TypeError(
                    f"value_and_grad: fn must return a torch tensor, got {type(loss).__name__}"
                )
            found: tuple[Any, ...] = ()
            if loss.requires_grad and roots:
                found = self._gradients(loss, roots)
            if found and not any(map(operator.is_, found, itertools.repeat(None))):
                raw = list(found)
            else:
                if unreached is not None and roots and all(g is None for g in found):
                    raise unreached(bool(loss.requires_grad))
                raw = [
                    torch.zeros_like(root, requires_grad=False) if g is None else g
                    for root, g in zip(roots, found or [None] * len(roots), strict=True)
                ]
        # without create_graph the gradients carry no history: detach only if one does
        if any(map(_REQUIRES_GRAD, raw)):
            raw = [g.detach() for g in raw]
        grads = spread(raw)
        value = loss.detach()
        if has_aux:
            return (value, _detached(torch, aux)), grads
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

    # ------------------------------------------------------------------ bulk (fast paths)

    def adopt_all(self, values: list[Any]) -> list[Any]:
        """The values as they are (an inference tensor is cloned, as :meth:`adopt` does)."""
        if any(map(self.torch.Tensor.is_inference, values)):
            return [self.adopt(x) for x in values]
        return list(values)

    def scalars(self, value: float | int, dtype: str, likes: list[Any]) -> list[Any]:
        """0-d views of one buffer per (device, dtype) of ``likes``, in order (so that a
        planned step adds 1 to every counter of a group in one kernel; see
        :meth:`planned_updater`)."""
        torch = self.torch
        out: list[Any] = [None] * len(likes)
        by_device: dict[tuple[Any, Any], list[int]] = {}
        for i, x in enumerate(likes):
            by_device.setdefault((x.device, x.dtype), []).append(i)
        for (device, _), ix in by_device.items():
            base = torch.full((len(ix),), value, dtype=getattr(torch, dtype), device=device)
            for i, view in zip(ix, base.unbind(0), strict=True):
                out[i] = view
        return out

    def zeros_like_all(self, values: list[Any]) -> list[Any]:
        """Zeros like each value; the values that tile one flat buffer get views of one
        buffer of zeros (an optimizer's moments of a flat context are flat too)."""
        torch = self.torch
        out: list[Any] = [None] * len(values)
        by_base: dict[int, list[int]] = {}
        for i, x in enumerate(values):
            if x._base is not None:
                by_base.setdefault(id(x._base), []).append(i)
        for ix in by_base.values():
            group = [values[i] for i in ix]
            base = self.flat_base(group)
            if base is not None:
                for i, view in zip(ix, _views(torch.zeros_like(base), group), strict=True):
                    out[i] = view
        return [torch.zeros_like(x) if o is None else o for x, o in zip(values, out, strict=True)]

    def flat_base(self, values: list[Any]) -> Any | None:
        """The contiguous 1-d tensor whose views ``values`` are, tiling it exactly in order
        (each contiguous, of its dtype, its data pointer at its place in the buffer's
        memory; an empty view has no memory), or ``None``. Checked in full at every call
        (a ``.data`` assignment can change a view's layout without a version bump).
        Cost: a few C-level passes."""
        if not values:
            return None
        base = values[0]._base
        if base is None or base.dim() != 1 or not base.is_contiguous():
            return None
        n = len(values)
        tensor = self.torch.Tensor
        if not all(map(operator.is_, map(_BASE, values), itertools.repeat(base, n))):
            return None
        if not all(map(operator.is_, map(_DTYPE, values), itertools.repeat(base.dtype, n))):
            return None
        numels = list(map(tensor.numel, values))
        if sum(numels) != base.numel():
            return None
        if not all(map(tensor.is_contiguous, values)):
            return None
        # each at its place in the buffer's memory (a view given other memory by ``set_``
        # or ``.data`` keeps its ``_base`` and its offset; a view over the same memory
        # through another storage, ``torch.from_numpy(v.numpy())``, is over the buffer's);
        # an empty view has no memory (torch gives it data pointer 0)
        size = base.element_size()
        at = base.data_ptr()
        pointers = list(map(tensor.data_ptr, values))
        places = [at + o * size for o in itertools.accumulate(numels[:-1], initial=0)]
        if pointers != places and (
            0 not in numels
            or [p for p, k in zip(pointers, numels, strict=True) if k]
            != [p for p, k in zip(places, numels, strict=True) if k]
        ):
            return None
        return base

    def flatten(self, values: list[Any]) -> list[Any]:
        """Copies of ``values`` (one device and dtype) as views of one fresh buffer."""
        torch = self.torch
        if not values:
            return []
        with torch.no_grad():
            base = torch.cat([x.detach().reshape(-1) for x in values])
        return _views(base, values)

    def planned_updater(self, rule: UpdateRule, *, donate: bool) -> Callable[[Update], Updated]:
        """The fused kernels with what stays true between steps remembered: the (device,
        dtype) groups, the flat buffers a group's parameters, moments and counters tile
        (one kernel over each buffer instead of one list entry per tensor), and the
        buffer its step counters tile (one ``add_`` instead of a ``_foreach_add_``).

        What is remembered is tied to the tensors themselves (weak references) and the
        counters' version; any other tensor, or a counter written elsewhere, is looked at
        afresh. ``donate=True`` also gathers step counters that tile no buffer into one
        (the state then holds views of it), as :meth:`scalars` makes them.
        """
        torch = self.torch
        known: list[_Facts | None] = [None]

        def update(arrays: Update) -> Updated:
            params, grads, slots, steps, count = arrays
            tensors = list(itertools.chain(params, *slots.values(), steps))
            facts = known[0]
            if facts is None or not facts.holds(tensors):
                facts = known[0] = _Facts.learn(self, params, slots, steps, tensors)
            lr = float(rule.lr(int(count.item())) if callable(rule.lr) else rule.lr)
            if donate:
                count.add_(1)
            else:
                count = count + 1
            if not all(map(torch.Tensor.is_contiguous, grads)):
                grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
            with torch.no_grad():
                if not donate:
                    # the copies are what the next step is likely to be given
                    facts, params, slots, steps = facts.copied(self, params, slots, steps)
                    known[0] = facts
                return facts.run_in_place(self, rule, lr, params, grads, slots, steps, count)

        return update

    def grad_leaves(
        self, values: list[Any]
    ) -> tuple[list[Any], list[Any], Callable[[list[Any]], list[Any]]]:
        """``(leaves, roots, spread)`` for differentiating with respect to ``values``.

        Each value gets a fresh requires-grad leaf sharing its storage (the roots are the
        leaves). ``spread(gradients of roots)`` gives one gradient per value: for values
        that tile one flat buffer (:meth:`flat_base`), views of one flat gradient, their
        gradients gathered by one ``cat`` (the copy a backward pass through views of the
        buffer would make, without a view node per value in the graph).
        """
        torch = self.torch
        tensor = torch.Tensor
        n = len(values)
        leaves = list(map(tensor.requires_grad_, map(tensor.detach, values)))
        bases = list(map(_BASE, values))
        if all(map(operator.is_, bases, itertools.repeat(None, n))):
            return leaves, leaves, _same
        by_base: dict[int, list[int]] = {}
        for i, base in enumerate(bases):
            if base is not None:
                by_base.setdefault(id(base), []).append(i)
        flat = [
            ix for ix in by_base.values() if self.flat_base([values[i] for i in ix]) is not None
        ]
        if not flat:
            return leaves, leaves, _same

        def spread(raw: list[Any]) -> list[Any]:
            out = list(raw)
            with torch.no_grad():
                for ix in flat:
                    buffer = torch.cat([raw[i].reshape(-1) for i in ix])
                    for i, view in zip(ix, _views(buffer, [values[i] for i in ix]), strict=True):
                        out[i] = view
            return out

        return leaves, leaves, spread

    def capture(self, fn: Callable[[], Any], *, like: Any) -> tuple[Any, Callable[[], None]] | None:
        """A CUDA graph of ``fn`` when ``like`` is a CUDA tensor (``torch.cuda.graph``),
        else ``None``. ``fn`` must not synchronize (no ``.item()``)."""
        torch = self.torch
        if like.device.type != "cuda":
            return None
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(like.device)
        with torch.cuda.graph(graph):
            out = fn()
        return out, graph.replay

    def bump_versions(self, values: list[Any]) -> None:
        """``torch._C._increment_version`` of each tensor."""
        self.torch._C._increment_version(values)

    def version_space(self, x: Any) -> Hashable | None:
        """The storage ``x`` views: views of one storage share one version counter, so a
        write through any of them makes every context holding another refuse to read it."""
        try:
            return (x.device, x.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):  # no storage (meta, fake, functorch)
            return None

    def copy_into(self, dst: Any, src: Any) -> None:
        """``dst.copy_(src)`` without recording autograd history."""
        with self.torch.no_grad():
            dst.copy_(src)

    def all_reduce_sum(self, counts: list[int]) -> tuple[list[int], int] | None:
        """``torch.distributed.all_reduce`` of ``counts`` (int64) over the default group,
        on the group's device (a GPU for NCCL); ``None`` when no group is initialised."""
        dist = self.torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return None
        device = "cpu"
        if dist.get_backend() == "nccl":
            device = f"cuda:{self.torch.cuda.current_device()}"
        t = self.torch.tensor(counts, dtype=self.torch.int64, device=device)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()], int(dist.get_world_size())

    def local_scope(self) -> str | None:
        """``"rank R of N"`` inside an initialised default process group."""
        dist = self.torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return f"rank {dist.get_rank()} of {dist.get_world_size()}"

    def note_written(self, values: list[Any], by: str) -> None:
        """Tag each tensor with ``(by, its version now)``: :meth:`check_intact` then blames
        the step, not the user, for that write."""
        # C-level loops: one setattr per tensor, no Python frame per tensor
        tags = zip(itertools.repeat(by), map(_VERSION, values))
        collections.deque(map(setattr, values, itertools.repeat("_torchlean_written"), tags), 0)

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

    def reaches(self, loss: Any) -> bool:
        """``loss.requires_grad``: the loss was computed from a differentiated leaf."""
        return bool(getattr(loss, "requires_grad", False))

    def all_reduce(self, values: list[Any], *, mean: bool) -> list[Any]:
        """One ``torch.distributed.all_reduce`` (SUM) per (device, dtype) bucket: the
        bucket's tensors flattened into one fresh buffer, reduced, divided by the world
        size for ``mean``, and split back into views of their shapes. The given tensors
        are not written. A collective: every process calls it with the same layout."""
        torch = self.torch
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise BackendError(
                "value_and_grad(reduce=...): no torch.distributed process group is"
                " initialised; call torch.distributed.init_process_group on every process"
                " first (or pass reduce=None in a single process)"
            )
        world = dist.get_world_size()
        buckets: dict[tuple[Any, Any], list[int]] = {}
        for i, v in enumerate(values):
            buckets.setdefault((v.device, v.dtype), []).append(i)
        out: list[Any] = list(values)
        with torch.no_grad():
            for ix in buckets.values():
                parts = [values[i] for i in ix]
                flat = torch.cat([p.detach().reshape(-1) for p in parts])
                dist.all_reduce(flat)
                if mean:
                    flat.div_(world)
                pieces = flat.split([p.numel() for p in parts])
                for i, piece, p in zip(ix, pieces, parts, strict=True):
                    out[i] = piece.view(p.shape)
        return out

    def stores_as_is(self, source: Backend) -> bool:
        """True for torch's own tensors and for a subclass backend's (a DTensor stays a
        DTensor: ``from_module`` of an FSDP2 module keeps its sharded parameters)."""
        return isinstance(source, TorchBackend)

    def copy_all(self, values: list[Any]) -> list[Any]:
        """Clones of the values, without autograd history (C-level loop; the clone of a
        tensor that does not require grad has none, so ``no_grad`` is entered only when
        one does)."""
        clone = self.torch.Tensor.clone
        if any(map(_REQUIRES_GRAD, values)):
            with self.torch.no_grad():
                return list(map(clone, values))
        return list(map(clone, values))

    def _gradients(self, loss: Any, roots: list[Any]) -> tuple[Any, ...]:
        """``torch.autograd.grad(loss, roots, allow_unused=True)`` for a scalar loss.

        For a real floating loss and plain ``torch.Tensor`` roots (no ``__torch_function__``
        to honour), the autograd engine is called as ``torch.autograd.grad`` calls it,
        without the Python around it (argument normalisation, the override checks, the
        implicit ones gradient made by ``_make_grads``): about 8 us a step on a host CPU.
        Anything else, or a torch without the engine's entry point (looked for once, at
        the first backward pass, on a tiny graph), takes ``torch.autograd.grad`` itself."""
        torch = self.torch
        tensor = torch.Tensor
        engine = _ENGINE[0]
        if engine is _UNKNOWN:
            engine = _ENGINE[0] = _find_engine(torch)
        if (
            engine is not None
            and type(loss) is tensor
            and loss.dtype.is_floating_point
            and all(map(operator.is_, map(type, roots), itertools.repeat(tensor)))
        ):
            # run_backward(outputs, grad_outputs, keep_graph, create_graph, inputs,
            #              allow_unused, accumulate_grad), as torch.autograd.grad passes them
            found: tuple[Any, ...] = engine.run_backward(
                (loss,), (torch.ones_like(loss),), False, False, tuple(roots), True, False
            )
            return found
        return tuple(torch.autograd.grad(loss, roots, allow_unused=True))

    def intact_copies(self, values: list[Any], dims: list[tuple[int, ...]]) -> bool:
        """The shapes compared (``torch.Size`` is a tuple) and ``requires_grad`` read in
        C-level loops."""
        return list(map(_SHAPE, values)) == dims and not any(map(_REQUIRES_GRAD, values))


_WATCHING: list[Any] = []
_UNKNOWN = object()
#: the autograd engine ``torch.autograd.grad`` runs (``None``: call ``torch.autograd.grad``;
#: ``_UNKNOWN`` until the first backward pass looks for it)
_ENGINE: list[Any] = [_UNKNOWN]


def _find_engine(torch: Any) -> Any:
    """``torch.autograd.Variable._execution_engine`` when it runs a backward pass as
    ``torch.autograd.grad`` does (checked on a tiny graph), else ``None``."""
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
    if engine is None or not callable(getattr(engine, "run_backward", None)):
        return None
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.ones(2, requires_grad=True)
            unused = torch.ones(1, requires_grad=True)
            loss = (x * 3.0).sum()
            found = engine.run_backward(
                (loss,), (torch.ones_like(loss),), False, False, (x, unused), True, False
            )
    except (TypeError, RuntimeError, AttributeError):  # another signature
        return None
    if len(found) != 2 or found[1] is not None or not bool((found[0] == 3.0).all()):
        return None  # pragma: no cover - a torch whose engine answers otherwise
    return engine


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


def _same(xs: list[Any]) -> list[Any]:
    return xs


def _detached(torch: Any, tree: Any) -> Any:
    """``tree`` with every torch tensor that requires grad detached: plain tuples, lists
    and dicts walked here, any other container by ``torch.utils._pytree``."""
    kind = type(tree)
    if kind is torch.Tensor or isinstance(tree, torch.Tensor):
        return tree.detach() if tree.requires_grad else tree
    if tree is None or kind in (int, float, bool, str):
        return tree
    if kind is dict:
        values = tree.values()
        if set(map(type, values)) <= {torch.Tensor} and not any(map(_REQUIRES_GRAD, values)):
            return tree  # plain tensors without history (BatchNorm's returned buffers)
        return {k: _detached(torch, v) for k, v in tree.items()}
    if kind is tuple or kind is list:
        return kind(_detached(torch, v) for v in tree)
    from torch.utils import _pytree

    return _pytree.tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, tree)


_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_SHAPE = operator.attrgetter("shape")
_BASE = operator.attrgetter("_base")
_DTYPE = operator.attrgetter("dtype")
_VERSION = operator.attrgetter("_version")


def _views(buffer: Any, likes: list[Any]) -> list[Any]:
    """Views of the 1-d ``buffer`` shaped like each of ``likes``, in order."""
    parts = buffer.split([x.numel() for x in likes])
    return [p.view(x.shape) for p, x in zip(parts, likes, strict=True)]


class _Group:
    """The tensors of one (device, dtype) group, as list indices; its flat buffers."""

    __slots__ = ("aligned", "flat", "ix", "slot_bases", "step", "steps_base", "steps_version")

    def __init__(self, ix: list[int] | None) -> None:
        self.ix = ix  # None: every tensor
        #: every parameter and state tensor contiguous: the kernels need only contiguous
        #: gradients (else :func:`_fused_any_layout`)
        self.aligned = True
        self.flat: Any = None  # the parameters' buffer when the whole group is flat
        self.slot_bases: dict[str, Any] = {}
        self.step: Any = None  # the counter the flat kernel reads (all counters agree)
        self.steps_base: Any = None  # the buffer the group's counters tile
        self.steps_version: int | None = None

    def pick(self, xs: list[Any]) -> list[Any]:
        ix = self.ix
        return xs if ix is None else [xs[i] for i in ix]


class _Facts:
    """What a planned torch updater knows about one layout of tensors."""

    __slots__ = ("groups", "refs")

    # ``refs`` holds the tensors themselves (as torch.optim holds its parameters and
    # state): identity is then a sound test of "the same tensors".
    def __init__(self, refs: list[Any], groups: list[_Group]) -> None:
        self.refs = refs
        self.groups = groups

    def holds(self, tensors: list[Any]) -> bool:
        """True for the very tensors it learned, counters not written elsewhere since."""
        refs = self.refs
        if len(refs) != len(tensors):
            return False
        if not all(map(operator.is_, refs, tensors)):
            return False
        return all(
            g.steps_base is None or g.steps_base._version == g.steps_version for g in self.groups
        )

    @classmethod
    def learn(
        cls,
        backend: TorchBackend,
        params: list[Any],
        slots: dict[str, list[Any]],
        steps: list[Any],
        tensors: list[Any],
    ) -> _Facts:

        by_key: dict[tuple[Any, Any], list[int]] = {}
        for i, p in enumerate(params):
            by_key.setdefault((p.device, p.dtype), []).append(i)
        groups = [_Group(None if len(ix) == len(params) else ix) for ix in by_key.values()]
        for group in groups:
            group.aligned = _contiguous(group.pick(params), [group.pick(v) for v in slots.values()])
            base = backend.flat_base(group.pick(steps))
            group.steps_base = base
            group.steps_version = None if base is None else base._version
            flat = backend.flat_base(group.pick(params))
            if flat is None or base is None:
                continue
            bases = {k: backend.flat_base(group.pick(v)) for k, v in slots.items()}
            if any(b is None for b in bases.values()):
                continue
            first = group.pick(steps)[0]
            if not bool((base == first).all()):  # one sync, when the layout is learned
                continue
            group.flat, group.slot_bases, group.step = flat, bases, first
        return cls(tensors, groups)

    def run_in_place(
        self,
        backend: TorchBackend,
        rule: UpdateRule,
        lr: float,
        params: list[Any],
        grads: list[Any],
        slots: dict[str, list[Any]],
        steps: list[Any],
        count: Any,
    ) -> Updated:
        torch = backend.torch
        written: list[Any] = []
        for group in self.groups:
            group_steps = group.pick(steps)
            if group.steps_base is not None:
                group.steps_base.add_(1)
                group.steps_version = group.steps_base._version
            else:
                # Counters that tile no buffer (a state read from a file, some parameters
                # without a gradient) are replaced, not written: views of one new buffer
                # (one add per step from the next on), and no counter another entry
                # shares is bumped.
                group_steps = list(torch.stack(group_steps).add_(1).unbind(0))
                if group.ix is None:
                    steps = group_steps
                else:
                    steps = list(steps)
                    for i, view in zip(group.ix, group_steps, strict=True):
                        steps[i] = view
            if group.flat is not None:
                flat_grad = backend.flat_base(group.pick(grads))
                if flat_grad is not None and flat_grad.device == group.flat.device:
                    rule.in_place(
                        torch,
                        lr,
                        Update(
                            [group.flat],
                            [flat_grad],
                            {k: [b] for k, b in group.slot_bases.items()},
                            [group.step],
                            count,
                        ),
                    )
                    written.append(group.flat)
                    written.extend(group.slot_bases.values())
                    continue
            group_params = group.pick(params)
            group_slots = {k: group.pick(v) for k, v in slots.items()}
            update = Update(group_params, group.pick(grads), group_slots, group_steps, count)
            if group.aligned:
                rule.in_place(torch, lr, update)
            else:
                _fused_any_layout(torch, rule, lr, update)
            written.extend(group_params)
            for values in group_slots.values():
                written.extend(values)
        # The fused kernels write through data pointers without bumping version
        # counters; bump them so every other context that shares a buffer sees it.
        torch._C._increment_version(written)
        return Updated(params, slots, steps, count)

    def copied(
        self,
        backend: TorchBackend,
        params: list[Any],
        slots: dict[str, list[Any]],
        steps: list[Any],
    ) -> tuple[_Facts, list[Any], dict[str, list[Any]], list[Any]]:
        """Copies of the tensors with the same layout (a flat buffer copied as one), and
        the facts of the copies."""

        params, steps = list(params), list(steps)
        slots = {k: list(v) for k, v in slots.items()}
        groups: list[_Group] = []
        for group in self.groups:
            copy = _Group(group.ix)
            ix = group.ix if group.ix is not None else range(len(params))
            copy.flat = _copy_into(params, ix, group.flat)
            copy.slot_bases = {k: _copy_into(slots[k], ix, group.slot_bases.get(k)) for k in slots}
            copy.steps_base = _copy_into(steps, ix, group.steps_base)
            if copy.steps_base is not None:
                copy.steps_version = copy.steps_base._version
            if group.flat is not None:
                copy.step = steps[next(iter(ix))]
            else:
                copy.flat, copy.slot_bases = None, {}
            copy.aligned = _contiguous(copy.pick(params), [copy.pick(v) for v in slots.values()])
            groups.append(copy)
        tensors = list(itertools.chain(params, *slots.values(), steps))
        return _Facts(tensors, groups), params, slots, steps


def _contiguous(params: list[Any], slots: list[list[Any]]) -> bool:
    """Whether every parameter and every state tensor is contiguous (C-level passes)."""
    is_contiguous = operator.methodcaller("is_contiguous")
    return all(map(is_contiguous, params)) and all(all(map(is_contiguous, v)) for v in slots)


def _fused_any_layout(torch: Any, rule: UpdateRule, lr: float, u: Update) -> None:
    """``rule.in_place`` for parameters and state of any layout.

    The fused kernels read and write raw memory element by element: a parameter's
    gradient and state must be laid out as the parameter, and the parameter dense (no
    gaps, no overlap). A transposed weight is dense: its gradient and state tensors laid
    out otherwise are run through copies with its strides. A parameter with gaps (a
    strided slice) runs through a contiguous copy, as do its state tensors. The copies of
    a parameter and of its state are copied back after the kernel. Cost: one allocation
    and two copies per tensor not laid out as the kernel needs."""
    params = list(u.params)
    grads = list(u.grads)
    slots = {k: list(v) for k, v in u.slots.items()}
    back: list[tuple[Any, Any]] = []  # (the tensor to write, the copy the kernel wrote)
    for i, p in enumerate(params):
        if not p.is_contiguous():
            like = torch.empty_like(p)  # p's strides when p is dense, else contiguous
            if like.stride() != p.stride():
                like.copy_(p)
                back.append((p, like))
                params[i] = p = like
        stride = p.stride()
        g = grads[i]
        if g.stride() != stride:
            grads[i] = torch.empty_like(p).copy_(g)
        for values in slots.values():
            x = values[i]
            if x.stride() != stride:
                copy = torch.empty_like(p).copy_(x)
                back.append((x, copy))
                values[i] = copy
    rule.in_place(torch, lr, Update(params, grads, slots, u.steps, u.count))
    for dst, src in back:
        dst.copy_(src)


def _copy_into(xs: list[Any], ix: Any, base: Any) -> Any:
    """Replace ``xs[i]`` for ``i`` in ``ix`` by copies: views of one copy of ``base`` when
    given (the tensors tile it), else clones. Returns the copied base (or ``None``)."""
    if base is None:
        for i in ix:
            xs[i] = xs[i].clone()
        return None
    copy = base.clone()
    for i, view in zip(ix, _views(copy, [xs[i] for i in ix]), strict=True):
        xs[i] = view
    return copy

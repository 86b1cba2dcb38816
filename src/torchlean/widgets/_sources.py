"""How a summary reads a tensor: its first elements and a bounded sample, nothing more.

A summary never needs a tensor whole: the preview wants its first elements, the
statistics a sample of at most ``limit`` of them. Reading through a
:class:`TensorSource` is how the CLI summarises a multi-GB checkpoint without loading it,
and how a huge (or GPU, or non-contiguous) tensor of a context is summarised without a
full copy.

Reading map:
- :class:`TensorSource` -- the protocol: ``dims``, ``dtype``, ``device``, ``head(n)``,
  ``sample(limit)``; optionally ``block(index)`` (:data:`BLOCK`), a rectangular block.
- :func:`source_of` -- the source of a context's stored tensor.
- :func:`sample_blocks`, :func:`block_index`, :data:`SAMPLE_BLOCKS` -- a sample made of
  evenly spaced contiguous blocks (for tensors that cannot be flattened for free).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from torchlean.runtime.any_tensor import AnyTensor

__all__ = [
    "BLOCK",
    "SAMPLE_BLOCKS",
    "TensorSource",
    "block_index",
    "sample_blocks",
    "source_of",
]

#: The name of a source's optional method ``block(index: tuple[slice, ...]) -> array``:
#: the elements ``t[index]`` (one slice per axis, as ``t[index]`` in numpy). The widget
#: preview of a slice beyond a tensor's first elements reads through it; a source without
#: it is read through ``head`` (see :mod:`._build`).
BLOCK = "block"

#: A block sample of a big tensor is this many evenly spaced contiguous blocks.
SAMPLE_BLOCKS = 64


class TensorSource(Protocol):
    """What a summary needs of one tensor; the data is read only through two calls."""

    @property
    def dims(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def device(self) -> str: ...

    def head(self, n: int) -> np.ndarray[Any, Any]:
        """The first ``min(n, numel)`` elements in row-major order, flattened."""
        ...

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        """Every element when there are at most ``limit``, else a spread-out sample of
        about ``limit`` of them; and whether it is a sample."""
        ...

    # Optional (not part of the protocol's required methods, so sources written before
    # it still work): ``def block(self, index: tuple[slice, ...]) -> np.ndarray``.


def source_of(at: AnyTensor[Any]) -> TensorSource:
    """The :class:`TensorSource` of a stored tensor; for a distributed tensor, of this
    process's local shard (reading the whole would be a collective); for a jax array
    sharded over the devices of this process, of its values assembled from the
    shards (a sliced sharded array is a resharding computation)."""
    if at.placement is not None:  # sharded: read on the shards, never sliced globally
        from torchlean.runtime.any_tensor import AnyTensor

        local = at.local_dims or at.dims
        return _AnyTensorSource(AnyTensor(local, at.library.local_value(at.t)))
    return _AnyTensorSource(at)


class _AnyTensorSource:
    """Reads a stored tensor; slices on the tensor's own library before converting, so
    a sample of a huge (or GPU) tensor never copies the whole of it."""

    __slots__ = ("_at",)

    def __init__(self, at: AnyTensor[Any]) -> None:
        self._at = at

    @property
    def dims(self) -> tuple[int, ...]:
        return self._at.dims

    @property
    def dtype(self) -> str:
        return self._at.dtype

    @property
    def device(self) -> str:
        return self._at.device

    def _flat(self) -> Any:
        """The tensor as a flat view, or None when flattening would copy all of it (a
        tensor whose elements are not one dense row-major block)."""
        t = self._at.t
        if not self._at.library.is_contiguous(t):
            return None
        return t.reshape(-1) if self._at.dims != () else t.reshape(1)

    def _numpy(self, part: Any) -> np.ndarray[Any, Any]:
        return self._at.library.to_numpy(part)

    def head(self, n: int) -> np.ndarray[Any, Any]:
        flat = self._flat()
        if flat is None:
            part = self._numpy(self._at.t[block_index(self._at.dims, 0, n)])
            return np.asarray(part).reshape(-1)[:n]
        return self._numpy(flat[:n])

    def sample(self, limit: int) -> tuple[np.ndarray[Any, Any], bool]:
        numel = math.prod(self._at.dims)
        flat = self._flat()
        if numel <= limit:
            if flat is None:
                return np.asarray(self._numpy(self._at.t)).reshape(-1), False
            return self._numpy(flat), False
        if flat is None:
            t = self._at.t
            return sample_blocks(lambda index: self._numpy(t[index]), self._at.dims, limit), True
        step = -(-numel // limit)
        return self._numpy(flat[::step]), True

    def block(self, index: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        """``t[index]`` (one slice per axis), sliced on the tensor's own library first."""
        return np.asarray(self._numpy(self._at.t[index]))


def sample_blocks(
    read: Callable[[tuple[slice, ...]], Any], dims: tuple[int, ...], limit: int
) -> np.ndarray[Any, Any]:
    """About ``limit`` elements of a tensor of shape ``dims`` (at least one per block):
    :data:`SAMPLE_BLOCKS` contiguous blocks at evenly spaced flat positions, each
    fetched by ``read(index)``. Cost: O(limit) elements read."""
    budget = max(1, limit // SAMPLE_BLOCKS)
    numel = math.prod(dims)
    parts = [
        np.asarray(read(block_index(dims, k * numel // SAMPLE_BLOCKS, budget))).reshape(-1)
        for k in range(SAMPLE_BLOCKS)
    ]
    return np.concatenate(parts)


def block_index(shape: tuple[int, ...], start: int, budget: int) -> tuple[slice, ...]:
    """An index of a contiguous block of at most ``budget`` elements (at least one)
    that begins at the flat position ``start`` rounded down to a whole block row."""
    index: list[slice] = []
    rest = start
    for axis, size in enumerate(shape):
        inner = math.prod(shape[axis + 1 :])
        at = rest // inner if inner else 0
        rest -= at * inner
        if inner <= budget:
            stop = min(size, at + max(1, budget // max(inner, 1)))
            index.append(slice(at, stop))
            return tuple(index)
        index.append(slice(at, at + 1))
    return tuple(index)

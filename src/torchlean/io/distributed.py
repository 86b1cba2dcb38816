"""Checkpoint folders written by every process through ``torch.distributed.checkpoint``.

A context of DTensors (or of any torch tensors) is saved by every rank at once::

    io.save(ctx, "ckpt", distributed=True)      # on every rank: each writes its shards
    handle = save_async(ctx, "ckpt")            # the same; returns after the copy
    ctx = io.load("ckpt", like=template)        # on every rank, any world size
    ctx = io.load("ckpt", backend="torch")      # in one process: whole tensors

The engine is torch's own (``dcp.save``/``dcp.load`` with its safetensors storage,
``HuggingFaceStorageWriter(save_distributed=True)``/``HuggingFaceStorageReader``), so
a reshard is DCP's; torchlean adds what DCP lacks:

- a layout file, :data:`LAYOUT_NAME` (JSON): the whole context -- both registries in
  Lean's order, shadowed entries, gradients, ``next_id``, the pinned dtype -- and each
  key's shape, dtype and placement, and the world size that saved it;
- the folder appears complete or not at all: the ranks write into ``DIR.partial``;
  in DCP's finishing step (after every rank has written, before the others return)
  rank 0 writes the layout and renames the folder to ``DIR`` (an old ``DIR`` is moved
  aside first and removed after) -- no barrier of torchlean's own;
- every key the layout names must be in the shards and every element of every tensor
  must be covered by the shards (no silent skip, no uninitialised elements), and no
  shard may hold a key the layout does not name;
- no pickle is ever read: the shards' headers are JSON, and a folder holding a DCP
  ``.metadata`` (a pickle, which runs code when read) is refused unread;
- loads go into freshly allocated tensors (``torch.empty_like`` of the template's),
  never into tensors a context holds.

Reading map:
- :func:`save_distributed` -- write a folder (a collective when a process group runs).
- :func:`save_async` -- the same, returning an :class:`AsyncSave` once the tensors are
  copied; at most one in flight per process (a second call waits for the first).
- :func:`load_distributed` -- read a folder (``like=``: into the template's placements).
- :func:`inspect_distributed` -- its entries from the layout and the shards' headers.
- :func:`is_checkpoint_folder`, :data:`FORMAT` -- the registered folder format.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Final

from torchlean._validate import require_path
from torchlean.errors import FormatError
from torchlean.io._atomic import publish_folder
from torchlean.io._common import check_backend
from torchlean.io._format import Format
from torchlean.io._layout import check_layout, layout_object, plan, template_entries
from torchlean.io._summary import FileSummary, layout_entries, read_whole_once
from torchlean.runtime.backends import backend_named
from torchlean.runtime.context import RuntimeContext, require_context

__all__ = [
    "FORMAT",
    "LAYOUT_NAME",
    "AsyncSave",
    "inspect_distributed",
    "is_checkpoint_folder",
    "load_distributed",
    "save_async",
    "save_distributed",
]

#: The layout file of a checkpoint folder.
LAYOUT_NAME: Final = "torchlean-checkpoint.json"
#: A layout file bigger than this is refused unread.
LAYOUT_LIMIT: Final = 64 << 20
_KIND: Final = "torchlean-dcp"
_PARTIAL: Final = ".partial"


def is_checkpoint_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a :data:`LAYOUT_NAME`."""
    require_path(path, "is_checkpoint_folder")
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, LAYOUT_NAME))


# ---------------------------------------------------------------------- saving


def _group() -> tuple[Any, int, int]:
    """``(torch.distributed, rank, world size)``; rank 0 of 1 without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return dist, 0, 1


def _state(ctx: RuntimeContext[Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DCP state dict of ``ctx`` (key -> tensor, checked reads) and its layout."""
    import torch

    tensors, variables, gradients = plan(ctx)
    torch_backend = backend_named("torch")
    state: dict[str, Any] = {}
    keys: dict[str, Any] = {}
    for key, at in tensors.items():
        value = at.t
        if not isinstance(value, torch.Tensor):  # the engine writes torch tensors
            value = torch_backend.from_numpy(at.library.to_numpy(value), key)
        state[key] = value
        keys[key] = {"shape": list(at.dims), "dtype": at.dtype, "placement": at.placement}
    layout = layout_object(ctx, variables, gradients)
    return state, layout | {"kind": _KIND, "keys": keys}


def save_distributed(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write ``ctx`` as a checkpoint folder at ``path``; call it on every rank.

    Each rank writes the shards it holds (replicated values once) through
    ``dcp.save`` with the safetensors storage; rank 0 writes the layout and renames
    the folder into place in DCP's own finishing step. Collectives: DCP's (one gather
    and scatter of the plan, one gather of the write results and a broadcast); none of
    torchlean's own. Cost: O(local bytes) per rank.
    """
    _, state, writer, world = _prepare(ctx, path, "save_distributed")
    if world == 1:  # DCP's `save` warns "torch.distributed is disabled" for no_dist
        _save_one_process(state, writer)
        return
    from torch.distributed.checkpoint.state_dict_saver import save

    save(state, storage_writer=writer)


def _save_one_process(state: dict[str, Any], writer: Any) -> None:
    """DCP's save without a process group, and without its UserWarning (which ``save``
    raises unconditionally for ``no_dist``; in a background thread no filter of the
    caller's reaches it)."""
    from torch.distributed.checkpoint import state_dict_saver

    inner = getattr(state_dict_saver, "_save_state_dict", None)
    if inner is None:  # another torch: the public entry point, its warning filtered here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state_dict_saver.save(state, storage_writer=writer, no_dist=True)
        return
    inner(state_dict=state, storage_writer=writer, no_dist=True)


def _writer(target: str, layout: dict[str, Any], world: int) -> Any:
    """DCP's safetensors writer into ``target.partial``, finishing the folder itself.

    Two hooks of DCP's writer run on the coordinator (rank 0) only, at points where
    DCP's own collectives already order the ranks, so torchlean adds no barrier:

    - ``prepare_global_plan`` runs after every rank has created the folder and before
      any rank writes: a save that died half-way left files there; they are removed.
    - ``finish`` runs after every rank has written, before DCP's closing broadcast
      returns on the others: the layout is written and the folder renamed to
      ``target`` (an older ``target`` is moved aside first, removed after).
    """
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter

    partial = target + _PARTIAL
    stamped = layout | {"world_size": world}

    class _FolderWriter(HuggingFaceStorageWriter):
        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            _empty(partial)
            result: list[Any] = super().prepare_global_plan(plans)
            return result

        def finish(self, metadata: Any, results: list[list[Any]]) -> None:
            super().finish(metadata, results)
            _finish(partial, target, stamped)

    return _FolderWriter(partial, save_distributed=True)


def _empty(folder: str) -> None:
    """Remove what a save that died half-way left in ``folder`` (normally nothing)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


_ASYNC_GROUPS: dict[int, Any] = {}
# released while the interpreter is whole: a process group object left to the
# interpreter's teardown (after destroy_process_group) could abort the process at exit
atexit.register(_ASYNC_GROUPS.clear)


def _async_group() -> Any:
    """A gloo process group of every rank for the collectives DCP's ``async_save`` runs
    in its background thread (planning): on the default group they would interleave
    with the training's own collectives (a data-parallel all-reduce) and deadlock.
    Made once per default group (``new_group`` is a collective: every rank calls
    :func:`save_async`)."""
    import torch.distributed as dist

    key = id(dist.group.WORLD)
    if key not in _ASYNC_GROUPS:
        _ASYNC_GROUPS.clear()
        _ASYNC_GROUPS[key] = dist.new_group(backend="gloo")
    return _ASYNC_GROUPS[key]


def _finish(partial: str, target: str, layout: dict[str, Any]) -> None:
    """Write the layout into ``partial`` and move it to ``target`` (rank 0 only)."""
    publish_folder(partial, target, LAYOUT_NAME, layout)


@dataclass
class AsyncSave:
    """A save started by :func:`save_async`: ``done()``, ``wait()`` (raises what the
    background write raised). ``wait()`` returns once the folder is complete."""

    path: str
    _future: Future[Any] = field(repr=False)

    def done(self) -> bool:
        """True once the background part has ended (well or not)."""
        return self._future.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the folder is complete; raise the background write's error."""
        try:
            self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"{self.path}: the asynchronous save is still running") from None


_IN_FLIGHT: list[AsyncSave] = []


def _wait_in_flight() -> None:
    while _IN_FLIGHT:
        _IN_FLIGHT.pop().wait()


def _prepare(
    ctx: RuntimeContext[Any], path: str | os.PathLike[str], where: str
) -> tuple[str, dict[str, Any], Any, int]:
    """What both saves start with: the arguments checked, the save in flight waited
    for, then ``(target, state, writer, world size)``."""
    require_context(ctx, where)
    require_path(path, where)
    _wait_in_flight()
    target = os.path.abspath(os.fspath(path))
    state, layout = _state(ctx, target)
    _, _, world = _group()
    return target, state, _writer(target, layout, world), world


def save_async(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> AsyncSave:
    """Start writing ``ctx`` as a checkpoint folder; call it on every rank.

    Returns once the tensors are copied (``dcp.async_save``'s staging): the context may
    then be updated. DCP plans and writes in a background thread, its collectives on a
    gloo group of their own; rank 0 writes the layout and renames the folder in DCP's
    finishing step. At most one save is in flight per process: a new one first waits
    for the last.
    """
    target, state, writer, world = _prepare(ctx, path, "save_async")
    future: Future[Any]
    if world == 1:
        future = _async_one_process(state, writer)
    else:
        from torch.distributed.checkpoint.state_dict_saver import async_save

        started: Any = async_save(state, storage_writer=writer, process_group=_async_group())
        # a Future, or (when a stager stages in the background) a pair of them
        future = getattr(started, "upload_completion", started)
    handle = AsyncSave(target, future)
    _IN_FLIGHT.append(handle)
    return handle


def _async_one_process(state: dict[str, Any], writer: Any) -> Future[Any]:
    """``async_save`` in one process: the same staging copy, then DCP's save in a
    thread of ours (``async_save`` would call ``save``, which warns for ``no_dist``)."""
    staged = writer.stage(state)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchlean-save")
    future = pool.submit(_save_one_process, staged, writer)
    pool.shutdown(wait=False)
    return future


# ---------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Folder:
    variables: list[tuple[str, str]]
    gradients: list[tuple[str, str]]
    next_id: int
    pin: str | None
    keys: dict[str, dict[str, Any]]
    world_size: int
    reader: Any


def _open(path: str) -> _Folder:
    """The folder's layout, checked against its shards' headers (no pickle read)."""
    if os.path.lexists(os.path.join(path, ".metadata")):
        raise FormatError(
            f"{path}: holds a `.metadata` file, a pickle that runs code when read;"
            " torchlean reads checkpoint folders only through their safetensors headers"
            " and never unpickles one. Remove it if you trust the folder, or re-save"
            " with io.save(ctx, DIR, distributed=True)"
        )
    where = os.path.join(path, LAYOUT_NAME)
    if not os.path.isfile(where):
        raise FormatError(f"{path}: not a torchlean checkpoint folder (no {LAYOUT_NAME})")
    if os.path.getsize(where) > LAYOUT_LIMIT:
        raise FormatError(f"{where}: bigger than {LAYOUT_LIMIT} bytes; refused unread")
    with open(where, "rb") as f:
        text = f.read()
    reader = _reader(path)
    try:
        metadata = reader.read_metadata()
    except Exception as e:  # a safetensors header that does not parse
        raise FormatError(f"{path}: a shard's header cannot be read: {e}") from None
    stored: dict[str, Any] = dict(metadata.state_dict_metadata)
    variables, gradients, next_id, pin, layout = check_layout(where, text, sorted(stored))
    keys = layout.get("keys")
    world = layout.get("world_size")
    if layout.get("kind") != _KIND or not isinstance(keys, dict) or type(world) is not int:
        raise FormatError(f"{where}: not a torchlean checkpoint layout")
    problems = []
    for key, info in sorted(stored.items()):
        want = keys.get(key)
        if not isinstance(want, dict) or not isinstance(want.get("shape"), list):
            problems.append(f"`{key}` has no shape in the layout")
            continue
        shape = tuple(want["shape"])
        if not hasattr(info, "chunks"):
            problems.append(f"`{key}` is not a tensor")
            continue
        if tuple(info.size) != shape:
            problems.append(
                f"`{key}` has shape {tuple(info.size)} in the shards, {shape} in the layout"
            )
            continue
        covered = sum(math.prod(int(n) for n in c.sizes) for c in info.chunks)
        if covered != math.prod(shape):
            problems.append(
                f"`{key}`: the shards hold {covered} of its {math.prod(shape)} elements"
            )
    if problems:
        raise FormatError(f"{path}: the shards do not match the layout: " + "; ".join(problems))
    reader.read_metadata = lambda: metadata  # read once
    return _Folder(variables, gradients, next_id, pin, keys, world, reader)


def _reader(path: str) -> Any:
    """DCP's safetensors reader, reading each shard's bytes straight into its target
    where it can.

    DCP's reader reads a request through safetensors (a fresh tensor of the requested
    block) and copies that into the target. When the block's bytes lie contiguously in
    the shard file (whole rows of the stored chunk) and the target is a contiguous CPU
    tensor of the stored dtype, this one reads them from the file into the target's
    memory at once (one ``preadv`` per request: no intermediate tensor, one copy
    instead of two). Everything else -- the plan, which chunk feeds which target, the
    narrowing of targets, the commit, the threads that read several files at once
    (``thread_count``) -- is DCP's, and any other request goes through DCP's own path.

    Direct reads are used where several processes share the machine (a process group
    of more than one rank): one reading thread per shard file in each process. A
    process alone reads through DCP's own path, whose copy runs on torch's intra-op
    threads, every core (``bench/dist_checkpoint.py``: direct reads made the one-process
    2->1 load 1.4-1.5x DCP's at 100 MiB, and the 2-rank loads 0.4-0.6x).
    """
    import torch
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    from torchlean.io.safetensors import _File

    class _DirectReader(HuggingFaceStorageReader):
        def __init__(self, folder: str) -> None:
            # DCP's own threads, one per shard file (up to the cores): the reads of
            # several files run at once
            super().__init__(folder)
            self._shards: dict[str, _File] = {}
            self.direct = False

        def read_directly(self, direct: bool) -> None:
            """Direct reads on one thread per shard file, or DCP's own path."""
            self.direct = direct
            self.thread_count = (os.cpu_count() or 1) if direct else 1

        def _process_read_request(self, f: Any, req: Any, planner: Any) -> None:
            if not (self.direct and self._direct(req, planner)):
                super()._process_read_request(f, req, planner)

        def _direct(self, req: Any, planner: Any) -> bool:
            stored = self.storage_data[req.storage_index]
            shape = tuple(stored.shape)
            lengths = tuple(req.lengths)
            target = planner.resolve_tensor(req).detach()
            if (
                target.device.type != "cpu"
                or target.dtype != stored.dtype
                or tuple(target.shape) != lengths
                or not target.is_contiguous()
                or not shape
                or lengths[1:] != shape[1:]  # whole rows: one contiguous span
            ):
                return False
            shard = self._shards.get(stored.relative_path)
            if shard is None:
                shard = self._shards[stored.relative_path] = _File(stored.relative_path)
            spec = shard.specs.get(req.storage_index.fqn)
            if spec is None or tuple(spec["shape"]) != shape:
                return False
            size = target.element_size()
            begin = (
                spec["data_offsets"][0] + int(req.storage_offsets[0]) * math.prod(shape[1:]) * size
            )
            view = memoryview(target.reshape(-1).view(torch.uint8).numpy())
            at, done = shard.data_start + begin, 0
            while done < len(view):
                got = shard.read_into(at + done, view[done:])
                if got <= 0:
                    raise FormatError(
                        f"{shard.where}: truncated while reading `{req.storage_index.fqn}`"
                    )
                done += got
            planner.commit_tensor(req, target)
            return True

        def close_shards(self) -> None:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()

    return _DirectReader(path)


def _shared_machine() -> bool:
    """Whether this process reads beside other ranks of its process group (direct
    reads, see :func:`_reader`) rather than alone (DCP's own, multi-threaded copy)."""
    return _group()[2] > 1


def load_distributed(
    path: str | os.PathLike[str],
    *,
    backend: str = "numpy",
    like: RuntimeContext[Any] | None = None,
) -> RuntimeContext[Any]:
    """Read a checkpoint folder.

    Without ``like``: the whole tensors, in this process alone (no collective), as
    arrays of ``backend``. With ``like`` (call it on every rank): each entry takes the
    placement, mesh and device of the template's entry of the same name (the template's
    gradient for a gradient when it has one, else its variable), into fresh tensors;
    the world size may differ from the saving one. Cost: O(local bytes).
    """
    require_path(path, "load_distributed")
    check_backend(backend)
    if like is not None:
        require_context(like, "load_distributed", "like")
    where = os.path.abspath(os.fspath(path))
    folder = _open(where)
    import torch
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import load

    dtypes = {k: getattr(torch, v["dtype"]) for k, v in folder.keys.items()}
    targets: dict[str, Any] = {}
    if like is None:
        for key, info in folder.keys.items():
            targets[key] = torch.empty(tuple(info["shape"]), dtype=dtypes[key])
        no_dist = True
    else:
        targets = _targets(where, folder, like, dtypes)
        no_dist = _group()[2] == 1
    folder.reader.read_directly(_shared_machine())
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            load(
                targets,
                storage_reader=folder.reader,
                planner=DefaultLoadPlanner(allow_partial_load=False),
                no_dist=no_dist,
            )
    finally:
        folder.reader.close_shards()
    if like is None and backend != "torch":
        from torchlean.io._common import build_context

        return build_context(
            [(n, targets[k]) for n, k in folder.variables],
            [(n, targets[k]) for n, k in folder.gradients],
            next_id=folder.next_id,
            pin=folder.pin,
            backend=backend,
            path=where,
        )
    return RuntimeContext.from_registries(
        [(n, targets[k]) for n, k in folder.variables],
        [(n, targets[k]) for n, k in folder.gradients],
        next_id=folder.next_id,
        dtype=folder.pin,
        adopt=True,
    )


def inspect_distributed(path: str | os.PathLike[str]) -> FileSummary:
    """A summary of a checkpoint folder from its layout and its shards' safetensors
    headers alone (checked against each other as :func:`load_distributed` does); no
    tensor data is read until a tensor is asked for, and then the folder is loaded
    once, whole, in this process. Cost: O(layout + headers)."""
    require_path(path, "inspect_distributed")
    where = os.path.abspath(os.fspath(path))
    folder = _open(where)
    keys = folder.keys
    entries = layout_entries(
        folder.variables,
        folder.gradients,
        lambda key: (tuple(keys[key]["shape"]), keys[key]["dtype"]),
    )
    read = read_whole_once(
        lambda: load_distributed(where, backend="torch"), folder.variables + folder.gradients
    )
    return FileSummary(
        path=where,
        format="dcp",
        entries=tuple(entries),
        next_id=folder.next_id,
        dtype=folder.pin,
        layout="torchlean",
        _read=read,
    )


def _targets(
    where: str, folder: _Folder, like: RuntimeContext[Any], dtypes: dict[str, Any]
) -> dict[str, Any]:
    """A fresh tensor per key, laid out as the template's entry of its name."""
    import torch

    entries = template_entries(
        where,
        like,
        (folder.variables, folder.gradients),
        lambda key: tuple(folder.keys[key]["shape"]),
    )
    return {key: torch.empty_like(at.t, dtype=dtypes[key]) for _, _, key, at in entries}


def _save_format(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    save_distributed(ctx, path)


def _load_format(path: str | os.PathLike[str], *, backend: str, **kwargs: Any) -> Any:
    return load_distributed(path, backend=backend, **kwargs)


def _inspect_format(path: str | os.PathLike[str]) -> FileSummary:
    return inspect_distributed(path)


_recognise: Callable[[str | os.PathLike[str]], bool] = is_checkpoint_folder

#: The folder format: ``io.save(ctx, DIR, distributed=True)``, ``io.load(DIR)``.
FORMAT: Final = Format(
    name="dcp",
    suffixes=(".dcp",),
    save=_save_format,
    load=_load_format,
    inspect=_inspect_format,
    whole_context=True,
    header_only_inspect=True,
    directory=True,
    distributed=True,
    recognise=_recognise,
    native_backend="torch",
)

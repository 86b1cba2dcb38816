"""Training checkpoints: one safetensors file per step, written and read whole.

Reading map:
- :func:`save_checkpoint` -- parameters (``model/<name>``), optimizer state
  (``optim/<name>``), step (``train/step``) and each array library's random states
  (``train/<library>_rng``: torch's CPU generator; ``train/<library>_device_rng``: every
  GPU's) in one file, written atomically; ``write_checkpoint`` adds the state the data
  iterator started from (``train/data_rng``, written by ``fit``).
- :func:`load_checkpoint` -- the file into contexts shaped like the model and the state;
  every missing, unexpected or mismatched tensor in one error. ``read_checkpoint`` and
  ``restore_rng`` are its two halves (``fit`` restores in between).
- :func:`latest_checkpoint` -- ``step-NNNNNN.safetensors`` of the highest step in a folder.
- :func:`prune_checkpoints` -- keep the newest few (``fit(keep_last=)``).
- ``start_folder_checkpoint`` / ``read_folder_checkpoint`` / ``latest_folder_checkpoint``
  / ``prune_folder_checkpoints`` -- ``fit(distributed=True)``: the same names (no random
  states) in a checkpoint folder ``step-NNNNNN`` written by every process with
  :func:`torchlean.io.distributed.save_async` and read back on any world size.

The names stay plain ``state_dict`` names behind a prefix: ``model/fc1.weight`` is the
model's ``fc1.weight``. To read the weights alone into a module:
``io.load(path, backend="torch", strip_prefix="model/")`` then keep the names without a
``/`` (or use :func:`load_checkpoint` with the model's context as the template).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from torchlean._validate import require_int, require_path
from torchlean.errors import ExpectationError
from torchlean.runtime.backends import NUMPY, Backend, backend_named, backend_of, libraries
from torchlean.runtime.context import RuntimeContext, require_context
from torchlean.runtime.dtypes import dtype_name

__all__ = [
    "checkpoint_name",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

_CHECKPOINT = re.compile(r"^step-(\d+)\.safetensors$")
_FOLDER = re.compile(r"^step-(\d+)$")
_STEP = "train/step"
_DATA_RNG = "train/data_rng"
#: the micro-batches per step of the run that wrote the file (``fit``'s ``accumulate``)
_ACCUMULATE = "train/accumulate"
#: the pass over the data (``fit``'s ``epochs=``) whose iterator ``train/data_rng`` started
_DATA_PASS = "train/data_pass"


def _rng_key(library: Backend) -> str:
    return f"train/{library.name}_rng"


def _device_rng_key(library: Backend) -> str:
    return f"train/{library.name}_device_rng"


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint of ``step``: ``step-NNNNNN.safetensors``."""
    return f"step-{step:06d}.safetensors"


def save_checkpoint(
    path: str | os.PathLike[str],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
    step: int,
) -> None:
    """Write parameters, optimizer state, step and random states to one file.

    The file is a safetensors file written atomically by :func:`torchlean.io.save`; the
    names are ``model/<variable>``, ``optim/<state entry>``, ``train/step`` and, for
    torch contexts, ``train/torch_rng`` (the CPU generator) and, once CUDA has been
    started, ``train/torch_device_rng`` (one row per GPU). Cost: O(total bytes).
    """
    require_path(path, "save_checkpoint")
    require_context(ctx, "save_checkpoint")
    require_context(state, "save_checkpoint", "state")
    require_int(step, "save_checkpoint", "step")
    write_checkpoint(path, ctx, state, step, data_rng=None)


def write_checkpoint(
    path: str | os.PathLike[str],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
    step: int,
    *,
    data_rng: np.ndarray[Any, Any] | None,
    accumulate: int | None = None,
    data_pass: int = 0,
) -> None:
    """:func:`save_checkpoint` (arguments already checked), plus ``train/data_rng``: the
    random state the training loop's data iterator started from (see ``fit``), and
    ``train/accumulate``: the micro-batches per step of the run (``fit`` refuses to resume
    with another count, which would skip another number of batches), and with
    ``epochs=`` ``train/data_pass``: the pass whose iterator started from ``data_rng``
    (each pass's shuffled order is drawn when its iterator is made, mid-training)."""
    from torchlean import io

    items: list[tuple[str, Any]] = [(f"model/{n}", at.t) for n, at in ctx.latest_variables()]
    items += [(f"optim/{n}", at.t) for n, at in state.latest_variables()]
    items.append((_STEP, np.asarray(step, context_library(ctx).counter_dtype)))
    for library in dict.fromkeys(at.library for _, at in ctx.latest_variables()):
        rng = library.rng_state()
        if rng is not None:
            items.append((_rng_key(library), rng))
        rows = library.device_rng_state()
        if rows is not None:
            items.append((_device_rng_key(library), rows))
    if data_rng is not None:
        items.append((_DATA_RNG, data_rng))
        if data_pass:
            items.append((_DATA_PASS, np.asarray(data_pass, np.int32)))
    if accumulate is not None:
        items.append((_ACCUMULATE, np.asarray(accumulate, np.int32)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    io.save(RuntimeContext.empty().register_variables(items), path)


def load_checkpoint(
    path: str | os.PathLike[str],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
) -> tuple[RuntimeContext[Any], RuntimeContext[Any], int]:
    """Read a checkpoint into contexts shaped like ``ctx`` and ``state``.

    Returns ``(ctx', state', step)``: ``ctx`` and ``state`` with the most recent entry
    of each name replaced by the file's tensor (same array library and device as the
    entry it replaces); restores torch's CPU random state, and every GPU's, when the
    file has them. Every missing, unexpected or mismatched tensor is listed in one
    :class:`~torchlean.errors.ExpectationError`. Cost: O(total bytes).
    """
    require_path(path, "load_checkpoint")
    require_context(ctx, "load_checkpoint")
    require_context(state, "load_checkpoint", "state")
    new_ctx, new_state, step, rngs = read_checkpoint(path, ctx, state)
    restore_rng(context_library(ctx), rngs)
    return new_ctx, new_state, step


def read_checkpoint(
    path: str | os.PathLike[str],
    ctx: RuntimeContext[Any],
    state: RuntimeContext[Any],
) -> tuple[RuntimeContext[Any], RuntimeContext[Any], int, dict[str, Any]]:
    """:func:`load_checkpoint` without restoring anything: also returns the random
    states the file holds (``"cpu"``, ``"device"``, ``"data"``) for :func:`restore_rng`,
    and ``"accumulate"`` and ``"data_pass"`` (ints) when the file records them."""
    from torchlean import io

    library = context_library(ctx)
    tensors = io.load(path, backend=library.name).state_dict()
    state = _counters_like(ctx, state, tensors)
    # names, shapes and dtypes: the one comparison of torchlean.io.expect
    want = {f"model/{n}": at for n, at in ctx.latest_variables()}
    want |= {f"optim/{n}": at for n, at in state.latest_variables()}
    extra = {_STEP, _DATA_RNG, _ACCUMULATE, _DATA_PASS} | {
        f"train/{name}_rng" for name in libraries()
    }
    extra |= {f"train/{name}_device_rng" for name in libraries()}
    have = {n: t for n, t in tensors.items() if n not in extra}
    specs = {k: (at.dims, at.dtype) for k, at in want.items()}
    report = io.compare(have, specs, dtypes=True, suggest=False)
    missing, mismatched = set(report.missing), {m.name for m in report.mismatched}
    problems = [
        f"missing tensor `{k}`"
        if k in missing
        else f"tensor `{k}` is {dtype_name(have[k].dtype)} {tuple(int(d) for d in have[k].shape)}"
        f" but {at.dtype} {at.dims} is expected"
        for k, at in want.items()
        if k in missing or k in mismatched
    ]
    problems += [f"unexpected tensor `{n}`" for n in report.unexpected]
    if _STEP not in tensors:
        problems.append(f"missing tensor `{_STEP}`")
    if problems:
        raise ExpectationError(
            f"checkpoint {os.fspath(path)} does not fit this model and optimizer: "
            + "; ".join(problems)
        )
    new_ctx = _fill(ctx, tensors, "model/")
    new_state = _fill(state, tensors, "optim/")
    step_value = tensors[_STEP]
    step = int(backend_of(step_value).to_numpy(step_value))
    rngs = {
        kind: tensors[key]
        for kind, key in (
            ("cpu", _rng_key(library)),
            ("device", _device_rng_key(library)),
            ("data", _DATA_RNG),
        )
        if key in tensors
    }
    for kind, key in (("accumulate", _ACCUMULATE), ("data_pass", _DATA_PASS)):
        if key in tensors:
            rngs[kind] = int(backend_of(tensors[key]).to_numpy(tensors[key]))
    return new_ctx, new_state, step, rngs


def restore_rng(library: Backend, rngs: Mapping[str, Any]) -> None:
    """Restore the CPU and device random states :func:`read_checkpoint` returned."""
    if "cpu" in rngs:
        library.set_rng_state(rngs["cpu"])
    if "device" in rngs:
        library.set_device_rng_state(rngs["device"])


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The ``step-NNNNNN.safetensors`` file of the highest step in ``folder``, or None."""
    require_path(folder, "latest_checkpoint", "folder")
    best: tuple[int, Path] | None = None
    root = Path(folder)
    if not root.is_dir():
        return None
    for child in root.iterdir():
        m = _CHECKPOINT.match(child.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), child)
    return None if best is None else best[1]


def checkpoint_files(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of each ``step-NNNNNN.safetensors`` file of ``folder``, by step
    (none when there is no such folder). Cost: O(files)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _CHECKPOINT.match(child.name)
        if m:
            found.append((int(m.group(1)), child))
    return sorted(found)


def prune_checkpoints(folder: str | os.PathLike[str], keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest ``step-NNNNNN.safetensors`` files of ``folder``
    (by step); other files are left alone. Returns the removed paths. Cost: O(files)."""
    found = checkpoint_files(folder)
    removed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def context_library(ctx: RuntimeContext[Any]) -> Backend:
    """The array library of the first variable (numpy for an empty context)."""
    for _, at in ctx.latest_variables():
        return at.library
    return NUMPY


def _counters_like(
    ctx: RuntimeContext[Any], state: RuntimeContext[Any], tensors: Mapping[str, Any]
) -> RuntimeContext[Any]:
    """``state`` with the optimizer's step counters the file has: one shared ``step``
    (what ``init`` gives on jax and numpy) or ``step/p`` per parameter (torch's, files
    written before the shared counter, a run whose parameters stepped apart). The
    counters the file has for variables of ``ctx`` but ``state`` lacks are added (like
    one of ``state``'s; the file's values replace them), those it lacks are left out;
    any other counter stays unexpected. Cost: O(names)."""
    variables = {name for name, _ in ctx.latest_variables()}
    theirs = [
        name[6:]
        for name in tensors
        if name == "optim/step" or (name.startswith("optim/step/") and name[11:] in variables)
    ]
    entries = state.latest_variables()
    ours = [name for name, _ in entries if name == "step" or name.startswith("step/")]
    if not theirs or not ours or set(theirs) == set(ours):
        return state
    like = state.variable_entry(ours[0])
    assert like is not None
    counters = set(ours)
    items: list[tuple[str, Any]] = []
    for name, at in entries:
        if name == ours[0]:
            items += [(n, like.library.copy(like.t)) for n in theirs]
        elif name not in counters:
            items.append((name, at.t))
    return RuntimeContext.empty().with_variables(items, adopt=True)


def _fill(
    template: RuntimeContext[Any], tensors: Mapping[str, Any], prefix: str
) -> RuntimeContext[Any]:
    """``template`` with each latest variable replaced by the checked tensor of the file."""
    values = []
    for name, at in template.latest_variables():
        value = tensors[prefix + name]
        values.append((name, backend_of(value).to_device(value, at.device)))
    return template.with_variables(values, adopt=True)


# ---------------------------------------------------------------------- checkpoint folders


def folder_checkpoint_name(step: int) -> str:
    """The name of the checkpoint folder of ``step``: ``step-NNNNNN``."""
    return f"step-{step:06d}"


def _folder_context(
    ctx: RuntimeContext[Any], state: RuntimeContext[Any], step: int
) -> RuntimeContext[Any]:
    """One context of ``model/<name>``, ``optim/<name>`` and ``train/step`` (a torch
    int64 scalar: the folder engine writes torch tensors)."""
    torch_backend = backend_named("torch")
    items: list[tuple[str, Any]] = [(f"model/{n}", at.t) for n, at in ctx.latest_variables()]
    items += [(f"optim/{n}", at.t) for n, at in state.latest_variables()]
    items.append((_STEP, torch_backend.from_numpy(np.asarray(step, np.int64), _STEP)))
    return RuntimeContext.empty().register_variables(items)


def start_folder_checkpoint(
    path: str | os.PathLike[str], ctx: RuntimeContext[Any], state: RuntimeContext[Any], step: int
) -> Any:
    """Start writing the checkpoint folder ``path`` on every process (returns the
    :class:`~torchlean.io.distributed.AsyncSave` once the tensors are copied)."""
    from torchlean.io.distributed import save_async

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_async(_folder_context(ctx, state, step), path)


def read_folder_checkpoint(
    path: str | os.PathLike[str], ctx: RuntimeContext[Any], state: RuntimeContext[Any]
) -> tuple[RuntimeContext[Any], RuntimeContext[Any], int]:
    """Read a checkpoint folder (on every process, any world size) into contexts shaped
    like ``ctx`` and ``state``: each tensor laid out as the entry it replaces."""
    from torchlean.io.distributed import load_distributed

    template = _folder_context(ctx, state, 0)
    loaded = dict(load_distributed(path, like=template).latest_variables())
    problems = []
    for name, want in template.latest_variables():
        got = loaded.get(name)
        if got is None:
            problems.append(f"missing tensor `{name}`")
        elif got.dtype != want.dtype:
            problems.append(
                f"tensor `{name}` is {got.dtype} {got.dims} but {want.dtype} {want.dims}"
                " is expected"
            )
    if problems:
        raise ExpectationError(
            f"checkpoint {os.fspath(path)} does not fit this model and optimizer: "
            + "; ".join(problems)
        )
    tensors = {name: at.t for name, at in loaded.items()}
    step = int(backend_of(tensors[_STEP]).to_numpy(tensors[_STEP]))
    return _fill(ctx, tensors, "model/"), _fill(state, tensors, "optim/"), step


def _complete_folders(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The complete ``step-NNNNNN`` checkpoint folders of ``folder``, by step (a
    ``.partial`` folder, or one without its layout, is not complete)."""
    from torchlean.io.distributed import is_checkpoint_folder

    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _FOLDER.match(child.name)
        if m and is_checkpoint_folder(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_folder_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint folder of the highest step in ``folder``, or None; in a
    process group, rank 0's choice, broadcast (every rank then loads the same one)."""
    found = _complete_folders(folder)
    choice = None if not found else os.fspath(found[-1][1])
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    return None if choice is None else Path(choice)


def prune_folder_checkpoints(folder: str | os.PathLike[str], keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest complete checkpoint folders of ``folder`` (call
    it on one process). Returns the removed paths. Cost: O(files)."""
    found = _complete_folders(folder)
    removed = [path for _, path in found[: max(0, len(found) - keep)]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed

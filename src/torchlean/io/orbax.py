"""Checkpoint folders written through orbax-checkpoint (jax), by every process at once.

A context of (sharded) ``jax.Array`` values is saved and restored through orbax's
``StandardCheckpointer``, so the sharded write, the read of only the shards each
device needs and the reshard on restore are orbax's own::

    io.save(ctx, "ckpt.orbax")                        # every jax process
    io.save(ctx, "ckpt", format="orbax")              # the same, any folder name
    ctx = io.load("ckpt.orbax", like=template)        # into the template's shardings
    ctx = io.load("ckpt.orbax", backend="jax")        # one device of this process

orbax cannot save a RuntimeContext (``Unsupported KeyEntry``), and restoring on
another mesh without a target fails or hangs (orbax#332, #648). So:

- the arrays are saved as a plain dict pytree, one entry per torchlean key (the keys of
  :func:`torchlean.io._layout.plan`), named ``t0``, ``t1``, ... so that no name (dots,
  slashes) reaches orbax's paths; beside them :data:`LAYOUT_NAME` (JSON) holds the
  whole context -- both registries in Lean's order, shadowed entries, gradients,
  ``next_id``, the pinned dtype -- and each key's orbax name, shape, dtype and sharding;
- restores always give orbax an explicit target: ``jax.ShapeDtypeStruct`` of each key
  with the sharding of the template's entry (``like=``), or of this process's first
  device without one;
- every key the layout names must be in orbax's metadata and the reverse, with the
  same shapes, before any array is read: orbax itself refuses a target whose tree or
  shapes differ from its metadata before reading, and torchlean then names each
  difference (:func:`_check_arrays`; :func:`inspect_orbax` checks first);
- the folder appears complete or not at all: orbax writes ``DIR.partial/arrays``
  (itself atomically); in orbax's commit step (its background thread, after every
  process has written) process 0 writes the layout and renames ``DIR.partial`` to
  ``DIR`` (an older ``DIR`` is moved aside first and removed after);
- :func:`save_async` is orbax's own asynchronous save: it returns after orbax's copy
  of the arrays, at most one in flight.

orbax-checkpoint is imported when a folder is saved or loaded, never by
``import torchlean.io``.

Reading map:
- :func:`save_orbax` -- write a folder (a collective under ``jax.distributed``).
- :func:`save_async` -- the same, returning an :class:`OrbaxSave` once orbax has
  copied the arrays; at most one in flight per process.
- :func:`load_orbax` -- read one (``like=``: into the template's shardings).
- :func:`inspect_orbax` -- its entries from the layout and orbax's metadata alone.
- :func:`is_orbax_folder`, :data:`FORMAT` -- the registered folder format.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Final

from torchlean._validate import require_path
from torchlean.errors import FormatError, TorchLeanError
from torchlean.io._atomic import publish_folder
from torchlean.io._common import check_backend
from torchlean.io._format import Format
from torchlean.io._layout import apply_roles, check_layout, layout_object, plan, template_entries
from torchlean.io._summary import FileSummary, layout_entries, read_whole_once
from torchlean.runtime.context import RuntimeContext, require_context

__all__ = [
    "FORMAT",
    "LAYOUT_NAME",
    "OrbaxSave",
    "inspect_orbax",
    "is_orbax_folder",
    "load_orbax",
    "save_async",
    "save_orbax",
]

#: The layout file of an orbax checkpoint folder.
LAYOUT_NAME: Final = "torchlean-orbax.json"
#: A layout file bigger than this is refused unread.
LAYOUT_LIMIT: Final = 64 << 20
#: The sub-folder orbax writes.
ARRAYS: Final = "arrays"
_KIND: Final = "torchlean-orbax"
_PARTIAL: Final = ".partial"

_checkpointer: list[Any] = []
#: orbax's final ``DIR.partial/arrays`` path -> ``(DIR.partial, DIR, layout)``: what
#: process 0 finishes in orbax's commit step once orbax has put ``arrays`` in place.
_FINISH: dict[str, tuple[str, str, dict[str, Any]]] = {}


def _orbax() -> Any:
    """One ``ocp.StandardCheckpointer`` per process (its threads are reused), whose
    commit step also finishes torchlean's folder (:func:`_finishing_path_class`)."""
    if not _checkpointer:
        import orbax.checkpoint as ocp

        _checkpointer.append(
            ocp.StandardCheckpointer(temporary_path_class=_finishing_path_class(ocp))
        )
    return _checkpointer[0]


def _finishing_path_class(ocp: Any) -> type[Any]:
    """orbax's atomic-rename temporary path, whose ``finalize`` (orbax's commit step,
    run by process 0 in orbax's background thread after every process has written and
    before orbax's closing barrier lets the others return) renames orbax's temporary
    folder to ``DIR.partial/arrays`` as usual, then writes torchlean's layout and
    renames ``DIR.partial`` to ``DIR``. No thread or barrier of torchlean's own."""
    base: type[Any] = ocp.path.atomicity.AtomicRenameTemporaryPath

    class _FinishingPath(base):  # type: ignore[misc]
        async def finalize(self) -> None:
            await super().finalize()
            job = _FINISH.pop(os.path.abspath(os.fspath(self.get_final())), None)
            if job is not None:
                _finish(*job)

    return _FinishingPath


def is_orbax_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a :data:`LAYOUT_NAME`."""
    require_path(path, "is_orbax_folder")
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, LAYOUT_NAME))


def _process() -> tuple[int, int]:
    import jax

    return int(jax.process_index()), int(jax.process_count())


def _barrier(name: str, world: int) -> None:
    if world > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------- saving


def save_orbax(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write ``ctx`` as an orbax checkpoint folder at ``path``; under
    ``jax.distributed`` call it on every process (each writes the shards it holds).

    jax arrays are handed to orbax as they are (sharded or not); another library's
    through numpy. Process 0 writes the layout and renames the folder in orbax's own
    commit step. Collectives: orbax's, and one barrier with several processes.
    Cost: O(local bytes) per process.
    """
    require_context(ctx, "save_orbax")
    require_path(path, "save_orbax")
    _start(ctx, path)
    _orbax().wait_until_finished()


def save_async(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> OrbaxSave:
    """Start writing ``ctx`` as an orbax checkpoint folder; under ``jax.distributed``
    call it on every process.

    orbax's own asynchronous save (``StandardCheckpointer``, an ``AsyncCheckpointer``):
    returns once orbax has copied the arrays to host memory, the context may then be
    updated; orbax writes in its background thread, and process 0 writes the layout
    and renames the folder in orbax's commit step. At most one save is in flight per
    process: a new one (or :func:`save_orbax`) first waits for the last. Cost: the
    copy of the local bytes, then O(local bytes) in the background.
    """
    require_context(ctx, "save_async")
    require_path(path, "save_async")
    return OrbaxSave(_start(ctx, path))


class OrbaxSave:
    """A save started by :func:`save_async`: ``done()``, ``wait()`` (raises what the
    background write raised; call it on every process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"OrbaxSave({self.path!r})"

    def done(self) -> bool:
        """True once the folder is complete (``DIR.partial`` renamed to ``DIR``); a
        failed save never is: :meth:`wait` raises its error."""
        return not os.path.exists(self.path + _PARTIAL) and is_orbax_folder(self.path)

    def wait(self) -> None:
        """Block until orbax's background write and the folder's finish are over; raise
        their error."""
        _orbax().wait_until_finished()


def _start(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> str:
    """Wait for the save in flight, prepare ``DIR.partial``, start orbax's save."""
    import jax

    if _checkpointer:  # at most one in flight: the last one's folder is finished first
        _checkpointer[0].wait_until_finished()
    tensors, variables, gradients = plan(ctx)
    state: dict[str, Any] = {}
    keys: dict[str, Any] = {}
    for i, (key, at) in enumerate(tensors.items()):
        value = at.t
        if not isinstance(value, jax.Array):  # orbax writes jax (or numpy) arrays
            value = at.library.to_numpy(value)
        name = f"t{i}"
        state[name] = value
        keys[key] = {
            "name": name,
            "shape": list(at.dims),
            "dtype": at.dtype,
            "sharding": at.placement,
        }
    target = os.path.abspath(os.fspath(path))
    partial = target + _PARTIAL
    arrays = os.path.join(partial, ARRAYS)
    rank, world = _process()
    checkpointer = _orbax()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a save that died half-way
        os.makedirs(partial)
        layout = layout_object(ctx, variables, gradients)
        _FINISH[arrays] = (
            partial,
            target,
            layout | {"kind": _KIND, "keys": keys, "processes": world},
        )
    _barrier("torchlean-orbax-prepare", world)
    try:
        checkpointer.save(arrays, state)
    except BaseException:
        _FINISH.pop(arrays, None)
        raise
    return target


def _finish(partial: str, target: str, layout: dict[str, Any]) -> None:
    """Write the layout into ``partial`` and move it to ``target`` (process 0 only)."""
    publish_folder(partial, target, LAYOUT_NAME, layout)


# ---------------------------------------------------------------------- loading


def _open(where: str) -> tuple[Any, ...]:
    """The folder's layout, validated (orbax's metadata is not read: see
    :func:`_check_arrays`)."""
    layout_path = os.path.join(where, LAYOUT_NAME)
    if not os.path.isfile(layout_path):
        raise FormatError(f"{where}: not a torchlean orbax folder (no {LAYOUT_NAME})")
    if os.path.getsize(layout_path) > LAYOUT_LIMIT:
        raise FormatError(f"{layout_path}: bigger than {LAYOUT_LIMIT} bytes; refused unread")
    with open(layout_path, "rb") as f:
        text = f.read()
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise FormatError(f"{layout_path}: the torchlean metadata is not valid JSON: {e}") from None
    keys = raw.get("keys") if isinstance(raw, dict) else None
    if (
        not isinstance(raw, dict)
        or raw.get("kind") != _KIND
        or not isinstance(keys, dict)
        or not all(
            isinstance(v, dict)
            and isinstance(v.get("name"), str)
            and isinstance(v.get("shape"), list)
            and all(type(n) is int and n >= 0 for n in v["shape"])
            and isinstance(v.get("dtype"), str)
            for v in keys.values()
        )
    ):
        raise FormatError(f"{layout_path}: not a torchlean orbax layout")
    variables, gradients, next_id, pin, layout = check_layout(layout_path, text, sorted(keys))
    return variables, gradients, next_id, pin, keys, os.path.join(where, ARRAYS), layout


def _check_arrays(where: str, keys: dict[str, Any], arrays: str) -> None:
    """The layout's keys against orbax's metadata, both ways, with shapes and dtypes
    (no array read): a :class:`FormatError` naming every difference."""
    try:
        metadata = _orbax().metadata(arrays).item_metadata.tree
    except Exception as e:  # orbax's own metadata missing or unreadable
        raise FormatError(f"{where}: orbax cannot read the arrays' metadata: {e}") from None
    stored = {name: info for name, info in dict(metadata).items()}
    named = {info["name"]: key for key, info in keys.items()}
    problems = [
        f"`{named[n]}` (orbax `{n}`) is not in the arrays" for n in named if n not in stored
    ]
    problems += [f"orbax array `{n}` is not in the layout" for n in stored if n not in named]
    for name, key in named.items():
        info = stored.get(name)
        if info is None:
            continue
        want = tuple(keys[key]["shape"])
        if tuple(info.shape) != want:
            problems.append(
                f"`{key}` has shape {tuple(info.shape)} in the arrays, {want} in the layout"
            )
            continue
        dtype = getattr(info, "dtype", None)
        if dtype is not None and str(dtype) != keys[key]["dtype"]:
            problems.append(
                f"`{key}` has dtype {dtype} in the arrays, {keys[key]['dtype']} in the layout"
            )
    if problems:
        raise FormatError(f"{where}: the arrays do not match the layout: " + "; ".join(problems))


def load_orbax(
    path: str | os.PathLike[str],
    *,
    backend: str = "numpy",
    like: RuntimeContext[Any] | None = None,
) -> RuntimeContext[Any]:
    """Read an orbax checkpoint folder, always with an explicit target.

    With ``like`` (under ``jax.distributed`` call it on every process): each entry
    takes the sharding of the template's entry of its name (the template's gradient for
    a gradient when it has one, else its variable) -- another mesh or another number of
    devices than the saving one is orbax's reshard. Without ``like``: whole arrays on
    this process's first device, as arrays of ``backend``. Fresh arrays either way.
    Cost: O(local bytes).
    """
    require_path(path, "load_orbax")
    check_backend(backend)
    if like is not None:
        require_context(like, "load_orbax", "like")
    where = os.path.abspath(os.fspath(path))
    variables, gradients, next_id, pin, keys, arrays, layout = _open(where)
    import jax

    from torchlean.runtime.dtypes import numpy_dtype

    if like is None:
        whole = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = {key: whole for key in keys}
    else:
        shardings = _shardings(where, like, variables, gradients, keys)
    target = {
        info["name"]: jax.ShapeDtypeStruct(  # type: ignore[no-untyped-call]
            tuple(info["shape"]), numpy_dtype(info["dtype"]), sharding=shardings[key]
        )
        for key, info in keys.items()
    }
    try:
        # orbax compares the target's tree and shapes with its own metadata before it
        # reads any array, and refuses a difference; the precise reason is ours
        restored = _orbax().restore(arrays, target)
    except Exception:
        _check_arrays(where, keys, arrays)
        raise
    values = {key: restored[info["name"]] for key, info in keys.items()}
    if like is None and backend != "jax":
        from torchlean.io._common import build_context

        ctx = build_context(
            [(n, values[k]) for n, k in variables],
            [(n, values[k]) for n, k in gradients],
            next_id=next_id,
            pin=pin,
            backend=backend,
            path=where,
        )
    else:
        ctx = RuntimeContext.from_registries(
            [(n, values[k]) for n, k in variables],
            [(n, values[k]) for n, k in gradients],
            next_id=next_id,
            dtype=pin,
            adopt=True,
        )
    return apply_roles(where, ctx, layout)


def inspect_orbax(path: str | os.PathLike[str]) -> FileSummary:
    """A summary of an orbax folder from its layout and orbax's metadata alone (checked
    against each other as :func:`load_orbax` does); no array is read until one is asked
    for, and then the folder is restored once, whole, on this process's first device.
    Cost: O(layout + orbax metadata)."""
    require_path(path, "inspect_orbax")
    where = os.path.abspath(os.fspath(path))
    variables, gradients, next_id, pin, keys, arrays, _ = _open(where)
    _check_arrays(where, keys, arrays)
    entries = layout_entries(
        variables, gradients, lambda key: (tuple(keys[key]["shape"]), keys[key]["dtype"])
    )
    read = read_whole_once(lambda: load_orbax(where), variables + gradients)
    return FileSummary(
        path=where,
        format="orbax",
        entries=tuple(entries),
        next_id=next_id,
        dtype=pin,
        layout="torchlean",
        _read=read,
    )


def _shardings(
    where: str,
    like: RuntimeContext[Any],
    variables: list[tuple[str, str]],
    gradients: list[tuple[str, str]],
    keys: dict[str, Any],
) -> dict[str, Any]:
    """The sharding of each key: that of the template's entry of its name."""
    import jax

    out: dict[str, Any] = {}
    entries = template_entries(
        where, like, (variables, gradients), lambda key: tuple(keys[key]["shape"])
    )
    for registry, name, key, at in entries:
        value = at.t
        if not isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer):
            raise TorchLeanError(
                f"{where}: the template's {registry} `{name}` is not a jax array"
                f" ({at.backend}); like= gives each entry a jax sharding"
            )
        out[key] = value.sharding
    return out


def _save_format(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    save_orbax(ctx, path)


def _load_format(path: str | os.PathLike[str], *, backend: str, **kwargs: Any) -> Any:
    return load_orbax(path, backend=backend, **kwargs)


def _inspect_format(path: str | os.PathLike[str]) -> FileSummary:
    return inspect_orbax(path)


def _recognise(path: str | os.PathLike[str]) -> bool:
    return is_orbax_folder(path)


#: The folder format: ``io.save(ctx, "x.orbax")``, ``io.load(DIR, like=template)``.
FORMAT: Final = Format(
    name="orbax",
    suffixes=(".orbax",),
    save=_save_format,
    load=_load_format,
    inspect=_inspect_format,
    whole_context=True,
    header_only_inspect=True,
    directory=True,
    distributed=True,
    recognise=_recognise,
)

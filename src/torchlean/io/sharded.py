"""Sharded safetensors checkpoints: an index and shard files, as ``save_pretrained`` writes.

Hugging Face's ``save_pretrained(..., max_shard_size=...)`` writes a big model as
several safetensors files (*shards*) and one index beside them::

    model.safetensors.index.json      {"metadata": {"total_size": N}, "weight_map":
                                        {"lm_head.weight": "model-00002-of-00002.safetensors",
                                         ...}}
    model-00001-of-00002.safetensors  plain safetensors files
    model-00002-of-00002.safetensors

:func:`torchlean.io.load` and :func:`~torchlean.io.inspect` read such an index (by its
``.safetensors.index.json`` suffix) or a folder holding one; a folder of safetensors
files without an index reads as their union (each key in exactly one file). Every shard
and every key the index names must be there, and every key of a shard must be in the
index: anything else is a :class:`~torchlean.errors.FormatError` naming each problem,
never a silent skip. A shard name that is not a plain file name beside the index
(``../x``, ``/etc/x``, ``a/b``) is refused before any file is opened. ``inspect`` reads
the shards' headers only; a tensor is read from its shard on request.

:func:`save_sharded` (and :func:`torchlean.io.save` of a ``*.safetensors.index.json``
path) writes the same layout, shards filled in registration order up to
``max_shard_size`` bytes (a bigger tensor gets a shard of its own), as
``huggingface_hub.split_torch_state_dict_into_shards`` does. Like the single-file
format it keeps the whole context: the :mod:`torchlean.io._layout` object (``next_id``,
the pinned dtype, both registries) goes in the index's ``metadata`` under
``"torchlean"``, shadowed entries and gradients under ``__torchlean__/`` keys. Without
that entry, the variables are the shards' tensors in shard order, then file order.

Reading map:
- :func:`save_sharded` -- write a context as shards and an index; :func:`staged` --
  the same, kept in a temporary folder until its ``with`` block ends well.
- :func:`load_sharded`, :func:`inspect_sharded` -- read an index or a folder.
- :func:`parse_size` -- ``"5GB"``, ``"500MiB"`` or an int, in bytes.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from torchlean._validate import require_path, require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._common import build_context, check_backend, check_regular_file, to_numpy
from torchlean.io._format import Format
from torchlean.io._layout import PREFIX, apply_roles, check_layout, layout_object, plan
from torchlean.io._summary import Block, FileSummary, TensorInfo, layout_entries
from torchlean.io.safetensors import inspect_safetensors, load_safetensors
from torchlean.runtime.context import RuntimeContext

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "FORMAT",
    "INDEX_SUFFIX",
    "inspect_sharded",
    "load_sharded",
    "parse_size",
    "save_sharded",
    "staged",
]

#: The suffix of an index file.
INDEX_SUFFIX: Final = ".safetensors.index.json"
#: ``max_shard_size`` when none is given (``save_pretrained``'s default).
DEFAULT_MAX_SHARD_SIZE: Final = "5GB"
#: An index bigger than this is refused unread (real ones are kilobytes).
INDEX_LIMIT: Final = 64 << 20
_META_KEY: Final = "torchlean"
_UNITS: Final = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}


def parse_size(size: int | str) -> int:
    """``size`` in bytes: an int, or a str such as ``"5GB"`` (powers of 1000) or
    ``"500MiB"`` (powers of 1024), case-insensitive, as ``save_pretrained`` reads
    ``max_shard_size``. Must be at least 1 byte."""
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise TypeError(f"max_shard_size must be an int or a str such as '5GB', got {size!r}")
    if isinstance(size, int):
        n = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
        unit = _UNITS.get(m.group(2).upper()) if m else None
        if m is None or unit is None:
            raise ValueError(
                f"max_shard_size must be a number of bytes with an optional unit (B, KB,"
                f" MB, GB, TB, KiB, MiB, GiB, TiB), such as '5GB', got {size!r}"
            )
        n = int(float(m.group(1)) * unit)
    if n < 1:
        raise ValueError(f"max_shard_size must be at least 1 byte, got {size!r}")
    return n


# ---------------------------------------------------------------------- writing


def _target(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The index path and the shards' stem: a ``*.json`` path is the index itself
    (``model.safetensors.index.json`` -> ``model``); anything else is a folder that gets
    ``model.safetensors.index.json``."""
    p = Path(path)
    name = p.name
    if not name.lower().endswith(".json"):
        return p / f"model{INDEX_SUFFIX}", "model"
    lower = name.lower()
    for suffix in (INDEX_SUFFIX, ".index.json", ".json"):
        if lower.endswith(suffix):
            return p, name[: -len(suffix)] or "model"
    raise AssertionError("unreachable")  # pragma: no cover


def _shards(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Keys grouped into shards of at most ``limit`` bytes, in order; a tensor bigger
    than ``limit`` is a shard of its own (``split_torch_state_dict_into_shards``)."""
    shards: list[list[str]] = []
    current: list[str] = []
    used = 0
    for key, size in sizes.items():
        if size > limit:
            shards.append([key])
            continue
        if current and used + size > limit:
            shards.append(current)
            current, used = [], 0
        current.append(key)
        used += size
    if current or not shards:
        shards.append(current)
    return shards


def _write_shard(path: Path, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
    from safetensors import TensorSpec, serialize_file

    specs = {
        key: TensorSpec(
            dtype=a.dtype.name, shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes
        )
        for key, a in arrays.items()
    }
    serialize_file(specs, path, metadata={"format": "pt"})
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def staged(
    ctx: RuntimeContext[Any],
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Iterator[Path]:
    """Write ``ctx`` as :func:`save_sharded` does, into a temporary folder beside the
    target, and yield the index there (to read it back, say). When the ``with`` block
    ends without an exception the shards are moved into place, then the index (so a
    reader of the index never sees a shard missing); on an exception nothing is moved
    and the temporary folder is removed. Cost: O(total bytes)."""
    require_save_arguments(ctx, path, "save_sharded")
    limit = parse_size(max_shard_size)
    index_path, stem = _target(path)
    folder = index_path.parent
    if index_path.exists() and not index_path.is_file():
        raise FormatError(f"{index_path}: is not a regular file; cannot write the index there")
    folder.mkdir(parents=True, exist_ok=True)
    box = Path(
        tempfile.mkdtemp(prefix=f".{index_path.name}.{os.getpid()}-", suffix=".tmp", dir=folder)
    )
    try:
        tensors, variables, gradients = plan(ctx)
        # registration order (oldest first) for the visible entries, then the rest
        visible = [k for k in tensors if not k.startswith(PREFIX)]
        order = visible[::-1] + [k for k in tensors if k.startswith(PREFIX)]
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for key in order:
            a = to_numpy(tensors[key])
            arrays[key] = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        groups = _shards({k: a.nbytes for k, a in arrays.items()}, limit)
        n = len(groups)
        names = [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        weight_map: dict[str, str] = {}
        for name, keys in zip(names, groups, strict=True):
            _write_shard(box / name, {k: arrays[k] for k in keys})
            weight_map.update(dict.fromkeys(keys, name))
        index = {
            "metadata": {
                "total_size": sum(a.nbytes for a in arrays.values()),
                _META_KEY: layout_object(ctx, variables, gradients),
            },
            "weight_map": weight_map,
        }
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        with open(box / index_path.name, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        yield box / index_path.name
        for name in names:
            os.replace(box / name, folder / name)
        os.replace(box / index_path.name, index_path)
        with contextlib.suppress(OSError):  # not every platform syncs a folder
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def save_sharded(
    ctx: RuntimeContext[Any],
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write ``ctx`` as safetensors shards of at most ``max_shard_size`` bytes each
    (``"5GB"``, ``"500MiB"`` or an int) and an index, the layout ``save_pretrained``
    writes; returns the index's path.

    ``path`` is the index (``out/model.safetensors.index.json``: shards
    ``out/model-00001-of-0000N.safetensors``) or a folder (created if needed; the index
    is ``model.safetensors.index.json`` in it). The index always exists, even for one
    shard. Shards of an earlier save with another shard count are left alone. The files
    are written in a temporary folder first (:func:`staged`). Cost: O(total bytes).
    """
    with staged(ctx, path, max_shard_size=max_shard_size):
        pass
    return _target(path)[0]


def _save_format(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    save_sharded(ctx, path)


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Index:
    """What an index (or a folder without one) says: where, which shards, which keys."""

    where: str
    shards: tuple[Path, ...]
    #: key -> shard file name; ``None`` for a folder without an index
    weight_map: dict[str, str] | None
    #: the torchlean layout JSON text, when the index has one
    layout: str | None


def _plain_name(name: str) -> bool:
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not os.path.isabs(name)
        and os.path.basename(name) == name
    )


def _read_index(path: Path) -> _Index:
    where = os.fspath(path)
    check_regular_file(path)
    size = path.stat().st_size
    if size > INDEX_LIMIT:
        raise FormatError(
            f"{where}: the index is {size} bytes; a safetensors index is at most"
            f" {INDEX_LIMIT} bytes (is this the index file?)"
        )
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise FormatError(f"{where}: not a valid safetensors index: not JSON ({why})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(
            f"{where}: not a valid safetensors index: expected a JSON object with a"
            ' "weight_map" object of tensor names to shard files'
        )
    metadata = data.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise FormatError(f'{where}: the index\'s "metadata" must be a JSON object')
    bad: list[str] = []
    for key, name in weight_map.items():
        if not isinstance(name, str):
            raise FormatError(
                f"{where}: the index maps `{key}` to {name!r}; a shard is a file name (a str)"
            )
        if not _plain_name(name):
            bad.append(f"{name!r} (for `{key}`)")
    if bad:
        raise FormatError(
            f"{where}: refused shard name {', '.join(bad[:5])}: a shard must be a file name"
            " in the index's folder, not a path"
        )
    layout = metadata.get(_META_KEY)
    if layout is not None and not isinstance(layout, str):
        layout = json.dumps(layout)
    folder = path.parent
    names = sorted(set(weight_map.values()))  # model-00001-of-..., model-00002-of-...
    return _Index(where, tuple(folder / n for n in names), dict(weight_map), layout)


def _resolve(path: str | os.PathLike[str]) -> _Index:
    """The index of ``path``: an index file, or a folder with one index or with
    safetensors files and no index."""
    p = Path(path)
    where = os.fspath(path)
    if not p.is_dir():
        return _read_index(p)
    names = sorted(os.listdir(p))
    indexes = [n for n in names if n.lower().endswith(INDEX_SUFFIX)]
    if len(indexes) > 1:
        raise FormatError(
            f"{where}: the folder holds {len(indexes)} indexes"
            f" ({', '.join(indexes)}); name the one to read"
        )
    if indexes:
        return _read_index(p / indexes[0])
    files = tuple(p / n for n in names if n.lower().endswith(".safetensors") and (p / n).is_file())
    if not files:
        raise FormatError(
            f"{where}: is a directory without a *{INDEX_SUFFIX} or *.safetensors file"
        )
    return _Index(where, files, None, None)


Located = dict[str, tuple[FileSummary, TensorInfo]]


def _locate(index: _Index) -> Located:
    """Every key of the shards with the shard that holds it (shard order, then each
    file's order), checked against the index: every problem in one FormatError."""
    where = index.where
    missing_files = [s.name for s in index.shards if not s.exists()]
    if missing_files:
        raise FormatError(
            f"{where}: the index names shard{'s' if len(missing_files) > 1 else ''}"
            f" {', '.join(missing_files)}, which {'are' if len(missing_files) > 1 else 'is'}"
            " not in its folder"
        )
    found: Located = {}
    problems: list[str] = []
    for shard in index.shards:
        summary = inspect_safetensors(shard)
        if summary.layout is not None:
            raise FormatError(
                f"{where}: {shard.name} holds a whole torchlean context, not a shard; load"
                " it by its own name"
            )
        for info in reversed(summary.variables):
            other = found.get(info.key)
            if other is not None:
                problems.append(
                    f"`{info.key}` is in both {Path(other[0].path).name} and {shard.name}"
                )
                continue
            if index.weight_map is not None and index.weight_map.get(info.key) != shard.name:
                named = index.weight_map.get(info.key)
                problems.append(
                    f"{shard.name} holds `{info.key}`, which the index "
                    + ("does not name" if named is None else f"puts in {named}")
                )
                continue
            found[info.key] = (summary, info)
    if index.weight_map is not None:
        for key, name in index.weight_map.items():
            if key not in found:
                problems.append(f"`{key}` is not in {name}, where the index puts it")
    if problems:
        shown = "; ".join(problems[:8])
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise FormatError(f"{where}: the index and its shards disagree: {shown}{more}")
    return found


def _registries(
    index: _Index, found: Located
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int, str | None]:
    keys = list(found)
    if index.layout is None:
        pairs = [(k, k) for k in reversed(keys)]
        return pairs, [], len(pairs), None
    variables, gradients, next_id, pin, _ = check_layout(index.where, index.layout, keys)
    return variables, gradients, next_id, pin


def inspect_sharded(path: str | os.PathLike[str]) -> FileSummary:
    """A summary of a sharded checkpoint (an index, or a folder) from the index and the
    shards' headers; a tensor is read from its shard on request.

    Cost: O(index + headers of the shards); no tensor data is read."""
    require_path(path, "inspect_sharded")
    index = _resolve(path)
    found = _locate(index)
    variables, gradients, next_id, pin = _registries(index, found)
    if pin is not None:
        for _, key in (*variables, *gradients):
            info = found[key][1]
            if info.dtype != pin:
                raise FormatError(
                    f"{index.where}: tensor `{key}` has dtype {info.dtype} but the index says"
                    f" the context holds {pin} only"
                )
    entries = layout_entries(
        variables, gradients, lambda key: (found[key][1].shape, found[key][1].dtype)
    )

    def read(info: TensorInfo, n: int | None) -> np.ndarray[Any, Any]:
        summary, inner = found[info.key]
        return summary.read(inner, n)

    def blocks(info: TensorInfo) -> contextlib.AbstractContextManager[Block]:
        summary, inner = found[info.key]
        return summary.blocks(inner)

    return FileSummary(
        path=index.where,
        format=FORMAT.name,
        entries=tuple(entries),
        next_id=next_id if index.layout is not None else None,
        dtype=pin,
        layout="torchlean" if index.layout is not None else None,
        _read=read,
        _blocks=blocks,
    )


def load_sharded(path: str | os.PathLike[str], *, backend: str = "numpy") -> RuntimeContext[Any]:
    """Read a sharded checkpoint (an index, or a folder) as a context in ``backend``'s
    arrays. The index and every shard's header are checked first (:func:`inspect_sharded`'s
    errors), then each shard is read once. Cost: O(total bytes)."""
    require_path(path, "load_sharded")
    check_backend(backend)
    index = _resolve(path)
    found = _locate(index)
    variables, gradients, next_id, pin = _registries(index, found)
    arrays: dict[str, Any] = {}
    for shard in index.shards:
        part = load_safetensors(shard, backend=backend)
        for key, at in part.latest_variables():
            arrays[key] = at.t
    v = [(name, arrays[key]) for name, key in variables]
    g = [(name, arrays[key]) for name, key in gradients]
    ctx = build_context(v, g, next_id=next_id, pin=pin, backend=backend, path=index.where)
    layout = None if index.layout is None else json.loads(index.layout)
    return apply_roles(index.where, ctx, layout)


#: Sharded safetensors: an index and its shards (or a folder of them); the whole
#: context; ``inspect`` reads the headers only.
FORMAT: Final = Format(
    name="sharded",
    suffixes=(INDEX_SUFFIX,),
    save=_save_format,
    load=load_sharded,
    inspect=inspect_sharded,
    whole_context=True,
    header_only_inspect=True,
    directory=True,
)

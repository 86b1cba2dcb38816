"""The table of file formats: one :class:`Format` record per format module.

Each format module (:mod:`.safetensors`, :mod:`.torchlean_json`, :mod:`.torch`,
:mod:`.npz`) ends with one ``FORMAT = Format(...)`` record; :mod:`torchlean.io`
registers them in this table, in that order, and :mod:`torchlean.io._api` dispatches
``save``/``load``/``inspect`` through the table alone. Adding a format is one new module
and one :func:`register_format` call.

Reading map:
- :class:`Format` -- name, suffixes, ``save``/``load``/``inspect`` and capability flags.
- :func:`register_format` -- add a format to the table (public as
  ``torchlean.io.register_format``).
- :func:`registered` -- the table, in registration order; :func:`by_suffix`.
- :func:`for_path` -- the format a path names: a folder's (``directory`` formats), else
  the longest registered suffix its name ends with (``.safetensors.index.json`` before
  ``.json``); :func:`check_input` -- refuse what the format cannot read.
- :func:`summarize_loaded` -- the :class:`~torchlean.io.FileSummary` of a loaded
  context, for formats that have no header to read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchlean._validate import require_bool, require_str

if TYPE_CHECKING:
    from torchlean.io._summary import FileSummary
    from torchlean.runtime.context import RuntimeContext

__all__ = [
    "Format",
    "by_suffix",
    "check_input",
    "for_path",
    "register_format",
    "registered",
    "summarize_loaded",
]

Path = str | os.PathLike[str]


@dataclass(frozen=True)
class Format:
    """One file format: what :func:`torchlean.io.save`, :func:`~torchlean.io.load` and
    :func:`~torchlean.io.inspect` call for it.

    - ``name``: what ``format=`` says (``"safetensors"``); ``suffixes``: the lower-case
      suffixes that name it (``(".pt", ".pth")``), the first the usual one.
    - ``save(ctx, path)`` writes a context (atomically: use
      :func:`torchlean.io._atomic.atomic_path`); ``load(path, *, backend)`` reads one,
      in the array library ``backend`` names (``build_context`` of
      :mod:`torchlean.io._common` does the conversion).
    - ``inspect(path)`` returns a :class:`~torchlean.io.FileSummary`; ``None`` (the
      default) summarizes what ``load`` returns.
    - ``whole_context``: the format keeps the whole context (both registries, shadowed
      entries, ``next_id``, the pinned dtype), not only the latest variables.
    - ``header_only_inspect``: ``inspect`` reads no tensor data, so ``load(expect=...)``
      checks the expectation against it before reading any tensor.
    - ``directory``: ``load`` and ``inspect`` also read a folder (a folder path means
      this format when no other format reads folders), and ``save`` may write into one.
    - ``load_options``: the keyword options of :func:`torchlean.io.load` that ``load``
      also takes (``("dtype", "lean")`` for TorchLean JSON); ``io.load`` refuses them
      for other formats.
    - ``metadata``: ``save`` takes ``metadata=`` (a mapping of str to str) and
      ``inspect`` reports the file's in :attr:`FileSummary.metadata`.
    - ``nested``: ``load`` and ``inspect`` take ``key=`` (the nested state dict to read,
      dotted for deeper levels) and ``flatten=`` (nested dicts as dotted names).
    - ``recognise(path)``: for a ``directory`` format, True when a folder is one of its
      own (several folder formats then coexist); ``None``: any folder no other claims.
    - ``distributed``: ``save`` is called on every process of a process group
      (``io.save(ctx, DIR, distributed=True)`` picks this format) and ``load`` takes
      ``like=`` (a template context whose layout the loaded tensors take).
    - ``native_backend``: the array library whose arrays ``load`` builds without a copy
      (``"torch"`` for a folder of torch shards); ``torchlean convert`` reads in it.
      ``None``: numpy.

    The loader need not strip prefixes or check expectations: ``load`` does both for
    every format.
    """

    name: str
    suffixes: tuple[str, ...]
    save: Callable[..., None]
    load: Callable[..., RuntimeContext[Any]]
    inspect: Callable[..., FileSummary] | None = None
    whole_context: bool = False
    header_only_inspect: bool = False
    directory: bool = False
    load_options: tuple[str, ...] = ()
    metadata: bool = False
    nested: bool = False
    recognise: Callable[[Path], bool] | None = None
    distributed: bool = False
    native_backend: str | None = None

    def __post_init__(self) -> None:
        require_str(self.name, "Format", "name")
        if not self.name:
            raise ValueError("Format: name must not be empty")
        if not isinstance(self.suffixes, tuple) or not self.suffixes:
            raise TypeError(
                f"Format: suffixes must be a non-empty tuple of str, got {self.suffixes!r}"
            )
        for suffix in self.suffixes:
            if (
                not isinstance(suffix, str)
                or not suffix.startswith(".")
                or suffix != suffix.lower()
            ):
                raise ValueError(
                    f"Format: each suffix must be a lower-case str starting with '.', got"
                    f" {suffix!r}"
                )
        for field in ("save", "load"):
            if not callable(getattr(self, field)):
                raise TypeError(f"Format: {field} must be callable, got {getattr(self, field)!r}")
        if self.inspect is not None and not callable(self.inspect):
            raise TypeError(f"Format: inspect must be callable or None, got {self.inspect!r}")
        require_bool(self.whole_context, "Format", "whole_context")
        require_bool(self.header_only_inspect, "Format", "header_only_inspect")
        require_bool(self.directory, "Format", "directory")
        if not isinstance(self.load_options, tuple) or not all(
            isinstance(o, str) for o in self.load_options
        ):
            raise TypeError(
                f"Format: load_options must be a tuple of str, got {self.load_options!r}"
            )
        require_bool(self.metadata, "Format", "metadata")
        require_bool(self.nested, "Format", "nested")
        require_bool(self.distributed, "Format", "distributed")
        if self.native_backend is not None:
            require_str(self.native_backend, "Format", "native_backend")
        if self.recognise is not None and not callable(self.recognise):
            raise TypeError(f"Format: recognise must be callable or None, got {self.recognise!r}")


_TABLE: dict[str, Format] = {}


def register_format(fmt: Format) -> None:
    """Add ``fmt`` to the formats :func:`torchlean.io.save`, :func:`~torchlean.io.load`
    and :func:`~torchlean.io.inspect` know, by its name and suffixes.

    A name or suffix that another format has already is refused (``ValueError``);
    registering the very same record again does nothing. Cost: O(formats).
    """
    if not isinstance(fmt, Format):
        raise TypeError(f"register_format expects a Format, got {type(fmt).__name__}")
    old = _TABLE.get(fmt.name)
    if old is fmt:
        return
    if old is not None:
        raise ValueError(f"register_format: a format named {fmt.name!r} is registered already")
    for other in _TABLE.values():
        taken = set(other.suffixes) & set(fmt.suffixes)
        if taken:
            raise ValueError(
                f"register_format: suffix {sorted(taken)[0]} already means format {other.name!r}"
            )
    _TABLE[fmt.name] = fmt


def registered() -> tuple[Format, ...]:
    """Every registered format, in registration order."""
    return tuple(_TABLE.values())


def by_suffix() -> dict[str, Format]:
    """Each known suffix and its format, in registration order."""
    return {s: fmt for fmt in _TABLE.values() for s in fmt.suffixes}


def for_path(path: Path) -> Format | None:
    """The format ``path`` names by itself, or ``None``: for an existing folder the
    first ``directory`` format whose ``recognise`` claims it, else the one such format
    without ``recognise``; else the format of the longest registered
    suffix the file name ends with (case-insensitive), so a two-part suffix such as
    ``.safetensors.index.json`` wins over ``.json``. Cost: O(suffixes)."""
    if os.path.isdir(path):
        folders = [fmt for fmt in _TABLE.values() if fmt.directory]
        for fmt in folders:
            if fmt.recognise is not None and fmt.recognise(path):
                return fmt
        folders = [fmt for fmt in folders if fmt.recognise is None]
        if len(folders) == 1:
            return folders[0]
    name = os.path.basename(os.fspath(path)).lower()
    best: Format | None = None
    length = 0
    for suffix, fmt in by_suffix().items():
        if len(suffix) > length and len(name) > len(suffix) and name.endswith(suffix):
            best, length = fmt, len(suffix)
    return best


def check_input(fmt: Format, path: Path) -> None:
    """Refuse a path ``fmt`` cannot read before any reader opens it: a missing path, and
    anything but a regular file (a folder too, unless ``fmt.directory``)."""
    from torchlean.io._common import check_regular_file

    if fmt.directory and os.path.isdir(path):
        return
    check_regular_file(path)


def summarize_loaded(path: Path, fmt: Format, ctx: RuntimeContext[Any]) -> FileSummary:
    """The summary of a file that ``fmt.load`` read whole into ``ctx`` (numpy arrays):
    every entry, with the tensors kept in memory. Cost: O(entries)."""
    from torchlean.io._common import to_numpy
    from torchlean.io._summary import FileSummary, TensorInfo

    entries: list[TensorInfo] = []
    arrays: dict[tuple[str, int], Any] = {}
    for registry, pairs in (("variable", ctx.var_registry), ("gradient", ctx.gradients)):
        seen: set[str] = set()
        for i, (name, at) in enumerate(pairs):
            a = to_numpy(at)
            arrays[(registry, i)] = a
            entries.append(
                TensorInfo(
                    name=name,
                    registry=registry,  # type: ignore[arg-type]
                    position=i,
                    shadowed=name in seen,
                    shape=at.dims,
                    dtype=at.dtype,
                    nbytes=math.prod(at.dims) * a.dtype.itemsize,
                    key=f"{registry}/{i}",
                )
            )
            seen.add(name)

    def read(info: TensorInfo, n: int | None) -> Any:
        a = arrays[(info.registry, info.position)]
        return a if n is None else a.reshape(-1)[:n]

    return FileSummary(
        path=os.fspath(path),
        format=fmt.name,
        entries=tuple(entries),
        next_id=ctx.next_id if fmt.whole_context else None,
        dtype=ctx.dtype,
        layout="torchlean" if fmt.whole_context else None,
        _read=read,
    )

"""Saving and loading contexts, and checking weights against what a model expects.

``save(ctx, path)`` and ``load(path)`` pick the format from the suffix (or ``format=``):

=================  ============  ======================================================
suffix             format        what round-trips
=================  ============  ======================================================
``.safetensors``   safetensors   the whole context, exactly (the default checkpoint)
``.npz``           npz           the whole context, exactly
``.json``          json          TorchLean's weight format: the variables (most recent
                                 entry of each name), values exactly
``.pt``, ``.pth``  torch         a state_dict: the variables (most recent entry of each)
=================  ============  ======================================================

A ``*.safetensors.index.json`` (or a folder of safetensors shards) is format
``sharded``: the whole context, exactly, as shards and an index in
``save_pretrained``'s layout (:mod:`.sharded`); :func:`save_sharded` picks the shard size.
A checkpoint folder (``save(ctx, DIR, distributed=True)`` on every rank, or a ``.dcp``
path) is format ``dcp``: each process's shards through ``torch.distributed.checkpoint``
plus a layout of the whole context (:mod:`.distributed`, docs/distributed.md), and
jax checkpoint folders through orbax-checkpoint (:mod:`.orbax`).

Every format is one :class:`Format` record in one table: its module's ``FORMAT``,
registered below; ``save``/``load``/``inspect`` dispatch through the table only.
Another format is one new module and one :func:`register_format` call (docs/io.md).

Reading map:
- :func:`save`, :func:`load`, :func:`inspect` -- the entry points.
- :class:`Format`, :func:`register_format` -- the table of formats (:mod:`._format`).
- :func:`check_expected`, :class:`ExpectReport` -- weights vs. what a model expects.
- :class:`FileSummary`, :class:`TensorInfo` -- what :func:`inspect` returns.
- :func:`save_sharded` -- sharded safetensors with an index, at a chosen shard size.
- One module per format: :mod:`.safetensors`, :mod:`.torchlean_json`, :mod:`.torch`,
  :mod:`.npz`, :mod:`.sharded`; the key layout safetensors and npz share in
  :mod:`._layout`; the zip guard npz and torch share in :mod:`._zip`; atomic writes in
  :mod:`._atomic`; the one name/shape/dtype comparison in :mod:`.expect`.
"""

from __future__ import annotations

from torchlean.io import distributed as _distributed
from torchlean.io import npz as _npz
from torchlean.io import orbax as _orbax
from torchlean.io import safetensors as _safetensors
from torchlean.io import sharded as _sharded
from torchlean.io import torch as _torch
from torchlean.io import torchlean_json as _torchlean_json
from torchlean.io._api import FORMATS as FORMATS
from torchlean.io._api import format_of as format_of
from torchlean.io._api import inspect as inspect
from torchlean.io._api import load as load
from torchlean.io._api import save as save
from torchlean.io._format import Format as Format
from torchlean.io._format import register_format as register_format
from torchlean.io._summary import FileSummary as FileSummary
from torchlean.io._summary import TensorInfo as TensorInfo
from torchlean.io.expect import ExpectReport as ExpectReport
from torchlean.io.expect import Mismatch as Mismatch
from torchlean.io.expect import check_expected as check_expected
from torchlean.io.expect import compare as compare
from torchlean.io.sharded import save_sharded as save_sharded

# The built-in formats, in this order (the order error messages list them in).
register_format(_safetensors.FORMAT)
register_format(_torchlean_json.FORMAT)
register_format(_torch.FORMAT)
register_format(_npz.FORMAT)
register_format(_sharded.FORMAT)
register_format(_distributed.FORMAT)
register_format(_orbax.FORMAT)

__all__ = [
    "FORMATS",
    "ExpectReport",
    "FileSummary",
    "Format",
    "Mismatch",
    "TensorInfo",
    "check_expected",
    "compare",
    "format_of",
    "inspect",
    "load",
    "register_format",
    "save",
    "save_sharded",
]

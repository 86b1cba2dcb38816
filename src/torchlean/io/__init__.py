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

Reading map:
- :func:`save`, :func:`load`, :func:`inspect` -- the entry points.
- :func:`check_expected`, :class:`ExpectReport` -- weights vs. what a model expects.
- :class:`FileSummary`, :class:`TensorInfo` -- what :func:`inspect` returns.
- One module per format: :mod:`.safetensors`, :mod:`.torchlean_json`, :mod:`.torch`,
  :mod:`.npz`; atomic writes in :mod:`._atomic`.
"""

from __future__ import annotations

from torchlean.io._api import FORMATS as FORMATS
from torchlean.io._api import format_of as format_of
from torchlean.io._api import inspect as inspect
from torchlean.io._api import load as load
from torchlean.io._api import save as save
from torchlean.io._summary import FileSummary as FileSummary
from torchlean.io._summary import TensorInfo as TensorInfo
from torchlean.io.expect import ExpectReport as ExpectReport
from torchlean.io.expect import Mismatch as Mismatch
from torchlean.io.expect import check_expected as check_expected
from torchlean.io.expect import compare as compare

__all__ = [
    "FORMATS",
    "ExpectReport",
    "FileSummary",
    "Mismatch",
    "TensorInfo",
    "check_expected",
    "compare",
    "format_of",
    "inspect",
    "load",
    "save",
]

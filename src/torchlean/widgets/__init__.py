"""Views of a runtime context (mirrors TorchLean's ``NN.Widgets.Runtime.Context``).

Reading map (one job per module):
- :func:`rich_renderable`, :func:`to_text` -- the terminal view (:mod:`._rich`).
- :func:`to_html`, :func:`to_html_page` -- the notebook view (:mod:`._html`).
- :class:`Summary`, :class:`Row`, :class:`Stats`, :class:`Preview` -- the data every
  view draws (:mod:`._model`); :class:`Totals`, :class:`Group` -- the entries counted in
  all, per dtype and per module prefix (``Summary.totals`` / ``Summary.groups``).
- :func:`summarize`, :func:`summarize_sources` -- building that data from a context or
  from a file's entries (:mod:`._build`; the problems come from
  :mod:`torchlean.runtime.check`, the one home of those rules).
- :class:`TensorSource` -- how a summary reads a tensor: first elements and a bounded
  sample (:mod:`._sources`).
- how numbers, shapes and sizes are written (:mod:`._format`).
"""

from torchlean.widgets._build import summarize as summarize
from torchlean.widgets._build import summarize_sources as summarize_sources
from torchlean.widgets._html import to_html as to_html
from torchlean.widgets._html import to_html_page as to_html_page
from torchlean.widgets._model import Group as Group
from torchlean.widgets._model import Preview as Preview
from torchlean.widgets._model import Row as Row
from torchlean.widgets._model import Stats as Stats
from torchlean.widgets._model import Summary as Summary
from torchlean.widgets._model import Totals as Totals
from torchlean.widgets._rich import rich_renderable as rich_renderable
from torchlean.widgets._rich import to_text as to_text
from torchlean.widgets._sources import TensorSource as TensorSource

__all__ = [
    "Group",
    "Preview",
    "Row",
    "Stats",
    "Summary",
    "TensorSource",
    "Totals",
    "rich_renderable",
    "summarize",
    "summarize_sources",
    "to_html",
    "to_html_page",
    "to_text",
]

"""Views of a runtime context (mirrors TorchLean's ``NN.Widgets.Runtime.Context``).

Reading map:
- :func:`rich_renderable`, :func:`to_text` -- the terminal view (:mod:`._rich`).
- :func:`to_html`, :func:`to_html_page` -- the notebook view (:mod:`._html`).
- :func:`summarize`, :class:`Summary`, :class:`Row`, :class:`Stats` -- the data every
  view draws (:mod:`._summary`).
"""

from torchlean.widgets._html import to_html as to_html
from torchlean.widgets._html import to_html_page as to_html_page
from torchlean.widgets._rich import rich_renderable as rich_renderable
from torchlean.widgets._rich import to_text as to_text
from torchlean.widgets._summary import Row as Row
from torchlean.widgets._summary import Stats as Stats
from torchlean.widgets._summary import Summary as Summary
from torchlean.widgets._summary import TensorSource as TensorSource
from torchlean.widgets._summary import summarize as summarize
from torchlean.widgets._summary import summarize_sources as summarize_sources

__all__ = [
    "Row",
    "Stats",
    "Summary",
    "TensorSource",
    "rich_renderable",
    "summarize",
    "summarize_sources",
    "to_html",
    "to_html_page",
    "to_text",
]

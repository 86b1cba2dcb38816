"""The HTML view in a real browser: headless Chromium renders a page of a context.

The test reads back the DOM Chromium built (after running the page's scripts) and a
screenshot. A control script of the test's own proves that scripts do run in this
browser, so the absence of the marker the escaped names would set means they ran nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from torchlean.widgets import to_html_page

# The helpers beside this file (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from views_helpers import EVIL, evil_context, sample_context

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]

CONTROL = "<script>document.documentElement.setAttribute('data-control','ran')</script>"


def _chromium() -> str:
    found = os.environ.get("TORCHLEAN_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    assert found, "the browser test needs Chromium (bash scripts/setup.sh test installs it)"
    return found


def _run(tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    done = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _page(tmp: Path, name: str, html: str) -> Path:
    # The control script goes at the end of the body, after the view.
    path = tmp / name
    path.write_text(html.replace("</body>", CONTROL + "\n</body>"), encoding="utf-8")
    return path


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root: dict[str, str | None] = {}
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.details: list[dict[str, str | None]] = []
        self.count_text: list[str] = []
        self.pills: list[tuple[str, str]] = []
        self.open_preview_cells: list[str] = []
        self.scripts = 0
        self._capture: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.root = a
        if tag == "script":
            self.scripts += 1
        if tag == "details":
            self.details.append(a)
        cls = a.get("class") or ""
        if cls == "tl-count":
            self._capture = "count"
        elif cls.startswith("tl-pill"):
            self._capture = cls
        elif tag == "td" and self._in_open_row():
            self._capture = "cell"
        if tag not in ("meta", "br", "img", "link", "input"):
            self.stack.append((tag, a))

    def _in_open_row(self) -> bool:
        return any(
            t == "details" and "open" in a and "data-section" not in a for t, a in self.stack
        )

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break
        self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture == "count":
            self.count_text.append(data)
        elif self._capture == "cell":
            self.open_preview_cells.append(data)
        elif self._capture:
            self.pills.append((self._capture, data))


def _dom(tmp: Path, page: Path) -> _Dom:
    dump = _run(tmp, "--dump-dom", "--virtual-time-budget=2000", page.as_uri())
    d = _Dom()
    d.feed(dump)
    return d


def test_chromium_renders_sections_counts_pills_and_an_opened_preview(tmp_path: Path) -> None:
    html = to_html_page(sample_context())
    # Open the entry of `fc1.bias` (its preview grid holds 0.5, -1.25, 2).
    marker = '<li class="tl-row" data-name="fc1.bias"><details>'
    assert html.count(marker) == 1
    html = html.replace(marker, marker.replace("<details>", "<details open>"))
    d = _dom(tmp_path, _page(tmp_path, "view.html", html))
    assert d.root.get("data-control") == "ran"  # scripts do run here
    sections = [a.get("data-section") for a in d.details if a.get("data-section")]
    assert sections == ["variables", "gradients"]
    lean = [text for cls, text in d.pills if cls == "tl-pill tl-lean"]
    # TorchLean's header pills and section pills, in its words
    assert lean[:5] == ["RuntimeContext", "vars=6", "grads=3", "next_id=6", "var_registry"]
    counts = [text for cls, text in d.pills if cls == "tl-pill tl-count"]
    assert counts == ["count=6", "count=3"]
    shapes = [text for cls, text in d.pills if cls == "tl-pill tl-shape"]
    sizes = [text for cls, text in d.pills if cls == "tl-pill tl-size"]
    assert shapes[:3] == ["shape=dim 5 (dim 100 (scalar))", "shape=dim 4 (scalar)", "shape=scalar"]
    assert sizes[:3] == ["size=500", "size=4", "size=1"] and len(sizes) == len(shapes) == 9
    dims = [text for cls, text in d.pills if cls == "tl-pill tl-dims"]
    assert dims[:3] == ["(5, 100)", "(4,)", "()"]
    # the opened entry: anyTensorHtml's pills, then the vector's cells
    for pill in ("shape=[3]", "rank=1", "size=3", "vector len=3", "showing=3", "clipped=false"):
        assert pill in lean
    assert d.open_preview_cells == ["0.5", "-1.25", "2"]


def test_escaped_names_run_no_script_in_chromium(tmp_path: Path) -> None:
    d = _dom(tmp_path, _page(tmp_path, "evil.html", to_html_page(evil_context())))
    assert d.root.get("data-control") == "ran"
    assert "data-pwned" not in d.root
    assert d.scripts == 1  # the control script only
    names = [text for cls, text in d.pills if cls == "tl-pill tl-dims"]
    assert names == ["(2,)", "(2, 3)", "(2, 3)"]
    counts = [text for cls, text in d.pills if cls == "tl-pill tl-count"]
    assert counts == ["count=2", "count=1"]
    assert EVIL.startswith("<script>")


def _ink_rows(png: Path) -> int:
    """How many pixel rows of the screenshot hold something other than white."""
    import matplotlib.image

    image = np.asarray(matplotlib.image.imread(png))[..., :3]
    return int(np.count_nonzero((image < 0.97).any(axis=(1, 2))))


def test_screenshot_shows_more_when_a_preview_is_opened(tmp_path: Path) -> None:
    closed = to_html_page(sample_context())
    opened = closed.replace("<details>", "<details open>")
    shots = []
    for name, html in (("closed", closed), ("opened", opened)):
        page = _page(tmp_path, f"{name}.html", html)
        png = tmp_path / f"{name}.png"
        _run(tmp_path, f"--screenshot={png}", "--window-size=1000,2400", page.as_uri())
        assert png.stat().st_size > 5000
        shots.append(_ink_rows(png))
    assert shots[0] > 200  # the two sections and their nine rows are drawn
    assert shots[1] > shots[0] + 400  # nine opened previews add a lot

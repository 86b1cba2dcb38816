"""Renderers of a context (text, rich, HTML); filled in by the widgets modules."""

from __future__ import annotations

from typing import Any


def to_html(ctx: Any) -> str:
    raise NotImplementedError


def rich_renderable(ctx: Any) -> Any:
    raise NotImplementedError

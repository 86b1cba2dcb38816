"""Print docs/api.md: the table of torchlean's public API, from the code itself.

Run ``.venv/bin/python scripts/api_table.py > docs/api.md`` after changing a public name
or its docstring; tests/test_api_doc.py fails while docs/api.md and the code disagree.
"""

from __future__ import annotations

import importlib
import inspect
import re

MODULES = [
    "torchlean",
    "torchlean.spec",
    "torchlean.runtime",
    "torchlean.runtime.context",
    "torchlean.runtime.functions",
    "torchlean.runtime.backends",
    "torchlean.runtime.dtypes",
    "torchlean.runtime.pytree",
    "torchlean.io",
    "torchlean.io.distributed",
    "torchlean.io.orbax",
    "torchlean.io.lean_json",
    "torchlean.widgets",
    "torchlean.autograd",
    "torchlean.optim",
    "torchlean.train",
    "torchlean.errors",
    "torchlean.cli",
    "torchlean.demo",
]


def summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    text = doc.split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def signature(obj: object, *, first: str | None = None) -> str:
    if not callable(obj) or inspect.isclass(obj):
        return ""
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    text = text.replace("'", "")
    if first is not None:
        text = text.replace("(self, ", f"({first}, ").replace("(self)", f"({first})")
    return text


def main() -> None:
    print("# torchlean API\n")
    print("Generated from the code by `scripts/api_table.py`; `tests/test_api_doc.py` keeps")
    print("it in step. The Lean names each function mirrors are in the README.\n")
    for name in MODULES:
        module = importlib.import_module(name)
        print(f"## `{name}`\n")
        doc = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        print(re.sub(r"``([^`]+)``", r"`\1`", doc) + "\n")
        print("| name | what it is |\n|---|---|")
        first = "ctx" if name == "torchlean.runtime.functions" else None
        for public in module.__all__:
            if public.startswith("__"):
                continue
            obj = getattr(module, public)
            print(f"| `{public}{signature(obj, first=first)}` | {summary(obj)} |")
        print()
    from torchlean import RuntimeContext

    print("## `RuntimeContext` methods and properties\n")
    print("| name | what it is |\n|---|---|")
    for public in sorted(vars(RuntimeContext)):
        if public.startswith("_") and public not in ("__getitem__", "__contains__"):
            continue
        obj = getattr(RuntimeContext, public)
        print(f"| `{public}{signature(obj, first='ctx')}` | {summary(obj)} |")


if __name__ == "__main__":
    main()

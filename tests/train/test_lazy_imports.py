"""The runtime layers import neither torch nor jax until a tensor of theirs is used."""

from __future__ import annotations

import subprocess
import sys


def test_layers_import_no_array_library() -> None:
    code = (
        "import sys, torchlean.autograd, torchlean.optim, torchlean.train, torchlean.demo\n"
        "names = ('torch', 'jax', 'IPython', 'matplotlib')\n"
        "loaded = sorted(m for m in names if m in sys.modules)\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

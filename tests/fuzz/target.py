"""One atheris (libFuzzer) fuzz target per format: ``python tests/fuzz/target.py FORMAT
[libFuzzer arguments]`` (``tests/fuzz/run.py`` runs it).

Each input is written to a file with the format's suffix, then read with
``torchlean.io.load`` and with ``torchlean.io.inspect`` (whose summary's ``head`` reads
the first elements of every entry). A :class:`~torchlean.errors.TorchLeanError` is the
expected way to refuse an input; anything else escapes and libFuzzer reports it as a
crash (and saves the input). torchlean's modules are instrumented for coverage
feedback; numpy, safetensors, orjson and torch are not (they are C, Rust and C++).

Reading map:
- :func:`one_input` -- what happens to one input.
- :func:`main` -- atheris set-up (libFuzzer's ``-print_final_stats=1`` gives the
  number of inputs tried).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any

import atheris

with atheris.instrument_imports(include=["torchlean"]):
    import torchlean.io as tio
    from torchlean.errors import TorchLeanError
    from torchlean.io import _common, _json_fast, npz, safetensors, torchlean_json  # noqa: F401

SUFFIX = {"safetensors": ".safetensors", "json": ".json", "npz": ".npz", "pt": ".pt"}
_path = ""


def one_input(data: bytes) -> None:
    with open(_path, "wb") as f:
        f.write(data)
    with contextlib.suppress(TorchLeanError):
        tio.load(_path)
    try:
        summary: Any = tio.inspect(_path)
        for entry in summary.entries:
            summary._read(entry, 4)
    except TorchLeanError:
        pass


def main() -> None:
    global _path
    fmt = sys.argv[1]
    if fmt == "pt":
        import torch  # noqa: F401  (imported once, outside the timed inputs)
    # libFuzzer ends the process with _exit (no atexit): the runner gives a scratch
    # folder it removes itself; run alone, a temporary folder is left behind
    where = os.environ.get("TORCHLEAN_FUZZ_SCRATCH") or tempfile.mkdtemp(prefix="torchlean-fuzz-")
    os.makedirs(where, exist_ok=True)
    _path = os.path.join(where, "input" + SUFFIX[fmt])

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

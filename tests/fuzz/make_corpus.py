"""Write the seed corpus of the fuzzers: tests/fuzz/corpus/<format>/.

Run from the repository root: ``python -m tests.fuzz.make_corpus``. The seeds are the
three TorchLean fixtures, small valid files of every format (contexts with shadowed
entries, gradients, a pinned dtype, bf16; files from safetensors, numpy and torch
themselves) and the small hostile files of tests/io/hostile/ (the big ones are left
out to keep the corpus at a few hundred KB). torch.save writes a random
serialization id, so the .pt seeds differ from run to run; the rest are the same.

Reading map:
- :func:`seeds` -- ``{format: {file name: bytes}}``.
- :data:`CORPUS`, :data:`FORMATS`, :data:`SUFFIX`.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).parent / "corpus"
HOSTILE = Path(__file__).parents[1] / "io" / "hostile"
FORMATS = ("safetensors", "json", "npz", "pt")
SUFFIX = {"safetensors": ".safetensors", "json": ".json", "npz": ".npz", "pt": ".pt"}
_MAX_SEED = 8192  # bytes: bigger hostile files are not seeds


def fixtures_dir() -> Path:
    """The TorchLean fixtures copied into the repository: ``tests/fixtures/torchlean``."""
    return Path(__file__).resolve().parents[1] / "fixtures" / "torchlean"


def _contexts() -> dict[str, object]:
    import ml_dtypes

    from torchlean import empty_context

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    full = (
        empty_context()
        .register_variable("fc.weight", a)
        .register_variable("fc.bias", np.array([0.5, -1.0], np.float32))
        .register_variable("fc.weight", a * 2)
        .register_gradient("fc.bias", np.ones(2, np.float32))
    )
    mixed = (
        empty_context()
        .register_variable("i", np.array([[1, 2], [3, 4]], np.int64))
        .register_variable("b", np.array([True, False]))
        .register_variable("h", np.array([1.5], np.float16))
        .register_variable("s", np.float64(2.5))
        .register_variable("e", np.zeros((0, 3), np.float32))
    )
    bf16 = empty_context().register_variable("w", np.ones(3, ml_dtypes.bfloat16))
    pinned = empty_context(dtype="float32").register_variable("w", np.ones(2, np.float32))
    return {"full": full, "mixed": mixed, "bf16": bf16, "pinned": pinned}


def seeds() -> dict[str, dict[str, bytes]]:
    import torch
    from safetensors.numpy import save as st_save

    import torchlean.io as tio

    out: dict[str, dict[str, bytes]] = {f: {} for f in FORMATS}
    for path in sorted(fixtures_dir().glob("*.json")):
        out["json"][f"fixture_{path.name}"] = path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        for name, ctx in _contexts().items():
            for fmt in FORMATS:
                if fmt == "json" and name == "bf16":
                    continue
                path = Path(tmp) / f"{name}{SUFFIX[fmt]}"
                tio.save(ctx, path)  # type: ignore[arg-type]
                out[fmt][f"saved_{name}{SUFFIX[fmt]}"] = path.read_bytes()
    out["safetensors"]["plain.safetensors"] = st_save(
        {"a": np.ones(2, np.float32), "b": np.zeros((2, 2), np.float16)}
    )
    for name, save in (("plain", np.savez), ("compressed", np.savez_compressed)):
        buf = io.BytesIO()
        save(buf, a=np.arange(4, dtype=np.float32), b=np.eye(2))
        out["npz"][f"{name}.npz"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2, 3)}, "epoch": 3}, buf)
    out["pt"]["wrapped.pt"] = buf.getvalue()
    for path in sorted(HOSTILE.iterdir()):
        fmt = {".safetensors": "safetensors", ".json": "json", ".npz": "npz", ".pt": "pt"}.get(
            path.suffix
        )
        if fmt and path.stat().st_size <= _MAX_SEED:
            out[fmt][f"hostile_{path.name}"] = path.read_bytes()
    return out


def main() -> int:
    made = seeds()
    for fmt, files in made.items():
        target = CORPUS / fmt
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name, data in files.items():
            (target / name).write_bytes(data)
    total = sum(len(d) for files in made.values() for d in files.values())
    count = sum(len(files) for files in made.values())
    print(f"wrote {count} seeds, {total / 1024:.0f} KiB, to {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

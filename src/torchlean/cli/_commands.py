"""The subcommands of ``torchlean``: show, convert, check, diff.

Each takes the parsed arguments and returns an exit code; errors a user can fix are
raised as :class:`~torchlean.errors.TorchLeanError` or :class:`OSError` and turned
into one line by :func:`torchlean.cli.main`.

The commands hold no format or rendering logic: files go through :mod:`torchlean.io`
(atomic writes included), views through :mod:`torchlean.widgets`, and every comparison
of names and shapes through :func:`torchlean.io.compare`.

Reading map:
- :func:`show` -- the terminal view, ``--html`` page or ``--json`` summary of a file.
- :func:`convert` -- read, write, read back and compare (a header-only format: its
  header, then the stored bytes streamed against the written arrays); progress bar for
  big files.
- :func:`check` -- names and shapes against another file or a JSON object.
- :func:`diff` -- added, removed, reshaped and changed entries with their largest
  absolute and relative changes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from torchlean._text import printable
from torchlean.cli import _files
from torchlean.errors import FormatError, TorchLeanError
from torchlean.io._atomic import atomic_write_bytes
from torchlean.io._common import open_regular
from torchlean.io._format import registered
from torchlean.io.expect import compare
from torchlean.runtime.dtypes import render_array
from torchlean.widgets._format import format_number

__all__ = ["check", "convert", "diff", "diff_metadata", "show", "write_output"]

#: Files at least this big get a progress bar from ``convert`` (on a terminal).
PROGRESS_BYTES = 64 << 20
#: ``diff`` compares tensors this many elements at a time (bounded memory).
DIFF_CHUNK = 1 << 20


# ---------------------------------------------------------------------- show


def show(args: argparse.Namespace) -> int:
    """``torchlean show PATH [--filter GLOB] [--depth N] [--width W] [--html OUT | --json]``."""
    key, flatten = getattr(args, "key", None), getattr(args, "flatten", False)
    summary = _files.summary(args.path, fmt=args.format, key=key, flatten=flatten)
    metadata = _files.metadata(args.path, fmt=args.format)
    if args.json:
        d = summary.to_dict(filter=args.filter, depth=args.depth)
        d["path"] = str(args.path)
        if metadata is not None:
            d["metadata"] = metadata
        print(json.dumps(d, indent=2, allow_nan=False))
        return 0
    if args.html:
        from torchlean.widgets import to_html_page

        page = to_html_page(summary, title=f"torchlean: {Path(args.path).name}", filter=args.filter)
        if write_output(args.html, page.encode("utf-8")):
            print(f"wrote {printable(args.html)}")
        return 0
    from rich.console import Console
    from rich.text import Text

    from torchlean.widgets import rich_renderable

    # piped output is 80 columns (rich's default); each row stays one line at any width
    console = Console(width=args.width, highlight=False, emoji=False, soft_wrap=False)
    console.print(rich_renderable(summary, filter=args.filter, depth=args.depth))
    if metadata:
        console.print(Text(f"\nMetadata ({len(metadata)})"))
        for k, v in metadata.items():
            console.print(Text(f"  {printable(k)}: {printable(_shorten(v))}"))
    return 0


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_output(target: str, data: bytes) -> bool:
    """Write ``data`` to the output path ``target``: ``-`` is stdout; a device, FIFO or
    anything under ``/dev`` or ``/proc`` (``/dev/stdout``) is written through as a
    stream, never replaced; a regular file (or a new one) is replaced atomically.
    Returns True when a file was written (and a "wrote" line makes sense)."""
    if target == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return False
    try:
        mode: int | None = os.stat(target).st_mode
    except OSError:
        mode = None
    special = os.path.abspath(target).startswith(("/dev/", "/proc/"))
    if special or (mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)):
        with open(target, "wb") as f:  # a stream: write through it
            f.write(data)
        return False
    atomic_write_bytes(Path(target), data)
    return True


# ---------------------------------------------------------------------- convert


def convert(args: argparse.Namespace) -> int:
    """``torchlean convert IN OUT``: write, read back, compare, then put OUT in place."""
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(2, "No such file or directory", str(src))
    if dst.exists() and not args.force:
        raise _files.UsageError(f"{dst} exists already; pass --force to replace it")
    if src.resolve() == dst.resolve():
        raise _files.UsageError(f"IN and OUT are the same file: {src}")
    from_format = _files.check_format(src, args.from_format)
    to_format = _files.output_format(dst, args.to_format, args.max_shard_size)
    key, flatten = getattr(args, "key", None), getattr(args, "flatten", False)
    carried = _files.metadata(src, fmt=from_format)
    out_record = next(f for f in registered() if f.name == to_format)
    takes_metadata = out_record.metadata
    size = src.stat().st_size
    show_bar = args.progress == "always" or (
        args.progress == "auto" and size >= PROGRESS_BYTES and sys.stderr.isatty()
    )
    with _Progress(show_bar, stages=4) as bar:
        bar.step(f"reading {src.name}")
        if from_format == "torch" and to_format == "json" and key is None and not flatten:
            # as TorchLean's state_dict adapter: wrappers, `module.`, non-tensors skipped
            from torchlean.io.torchlean_json import read_checkpoint

            ctx, left_out = read_checkpoint(src)
            for line in left_out:
                print(f"left out: {line}", file=sys.stderr)
        else:
            ctx = _files.load(src, fmt=from_format, key=key, flatten=flatten, native=True)
        bar.step(f"writing {dst.name}")
        # OUT is put in place only when what was written reads back as the same data;
        # the temporary file is private to this run (a fresh folder), and errors name OUT
        with _files.written(
            ctx,
            dst,
            fmt=to_format,
            max_shard_size=args.max_shard_size,
            metadata=carried if carried and takes_metadata else None,
        ) as tmp:
            bar.step(f"reading back {dst.name}")
            if out_record.header_only_inspect:  # the header, then the bytes streamed
                fs = _files.inspect(tmp, to_format)
                bar.step("comparing")
                notes = _compare_written(ctx, fs, dst, advance=bar.advance)
                written = (fs.metadata or {}) if takes_metadata else {}
            else:
                back = _files.load(tmp, fmt=to_format)
                bar.step("comparing")
                notes = _compare_roundtrip(ctx, back, dst, advance=bar.advance)
                written = _files.metadata(tmp, fmt=to_format) or {}
            kept = carried if carried and takes_metadata else {}
            if any(written.get(k) != v for k, v in kept.items()):
                raise ConversionError(
                    f"the conversion to {dst} lost the file's metadata, nothing written"
                )
    notes = _dropped(ctx, to_format) + notes
    if carried and not takes_metadata:
        notes.append(
            f"note: {dst} has no place for the metadata of {src} ({len(carried)}"
            f" entr{'ies' if len(carried) != 1 else 'y'}: "
            + ", ".join(f"`{printable(k)}`" for k in list(carried)[:5])
            + "); it was not carried over"
        )
    for note in notes:
        print(note)
    n = len(dict(ctx.latest_variables()))
    g = len(dict(ctx.latest_gradients()))
    grads = f" and {g} gradient{'s' if g != 1 else ''}" if g else ""
    print(f"wrote {printable(str(dst))}: {n} variable{'s' if n != 1 else ''}{grads}, checked")
    return 0


def _dropped(ctx: Any, to_format: str) -> list[str]:
    """Notes on what a format that keeps only the latest variables leaves out."""
    if next(f for f in registered() if f.name == to_format).whole_context:
        return []
    n = len(ctx.var_registry) - len(ctx.latest_variables())
    if not n:
        return []
    counts: dict[str, int] = {}
    for name, _ in ctx.var_registry:
        counts[name] = counts.get(name, 0) + 1
    names = ", ".join(f"`{printable(k)}`" for k, c in counts.items() if c > 1)
    return [
        f"note: format {to_format} keeps the latest variable of each name only: {n} shadowed"
        f" entr{'ies' if n != 1 else 'y'} ({_shorten(names)}) and next_id were not written"
    ]


def _compare_roundtrip(
    ctx: Any, back: Any, dst: Path, *, advance: Callable[[float], None] | None = None
) -> list[str]:
    """Every name and shape must survive and every value compare equal; a dtype may
    widen (a format without that dtype), which is reported as a note. ``advance`` is
    told the fraction of the data compared after each tensor."""
    total = sum(math.prod(at.dims) for _, at in ctx.latest_variables()) + sum(
        math.prod(at.dims) for _, at in ctx.latest_gradients()
    )
    notes: list[str] = []
    problems: list[str] = []
    for kind, a_reg, b_reg in (
        ("variable", ctx.latest_variables(), back.latest_variables()),
        ("gradient", ctx.latest_gradients(), back.latest_gradients()),
    ):
        a = dict(a_reg)
        b = dict(b_reg)
        reshaped = _shape_problems(kind, _compare_shapes(b, a), problems)
        for name, at in a.items():
            bt = b.get(name)
            if bt is None or _reshaped(kind, name, reshaped, problems):
                continue
            x = render_array(at.library.to_numpy(at.t))
            y = render_array(bt.library.to_numpy(bt.t))
            if advance is not None and total:
                advance(math.prod(at.dims) / total)
            if not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc" and y.dtype.kind in "fc"):
                problems.append(f"{kind} `{printable(name)}` came back with different values")
            elif bt.dtype != at.dtype:
                notes.append(
                    f"note: {kind} `{printable(name)}` is stored as {bt.dtype} (was {at.dtype})"
                )
    if problems:
        raise ConversionError(
            f"the conversion to {dst} does not hold the same data, nothing written: "
            + "; ".join(problems)
        )
    return notes


def _shape_problems(kind: str, report: Any, problems: list[str]) -> dict[str, Any]:
    """Add the names ``report`` found lost to ``problems``; the shape mismatches by name."""
    if report.missing:
        problems.append(f"{kind}s lost: " + ", ".join(f"`{printable(n)}`" for n in report.missing))
    return {m.name: m for m in report.mismatched}


def _reshaped(kind: str, name: str, reshaped: dict[str, Any], problems: list[str]) -> bool:
    """Whether ``name`` came back with another shape (then said in ``problems``)."""
    m = reshaped.get(name)
    if m is None:
        return False
    problems.append(f"{kind} `{printable(name)}` came back with shape {m.got}, not {m.expected}")
    return True


def _compare_written(
    ctx: Any, fs: Any, dst: Path, *, advance: Callable[[float], None] | None = None
) -> list[str]:
    """:func:`_compare_roundtrip` against the written file's header and stored bytes
    (a format whose ``inspect`` reads the header only): names and shapes from the
    header, and each tensor's bytes compared with the written array's as they are read
    (:meth:`~torchlean.io.FileSummary.matches`: one small buffer, no copy of the file
    in memory). A tensor stored in another dtype is read whole and compared by value,
    a note as in :func:`_compare_roundtrip`. Same messages."""
    total = sum(math.prod(at.dims) for _, at in ctx.latest_variables()) + sum(
        math.prod(at.dims) for _, at in ctx.latest_gradients()
    )
    notes: list[str] = []
    problems: list[str] = []
    for kind, a_reg, infos in (
        ("variable", ctx.latest_variables(), fs.variables),
        ("gradient", ctx.latest_gradients(), fs.gradients),
    ):
        a = dict(a_reg)
        b = {e.name: e for e in infos if not e.shadowed}
        report = compare(
            {n: e.shape for n, e in b.items()}, {n: at.dims for n, at in a.items()}, suggest=False
        )
        reshaped = _shape_problems(kind, report, problems)
        for name, at in a.items():
            info = b.get(name)
            if info is None or _reshaped(kind, name, reshaped, problems):
                continue
            x = at.library.to_numpy(at.t)
            if info.dtype == at.dtype:
                same = fs.matches(info, x)
            else:
                x, y = render_array(x), render_array(fs.read(info))
                nan = x.dtype.kind in "fc" and y.dtype.kind in "fc"
                same = bool(np.array_equal(x, y, equal_nan=nan))
                if same:
                    notes.append(
                        f"note: {kind} `{printable(name)}` is stored as {info.dtype}"
                        f" (was {at.dtype})"
                    )
            if advance is not None and total:
                advance(math.prod(at.dims) / total)
            if not same:
                problems.append(f"{kind} `{printable(name)}` came back with different values")
    if problems:
        raise ConversionError(
            f"the conversion to {dst} does not hold the same data, nothing written: "
            + "; ".join(problems)
        )
    return notes


class ConversionError(TorchLeanError, ValueError):
    """A converted file that does not read back as what was written."""


def _compare_shapes(have: Mapping[str, Any], want: Mapping[str, Any]) -> Any:
    """The :func:`torchlean.io.compare` report of two name -> tensor mappings' shapes."""
    return compare(
        {n: at.dims for n, at in have.items()},
        {n: at.dims for n, at in want.items()},
        suggest=False,
    )


class _Progress:
    """A rich progress bar over the stages of a conversion (reading, writing, reading
    back, comparing); the comparing stage advances tensor by tensor. Nothing at all
    when disabled."""

    def __init__(self, enabled: bool, *, stages: int) -> None:
        self._enabled = enabled
        self._stages = stages
        self._bar: Any = None
        self._task: Any = None
        self._done = -1.0

    def __enter__(self) -> _Progress:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description:<32}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("converting", total=100)
        return self

    def step(self, description: str) -> None:
        """Begin the next stage."""
        self._done = math.floor(self._done + 1)
        self._show(description)

    def advance(self, fraction: float) -> None:
        """Move ``fraction`` of a stage further."""
        self._done = min(self._done + fraction, math.floor(self._done) + 1)
        self._show(None)

    def _show(self, description: str | None) -> None:
        if self._bar is not None:
            done = 100 * self._done / self._stages
            if description is None:
                self._bar.update(self._task, completed=done)
            else:
                self._bar.update(self._task, completed=done, description=description)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            if exc[0] is None:
                self._bar.update(self._task, completed=100, description="done")
            self._bar.__exit__(*exc)


# ---------------------------------------------------------------------- check


def check(args: argparse.Namespace) -> int:
    """``torchlean check PATH --expect OTHER | --expect-json FILE | --lean``."""
    if args.lean:
        return _check_lean(args.path)
    key, flatten = getattr(args, "key", None), getattr(args, "flatten", False)
    got = _files.shapes(args.path, fmt=args.format, key=key, flatten=flatten)
    if args.expect is not None:
        want = _files.shapes(args.expect, fmt=args.expect_format)
        source = args.expect
    else:
        want = read_expect_json(Path(args.expect_json))
        source = args.expect_json
    report = compare(got, want, suggest=False)
    for n in report.missing:
        print(f"missing:    `{printable(n)}` (expected shape {tuple(want[n])})")
    for n in report.unexpected:
        print(f"unexpected: `{printable(n)}` with shape {tuple(got[n])}")
    for m in report.mismatched:
        print(f"mismatched: `{printable(m.name)}` has shape {m.got} but {m.expected} is expected")
    missing, unexpected, mismatched = report.missing, report.unexpected, report.mismatched
    bad = len(missing) + len(unexpected) + len(mismatched)
    if bad:
        print(
            f"{printable(args.path)}: {bad} problem{'s' if bad != 1 else ''} against"
            f" {printable(source)}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected,"
            f" {len(mismatched)} mismatched)"
        )
        return 1
    print(f"{printable(args.path)}: all {len(want)} entries agree with {printable(source)}")
    return 0


def _check_lean(path: str) -> int:
    """``check --lean``: what TorchLean's Lean importer sees (:mod:`torchlean.io.lean_json`)."""
    from torchlean.io._common import check_regular_file
    from torchlean.io.lean_json import lean_view

    check_regular_file(path)
    view = lean_view(path)
    for line in view.format():
        print(line)
    return 0 if view.ok else 1


def read_expect_json(path: Path) -> dict[str, tuple[int, ...]]:
    """Names to shapes from a JSON object: ``{"w": [3, 4]}`` (or ``{"w": {"shape":
    [3, 4]}}``, the per-tensor ``meta`` of TorchLean's state_dict export). A path
    that is not a regular file (``/dev/zero``, a FIFO) is refused before it is read, and
    a file that is not UTF-8 text is a FormatError."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(
            f"{path}: not a JSON text file (the byte at offset {e.start} is not UTF-8)"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise FormatError(
            f"{path}: expected a JSON object of names to shapes, got a {type(data).__name__}"
        )
    out: dict[str, tuple[int, ...]] = {}
    for name, value in data.items():
        shape = value.get("shape") if isinstance(value, dict) else value
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise FormatError(
                f"{path}: the shape of `{printable(name)}` must be a list of non-negative"
                " integers,"
                f" got {json.dumps(value)[:60]}"
            )
        out[name] = tuple(shape)
    return out


# ---------------------------------------------------------------------- diff


def diff(args: argparse.Namespace) -> int:
    """``torchlean diff A B``: what was added, removed, reshaped and changed."""
    key, flatten = getattr(args, "key", None), getattr(args, "flatten", False)
    a_ctx = _files.load(Path(args.a), fmt=args.format_a, key=key, flatten=flatten, strict=False)
    b_ctx = _files.load(Path(args.b), fmt=args.format_b, key=key, flatten=flatten, strict=False)
    result = diff_contexts(a_ctx, b_ctx)
    meta = diff_metadata(
        _files.metadata(args.a, fmt=args.format_a), _files.metadata(args.b, fmt=args.format_b)
    )
    if meta is not None:
        result["metadata"] = meta
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
        return 0
    for name, shape in result["added"]:
        print(f"added:     `{printable(name)}` {tuple(shape)}")
    for name, shape in result["removed"]:
        print(f"removed:   `{printable(name)}` {tuple(shape)}")
    for name, sa, sb in result["reshaped"]:
        print(f"reshaped:  `{printable(name)}` {tuple(sa)} -> {tuple(sb)}")
    for c in result["changed"]:
        retyped = f" ({c['dtype_a']} -> {c['dtype_b']})" if c["dtype_a"] != c["dtype_b"] else ""
        print(
            f"changed:   `{printable(c['name'])}` {tuple(c['shape'])}{retyped}:"
            f" {c['changed']:,} of {c['numel']:,} values, max abs {_num(c['max_abs'])},"
            f" max rel {_num(c['max_rel'])}"
        )
    if args.all:
        for name in result["unchanged"]:
            print(f"unchanged: `{printable(name)}`")
    for k, (va, vb) in (meta or {}).items():
        what = "added" if va is None else "removed" if vb is None else "changed"
        shown = " -> ".join(printable(_shorten(v, 60)) for v in (va, vb) if v is not None)
        print(f"metadata:  `{printable(k)}` {what}: {shown}")
    counts = {k: len(result[k]) for k in ("added", "removed", "reshaped", "changed", "unchanged")}
    print(
        f"{counts['added']} added, {counts['removed']} removed, {counts['reshaped']} reshaped,"
        f" {counts['changed']} changed, {counts['unchanged']} unchanged"
    )
    return 0


def diff_metadata(
    a: dict[str, str] | None, b: dict[str, str] | None
) -> dict[str, list[str | None]] | None:
    """The metadata entries that differ, as ``key: [a's value, b's value]`` (None where
    absent); None when neither file has metadata."""
    if a is None and b is None:
        return None
    a, b = a or {}, b or {}
    return {k: [a.get(k), b.get(k)] for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)}


def _num(x: float | str) -> str:
    return x if isinstance(x, str) else format_number(x)


def diff_contexts(a_ctx: Any, b_ctx: Any) -> dict[str, Any]:
    """Compare the visible variables of two contexts. Cost: O(total elements), in
    chunks of :data:`DIFF_CHUNK` elements."""
    a = dict(a_ctx.latest_variables())
    b = dict(b_ctx.latest_variables())
    report = _compare_shapes(b, a)
    out: dict[str, Any] = {
        "added": [[n, list(b[n].dims)] for n in report.unexpected],
        "removed": [[n, list(a[n].dims)] for n in report.missing],
        "reshaped": [[m.name, list(m.expected), list(m.got)] for m in report.mismatched],
        "changed": [],
        "unchanged": [],
    }
    reshaped = {m.name for m in report.mismatched}
    for name, at in a.items():
        bt = b.get(name)
        if bt is None or name in reshaped:
            continue
        changed, max_abs, max_rel = _tensor_change(
            at.library.to_numpy(at.t), bt.library.to_numpy(bt.t)
        )
        if changed == 0 and at.dtype == bt.dtype:
            out["unchanged"].append(name)
            continue
        out["changed"].append(
            {
                "name": name,
                "shape": list(at.dims),
                "dtype_a": at.dtype,
                "dtype_b": bt.dtype,
                "numel": math.prod(at.dims),
                "changed": changed,
                "max_abs": _json_float(max_abs),
                "max_rel": _json_float(max_rel),
            }
        )
    return out


def _integer_change(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> tuple[int, float, float]:
    """:func:`_tensor_change` of integer tensors, exactly: equality in the integers (not
    after a cast to float64), differences as Python ints. Cost: O(n), plus O(changed)
    Python-int arithmetic."""
    changed = 0
    max_abs = 0
    max_rel = 0.0
    common = np.result_type(x.dtype, y.dtype)
    exact = common.kind in "biu"  # int64 with uint64 would become float64: use objects
    for start in range(0, x.size, DIFF_CHUNK):
        xs = x[start : start + DIFF_CHUNK]
        ys = y[start : start + DIFF_CHUNK]
        if exact:
            differ = xs != ys
        else:
            differ = np.not_equal(xs.astype(object), ys.astype(object)).astype(bool)
        n = int(np.count_nonzero(differ))
        if n == 0:
            continue
        changed += n
        for a, b in zip(xs[differ].tolist(), ys[differ].tolist(), strict=True):
            delta = abs(int(b) - int(a))
            max_abs = max(max_abs, delta)
            max_rel = max(max_rel, delta / max(abs(int(a)), abs(int(b))))
    return changed, float(max_abs), max_rel


def _json_float(x: float) -> float | str:
    return str(x) if math.isnan(x) or math.isinf(x) else x


def _tensor_change(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> tuple[int, float, float]:
    """The number of differing elements, max |y-x| and max |y-x| / max(|x|, |y|).

    Integers (and bools) are compared exactly, as integers (``2**60`` and ``2**60 + 1``
    differ by 1); floats as float64 (complex as complex128). NaN against NaN counts as
    equal; NaN against a number as a change of NaN size.
    """
    x = render_array(np.asarray(x)).reshape(-1)
    y = render_array(np.asarray(y)).reshape(-1)
    if x.dtype.kind in "biu" and y.dtype.kind in "biu":
        return _integer_change(x, y)
    changed = 0
    max_abs = 0.0
    max_rel = 0.0
    complex_ = x.dtype.kind == "c" or y.dtype.kind == "c"
    work = np.complex128 if complex_ else np.float64
    for start in range(0, x.size, DIFF_CHUNK):
        xs = x[start : start + DIFF_CHUNK].astype(work)
        ys = y[start : start + DIFF_CHUNK].astype(work)
        both_nan = np.isnan(xs) & np.isnan(ys)
        same = (xs == ys) | both_nan
        n = int(np.count_nonzero(~same))
        if n == 0:
            continue
        changed += n
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            delta = np.abs(ys[~same] - xs[~same])
            scale = np.maximum(np.abs(xs[~same]), np.abs(ys[~same]))
            rel = delta / scale
        if np.isnan(delta).any():
            max_abs = math.nan
        elif not math.isnan(max_abs):
            max_abs = max(max_abs, float(delta.max()))
        finite_rel = rel[~np.isnan(rel)]
        if finite_rel.size:
            max_rel = max(max_rel, float(finite_rel.max()))
    return changed, max_abs, max_rel

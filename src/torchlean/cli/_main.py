"""The ``torchlean`` command: argument parsing, dispatch and the error policy.

A user's mistake (a missing file, an unknown format, a file that cannot be read, any
:class:`~torchlean.errors.TorchLeanError` or :class:`OSError`) is one line on stderr
and exit code 2, never a traceback; so is an optional library that is not installed
(torch for a ``.pt`` file, ...): the line says what to ``pip install``. ``check`` exits
1 when the files disagree.

Reading map:
- :func:`main` -- ``main(argv) -> int``; the console script and ``python -m torchlean``.
- :func:`build_parser` -- the argparse parser (every subcommand has examples).
- The subcommands live in :mod:`torchlean.cli._commands`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from torchlean._text import printable
from torchlean.errors import TorchLeanError

__all__ = ["build_parser", "main"]

PROG = "torchlean"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def _width(text: str) -> int:
    n = _non_negative(text)
    if n < 20:
        raise argparse.ArgumentTypeError(f"expected at least 20 columns, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``torchlean`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at, convert, check and compare TorchLean runtime contexts and"
        " checkpoints (safetensors, TorchLean JSON, PyTorch, npz).",
        epilog=_examples(
            "torchlean show model.safetensors",
            "torchlean show mlp.json --html mlp.html",
            "torchlean convert mlp.json mlp.safetensors",
            "torchlean check model.safetensors --expect reference.pt",
            "torchlean diff before.safetensors after.safetensors",
            "torchlean demo --help",
        ),
        formatter_class=fmt,
    )
    from torchlean import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    show = sub.add_parser(
        "show",
        help="show the variables and gradients of a checkpoint",
        description="Show every entry of a checkpoint, one line each: name, shape, dtype,"
        " device, size, a preview of the values (first values, min/max/mean, NaN/inf"
        " counts), then the totals (parameters, bytes, per dtype) and the problems check()"
        " finds. Names are never cut: at a narrow width the values are shortened, then"
        " columns dropped. Statistics of big tensors are computed on a bounded sample, and"
        " marked ~ when they are. PATH may be a sharded checkpoint's"
        " *.safetensors.index.json or a folder of safetensors shards (headers only).",
        epilog=_examples(
            "torchlean show model.safetensors",
            "torchlean show mlp.json --format json",
            "torchlean show resnet50.safetensors --filter 'layer4.*'",
            "torchlean show resnet50.safetensors --depth 1   # one line per module",
            "torchlean show model.safetensors.index.json     # a sharded checkpoint",
            "torchlean show checkpoint.pth.tar --key state_dict_ema",
            "torchlean show model.safetensors --html model.html   # the notebook view",
            "torchlean show model.safetensors --json | jq '.totals'",
        ),
        formatter_class=fmt,
    )
    show.add_argument("path", metavar="PATH", help="the checkpoint to show (a file or a folder)")
    show.add_argument("--format", help="the file's format (default: from its name)")
    show.add_argument(
        "--filter",
        metavar="GLOB",
        help="only the entries whose name matches GLOB ('layer1.*'; 'layer1' also keeps"
        " everything under layer1.)",
    )
    show.add_argument(
        "--depth",
        type=_non_negative,
        metavar="N",
        help="one line per module prefix of N dot-separated parts, with its tensors,"
        " parameters and bytes (0: the totals only)",
    )
    out = show.add_mutually_exclusive_group()
    out.add_argument(
        "--html",
        metavar="OUT.html",
        help="write the notebook view as an HTML page (- or /dev/stdout: to stdout)",
    )
    out.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable summary as JSON (with the totals; groups with --depth)",
    )
    show.add_argument(
        "--width",
        type=_width,
        default=None,
        metavar="W",
        help="width of the terminal view in columns (default: the terminal's, 80 when piped)",
    )
    _nested_arguments(show)

    convert = sub.add_parser(
        "convert",
        help="convert a checkpoint from one format to another",
        description="Read IN, write OUT in another format, then read OUT back and check"
        " that every name, shape and value survived. OUT is only put in place when the"
        " check passes. Big files show a progress bar on a terminal.",
        epilog=_examples(
            "torchlean convert mlp.json mlp.safetensors",
            "torchlean convert model.pt model.safetensors",
            "torchlean convert weights.bin weights.npz --from torch",
            "torchlean convert model.safetensors out/ --max-shard-size 2GB",
            "torchlean convert out/model.safetensors.index.json model.safetensors",
        ),
        formatter_class=fmt,
    )
    convert.add_argument("input", metavar="IN", help="the checkpoint to read")
    convert.add_argument("output", metavar="OUT", help="the checkpoint to write")
    convert.add_argument("--from", dest="from_format", help="IN's format (default: its name)")
    convert.add_argument("--to", dest="to_format", help="OUT's format (default: its name)")
    convert.add_argument("--force", action="store_true", help="replace OUT when it exists already")
    _nested_arguments(convert)
    convert.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help="write OUT as safetensors shards of at most SIZE each (5GB, 500MiB) and an"
        " index, as save_pretrained does; OUT is a folder or a *.safetensors.index.json",
    )
    convert.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar: auto shows it for big files on a terminal (default: auto)",
    )

    check = sub.add_parser(
        "check",
        help="check that a checkpoint has the names and shapes another one has",
        description="Compare the names and shapes of PATH's variables with what is"
        " expected: another checkpoint (--expect, any format) or a JSON object of names to"
        " shapes (--expect-json). Prints every missing, unexpected and mismatched entry;"
        " exits 1 when anything is off, 0 when all agree.",
        epilog=_examples(
            "torchlean check model.safetensors --expect reference.pt",
            "torchlean check mlp.json --expect-json shapes.json",
            "torchlean check mlp.json --lean",
            '   # shapes.json: {"layers.0.weight": [3, 2], "layers.0.bias": [3]}',
        ),
        formatter_class=fmt,
    )
    check.add_argument("path", metavar="PATH", help="the checkpoint to check")
    check.add_argument("--format", help="PATH's format (default: from its name)")
    expect = check.add_mutually_exclusive_group(required=True)
    expect.add_argument("--expect", metavar="OTHER", help="a checkpoint to compare with")
    expect.add_argument("--expect-json", metavar="FILE", help="a JSON object of names to shapes")
    expect.add_argument(
        "--lean",
        action="store_true",
        help="read a JSON file as TorchLean's Lean importer does: the tensors it sees, with"
        " shapes, and every problem with its place (exit 1 on a problem)",
    )
    check.add_argument("--expect-format", help="OTHER's format (default: from its name)")
    _nested_arguments(check)

    diff = sub.add_parser(
        "diff",
        help="compare the values of two checkpoints",
        description="List the entries added in B, removed from A, reshaped, and changed,"
        " with the largest absolute change max|b-a| and the largest relative change"
        " max(|b-a| / max(|a|, |b|)) of each changed tensor. Exits 0 whatever differs.",
        epilog=_examples(
            "torchlean diff before.safetensors after.safetensors",
            "torchlean diff mlp.json mlp.safetensors --json",
        ),
        formatter_class=fmt,
    )
    diff.add_argument("a", metavar="A", help="the first checkpoint")
    diff.add_argument("b", metavar="B", help="the second checkpoint")
    diff.add_argument("--format-a", help="A's format (default: from its name)")
    diff.add_argument("--format-b", help="B's format (default: from its name)")
    diff.add_argument("--json", action="store_true", help="print the differences as JSON")
    diff.add_argument("--all", action="store_true", help="list the unchanged entries too")
    _nested_arguments(diff)

    sub.add_parser(
        "demo",
        help="train a small model and show its context (torchlean demo --help)",
        add_help=False,
        description="Runs torchlean.demo; see `torchlean demo --help`.",
    )
    return parser


def _nested_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="PyTorch files: the nested state dict to read (model, state_dict_ema;"
        " dotted for deeper levels)",
    )
    parser.add_argument(
        "--flatten",
        action="store_true",
        help="PyTorch files: read nested dicts of tensors as dotted names",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``torchlean`` command with ``argv`` (default: ``sys.argv[1:]``); returns
    the exit code: 0 success, 1 ``check`` found a difference, 2 a user's mistake."""
    if argv is not None and (isinstance(argv, str) or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"main: argv must be a sequence of str or None, got {argv!r}")
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        return _demo(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # --help, --version, or a usage error (argparse printed it)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    from torchlean.cli import _commands

    handler = {
        "show": _commands.show,
        "convert": _commands.convert,
        "check": _commands.check,
        "diff": _commands.diff,
    }[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        # the reader went away (`torchlean show ... | head`): stop quietly, as a pipe
        # writer should, without a second error when Python flushes stdout at exit
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (captured)
            return 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        return 1
    except (TorchLeanError, OSError) as e:
        _fail(args.command, e)
        return 2
    except ImportError as e:
        if missing_dependency(e) is None:
            raise
        _fail(args.command, e)
        return 2
    except MemoryError:
        print(
            f"{PROG} {args.command}: error: not enough memory for this file; show and check"
            " read a safetensors file without loading it",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, e: BaseException) -> None:
    print(f"{PROG} {command}: error: {error_text(e)}", file=sys.stderr)


#: The optional libraries and what installs them (``pip install 'torchlean[...]'``).
OPTIONAL = {"torch": "torch", "jax": "jax", "matplotlib": "all", "ml_dtypes": "jax"}


def missing_dependency(e: BaseException) -> str | None:
    """``<library> is not installed: pip install 'torchlean[<extra>]'`` when ``e`` is the
    import error of an optional library, else ``None``."""
    if not isinstance(e, ImportError):
        return None
    name = (e.name or "").split(".")[0]
    extra = OPTIONAL.get(name)
    if extra is None:
        return None
    return f"{name} is not installed: pip install 'torchlean[{extra}]'"


def error_text(e: BaseException) -> str:
    """One line saying what went wrong, for a user; control characters from names in
    a file (ESC, BEL, ...) are escaped visibly, never sent to the terminal."""
    missing = missing_dependency(e)
    if missing is not None:
        return missing
    if isinstance(e, OSError) and not isinstance(e, TorchLeanError):
        what = e.strerror or str(e) or type(e).__name__
        if e.filename is not None:
            return printable(f"{os.fspath(e.filename)}: {what[0].lower() + what[1:]}")
        return printable(what)
    text = str(e) or type(e).__name__
    return printable(" ".join(text.split()) if "\n" in text else text)


def _demo(rest: list[str]) -> int:
    import importlib

    try:
        demo = importlib.import_module("torchlean.demo")
    except ModuleNotFoundError as e:
        if e.name not in ("torchlean.demo",):
            raise
        print(
            f"{PROG} demo: error: the demo is not part of this installation"
            " (torchlean.demo is missing)",
            file=sys.stderr,
        )
        return 2
    try:
        return int(demo.cli_main(rest))
    except (TorchLeanError, OSError) as e:
        _fail("demo", e)
        return 2
    except ImportError as e:
        if missing_dependency(e) is None:
            raise
        _fail("demo", e)
        return 2

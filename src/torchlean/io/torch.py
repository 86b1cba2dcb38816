"""PyTorch: ``.pt``/``.pth`` state_dicts and bridges to ``nn.Module``.

Files are always read with ``torch.load(weights_only=True)``: a pickle that needs more
than tensors and plain containers is refused with a
:class:`~torchlean.errors.FormatError`, never executed.

Reading map:
- :func:`load_pt` -- a state_dict file (bare, or wrapped as ``{"state_dict": ...}`` or
  ``{"model_state_dict": ...}``) as a context (``io.load`` strips prefixes).
- :func:`save_pt` -- the variables as a state_dict of torch tensors (atomically).
- :func:`from_module` -- ``RuntimeContext.from_module``: parameters and buffers (marked
  as buffers), tied weights as one variable and its aliases.
- :func:`load_into` -- ``RuntimeContext.load_into``: checked, all-or-nothing, ties
  restored; ``strict=False`` returns a report of missing and unexpected names.
- :data:`FORMAT` -- this module's :class:`~torchlean.io.Format` record.

Tensors cross between torch and the other array libraries only through the backends'
``to_numpy``/``from_numpy`` (bf16 and the other narrow floats included).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final, Literal, overload

import numpy as np

from torchlean._validate import require_bool, require_save_arguments
from torchlean.errors import FormatError
from torchlean.io._atomic import atomic_path
from torchlean.io._common import build_context, check_backend
from torchlean.io._format import Format
from torchlean.io._zip import check_zip_file
from torchlean.io.expect import ExpectReport, compare, tied_names
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.backends import backend_named
from torchlean.runtime.context import RuntimeContext, require_context, with_roles

__all__ = ["FORMAT", "from_module", "load_into", "load_pt", "save_pt"]

_WRAPPERS: Final = ("state_dict", "model_state_dict")


def load_pt(path: str | os.PathLike[str], *, backend: str = "numpy") -> RuntimeContext[Any]:
    """Read a PyTorch state_dict file as a context, with ``weights_only=True``.

    Variables are registered in the state_dict's order. Cost: O(total bytes).
    """
    import pickle

    import torch

    check_backend(backend)
    where = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if os.path.getsize(path) == 0:
        raise FormatError(f"{where}: empty file, not a PyTorch file")
    # torch's zip reader allocates what the zip directory declares: check it first
    check_zip_file(path, where, what="PyTorch file")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        text = str(e)
        why = next(
            (line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line),
            None,
        )
        if why is not None:  # drop torch's advice to allow the global: never do that here
            why = why.split(" Please use", 1)[0]
        if why is None:
            raise FormatError(f"{where}: not a valid PyTorch file ({_first_line(text)})") from None
        raise FormatError(
            f"{where}: refused to load: the pickle needs more than tensors and plain"
            f" containers, and is never run (weights_only=True): {why}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise FormatError(f"{where}: not a valid PyTorch file ({_first_line(str(e))})") from None
    except Exception as e:
        # a damaged pickle can fail anywhere in torch's restricted unpickler (an
        # IndexError from its stack, a KeyError from its memo, ...); it never ran code
        raise FormatError(
            f"{where}: not a valid PyTorch file ({type(e).__name__}: {_first_line(str(e))})"
        ) from None
    if isinstance(obj, Mapping):
        for key in _WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise FormatError(
            f"{where}: expected a state_dict (a mapping of names to tensors), got"
            f" {type(obj).__name__}"
        )
    pairs: list[tuple[str, Any]] = []
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise FormatError(
                f"{where}: entry {name!r} is a {type(value).__name__}, not a tensor;"
                " a state_dict maps names to tensors"
            )
        pairs.append((name, value.detach()))
    return build_context(pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path=path)


def _first_line(text: str) -> str:
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file")
    lines = [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not line.strip().startswith(boilerplate)
    ]
    line = lines[0] if lines else text
    line = line.split(" This is an internal miniz error", 1)[0]  # then advice, cut at 200
    return line[:200]


def save_pt(ctx: RuntimeContext[Any], path: str | os.PathLike[str]) -> None:
    """Write the variables (most recent entry of each name) as a torch state_dict.

    Cost: O(total bytes).
    """
    require_save_arguments(ctx, path, "save_pt")
    import torch

    state = {name: _as_torch(at, "variable", name) for name, at in ctx.latest_variables()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)  # through a Python file, so a failed write is an OSError


def _as_torch(at: AnyTensor[Any], kind: str, name: str) -> Any:
    """The tensor of ``at`` as a torch tensor: itself (detached), or a copy of another
    library's array made by the torch backend."""
    import torch

    x = at.t
    if isinstance(x, torch.Tensor):
        return x.detach()
    a = np.array(at.library.to_numpy(x), copy=True)
    return backend_named("torch").from_numpy(a, f"{kind} `{name}`")


def from_module(module: Any, *, backend: str = "torch") -> RuntimeContext[Any]:
    """A context with one variable per entry of ``module.state_dict()`` (parameters and
    buffers by their state_dict names), in that order. The tensors are copied, so
    training the module later never changes the context.

    The module's buffers are marked as buffers (:meth:`RuntimeContext.buffers`: no
    gradient, no optimizer update). Tied weights stay tied: entries that are one tensor
    in the module (GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``) become one
    variable under the first name, the others its aliases
    (:meth:`RuntimeContext.aliases`). Cost: O(total bytes)."""
    if not callable(getattr(module, "state_dict", None)):
        raise TypeError(f"from_module expects a torch nn.Module, got {type(module).__name__}")
    check_backend(backend)
    pairs: list[tuple[str, Any]] = []
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for n, t in module.state_dict(keep_vars=True).items():
        canonical = first.get(id(t))
        if canonical is not None:
            aliases[n] = canonical
            continue
        first[id(t)] = n
        pairs.append((n, t.detach().clone()))
    ctx = build_context(
        pairs[::-1], [], next_id=len(pairs), pin=None, backend=backend, path="<module>"
    )
    named = getattr(module, "named_parameters", None)
    if not callable(named):
        return ctx
    params = {n for n, _ in named(remove_duplicate=False)}
    buffers = [n for n, _ in pairs if n not in params]
    if not buffers and not aliases:
        return ctx
    return with_roles(ctx, buffers=buffers, aliases=aliases)


@overload
def load_into(
    ctx: RuntimeContext[Any], module: Any, *, dtypes: bool = ..., strict: Literal[True] = ...
) -> Any: ...


@overload
def load_into(
    ctx: RuntimeContext[Any], module: Any, *, dtypes: bool = ..., strict: Literal[False]
) -> ExpectReport: ...


def load_into(
    ctx: RuntimeContext[Any], module: Any, *, dtypes: bool = True, strict: bool = True
) -> Any:
    """Copy the context's variables into ``module`` (parameters and buffers).

    Every name, shape (and, by default, dtype) is checked first; when anything differs
    an :class:`~torchlean.errors.ExpectationError` lists every problem and the module is
    left unchanged. Returns ``module``. Tied weights: an alias of the context
    (:meth:`RuntimeContext.aliases`) or a name tied in the module to a name the context
    has is not missing (a GPT-2 file that omits ``lm_head.weight`` loads).

    ``strict=False`` loads what matches and returns an
    :class:`~torchlean.io.ExpectReport` of the ``missing`` and ``unexpected`` names
    instead of raising for them (never silently: the report is the result); a shape or
    dtype mismatch still raises. Cost: O(total bytes).
    """
    require_context(ctx, "load_into")
    if not callable(getattr(module, "load_state_dict", None)):
        raise TypeError(f"load_into expects a torch nn.Module, got {type(module).__name__}")
    require_bool(strict, "load_into", "strict")
    import torch

    state = {n: at for n, at in ctx.latest_variables()}
    for alias, canonical in ctx.aliases().items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
    for alias, canonical in tied_names(module).items():
        if alias not in state and canonical in state:
            state[alias] = state[canonical]
        elif canonical not in state and alias in state:
            state[canonical] = state[alias]
    have = {n: (at.dims, at.dtype) for n, at in state.items()}
    report = compare(have, module, dtypes=dtypes, source="the context's variables")
    if strict or report.mismatched:
        report.raise_if_bad()
    tensors = {n: _as_torch(at, "variable", n) for n, at in state.items()}
    if not strict:
        for name in report.unexpected:
            del tensors[name]
    with torch.no_grad():
        module.load_state_dict(tensors, strict=strict)
    return module if strict else report


#: The PyTorch format: a state_dict of the variables (the latest entry of each name).
FORMAT: Final = Format(name="torch", suffixes=(".pt", ".pth"), save=save_pt, load=load_pt)

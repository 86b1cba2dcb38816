"""Optimizer state from ``torch.optim`` and optax: move a run to torchlean mid-training.

``import_torch_state(source, ctx, names=... or model=...)`` reads a ``torch.optim``
optimizer (SGD, Adam, AdamW, with momentum, Nesterov, amsgrad, parameter groups) or its
``state_dict()`` and returns ``(optimizer, state)``: a torchlean optimizer with the same
hyperparameters (torch's param groups become ``groups=``), or the one you pass after
checking that every hyperparameter agrees, and a state laid out exactly as
:meth:`Optimizer.init` lays it out (``count``, ``step/<name>``, ``<slot>/<name>``, the
variables' dtypes and devices, the library's counter dtype) holding torch's moments and
step counters. ``import_optax_state(opt_state, ctx, optimizer=...)`` does the same for
optax's Adam/AdamW (the ``ScaleByAdamState`` inside the chain state: ``mu``, ``nu``,
``count``). The next step then gives the numbers continuing in torch (or optax) gives.

Reading map:
- :func:`import_torch_state` -- ``torch.optim`` state; names from ``names=`` (the
  parameters in the order the optimizer lists them) or ``model=`` (``named_parameters``).
- :func:`import_optax_state` -- optax Adam/AdamW state; names from the moments' key paths
  (as :meth:`RuntimeContext.from_pytree` names leaves) or ``names=``.
- :func:`_fill` -- the state: :meth:`Optimizer.init`'s layout with the imported values
  (copied, so that neither torch's optimizer nor torchlean's step writes the other's).
- :class:`_Problems` -- every problem collected, raised once.

The imported arrays are copies: the torch optimizer (or the optax state) and the
torchlean state never share memory. Floating-point moments are cast to their variable's
dtype and moved to its device, as ``torch.optim.Optimizer.load_state_dict`` does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from torchlean._text import did_you_mean, short_repr
from torchlean.errors import ExpectationError, ShapeMismatchError, TorchLeanError, UnknownNameError
from torchlean.optim._hyper import Hyper, Kind
from torchlean.optim._optimizer import SHARED_STEP, Optimizer
from torchlean.runtime.any_tensor import AnyTensor
from torchlean.runtime.backends import backend_of
from torchlean.runtime.context import RuntimeContext, require_context
from torchlean.runtime.dtypes import numpy_dtype

__all__ = ["import_optax_state", "import_torch_state"]

#: The moments each torch optimizer keeps per parameter (besides ``step``).
_TORCH_SLOTS = {"sgd": {"momentum_buffer"}, "adam": {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}}
#: The hyperparameters compared per optimizer kind (``Hyper`` fields).
_COMPARED: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "dampening", "nesterov", "weight_decay"),
    "adam": ("beta1", "beta2", "eps", "weight_decay", "amsgrad"),
}
_SHOWN = 8


class _Problems:
    """Problems collected while reading, raised together (the first one's type)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: list[tuple[type[TorchLeanError], str]] = []

    def add(self, kind: type[TorchLeanError], message: str) -> None:
        self.items.append((kind, message))

    def raise_any(self) -> None:
        if not self.items:
            return
        kind = self.items[0][0]
        if len(self.items) == 1:
            text = self.items[0][1]
        else:
            shown = self.items[:_SHOWN]
            text = f"{len(self.items)} problems:\n" + "\n".join(f"- {m}" for _, m in shown)
            if len(self.items) > _SHOWN:
                text += f"\n- ... and {len(self.items) - _SHOWN} more"
        raise kind(f"{self.where}: {text}; nothing was imported")


# ---------------------------------------------------------------------- torch


def import_torch_state(
    source: Any,
    ctx: RuntimeContext[Any],
    *,
    names: Sequence[str] | None = None,
    model: Any = None,
    optimizer: Optimizer | None = None,
    count: int | None = None,
) -> tuple[Optimizer, RuntimeContext[Any]]:
    """``(optimizer, state)`` continuing a ``torch.optim`` run on the context ``ctx``.

    ``source`` is a ``torch.optim.SGD``, ``Adam`` or ``AdamW`` or its ``state_dict()``.
    Its parameters get names from exactly one of:

    - ``names``: one name per parameter, in the order the optimizer lists them (its
      param groups one after the other: ``state_dict()["param_groups"][i]["params"]``);
    - ``model``: the ``nn.Module`` the optimizer was built from. With the optimizer
      itself each parameter is found by identity; with a ``state_dict`` of one param
      group the parameters are ``model.named_parameters()`` in order (those with
      ``requires_grad`` when the optimizer holds only those); a ``state_dict`` of
      several groups needs ``names`` or the optimizer.

    ``optimizer=None`` builds the torchlean optimizer from the param groups (the first
    group's values as the optimizer's, the others as ``groups=`` of exact names); a
    ``state_dict`` does not say whether it is Adam or AdamW unless it has torch's
    ``decoupled_weight_decay`` key (torch >= 2.6). Given an ``optimizer``, every
    parameter's hyperparameters (kind, lr -- a schedule's ``lr(count)`` --, momentum,
    dampening, nesterov, betas, eps, weight_decay, amsgrad) must equal its torch group's:
    each difference is named. ``count`` (steps taken, what a schedule reads) defaults to
    the largest per-parameter ``step`` of Adam's state; torch's SGD keeps no step count,
    so pass it when the optimizer has a schedule (default 0).

    The state has :meth:`Optimizer.init`'s layout for ``ctx``; a variable torch holds
    no state for (no gradient yet, or not in the torch optimizer) gets init's zeros.
    Unknown names, parameter indices no group lists, shapes that differ, missing
    moments and ``maximize=True`` are errors (every problem in one message). Lean
    counterpart: none. Cost: O(total elements) to copy the moments.
    """
    where = "import_torch_state"
    require_context(ctx, where)
    _check_count(count, where)
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{where}: optimizer must be a torchlean.optim.Optimizer (sgd, adam, adamw) or"
            f" None, got {type(optimizer).__name__}"
        )
    is_object = not isinstance(source, Mapping) and hasattr(source, "param_groups")
    if is_object:
        kind_hint: Kind | None = _torch_class_kind(source, where)
        state_dict = source.state_dict()
    elif isinstance(source, Mapping):
        kind_hint = None
        state_dict = source
    else:
        raise TypeError(
            f"{where}: source must be a torch.optim optimizer or its state_dict() (a mapping"
            f' with "state" and "param_groups"), got {type(source).__name__} {short_repr(source)}'
        )
    groups = _param_groups(state_dict, where)
    ids = [i for g in groups for i in g["params"]]
    param_names = _torch_names(source if is_object else None, groups, ids, names, model, where)
    kind = _torch_kind(groups, kind_hint, optimizer, where)
    raw_state = state_dict.get("state", {})
    if not isinstance(raw_state, Mapping):
        raise TypeError(
            f'{where}: state_dict()["state"] must be a mapping, got {short_repr(raw_state)}'
        )

    problems = _Problems(where)
    group_of = {i: gi for gi, g in enumerate(groups) for i in g["params"]}
    name_of = dict(zip(ids, param_names, strict=True))
    for i in raw_state:
        if i not in group_of:
            listed = f"{min(ids)}..{max(ids)}" if ids else "none"
            problems.add(
                UnknownNameError,
                f"the state has an entry for parameter index {i!r}, which no param group"
                f" lists (the groups list {listed})",
            )
    hypers = [_torch_hyper(g, kind, gi, where) for gi, g in enumerate(groups)]
    steps: dict[str, float] = {}
    values: dict[str, dict[str, Any]] = {}
    for i in ids:
        entry = raw_state.get(i)
        if entry is None:
            continue
        name = name_of[i]
        what = f"parameter {i} (`{name}`)"
        if not isinstance(entry, Mapping):
            problems.add(
                ExpectationError, f"the state of {what} is not a mapping: {short_repr(entry)}"
            )
            continue
        family = "sgd" if kind == "sgd" else "adam"
        foreign = sorted(k for k in entry if k != "step" and k not in _TORCH_SLOTS[family])
        if foreign:
            problems.add(
                ExpectationError,
                f"the state of {what} holds {', '.join(foreign)}, which {kind} does not keep"
                f" (it keeps {', '.join(sorted(_TORCH_SLOTS[family]))}): is this another"
                " optimizer's state?",
            )
            continue
        hyper = hypers[group_of[i]]
        wanted = hyper.slots
        got = {k: v for k, v in entry.items() if k in wanted and v is not None}
        missing = [k for k in wanted if k not in got]
        if missing:
            problems.add(
                ExpectationError,
                f"the state of {what} has no {', '.join(missing)} (it has"
                f" {', '.join(sorted(entry)) or 'nothing'})",
            )
            continue
        if kind != "sgd":
            if "step" not in entry:
                problems.add(ExpectationError, f"the state of {what} has no step")
                continue
            steps[name] = float(np.asarray(_numpy(entry["step"], f"{what} step")))
        values[name] = got
    problems.raise_any()

    if count is None:
        count = int(max(steps.values(), default=0.0))
    if optimizer is None:
        optimizer = _build(hypers, groups, name_of)
    else:
        _compare(optimizer, hypers, group_of, name_of, ids, count, where)
    sgd_step = float(max(count, 1))
    for name, got in values.items():
        if name not in steps:
            # torch.optim.SGD keeps no step: any value >= 1 continues its momentum
            steps[name] = sgd_step if got else float(count)
    return optimizer, _fill(optimizer, ctx, values, steps, count, where, param_names)


def _torch_class_kind(source: Any, where: str) -> Kind:
    mro = [c.__name__ for c in type(source).__mro__]
    for cls, kind in (("AdamW", "adamw"), ("Adam", "adam"), ("SGD", "sgd")):
        if cls in mro:
            if kind == "adam" and any(g.get("decoupled_weight_decay") for g in source.param_groups):
                return "adamw"
            return kind  # type: ignore[return-value]
    raise TypeError(
        f"{where}: source is a {type(source).__name__}; torchlean continues torch.optim.SGD,"
        " Adam and AdamW"
    )


def _param_groups(state_dict: Mapping[str, Any], where: str) -> list[Mapping[str, Any]]:
    groups = state_dict.get("param_groups")
    if not isinstance(groups, Sequence) or not groups or "state" not in state_dict:
        raise TypeError(
            f'{where}: a torch.optim state_dict() is a mapping with "state" and a non-empty'
            f' "param_groups" list, got keys {sorted(map(str, state_dict))}'
        )
    for gi, g in enumerate(groups):
        if not isinstance(g, Mapping) or not isinstance(g.get("params"), Sequence):
            raise TypeError(
                f'{where}: param_groups[{gi}] must be a mapping with a "params" list,'
                f" got {short_repr(g)}"
            )
    return list(groups)


def _torch_names(
    source: Any,
    groups: list[Mapping[str, Any]],
    ids: list[Any],
    names: Sequence[str] | None,
    model: Any,
    where: str,
) -> list[str]:
    """The name of each parameter of ``ids`` (the groups' order)."""
    if (names is None) == (model is None):
        raise TypeError(
            f"{where}: pass exactly one of names= (the parameters' names in the optimizer's"
            " order) or model= (the nn.Module the optimizer was built from)"
        )
    if len(set(ids)) != len(ids):
        raise ExpectationError(f"{where}: a parameter index appears in two param groups")
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"{where}: names must be a list of str, got {short_repr(names)}")
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"{where}: names must be a list of str, got {short_repr(bad[0])}")
        found = list(names)
        if len(found) != len(ids):
            raise ExpectationError(
                f"{where}: names has {len(found)} names but the optimizer's param groups hold"
                f" {len(ids)} parameters"
            )
    else:
        if not hasattr(model, "named_parameters"):
            raise TypeError(
                f"{where}: model must be a torch nn.Module (with named_parameters), got"
                f" {type(model).__name__}"
            )
        pairs = list(model.named_parameters())
        if source is not None:
            by_id = {id(p): n for n, p in pairs}
            found = []
            for g in source.param_groups:
                for p in g["params"]:
                    n = by_id.get(id(p))
                    if n is None:
                        raise UnknownNameError(
                            f"{where}: the optimizer holds a parameter of shape"
                            f" {tuple(p.shape)} that is not a parameter of the model"
                        )
                    found.append(n)
        else:
            if len(groups) > 1:
                raise ExpectationError(
                    f"{where}: the state_dict has {len(groups)} param groups, and which"
                    " parameter went into which group is not in it; pass names= (in the"
                    " groups' order) or the optimizer itself with model="
                )
            trainable = [n for n, p in pairs if getattr(p, "requires_grad", True)]
            found = [n for n, _ in pairs]
            if len(found) != len(ids) and len(trainable) == len(ids):
                found = trainable
            if len(found) != len(ids):
                raise ExpectationError(
                    f"{where}: the model has {len(found)} parameters but the optimizer's"
                    f" param groups hold {len(ids)}; pass names= or the optimizer itself"
                )
    dup = sorted({n for n in found if found.count(n) > 1})
    if dup:
        raise ExpectationError(f"{where}: the name `{dup[0]}` is given to two parameters")
    return found


def _torch_kind(
    groups: list[Mapping[str, Any]], hint: Kind | None, optimizer: Optimizer | None, where: str
) -> Kind:
    g = groups[0]
    if "betas" in g:
        decoupled = g.get("decoupled_weight_decay")
        if hint in ("adam", "adamw"):
            kind: Kind = hint
        elif decoupled is not None:
            kind = "adamw" if decoupled else "adam"
        elif optimizer is not None and optimizer.hyper.kind in ("adam", "adamw"):
            kind = optimizer.hyper.kind
        else:
            raise ExpectationError(
                f"{where}: this state_dict does not say whether it is Adam or AdamW (no"
                " decoupled_weight_decay key); pass the torch optimizer itself or a torchlean"
                " optimizer=adam(...)/adamw(...)"
            )
    elif "momentum" in g:
        kind = "sgd"
    else:
        raise ExpectationError(
            f"{where}: param_groups[0] has neither betas (Adam, AdamW) nor momentum (SGD):"
            f" keys {sorted(k for k in g if k != 'params')}; torchlean continues SGD, Adam"
            " and AdamW"
        )
    for gi, grp in enumerate(groups):
        if grp.get("maximize"):
            raise ExpectationError(
                f"{where}: param_groups[{gi}] has maximize=True, which torchlean's"
                " optimizers do not do (they minimise)"
            )
    return kind


def _num(value: Any) -> float:
    """A hyperparameter of a param group as a float (torch allows a tensor lr)."""
    return float(value.item() if hasattr(value, "item") else value)


def _torch_hyper(g: Mapping[str, Any], kind: Kind, gi: int, where: str) -> Hyper:
    try:
        if kind == "sgd":
            return Hyper(
                kind=kind,
                lr=_num(g["lr"]),
                momentum=_num(g.get("momentum", 0.0)),
                dampening=_num(g.get("dampening", 0.0)),
                nesterov=bool(g.get("nesterov", False)),
                weight_decay=_num(g.get("weight_decay", 0.0)),
            )
        betas = g["betas"]
        return Hyper(
            kind=kind,
            lr=_num(g["lr"]),
            beta1=_num(betas[0]),
            beta2=_num(betas[1]),
            eps=_num(g["eps"]),
            weight_decay=_num(g.get("weight_decay", 0.0)),
            amsgrad=bool(g.get("amsgrad", False)),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ExpectationError(
            f"{where}: param_groups[{gi}] lacks a readable hyperparameter ({e!r}):"
            f" {short_repr({k: v for k, v in g.items() if k != 'params'}, 200)}"
        ) from e


def _exact(name: str) -> str:
    """``name`` as an fnmatch pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _build(
    hypers: list[Hyper], groups: list[Mapping[str, Any]], name_of: dict[Any, str]
) -> Optimizer:
    """A torchlean optimizer with the first group's values and ``groups=`` for the rest."""
    base = hypers[0]
    if base.kind == "sgd" and any(h.momentum != 0 for h in hypers) and base.momentum == 0:
        raise ExpectationError(
            "import_torch_state: the first param group has no momentum but another has;"
            " torchlean's state holds a momentum buffer for every parameter or for none"
        )
    specs: list[dict[str, Any]] = []
    for gi, hyper in enumerate(hypers[1:], start=1):
        changes: dict[str, Any] = {}
        for f in ("lr", "weight_decay", "momentum", "dampening", "nesterov", "eps"):
            if getattr(hyper, f) != getattr(base, f):
                changes[f] = getattr(hyper, f)
        if (hyper.beta1, hyper.beta2) != (base.beta1, base.beta2):
            changes["betas"] = (hyper.beta1, hyper.beta2)
        if hyper.amsgrad != base.amsgrad:
            raise ExpectationError(
                f"import_torch_state: param_groups[{gi}] has amsgrad={hyper.amsgrad} but"
                f" param_groups[0] has amsgrad={base.amsgrad}; torchlean's state holds the"
                " same moments for every parameter"
            )
        params = [name_of[i] for i in groups[gi]["params"]]
        if changes and params:
            specs.append({"params": [_exact(n) for n in params], **changes})
    fields = dataclasses.asdict(base)
    fields.pop("kind")
    return Optimizer(Hyper(kind=base.kind, **fields), groups=specs)


def _show(value: Any) -> str:
    return repr(value)


def _compare(
    optimizer: Optimizer,
    hypers: list[Hyper],
    group_of: dict[Any, int],
    name_of: dict[Any, str],
    ids: list[Any],
    count: int,
    where: str,
) -> None:
    """Every hyperparameter of ``optimizer`` that differs from torch's, by group."""
    mine = optimizer.hyper
    family = "sgd" if mine.kind == "sgd" else "adam"
    torch_kind = hypers[0].kind
    if mine.kind != torch_kind:
        raise ExpectationError(
            f"{where}: the torch state is {torch_kind}'s but the optimizer is {mine.kind}"
            f" ({optimizer!r}); pass optimizer=None to build it from the state"
        )
    diffs: dict[tuple[int, str, str, str], list[str]] = {}
    for i in ids:
        name = name_of[i]
        gi = group_of[i]
        theirs = hypers[gi]
        ours = optimizer.groups.hypers[optimizer.groups.index(name)]
        for f in _COMPARED[family]:
            a, b = getattr(theirs, f), getattr(ours, f)
            if a != b and not (isinstance(a, float) and math.isclose(a, b, rel_tol=1e-12)):
                diffs.setdefault((gi, f, _show(a), _show(b)), []).append(name)
        lr = ours.lr(count) if callable(ours.lr) else ours.lr
        lr_value = float(np.asarray(lr))
        tol = 1e-5 if callable(ours.lr) else 1e-12
        if not math.isclose(_num(theirs.lr), lr_value, rel_tol=tol, abs_tol=1e-15):
            label = "lr" if not callable(ours.lr) else f"lr (the schedule at count {count})"
            diffs.setdefault((gi, label, _show(theirs.lr), _show(lr_value)), []).append(name)
    if not diffs:
        return
    lines = []
    for (gi, f, a, b), names in diffs.items():
        shown = ", ".join(f"`{n}`" for n in names[:3]) + (" ..." if len(names) > 3 else "")
        lines.append(
            f"{f} is {a} in torch's param_groups[{gi}] but {b} in the torchlean optimizer"
            f" for {len(names)} parameter{'s' if len(names) != 1 else ''} ({shown})"
        )
    text = lines[0] if len(lines) == 1 else "\n".join(f"- {line}" for line in lines)
    raise ExpectationError(
        f"{where}: the hyperparameters differ:{' ' if len(lines) == 1 else chr(10)}{text}"
        "\n(pass optimizer=None to build the optimizer from torch's param groups)"
    )


# ---------------------------------------------------------------------- optax


def import_optax_state(
    opt_state: Any,
    ctx: RuntimeContext[Any],
    *,
    optimizer: Optimizer,
    names: Sequence[str] | None = None,
) -> tuple[Optimizer, RuntimeContext[Any]]:
    """``(optimizer, state)`` continuing an optax Adam/AdamW run on the context ``ctx``.

    ``opt_state`` is the state of ``optax.adam`` / ``optax.adamw`` (any chain, masked or
    ``inject_hyperparams`` state holding exactly one ``ScaleByAdamState``). Its ``mu``
    and ``nu`` become ``exp_avg/<name>`` and ``exp_avg_sq/<name>``, its ``count`` the
    state's ``count`` and every ``step/<name>``. The names are the moments' key paths
    with dots (as :meth:`RuntimeContext.from_pytree` names the parameters), or
    ``names`` (one per array leaf of ``mu``, in leaf order).

    optax's state holds no hyperparameters: ``optimizer`` (``adam(...)`` or
    ``adamw(...)`` with optax's learning rate, betas, eps and weight decay; optax's
    ``eps_root`` must be 0) says them. optax's amsgrad keeps a bias-corrected maximum
    that torch's (and torchlean's) does not, so it cannot be continued. Lean
    counterpart: none. Cost: O(total elements) to copy the moments.
    """
    where = "import_optax_state"
    require_context(ctx, where)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{where}: optimizer must be a torchlean.optim.Optimizer (adam or adamw with"
            f" optax's hyperparameters), got {type(optimizer).__name__}"
        )
    if optimizer.hyper.kind == "sgd" or optimizer.hyper.amsgrad:
        raise ExpectationError(
            f"{where}: optax's ScaleByAdamState continues adam or adamw without amsgrad,"
            f" not {optimizer!r}"
        )
    found = list(_adam_states(opt_state))
    if len(found) != 1:
        raise ExpectationError(
            f"{where}: expected one optax ScaleByAdamState (mu, nu, count) in the state, found"
            f" {len(found)} in {type(opt_state).__name__}"
            + ("; a multi_transform state is not supported" if found else "")
        )
    adam = found[0]
    import jax.tree_util as jtu

    mu_pairs = [(p, x) for p, x in jtu.tree_flatten_with_path(adam.mu)[0] if x is not None]
    nu_leaves = [x for x in jtu.tree_leaves(adam.nu) if x is not None]
    if len(nu_leaves) != len(mu_pairs):
        raise ExpectationError(
            f"{where}: mu has {len(mu_pairs)} arrays but nu has {len(nu_leaves)}"
        )
    if names is None:
        keys = [jtu.keystr(p, simple=True, separator=".") for p, _ in mu_pairs]
    else:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"{where}: names must be a list of str, got {short_repr(names)}")
        keys = list(names)
        if len(keys) != len(mu_pairs):
            raise ExpectationError(
                f"{where}: names has {len(keys)} names but mu has {len(mu_pairs)} arrays"
            )
    count = int(np.asarray(_numpy(adam.count, "count")))
    values = {
        n: {"exp_avg": m, "exp_avg_sq": v}
        for n, (_, m), v in zip(keys, mu_pairs, nu_leaves, strict=True)
    }
    steps = dict.fromkeys(keys, float(count))
    return optimizer, _fill(optimizer, ctx, values, steps, count, where, keys)


def _adam_states(state: Any) -> Iterator[Any]:
    """Every ``ScaleByAdamState`` inside an optax state (chains, masks, injections)."""
    name = type(state).__name__
    if name == "ScaleByAdamState":
        yield state
        return
    if name == "ScaleByAmsgradState":
        raise ExpectationError(
            "import_optax_state: optax's amsgrad keeps a bias-corrected nu_max, which"
            " torch's amsgrad (and torchlean's) does not: it cannot be continued"
        )
    inner = getattr(state, "inner_state", None)
    if inner is not None:
        yield from _adam_states(inner)
    elif isinstance(state, Mapping):
        for value in state.values():
            yield from _adam_states(value)
    elif isinstance(state, (tuple, list)):
        for value in state:
            yield from _adam_states(value)


# ---------------------------------------------------------------------- the state


def _numpy(value: Any, what: str) -> np.ndarray[Any, Any]:
    if isinstance(value, (int, float)):
        return np.asarray(value)
    try:
        library = backend_of(value)
    except TypeError as e:
        raise ExpectationError(f"{what} is not an array: {short_repr(value)}") from e
    return np.asarray(library.to_numpy(value))


def _convert(value: Any, like: AnyTensor[Any], what: str) -> Any:
    """A fresh array of ``like``'s library, dtype and device with ``value``'s elements."""
    library = like.library
    try:
        source = backend_of(value)
    except TypeError as e:
        raise ExpectationError(f"{what} is not an array: {short_repr(value)}") from e
    if (
        source is library
        and source.dtype_name(value) == like.dtype
        and source.device(value) == like.device
    ):
        return library.copy(value)
    array = np.asarray(source.to_numpy(value)).astype(numpy_dtype(like.dtype))
    return library.to_device(library.from_numpy(array, what), like.device)


def _check_count(count: object, where: str) -> None:
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise TypeError(f"{where}: count must be an int >= 0 or None, got {short_repr(count)}")


def _fill(
    optimizer: Optimizer,
    ctx: RuntimeContext[Any],
    values: dict[str, dict[str, Any]],
    steps: dict[str, float],
    count: int,
    where: str,
    names: Sequence[str],
) -> RuntimeContext[Any]:
    """:meth:`Optimizer.init`'s state for ``ctx`` with the imported moments and steps;
    every one of ``names`` (the source's parameters) must be a variable with state. The
    counters are one shared ``step`` where ``init`` keeps one and every parameter's
    step is the same; else one ``step/p`` per parameter."""
    template = optimizer._init(ctx, shared=False)
    slots = optimizer.hyper.slots
    variables = {n for n, _ in ctx.latest_variables()}
    problems = _Problems(where)
    for name in names:
        if template.variable_entry(f"step/{name}") is not None:
            continue
        if name in variables:
            why = "a buffer" if name in set(ctx.buffers()) else "not floating-point"
            problems.add(
                ExpectationError,
                f"variable `{name}` has optimizer state in the source but is {why} in the"
                " context (no optimizer state)",
            )
        else:
            close = did_you_mean(name, variables)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            problems.add(UnknownNameError, f"no variable `{name}` in the context{hint}")
    converted: dict[str, Any] = {}
    for name, moments in values.items():
        var = ctx.variable_entry(name)
        if var is None or template.variable_entry(f"step/{name}") is None:
            continue
        for slot in slots:
            if slot not in moments:
                continue
            key = f"{slot}/{name}"
            like = template.variable_entry(key)
            assert like is not None
            value = moments[slot]
            try:
                dims = tuple(int(d) for d in value.shape)
            except (AttributeError, TypeError):
                problems.add(ExpectationError, f"{key} is not an array: {short_repr(value)}")
                continue
            if dims != var.dims:
                problems.add(
                    ShapeMismatchError,
                    f"{key} has shape {dims} but variable `{name}` has shape {var.dims}",
                )
                continue
            converted[key] = _convert(value, like, key)
    problems.raise_any()
    entries = template.latest_variables()
    counters = {key[5:]: steps.get(key[5:], 0.0) for key, _ in entries if key.startswith("step/")}
    shared = (
        bool(counters)
        and len(set(counters.values())) == 1
        and optimizer._shares(list({at.library for _, at in entries}))
    )
    items: list[tuple[str, Any]] = []
    placed = False  # the shared counter, in place of the first `step/p`
    for key, at in entries:
        if key == "count":
            items.append(("count", at.library.scalar(count, at.library.counter_dtype, at.t)))
        elif key.startswith("step/") and shared:
            if not placed:
                var = ctx.variable_entry(key[5:])
                assert var is not None
                items.append((SHARED_STEP, at.library.scalar(counters[key[5:]], at.dtype, var.t)))
                placed = True
        elif key.startswith("step/") and key[5:] in steps:
            var = ctx.variable_entry(key[5:])
            assert var is not None
            items.append((key, at.library.scalar(steps[key[5:]], at.dtype, var.t)))
        elif key in converted:
            items.append((key, converted[key]))
        else:
            items.append((key, at.t))
    return RuntimeContext.empty().with_variables(items, adopt=True)

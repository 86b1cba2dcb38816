"""Array libraries: how each one's tensors are stored, checked, converted and rendered.

A context stores numpy arrays, torch tensors and jax arrays side by side. Everything
that differs between those libraries goes through one object per library, a
:class:`Backend`; no code outside this package asks which library a value belongs to.
The backend of a value is found from its type without importing torch or jax until a
value of theirs is seen.

Reading map:
- :class:`Backend` (in :mod:`._base`) -- the interface every library implements.
- :data:`NUMPY` (:mod:`.numpy`), torch (:mod:`.torch`), DTensors (:mod:`.dtensor`),
  jax (:mod:`.jax`),
  :data:`OPAQUE` (:mod:`.opaque`: pytree leaves that are not arrays).
- :func:`backend_of` -- the backend for a value, or ``TypeError`` naming what was given.
- :func:`backend_named` -- the backend called ``"numpy"``, ``"torch"`` or ``"jax"``.
- :func:`register_library` -- add an array library: its name, the module whose import
  makes it possible, a test for its arrays and a loader for its :class:`Backend`.
- :func:`read_checked` -- a stored tensor, refused (naming its entry) when written in place.
- :data:`UNKNOWN_DEVICES` -- device names that say "no device" (tracers, opaque leaves).

Adding an array library is one module defining a :class:`Backend` subclass plus one
:func:`register_library` call (docs/architecture.md has the recipe).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from torchlean._text import short_repr
from torchlean.errors import BackendError
from torchlean.runtime.backends._base import NO_DEVICE, TRACED, UNKNOWN_DEVICES, Backend
from torchlean.runtime.backends.numpy import NUMPY
from torchlean.runtime.backends.opaque import OPAQUE

__all__ = [
    "NO_DEVICE",
    "NUMPY",
    "OPAQUE",
    "TRACED",
    "UNKNOWN_DEVICES",
    "Backend",
    "backend_named",
    "backend_of",
    "libraries",
    "read_checked",
    "register_library",
]


@dataclass(frozen=True)
class _Library:
    name: str
    #: The top-level module whose arrays this library stores (never imported here).
    module: str
    #: True for an array of this library (called only once ``module`` is imported).
    recognise: Callable[[Any, Any], bool]
    #: Builds the backend (imports the library).
    load: Callable[[], Backend]


_LIBRARIES: Final[dict[str, _Library]] = {}
_LOADED: Final[dict[str, Backend]] = {"numpy": NUMPY}
#: The backend of each value type seen so far: one dict lookup on the hot path.
BY_TYPE: Final[dict[type, Backend]] = {np.ndarray: NUMPY}


def register_library(
    name: str,
    *,
    module: str,
    recognise: Callable[[Any, Any], bool],
    load: Callable[[], Backend],
    before: str | None = None,
) -> None:
    """Teach contexts a new array library.

    ``recognise(value, mod)`` is called with the imported ``module`` (only once it is
    in ``sys.modules``, so nothing is imported here) and says whether ``value`` is one
    of its arrays; ``load()`` builds the :class:`Backend`, importing the library.
    Libraries are asked in registration order; ``before`` (a registered name) asks
    this one first, for arrays that are also arrays of that library (a DTensor is a
    ``torch.Tensor``). Registering a name twice replaces the first registration.
    """
    if not name or not isinstance(name, str):
        raise TypeError(f"register_library: name must be a non-empty str, got {name!r}")
    if before is not None and before not in _LIBRARIES:
        raise ValueError(
            f"register_library: before must name a registered library"
            f" ({', '.join(_LIBRARIES)}), got {before!r}"
        )
    _LIBRARIES.pop(name, None)
    entries = list(_LIBRARIES.items())
    at = len(entries) if before is None else [n for n, _ in entries].index(before)
    entries.insert(at, (name, _Library(name, module, recognise, load)))
    _LIBRARIES.clear()
    _LIBRARIES.update(entries)
    _LOADED.pop(name, None)
    for tp, backend in list(BY_TYPE.items()):
        if backend.name == name or (before is not None and backend is not NUMPY):
            del BY_TYPE[tp]  # a library asked earlier may claim types seen already


def libraries() -> tuple[str, ...]:
    """The names of the array libraries a context can hold, numpy first."""
    return ("numpy", *_LIBRARIES)


def backend_named(name: str) -> Backend:
    """The backend called ``name`` (imports the library); ``ValueError`` when unknown."""
    backend = _LOADED.get(name)
    if backend is not None:
        return backend
    library = _LIBRARIES.get(name)
    if library is None:
        raise ValueError(f"backend must be one of {', '.join(libraries())}, got {name!r}")
    try:
        backend = library.load()
    except ImportError as e:
        raise BackendError(f"the {name} backend needs {library.module} installed: {e}") from e
    _LOADED[name] = backend
    return backend


def backend_of(x: object) -> Backend:
    """The backend that stores ``x``; ``TypeError`` when ``x`` is not a supported array.

    Cost: one dict lookup for a type already seen.
    """
    tp = type(x)
    backend = BY_TYPE.get(tp)
    if backend is not None:
        return backend
    if isinstance(x, (np.ndarray, np.generic)):
        backend = NUMPY
    else:
        for library in _LIBRARIES.values():
            mod = sys.modules.get(library.module)
            if mod is not None and library.recognise(x, mod):
                backend = backend_named(library.name)
                break
        else:
            raise _not_an_array(x)
    BY_TYPE[tp] = backend
    return backend


def read_checked(at: Any, what: str) -> Any:
    """The tensor of the ``AnyTensor`` ``at``; raises, naming ``what``, if it was written
    in place since it was stored."""
    if at._version is not None:
        at._backend.check_intact(at._t, at._version, what)
    return at._t


def _not_an_array(x: object) -> TypeError:
    return TypeError(
        f"expected an array (numpy.ndarray, torch.Tensor or jax.Array), "
        f"got {type(x).__module__}.{type(x).__qualname__} {short_repr(x)}"
    )


def _torch_backend() -> Backend:
    from torchlean.runtime.backends.torch import TorchBackend

    return TorchBackend()


def _dtensor_backend() -> Backend:
    from torchlean.runtime.backends.dtensor import DTensorBackend

    return DTensorBackend()


def _jax_backend() -> Backend:
    from torchlean.runtime.backends.jax import JaxBackend

    return JaxBackend()


register_library(
    "torch",
    module="torch",
    recognise=lambda x, torch: isinstance(x, torch.Tensor),
    load=_torch_backend,
)
register_library(
    "dtensor",
    module="torch.distributed.tensor",
    recognise=lambda x, mod: isinstance(x, mod.DTensor),
    load=_dtensor_backend,
    before="torch",
)
register_library(
    "jax",
    module="jax",
    recognise=lambda x, jax: isinstance(x, jax.Array),  # arrays and tracers alike
    load=_jax_backend,
)

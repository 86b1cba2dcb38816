"""Array backends: how each array library's tensors are stored, checked and rendered.

A context stores numpy arrays, torch tensors and jax arrays side by side. This private
module hides their differences behind one small interface, :class:`Backend`, and picks
the backend of a value from its type without importing torch or jax until a value of
theirs is seen.

Reading map:
- :class:`Backend` -- the interface: ``freeze`` (take a value into a context),
  ``adopt`` (take a fresh value the caller gives up), ``check_intact`` (refuse a value
  written in place), ``dtype_name``, ``device``, ``to_numpy``, ``add``.
- :func:`backend_of` -- the backend for a value, or ``TypeError`` naming what was given.
- :func:`dtype_name` -- a canonical dtype name (``"float32"``) from any library's dtype.

The immutability promise per backend:
- numpy: the stored array is a private, read-only copy (a view of a read-only buffer the
  library owns), so neither the caller's array nor a looked-up array can be written.
- torch: the stored tensor is the caller's tensor, detached, with its version counter
  recorded. Writing it in place (through any view) bumps the counter, and every later
  read through a context raises :class:`~torchlean.errors.InPlaceModificationError`.
- jax: arrays are immutable; they are stored as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numpy as np

from torchlean.errors import BackendError, InPlaceModificationError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Backend", "NUMPY", "backend_of", "dtype_name", "is_array"]


class Backend:
    """How one array library's tensors are stored, checked and rendered."""

    name: str = "?"
    #: True when stored values carry a version that must be checked on every read.
    versioned: bool = False

    def freeze(self, x: Any) -> Any:
        """Return the value a context stores for ``x`` (a protected copy or ``x``)."""
        raise NotImplementedError

    def adopt(self, x: Any) -> Any:
        """Like :meth:`freeze`, for a fresh value nobody else holds (no copy)."""
        return self.freeze(x)

    def version(self, x: Any) -> int | None:
        """The version counter of a stored value, or ``None`` when it has none."""
        return None

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        """Raise when the stored value was written in place since it was stored."""

    def dims(self, x: Any) -> tuple[int, ...]:
        return tuple(int(d) for d in x.shape)

    def dtype_name(self, x: Any) -> str:
        return dtype_name(x.dtype)

    def device(self, x: Any) -> str:
        return "cpu"

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        """A numpy copy or view of ``x`` for rendering and saving (never moves ``x``)."""
        raise NotImplementedError

    def add(self, a: Any, b: Any) -> Any:
        return a + b


class _NumpyBackend(Backend):
    name = "numpy"

    def freeze(self, x: Any) -> Any:
        copy = x.copy() if type(x) is np.ndarray else np.array(x, copy=True)
        copy.setflags(write=False)
        # A view of a read-only base cannot be made writeable again.
        return copy.view()

    def adopt(self, x: Any) -> Any:
        if type(x) is not np.ndarray or x.base is not None or not x.flags.owndata:
            return self.freeze(x)
        x.setflags(write=False)
        return x.view()

    def dims(self, x: Any) -> tuple[int, ...]:
        return x.shape  # type: ignore[no-any-return]

    def dtype_name(self, x: Any) -> str:
        return x.dtype.name  # type: ignore[no-any-return]

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return np.asarray(x)


NUMPY: Final = _NumpyBackend()


class _TorchBackend(Backend):
    name = "torch"
    versioned = True

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def freeze(self, x: Any) -> Any:
        # detach() shares storage and the version counter with x, so a write through
        # the caller's tensor, or any view of it, is seen by check_intact.
        return x.detach()

    def adopt(self, x: Any) -> Any:
        return x.detach()

    def dims(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def version(self, x: Any) -> int | None:
        return int(x._version)

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        if x._version != version:
            raise InPlaceModificationError(
                f"{what} was modified in place after it was stored in a context; "
                "contexts never change, so the value can no longer be trusted. "
                "Register a copy (tensor.clone()) if you need to keep writing to it"
            )

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def device(self, x: Any) -> str:
        return str(x.device)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        t = x.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if t.dtype == self._torch.bfloat16:
            import ml_dtypes

            return t.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()


class _JaxBackend(Backend):
    name = "jax"

    def freeze(self, x: Any) -> Any:
        return x

    def dtype_name(self, x: Any) -> str:
        return dtype_name(x.dtype)

    def device(self, x: Any) -> str:
        try:
            devices = x.devices()
        except Exception:  # a tracer has no devices
            return "traced"
        return ",".join(sorted(str(d) for d in devices))

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return np.asarray(x)


_BY_TYPE: Final[dict[type, Backend]] = {np.ndarray: NUMPY}
_LOADERS: Final[dict[str, Callable[[], Backend]]] = {
    "torch": _TorchBackend,
    "jax": _JaxBackend,
    "jaxlib": _JaxBackend,
}
_LOADED: Final[dict[str, Backend]] = {}


def _load(root: str) -> Backend:
    backend = _LOADED.get(root)
    if backend is None:
        factory = _LOADERS[root]
        try:
            backend = factory()
        except ImportError as e:  # pragma: no cover - a value of theirs implies installed
            raise BackendError(f"the {root} backend needs {root} installed: {e}") from e
        for key in _LOADERS:
            if _LOADERS[key] is factory:
                _LOADED[key] = backend
    return backend


def backend_of(x: object) -> Backend:
    """The backend that stores ``x``; ``TypeError`` when ``x`` is not a supported array.

    Cost: one dict lookup for a type already seen.
    """
    backend = _BY_TYPE.get(type(x))
    if backend is not None:
        return backend
    tp = type(x)
    root = tp.__module__.partition(".")[0]
    if isinstance(x, (np.ndarray, np.generic)):
        backend = NUMPY
    elif root in _LOADERS and hasattr(x, "shape") and hasattr(x, "dtype"):
        backend = _load(root)
        if root == "torch" and not isinstance(x, backend._torch.Tensor):  # type: ignore[attr-defined]
            raise _not_an_array(x)
    else:
        raise _not_an_array(x)
    _BY_TYPE[tp] = backend
    return backend


def is_array(x: object) -> bool:
    """True when ``x`` is an array a context can store."""
    try:
        backend_of(x)
    except TypeError:
        return False
    return True


def _not_an_array(x: object) -> TypeError:
    text = repr(x)
    if len(text) > 60:
        text = text[:57] + "..."
    return TypeError(
        f"expected an array (numpy.ndarray, torch.Tensor or jax.Array), "
        f"got {type(x).__module__}.{type(x).__qualname__} {text}"
    )


def dtype_name(dtype: object) -> str:
    """The canonical name of a dtype from numpy, torch, jax or a string: ``"float32"``."""
    if isinstance(dtype, np.dtype):
        return dtype.name
    text = str(dtype)
    if text.startswith("torch."):
        return text.removeprefix("torch.")
    try:
        return np.dtype(dtype).name  # type: ignore[call-overload,no-any-return]
    except TypeError:
        pass
    if isinstance(dtype, str):
        try:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, dtype)).name
        except (ImportError, AttributeError, TypeError):
            pass
    raise TypeError(f"not a dtype: {dtype!r}")

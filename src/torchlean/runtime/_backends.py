"""Array backends: how each array library's tensors are stored, checked and rendered.

A context stores numpy arrays, torch tensors and jax arrays side by side. This private
module hides their differences behind one small interface, :class:`Backend`, and picks
the backend of a value from its type without importing torch or jax until a value of
theirs is seen.

Reading map:
- :class:`Backend` -- the interface: ``freeze`` (take a value into a context),
  ``adopt`` (take a fresh value the caller gives up), ``check_intact`` (refuse a value
  written in place), ``dtype_name``, ``device``, ``data`` / ``to_numpy`` (values as
  numpy, never moving the tensor), ``stand_in`` (text for a value without data),
  ``nonfinite``, ``add``.
- :data:`NUMPY`, :data:`OPAQUE` -- the numpy backend, and the backend of the leaves a
  pytree transformation puts in a context that are not arrays (``None``, tracers' stand
  ins, ``jax.ShapeDtypeStruct``...).
- :func:`backend_of` -- the backend for a value, or ``TypeError`` naming what was given.
- :func:`read_checked` -- a stored tensor, refused (naming its entry) when written in place.
- :func:`dtype_name` -- a canonical dtype name (``"float32"``) from any library's dtype.
- :data:`UNKNOWN_DEVICES` -- device names that say "no device" (tracers, opaque leaves).

The immutability promise per backend:
- numpy: the stored array is a read-only array over a private, immutable ``bytes`` copy
  of the caller's data, so neither the caller's array nor a looked-up array can be
  written, and numpy refuses to make it writeable again. An array that already lies over
  an immutable buffer (one a lookup returned) is stored without a copy. A fresh result
  handed over with ``adopt`` (e.g. an optimizer's output) is made read-only without a
  copy.
- torch: the stored tensor is the caller's tensor, detached (no copy), with its version
  counter recorded. Writing it in place (through any view) bumps the counter, and every
  later read through a context raises :class:`~torchlean.errors.InPlaceModificationError`.
  An inference tensor has no version counter, so it is stored as a clone.
- jax: arrays are immutable; they are stored as they are.

Device names are canonical across libraries: ``"cpu"`` for any CPU array, ``"cuda:N"``
for a GPU (torch's index, jax's local hardware id), torch's ``"meta"`` stays ``"meta"``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from torchlean.errors import BackendError, InPlaceModificationError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "NUMPY",
    "OPAQUE",
    "UNKNOWN_DEVICES",
    "Backend",
    "backend_of",
    "dtype_name",
    "is_array",
]

#: The device of a traced value (under ``jax.jit`` / ``jax.grad``): not known.
TRACED: Final = "traced"
#: The device of an opaque pytree leaf (``None``, a ``ShapeDtypeStruct``...).
NO_DEVICE: Final = "none"
#: Device names that stand for "no device"; ``check()`` leaves them out.
UNKNOWN_DEVICES: Final = frozenset({TRACED, NO_DEVICE})

# Element types numpy has no native type for; their values are shown through float32.
_EXTENDED_FLOATS: Final = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e4m3b11fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn",
    }
)


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
        """The canonical device name: ``"cpu"``, ``"cuda:0"``, ``"meta"``..."""
        return "cpu"

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        """The values of ``x`` as numpy, or ``None`` when ``x`` has none to read.

        A tensor on another device is copied to the host; ``x`` itself never moves.
        Cost: O(size) for a copy.
        """
        return self.to_numpy(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        """A numpy copy or view of ``x`` for rendering and saving (never moves ``x``).

        Raises :class:`~torchlean.errors.BackendError` for a value without data (a
        meta tensor, a tracer).
        """
        raise NotImplementedError

    def stand_in(self, x: Any) -> str:
        """A short text standing for ``x`` where its values cannot be shown."""
        return f"<{self.name} {self.dtype_name(x)} {self.dims(x)} on {self.device(x)}>"

    def nonfinite(self, x: Any) -> tuple[int, int]:
        """The number of NaN and of infinite elements of ``x`` ((0, 0) without data).

        Cost: O(size).
        """
        array = self.data(x)
        if array is None:
            return (0, 0)
        return _numpy_nonfinite(array)

    def add(self, a: Any, b: Any) -> Any:
        return a + b


def _numpy_nonfinite(array: np.ndarray[Any, Any]) -> tuple[int, int]:
    if array.dtype.kind not in "fc" and array.dtype.name not in _EXTENDED_FLOATS:
        return (0, 0)
    nan = int(np.count_nonzero(np.isnan(array)))
    inf = int(np.count_nonzero(np.isinf(array)))
    return (nan, inf)


class _NumpyBackend(Backend):
    name = "numpy"

    def freeze(self, x: Any) -> Any:
        if type(x) is not np.ndarray:
            x = np.asarray(x)
        elif x.base is not None and _immutable(x):
            return x  # already over an immutable buffer (e.g. from a lookup): no copy
        if x.dtype.hasobject:
            raise TypeError(
                f"expected an array of numbers, got a numpy array of dtype {x.dtype}"
                " (Python objects cannot be stored in a context)"
            )
        # One copy into an immutable bytes object: an array over it is read-only and
        # can never be made writeable again, whoever holds it.
        return np.ndarray(x.shape, x.dtype, buffer=x.tobytes())

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


def _immutable(x: np.ndarray[Any, Any]) -> bool:
    """True when no one can ever write ``x``'s memory: it is owned by a ``bytes`` object."""
    base: object = x.base
    while isinstance(base, np.ndarray):
        base = base.base
    return type(base) is bytes


NUMPY: Final = _NumpyBackend()


class _OpaqueBackend(Backend):
    """Leaves a pytree transformation put in a context that are not arrays.

    ``jax.tree_util.tree_map(lambda x: None, ctx)``, ``jax.eval_shape`` and jax's own
    internals rebuild a context around any object; such a value is stored as it is,
    with the shape it has (or the one its entry had), and shown by its ``repr``.
    """

    name = "opaque"

    def freeze(self, x: Any) -> Any:
        return x

    def dtype_name(self, x: Any) -> str:
        try:
            return dtype_name(x.dtype)
        except (AttributeError, TypeError):
            return type(x).__name__

    def device(self, x: Any) -> str:
        return NO_DEVICE

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        return None

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        raise BackendError(f"{type(x).__name__} {_short_repr(x)} is not an array")

    def stand_in(self, x: Any) -> str:
        return _short_repr(x)

    def add(self, a: Any, b: Any) -> Any:
        raise BackendError(f"cannot add {type(a).__name__} and {type(b).__name__}")


OPAQUE: Final = _OpaqueBackend()


class _TorchBackend(Backend):
    name = "torch"
    versioned = True

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def freeze(self, x: Any) -> Any:
        if x.is_inference():
            # An inference tensor has no version counter: keep a normal clone instead.
            with self._torch.inference_mode(False):
                return x.detach().clone()
        # detach() shares storage and the version counter with x, so a write through
        # the caller's tensor, or any view of it, is seen by check_intact.
        return x.detach()

    def adopt(self, x: Any) -> Any:
        return self.freeze(x)

    def dims(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def version(self, x: Any) -> int | None:
        try:
            return int(x._version)
        except RuntimeError:  # an inference tensor handed in by a pytree transform
            return None

    def check_intact(self, x: Any, version: int | None, what: str) -> None:
        if x._version != version:
            raise InPlaceModificationError(
                f"{what} was modified in place after it was stored in a context"
                f" (its version counter went from {version} to {x._version}); contexts"
                " never change, so the value can no longer be trusted. Register a copy"
                " (tensor.clone()) if you need to keep writing to it"
            )

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def device(self, x: Any) -> str:
        device = x.device
        return "cpu" if device.type == "cpu" else str(device)

    def _has_data(self, x: Any) -> bool:
        if x.device.type == "meta":
            return False
        name = type(x).__name__
        if name in ("FakeTensor", "FunctionalTensor"):
            return False
        return not self._torch._C._functorch.is_functorch_wrapped_tensor(x)

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        if not self._has_data(x):
            return None
        return self.to_numpy(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        torch = self._torch
        if not self._has_data(x):
            raise BackendError(f"{self.stand_in(x)} has no data to read")
        t = x.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.device.type != "cpu":
            t = t.to("cpu")  # a copy: the stored tensor stays where it is
        t = t.resolve_conj().resolve_neg()
        try:
            return t.numpy()  # type: ignore[no-any-return]
        except TypeError:
            pass  # a dtype numpy lacks: bfloat16, float8, complex32...
        name = self.dtype_name(t)
        try:
            import ml_dtypes

            target = np.dtype(getattr(ml_dtypes, name))
        except (ImportError, AttributeError, TypeError):
            target = None
        if target is not None:
            bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[target.itemsize]
            return t.view(bits).numpy().view(target)  # type: ignore[no-any-return]
        wide = torch.complex64 if t.is_complex() else torch.float32
        return t.to(wide).numpy()  # type: ignore[no-any-return]

    def stand_in(self, x: Any) -> str:
        kind = "meta tensor" if x.device.type == "meta" else f"{type(x).__name__}"
        return f"<{kind} {self.dtype_name(x)} {self.dims(x)}>"

    def nonfinite(self, x: Any) -> tuple[int, int]:
        if not self._has_data(x):
            return (0, 0)
        t = x.detach()
        if not (t.is_floating_point() or t.is_complex()):
            return (0, 0)
        if t.layout != self._torch.strided:
            t = t.to_dense()
        # Counted where the tensor lives: a GPU tensor is not copied to the host.
        nan = int(self._torch.isnan(t).sum().item())
        inf = int(self._torch.isinf(t).sum().item())
        return (nan, inf)


class _JaxBackend(Backend):
    name = "jax"

    def __init__(self) -> None:
        import jax

        self._tracer = jax.core.Tracer

    def freeze(self, x: Any) -> Any:
        return x

    def dtype_name(self, x: Any) -> str:
        return dtype_name(x.dtype)

    def device(self, x: Any) -> str:
        if isinstance(x, self._tracer):
            return TRACED
        try:
            devices = x.devices()
        except Exception:  # pragma: no cover - any other abstract value
            return TRACED
        return ",".join(sorted({_jax_device_name(d) for d in devices}))

    def data(self, x: Any) -> np.ndarray[Any, Any] | None:
        if isinstance(x, self._tracer) or x.is_deleted():
            return None
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        array = self.data(x)
        if array is None:
            raise BackendError(f"{self.stand_in(x)} has no data to read")
        return array

    def stand_in(self, x: Any) -> str:
        if isinstance(x, self._tracer):
            kind = "traced"
        elif x.is_deleted():
            kind = "deleted jax array"
        else:  # pragma: no cover - only values without data get here
            kind = "jax array"
        return f"<{kind} {self.dtype_name(x)} {self.dims(x)}>"

    def nonfinite(self, x: Any) -> tuple[int, int]:
        if isinstance(x, self._tracer) or x.is_deleted():
            return (0, 0)
        if self.device(x) == "cpu":
            return _numpy_nonfinite(np.asarray(x))  # a view: no copy on the host
        import jax.numpy as jnp

        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return (0, 0)
        # Counted where the array lives: a GPU array is not copied to the host.
        return (int(jnp.isnan(x).sum()), int(jnp.isinf(x).sum()))


def _jax_device_name(device: Any) -> str:
    platform = device.platform
    if platform == "cpu":
        return "cpu"
    index = getattr(device, "local_hardware_id", None)
    if index is None:
        index = device.id
    if platform in ("gpu", "cuda", "rocm"):
        platform = "cuda"  # torch calls NVIDIA and AMD GPUs alike "cuda"
    return f"{platform}:{index}"


_BY_TYPE: Final[dict[type, Backend]] = {np.ndarray: NUMPY}
_LOADERS: Final[dict[str, Callable[[], Backend]]] = {
    "torch": _TorchBackend,
    "jax": _JaxBackend,
}
_LOADED: Final[dict[str, Backend]] = {}


def _load(library: str) -> Backend:
    backend = _LOADED.get(library)
    if backend is None:
        try:
            backend = _LOADERS[library]()
        except ImportError as e:  # pragma: no cover - a value of theirs implies installed
            raise BackendError(f"the {library} backend needs {library} installed: {e}") from e
        _LOADED[library] = backend
        from torchlean.runtime import pytree

        pytree._on_backend_loaded(library)
    return backend


def _library_of(x: object) -> str | None:
    """``"torch"`` or ``"jax"`` when ``x`` is one of their arrays (imports neither)."""
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None)
    if tensor is not None and isinstance(x, tensor):
        return "torch"
    jax = sys.modules.get("jax")
    array = getattr(jax, "Array", None)
    if array is not None and isinstance(x, array):
        return "jax"  # jax arrays and tracers alike
    return None


def backend_of(x: object) -> Backend:
    """The backend that stores ``x``; ``TypeError`` when ``x`` is not a supported array.

    Cost: one dict lookup for a type already seen.
    """
    tp = type(x)
    backend = _BY_TYPE.get(tp)
    if backend is not None:
        return backend
    if isinstance(x, (np.ndarray, np.generic)):
        backend = NUMPY
    else:
        library = _library_of(x)
        if library is None:
            raise _not_an_array(x)
        backend = _load(library)
    _BY_TYPE[tp] = backend
    return backend


def is_array(x: object) -> bool:
    """True when ``x`` is an array a context can store."""
    try:
        backend_of(x)
    except TypeError:
        return False
    return True


def read_checked(at: Any, what: str) -> Any:
    """The tensor of the ``AnyTensor`` ``at``; raises, naming ``what``, if it was written
    in place since it was stored."""
    if at._version is not None:
        at._backend.check_intact(at._t, at._version, what)
    return at._t


def _short_repr(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _not_an_array(x: object) -> TypeError:
    return TypeError(
        f"expected an array (numpy.ndarray, torch.Tensor or jax.Array), "
        f"got {type(x).__module__}.{type(x).__qualname__} {_short_repr(x)}"
    )


def render_array(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``array`` ready to print: extended floats (bfloat16, float8) shown as float32.

    The values are exact (each of those types is a subset of float32), and print as
    ``1.0`` rather than ``1``. Cost: O(size) for an extended float, else O(1).
    """
    if array.dtype.name in _EXTENDED_FLOATS:
        return array.astype(np.float32)
    return array


def dtype_name(dtype: object) -> str:
    """The canonical name of a dtype from numpy, torch, jax or a string: ``"float32"``."""
    if isinstance(dtype, np.dtype):
        return dtype.name
    text = str(dtype)
    if text.startswith("torch."):
        if isinstance(dtype, str):  # a name such as "torch.float32" must name a real dtype
            try:
                return dtype_name(text.removeprefix("torch."))
            except TypeError:
                raise TypeError(f"not a dtype: {dtype!r}") from None
        return text.removeprefix("torch.")
    try:
        return np.dtype(dtype).name  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError, SyntaxError):  # numpy parses strings like "f4,i2"
        pass
    if isinstance(dtype, str):
        try:
            import ml_dtypes

            return str(np.dtype(getattr(ml_dtypes, dtype)).name)
        except (ImportError, AttributeError, TypeError):
            pass
    raise TypeError(f"not a dtype: {dtype!r}")

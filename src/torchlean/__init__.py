"""torchlean: TorchLean's runtime context for Python machine learning.

A :class:`RuntimeContext` is an immutable registry of named tensors (numpy, PyTorch or
JAX arrays), named gradients and a fresh-id counter, with the exact semantics of
TorchLean's ``NN.Runtime.Context`` and shape-checked lookups.

Reading map:
- :mod:`torchlean.spec` -- :class:`Shape`.
- :mod:`torchlean.runtime` -- :class:`AnyTensor`, :class:`RuntimeContext` and the seed's
  operations.
- :mod:`torchlean.errors` -- :class:`TorchLeanError` and its subclasses.
"""

from torchlean.errors import DTypeMismatchError as DTypeMismatchError
from torchlean.errors import FormatError as FormatError
from torchlean.errors import ShapeMismatchError as ShapeMismatchError
from torchlean.errors import TorchLeanError as TorchLeanError
from torchlean.errors import UnknownNameError as UnknownNameError
from torchlean.runtime.any_tensor import AnyTensor as AnyTensor
from torchlean.runtime.check import CheckReport as CheckReport
from torchlean.runtime.context import RuntimeContext as RuntimeContext
from torchlean.runtime.functions import empty_context as empty_context
from torchlean.spec.shape import Shape as Shape

__version__ = "0.1.0"

__all__ = [
    "AnyTensor",
    "CheckReport",
    "DTypeMismatchError",
    "FormatError",
    "RuntimeContext",
    "Shape",
    "ShapeMismatchError",
    "TorchLeanError",
    "UnknownNameError",
    "__version__",
    "empty_context",
]

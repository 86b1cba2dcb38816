"""The runtime layer: ``AnyTensor`` and ``RuntimeContext`` (mirrors ``NN.Runtime.Context``).

Reading map:
- :class:`AnyTensor` -- a tensor with its shape (:mod:`torchlean.runtime.any_tensor`).
- :class:`RuntimeContext`, :func:`empty_context` and the seed's operations as functions
  (:mod:`torchlean.runtime.context`).
- :class:`CheckReport`, :class:`Problem` -- what ``RuntimeContext.check`` returns.
- :mod:`torchlean.runtime.pytree` -- a context is a JAX and a PyTorch pytree
  (registered when jax or torch is imported; :func:`~torchlean.runtime.pytree.register`).
"""

from torchlean.runtime import pytree as pytree
from torchlean.runtime.any_tensor import AnyTensor as AnyTensor
from torchlean.runtime.any_tensor import ArrayLike as ArrayLike
from torchlean.runtime.check import CheckReport as CheckReport
from torchlean.runtime.check import Problem as Problem
from torchlean.runtime.context import RuntimeContext as RuntimeContext
from torchlean.runtime.functions import clear_gradients as clear_gradients
from torchlean.runtime.functions import context_size as context_size
from torchlean.runtime.functions import context_to_string as context_to_string
from torchlean.runtime.functions import empty_context as empty_context
from torchlean.runtime.functions import get_gradient as get_gradient
from torchlean.runtime.functions import get_variable as get_variable
from torchlean.runtime.functions import gradient_count as gradient_count
from torchlean.runtime.functions import gradient_names as gradient_names
from torchlean.runtime.functions import has_variable as has_variable
from torchlean.runtime.functions import is_valid_context as is_valid_context
from torchlean.runtime.functions import register_gradient as register_gradient
from torchlean.runtime.functions import register_variable as register_variable
from torchlean.runtime.functions import set_gradient as set_gradient
from torchlean.runtime.functions import set_variable as set_variable
from torchlean.runtime.functions import variable_names as variable_names

__all__ = [
    "AnyTensor",
    "ArrayLike",
    "CheckReport",
    "Problem",
    "RuntimeContext",
    "clear_gradients",
    "context_size",
    "context_to_string",
    "empty_context",
    "get_gradient",
    "get_variable",
    "gradient_count",
    "gradient_names",
    "has_variable",
    "is_valid_context",
    "register_gradient",
    "register_variable",
    "set_gradient",
    "set_variable",
    "variable_names",
]

"""Optimizers over runtime contexts: ``init(ctx) -> state``, ``step(ctx, state)``.

The optimizers read the gradients registered in a context (see
:func:`torchlean.autograd.value_and_grad`) and return a context with updated variables,
with the numerics of ``torch.optim`` (torch's fused kernels on torch contexts, one
jitted update on jax, plain numpy otherwise: the array library's backend runs the
update, see :meth:`torchlean.runtime.backends.Backend.updater`). Their state is a
context too.

Reading map:
- :func:`sgd`, :func:`adam`, :func:`adamw` -- the optimizers (:mod:`torchlean.optim._optimizer`).
- :class:`Optimizer` -- ``init``, ``step(ctx, state, *, donate=True)``, ``lr_at``.
- :class:`Hyper` -- the hyperparameters, keyword-only (:mod:`torchlean.optim._hyper`).
- :func:`flatten` -- flat storage: each (device, dtype) group of variables as views of
  one buffer, so that gradients, moments and the step run over whole buffers
  (:mod:`torchlean.optim._flat`).
- :mod:`torchlean.optim._plan` -- the pairing of a step, made once per layout.
- ``groups=``, ``no_decay=``, ``clip=`` -- options of every optimizer: parameter groups
  and the weight-decay mask (:mod:`torchlean.optim._groups`), global-norm clipping.
- :func:`import_torch_state`, :func:`import_optax_state` -- start from a ``torch.optim``
  optimizer's state or optax's Adam state (:mod:`torchlean.optim._import`).
- :func:`clip_gradients` -- ``clip_grad_norm_`` over a context (:mod:`torchlean.optim._clip`).
- :mod:`torchlean.optim._rules` -- the update maths, once per optimizer.
- :mod:`torchlean.optim.schedules` -- :func:`cosine_decay`, :func:`linear_warmup`,
  :func:`warmup_cosine`, :func:`constant`.
"""

from torchlean.optim._clip import clip_gradients as clip_gradients
from torchlean.optim._flat import flatten as flatten
from torchlean.optim._hyper import Hyper as Hyper
from torchlean.optim._import import import_optax_state as import_optax_state
from torchlean.optim._import import import_torch_state as import_torch_state
from torchlean.optim._optimizer import Optimizer as Optimizer
from torchlean.optim._optimizer import adam as adam
from torchlean.optim._optimizer import adamw as adamw
from torchlean.optim._optimizer import sgd as sgd
from torchlean.optim.schedules import constant as constant
from torchlean.optim.schedules import cosine_decay as cosine_decay
from torchlean.optim.schedules import linear_warmup as linear_warmup
from torchlean.optim.schedules import warmup_cosine as warmup_cosine

__all__ = [
    "Hyper",
    "Optimizer",
    "adam",
    "adamw",
    "clip_gradients",
    "constant",
    "cosine_decay",
    "flatten",
    "import_optax_state",
    "import_torch_state",
    "linear_warmup",
    "sgd",
    "warmup_cosine",
]

"""A training loop over runtime contexts: ``fit``, and its checkpoints.

:func:`fit` runs ``value_and_grad`` and an optimizer step per batch, shows a progress
bar with the loss, evaluates now and then, writes checkpoints with :mod:`torchlean.io`
and resumes from them to exactly the numbers of an uninterrupted run.

Reading map:
- :func:`fit` -- the loop; returns a :class:`FitResult` (:mod:`torchlean.train._fit`).
- :class:`FitResult` -- the final context and optimizer state, the step, the losses and
  the evaluations.
- :func:`save_checkpoint` / :func:`load_checkpoint` -- one safetensors file holding the
  parameters (``model/<name>``), the optimizer state (``optim/<name>``), the step
  (``train/step``) and the array library's random state (``train/torch_rng`` for torch
  contexts) (:mod:`torchlean.train._checkpoint`).
- :func:`latest_checkpoint` -- the checkpoint of the highest step in a folder.
- :class:`CapturedStep` -- the whole step recorded once and replayed (a CUDA graph on
  torch CUDA tensors), ``fit(..., capture=True)`` (:mod:`torchlean.train._captured`).

Batches: ``data`` is either a callable ``data(step) -> batch`` (the batch of step
``step``, counted from 0: deterministic data makes resuming exact) or an iterable of
batches (a ``DataLoader``, a list; ``epochs=`` passes over it), of which a resumed run
skips the batches already used. A batch is a tuple or list of arguments for
``loss_fn(ctx, *batch)``, a mapping of keyword arguments, or else one argument.
"""

from torchlean.train._captured import CapturedStep as CapturedStep
from torchlean.train._checkpoint import latest_checkpoint as latest_checkpoint
from torchlean.train._checkpoint import load_checkpoint as load_checkpoint
from torchlean.train._checkpoint import save_checkpoint as save_checkpoint
from torchlean.train._fit import FitResult as FitResult
from torchlean.train._fit import StepInfo as StepInfo
from torchlean.train._fit import fit as fit

__all__ = [
    "CapturedStep",
    "FitResult",
    "StepInfo",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

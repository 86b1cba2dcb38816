"""Errors raised by torchlean.

Every error is a :class:`TorchLeanError`. Each subclass also inherits the matching
built-in exception, so ``except KeyError`` or ``except ValueError`` keeps working.

Reading map:
- :class:`TorchLeanError` -- the base of every error the library raises on purpose.
- :class:`UnknownNameError` -- a name that is not in a registry (also a ``KeyError``).
- :class:`ShapeMismatchError` -- a stored shape differs from the one asked for (``ValueError``).
- :class:`DTypeMismatchError` -- an element type differs from the one required (``TypeError``).
- :class:`InvalidShapeError` -- a shape with negative or non-integer dimensions (``ValueError``).
- :class:`FormatError` -- a file that cannot be read as the format it claims (``ValueError``).
- :class:`ExpectationError` -- weights that do not match what a model expects (``ValueError``).
- :class:`InPlaceModificationError` -- a stored tensor was written in place (``RuntimeError``).
- :class:`DonatedContextError` -- a context handed over to an in-place step was used again
  (``RuntimeError``).
- :class:`BackendError` -- an array library that is missing or cannot do what was asked
  (``RuntimeError``).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "DTypeMismatchError",
    "DonatedContextError",
    "ExpectationError",
    "FormatError",
    "InPlaceModificationError",
    "InvalidShapeError",
    "ShapeMismatchError",
    "TorchLeanError",
    "UnknownNameError",
]


class TorchLeanError(Exception):
    """Base class of every error torchlean raises on purpose."""


class UnknownNameError(TorchLeanError, KeyError):
    """A name that is not in the registry it was looked up in."""

    def __str__(self) -> str:
        # KeyError quotes its argument; show the message as written.
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(TorchLeanError, ValueError):
    """A stored shape differs from the shape that was asked for."""


class InvalidShapeError(TorchLeanError, ValueError):
    """A shape with a negative or non-integer dimension."""


class DTypeMismatchError(TorchLeanError, TypeError):
    """An element type differs from the one that is required."""


class FormatError(TorchLeanError, ValueError):
    """A file or document that cannot be read as the format it claims to be."""


class ExpectationError(TorchLeanError, ValueError):
    """Weights that do not match the names, shapes or dtypes a model expects."""


class InPlaceModificationError(TorchLeanError, RuntimeError):
    """A tensor held by a context was modified in place after it was stored."""


class DonatedContextError(TorchLeanError, RuntimeError):
    """A context that was handed over (donated) to an in-place step was used again."""


class BackendError(TorchLeanError, RuntimeError):
    """An array library that is missing, or cannot do what was asked."""

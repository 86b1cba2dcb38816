"""The spec layer: shapes (mirrors TorchLean's ``NN.Spec.Core.Shape``)."""

from torchlean.spec.shape import Shape as Shape
from torchlean.spec.shape import ShapeLike as ShapeLike
from torchlean.spec.shape import as_dims as as_dims

__all__ = ["Shape", "ShapeLike", "as_dims"]

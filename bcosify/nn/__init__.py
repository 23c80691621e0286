"""B-cos building blocks: pure torch modules with no dependency on the rest of bcosify."""

from .bcos import BcosConv2d, BcosLinear
from .layers import DetachableGate, EncodedNormalize, GatedActivation, InputEncoding, LogitLayer
from .mode import (
    ConstantRecorder,
    DetachableModule,
    add_constant,
    is_explanation_mode,
    set_explanation_mode,
)
from .norms import (
    DetachableGroupNorm,
    DetachableLayerNorm,
    DetachableLayerNorm2d,
    UncenteredBatchNorm1d,
    UncenteredBatchNorm2d,
    UncenteredBatchNormAct2d,
)

__all__ = [
    "BcosConv2d",
    "BcosLinear",
    "ConstantRecorder",
    "DetachableGate",
    "DetachableGroupNorm",
    "DetachableLayerNorm",
    "DetachableLayerNorm2d",
    "DetachableModule",
    "EncodedNormalize",
    "GatedActivation",
    "InputEncoding",
    "LogitLayer",
    "UncenteredBatchNorm1d",
    "UncenteredBatchNorm2d",
    "UncenteredBatchNormAct2d",
    "add_constant",
    "is_explanation_mode",
    "set_explanation_mode",
]

"""B-cos building blocks: pure torch modules with no dependency on the rest of bcosify."""

from .attention import (
    AddConstant,
    BcosMultiheadAttention,
    PlainLinear,
    RecordConstant,
    ScaledDotProductAttention,
    attention,
    shifted_window_attention,
)
from .bcos import BcosConv2d, BcosLinear
from .conv1d import BcosConv1d
from .layers import DetachableGate, EncodedNormalize, GatedActivation, InputEncoding, LogitLayer
from .mode import (
    ConstantRecorder,
    DetachableModule,
    add_constant,
    constant_leaf,
    is_explanation_mode,
    set_explanation_mode,
)
from .norms import (
    DetachableGroupNorm,
    DetachableGroupNormAct,
    DetachableLayerNorm,
    DetachableLayerNorm2d,
    DetachableLayerNormAct,
    DetachableLayerNormAct2d,
    DetachableRmsNorm,
    DetachableRmsNormAct,
    UncenteredBatchNorm1d,
    UncenteredBatchNorm2d,
    UncenteredBatchNormAct2d,
)

__all__ = [
    "AddConstant",
    "DetachableGroupNormAct",
    "DetachableLayerNormAct",
    "DetachableLayerNormAct2d",
    "DetachableRmsNormAct",
    "BcosMultiheadAttention",
    "PlainLinear",
    "RecordConstant",
    "ScaledDotProductAttention",
    "attention",
    "constant_leaf",
    "shifted_window_attention",
    "BcosConv1d",
    "BcosConv2d",
    "BcosLinear",
    "ConstantRecorder",
    "DetachableGate",
    "DetachableGroupNorm",
    "DetachableLayerNorm",
    "DetachableLayerNorm2d",
    "DetachableRmsNorm",
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

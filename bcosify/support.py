"""The architectures verified to convert, and the measured support matrix.

Two sources, both measured, never typed in by hand:

* :data:`VERIFIED_MODELS`, one model per family, is covered in CI by the equivalence test (B=1,
  biases kept: the converted model equals the original) and the completeness test (default config:
  contributions plus constants equal the logit) in ``tests/test_models.py``, at the input size (and
  constructor arguments) given here, and its conversion report by the report test: the input
  normalisation folded into the first layer, the classifier moved in front of the global pooling
  (``"head"`` gives the reason where an architecture has no such pooling), nothing unsupported.
* :func:`support_matrix` returns the rows measured by ``scripts/support_matrix.py`` for every
  torchvision classifier and a list of timm models (``docs/support.md`` is written from the same
  rows). ``bcosify models`` prints it.
"""

from __future__ import annotations

__all__ = ["VERIFIED_MODELS", "list_verified_models", "support_matrix", "list_supported_models"]

_TV = "torchvision"

_HEAD_MLP = "its classifier is an MLP on a flattened grid of features (6x6, 7x7), not on a pool"
_HEAD_TOKEN = "its head reads the class token: there is no pooling to move it before"

VERIFIED_MODELS: dict[str, dict] = {
    "resnet18": {"library": _TV, "family": "ResNet", "test_size": 64},
    "resnet50": {"library": _TV, "family": "ResNet", "test_size": 64},
    "resnext50_32x4d": {"library": _TV, "family": "ResNeXt", "test_size": 64},
    "wide_resnet50_2": {"library": _TV, "family": "Wide ResNet", "test_size": 64},
    "densenet121": {"library": _TV, "family": "DenseNet", "test_size": 64},
    "vgg11_bn": {"library": _TV, "family": "VGG", "test_size": 64, "head": _HEAD_MLP},
    "alexnet": {"library": _TV, "family": "AlexNet", "test_size": 64, "head": _HEAD_MLP},
    "squeezenet1_1": {
        "library": _TV,
        "family": "SqueezeNet",
        "test_size": 64,
        "head": "its classifier is a 1x1 conv already in front of the pooling",
    },
    "mobilenet_v2": {"library": _TV, "family": "MobileNetV2", "test_size": 64},
    "mobilenet_v3_small": {"library": _TV, "family": "MobileNetV3", "test_size": 64},
    "efficientnet_b0": {"library": _TV, "family": "EfficientNet", "test_size": 64, "relu": False},
    "regnet_y_400mf": {"library": _TV, "family": "RegNet", "test_size": 64},
    "shufflenet_v2_x1_0": {"library": _TV, "family": "ShuffleNetV2", "test_size": 64},
    "mnasnet0_5": {"library": _TV, "family": "MNASNet", "test_size": 64},
    "googlenet": {"library": _TV, "family": "GoogLeNet", "test_size": 64},
    "inception_v3": {"library": _TV, "family": "Inception v3", "test_size": 80},
    "convnext_tiny": {
        "library": _TV,
        "family": "ConvNeXt",
        "test_size": 64,
        "relu": False,
        "head": "a LayerNorm of the pooled features sits between the pooling and the head",
    },
    "vit_b_16": {
        "library": _TV,
        "family": "ViT",
        "test_size": 32,
        "test_kwargs": {"image_size": 32},
        "relu": False,
        "constants": ("class_token", "encoder.pos_embedding"),
        "head": _HEAD_TOKEN,
    },
    "swin_t": {"library": _TV, "family": "Swin", "test_size": 32, "relu": False},
    "swin_v2_t": {"library": _TV, "family": "Swin v2", "test_size": 32, "relu": False},
    "timm/resnet50": {"library": "timm", "family": "ResNet", "test_size": 64},
    "timm/tf_efficientnet_lite0": {
        "library": "timm",
        "family": "EfficientNet-Lite",
        "test_size": 64,
    },
    "timm/vit_tiny_patch16_224": {
        "library": "timm",
        "family": "ViT / DeiT",
        "test_size": 32,
        "test_kwargs": {"img_size": 32},
        "relu": False,
        "constants": ("cls_token", "pos_embed"),
        "head": _HEAD_TOKEN,
    },
    "timm/swin_tiny_patch4_window7_224": {
        "library": "timm",
        "family": "Swin",
        "test_size": 64,
        "test_kwargs": {"img_size": 64},
        "relu": False,
    },
}


def list_verified_models() -> list[str]:
    """Names accepted by ``bcosify convert`` that are verified to convert exactly.

    Example:
        >>> "resnet50" in list_verified_models()
        True
    """
    return list(VERIFIED_MODELS)


def support_matrix() -> list[dict]:
    """The rows of the last support-matrix run (``scripts/support_matrix.py``, shipped as the
    package data file ``bcosify/support_matrix.json``): model, library, status (``pass``,
    ``unsupported``, ``input-blind``, ...), input size, the source's input dependence, equivalence
    and completeness errors and the reason of a failure. Empty if the matrix was never generated.

    Example:
        >>> rows = support_matrix()
        >>> all("status" in row for row in rows)
        True
    """
    import json
    from importlib import resources

    data = resources.files("bcosify").joinpath("support_matrix.json")
    if not data.is_file():
        return []
    return [dict(row) for row in json.loads(data.read_text(encoding="utf-8"))]


def list_supported_models() -> list[str]:
    """Names of the models that passed the support matrix (equivalence and completeness).

    Example:
        >>> "resnet50" in list_supported_models() or not support_matrix()
        True
    """
    return [row["model"] for row in support_matrix() if row.get("status") == "pass"]

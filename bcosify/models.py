"""The architectures verified to convert.

Every entry is covered by the equivalence test (B=1, biases kept: the converted model equals the
original) and the completeness test (default config: contributions plus constants equal the logit)
in ``tests/test_models.py``, at the input size given here. ``bcosify models`` and the README's table
(``scripts/support_table.py``) read this table.
"""

from __future__ import annotations

__all__ = ["VERIFIED_MODELS", "list_verified_models"]

_TV = "torchvision"

VERIFIED_MODELS: dict[str, dict] = {
    "resnet18": {"library": _TV, "family": "ResNet", "test_size": 64},
    "resnet50": {"library": _TV, "family": "ResNet", "test_size": 64},
    "resnext50_32x4d": {"library": _TV, "family": "ResNeXt", "test_size": 64},
    "wide_resnet50_2": {"library": _TV, "family": "Wide ResNet", "test_size": 64},
    "densenet121": {"library": _TV, "family": "DenseNet", "test_size": 64},
    "vgg11_bn": {"library": _TV, "family": "VGG", "test_size": 64},
    "alexnet": {"library": _TV, "family": "AlexNet", "test_size": 64},
    "squeezenet1_1": {"library": _TV, "family": "SqueezeNet", "test_size": 64},
    "mobilenet_v2": {"library": _TV, "family": "MobileNetV2", "test_size": 64},
    "mobilenet_v3_small": {"library": _TV, "family": "MobileNetV3", "test_size": 64},
    "efficientnet_b0": {"library": _TV, "family": "EfficientNet", "test_size": 64},
    "regnet_y_400mf": {"library": _TV, "family": "RegNet", "test_size": 64},
    "shufflenet_v2_x1_0": {"library": _TV, "family": "ShuffleNetV2", "test_size": 64},
    "mnasnet0_5": {"library": _TV, "family": "MNASNet", "test_size": 64},
    "googlenet": {"library": _TV, "family": "GoogLeNet", "test_size": 64},
    "inception_v3": {"library": _TV, "family": "Inception v3", "test_size": 80},
    "convnext_tiny": {"library": _TV, "family": "ConvNeXt", "test_size": 64},
    "timm/resnet50": {"library": "timm", "family": "ResNet", "test_size": 64},
    "timm/tf_efficientnet_lite0": {
        "library": "timm",
        "family": "EfficientNet-Lite",
        "test_size": 64,
    },
}


def list_verified_models() -> list[str]:
    """Names accepted by ``bcosify convert`` that are verified to convert exactly.

    Example:
        >>> "resnet50" in list_verified_models()
        True
    """
    return list(VERIFIED_MODELS)

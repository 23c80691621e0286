"""Source (unconverted) models by name, their weights and preprocessing, and demo photos.

Names are torchvision classifier names (``"resnet50"``) or timm names prefixed with ``"timm/"``
(``"timm/convnext_tiny"``, optionally with a pretrained tag: ``"timm/resnet50.a1_in1k"``).
Names prefixed with ``"bcos-v2/"`` are the published B-cos v2 models (``_zoo``), returned
already converted.
Every model built here carries two attributes:

- ``model.bcosify_preprocessing``: a :class:`~bcosify.preprocessing.Preprocessing`;
- ``model.bcosify_source``: ``{"name": ..., "num_classes": ..., "weights": ...}``.

Pretrained weights come from the torch.hub cache (torchvision) or the Hugging Face hub cache
(timm). Nothing is downloaded when the file is cached; when it is not and the machine is offline
(``HF_HUB_OFFLINE=1``) or the download host cannot be reached, a :class:`ModelSourceError` is
raised at once, telling how to pass a local weight file instead.

The package keeps its concerns apart, as timm does: ``_registry`` (names and suggestions),
``_builder`` (:func:`build_model`), ``_helpers`` (weight files and state dicts), ``_hub``
(download caches and offline errors), ``_torchvision`` and ``_timm`` (each library's quirks),
``_lite0`` (the packaged EfficientNet-Lite0 and its key map), ``_zoo`` (the B-cos v2 zoo) and
``_photos`` (demo photos).
"""

from bcosify.sources._builder import build_model
from bcosify.sources._helpers import compare_state_dicts, load_state_dict_file
from bcosify.sources._lite0 import load_efficientnet_lite0_packaged
from bcosify.sources._photos import demo_photos
from bcosify.sources._registry import TIMM_PREFIX
from bcosify.sources._zoo import BCOSIFICATION_PREFIX, ZOO_PREFIX, ZooEntry, list_zoo, zoo_entry

__all__ = [
    "BCOSIFICATION_PREFIX",
    "TIMM_PREFIX",
    "ZOO_PREFIX",
    "ZooEntry",
    "list_zoo",
    "zoo_entry",
    "build_model",
    "compare_state_dicts",
    "load_state_dict_file",
    "load_efficientnet_lite0_packaged",
    "demo_photos",
]

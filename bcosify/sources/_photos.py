"""Public-domain photos that installed packages ship (scikit-image, scikit-learn, matplotlib)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def demo_photos() -> list[tuple[str, Image.Image]]:
    """Public-domain / CC0 photos shipped inside installed packages (no download).

    scikit-image (``chelsea``: a cat, ``coffee``: a cup of coffee, ``rocket``: a shuttle launch,
    ``astronaut``: a portrait), scikit-learn (``china``: a temple, ``flower``) and matplotlib
    (``grace_hopper``: a portrait in uniform). Photos of packages that are not installed are
    left out.

    Returns:
        ``(short_name, RGB PIL image)`` pairs.

    Example:
        >>> photos = dict(demo_photos())
        >>> photos["grace_hopper"].mode
        'RGB'
    """
    from PIL import Image

    photos: list[tuple[str, Image.Image]] = []
    try:
        import skimage.data
    except ImportError:
        pass
    else:
        for short in ("chelsea", "coffee", "rocket", "astronaut"):
            photos.append((short, Image.fromarray(getattr(skimage.data, short)()).convert("RGB")))
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        pass
    else:
        for short in ("china", "flower"):
            array = load_sample_image(f"{short}.jpg")
            photos.append((short, Image.fromarray(array).convert("RGB")))
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as im:
        photos.append(("grace_hopper", im.convert("RGB")))
    return photos

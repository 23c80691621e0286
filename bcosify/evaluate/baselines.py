"""Attribution methods compared by the grid pointing game.

An :class:`Explainer` turns a batch of ``[0, 1]`` images and one target class per image into one
attribution map per image (N x H x W, summed over the colour channels). Provided here:

- :func:`bcos_explainer`: the exact explanation of a converted B-cos model
  (:func:`bcosify.explain`, contributions summed over the channels);
- post-hoc explanations of an original (unconverted) model, computed with Captum on the
  normalised input the model expects: :func:`input_x_gradient`, :func:`integrated_gradients`
  and :func:`grad_cam` (the layer found by :func:`find_gradcam_layer`);
- the trivial references :func:`uniform_reference` (the same attribution everywhere; its grid
  pointing game score is exactly 1/g²) and :func:`oracle_reference` (all attribution in the
  correct cell; score 1).

Captum is an optional dependency (``pip install "bcosify[eval]"``), imported only when a
post-hoc baseline is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bcosify.errors import BcosifyError
from bcosify.evaluate.data import model_device, resolve_normalize

__all__ = [
    "Explainer",
    "bcos_explainer",
    "input_x_gradient",
    "integrated_gradients",
    "grad_cam",
    "find_gradcam_layer",
    "uniform_reference",
    "oracle_reference",
    "BASELINES",
]


@dataclass(frozen=True)
class Explainer:
    """A named attribution method.

    Args:
        name: the method's name in tables and figures.
        fn: for a regular method, ``fn(images, targets) -> maps`` with images N x C x H x W in
            ``[0, 1]``, targets N (long) and maps N x H x W. For a reference
            (``reference=True``), ``fn(cell_masks) -> maps`` with the N x H x W boolean masks of
            the correct cells: references are computed on the whole grid, neither windowed nor
            smoothed.
        reference: whether this is a reference defined by the grid layout (uniform, oracle).
        several: optionally, ``several(images, targets) -> maps`` for several targets per
            image: images N x C x H x W, targets N x k, maps N x k x H x W. The grid pointing
            game then explains every cell of a grid from one call instead of one per cell.

    Example:
        >>> e = Explainer("gray", lambda x, t: x.mean(1))
        >>> e.fn(torch.rand(2, 3, 4, 4), torch.tensor([0, 1])).shape
        torch.Size([2, 4, 4])
    """

    name: str
    fn: Callable[..., Tensor]
    reference: bool = False
    several: Callable[..., Tensor] | None = None


def bcos_explainer(model: nn.Module, name: str = "B-cos") -> Explainer:
    """The exact explanation of a converted model: its contribution map.

    Args:
        model: a converted model (from :func:`bcosify.convert` or :func:`bcosify.load`).
        name: the method's name.

    Returns:
        An :class:`Explainer` returning ``bcosify.explain(model, images, targets)
        .contribution_map`` (the contributions of the encoding ``[x, 1 - x]`` summed over its
        six channels).

    Raises:
        BcosifyError: if ``model`` is not a converted model.

    Example:
        >>> import bcosify, torchvision
        >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> bcos_explainer(m).fn(torch.rand(2, 3, 32, 32), torch.tensor([1, 2])).shape
        torch.Size([2, 32, 32])
    """
    from bcosify.convert import is_converted
    from bcosify.explain import explain

    if not is_converted(model):
        raise BcosifyError(
            f"bcos_explainer needs a converted B-cos model, got {type(model).__name__}; explain "
            "an original model with input_x_gradient, integrated_gradients or grad_cam"
        )

    def fn(images: Tensor, targets: Tensor) -> Tensor:
        return explain(model, images, targets).contribution_map

    # all cells of a grid from one forward pass (the targets as a second axis)
    return Explainer(name, fn, several=fn)


def _captum(what: str) -> Any:
    try:
        import captum.attr
    except ImportError as exc:  # pragma: no cover - captum is installed in the test environment
        raise BcosifyError(
            f"the {what} baseline needs Captum, which is not installed: "
            'pip install "bcosify[eval]" (or pip install captum)'
        ) from exc
    return captum.attr


def _prepare(model: nn.Module, normalize: Any) -> Callable[[Tensor], Tensor]:
    from bcosify.convert import is_converted

    if not isinstance(model, nn.Module):
        raise BcosifyError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if is_converted(model):
        raise BcosifyError(
            "post-hoc baselines explain the original (unconverted) model; this one is a B-cos "
            "network: use bcos_explainer for it, and pass the source model to the baselines"
        )
    model.eval()
    norm = resolve_normalize(model, normalize)
    device = model_device(model)

    def to_input(images: Tensor) -> Tensor:
        return norm(images.to(device)).detach().requires_grad_(True)

    return to_input


def input_x_gradient(model: nn.Module, normalize: Any = "auto") -> Explainer:
    """Input x Gradient (Captum) of an original model, summed over the channels.

    The attribution is taken w.r.t. the normalised input the model sees, as usual for this
    method.

    Args:
        model: the original classifier (put in eval mode).
        normalize: how ``[0, 1]`` images are normalised (``"auto"``: the model's recorded
            preprocessing, see :func:`bcosify.evaluate.data.resolve_normalize`).

    Returns:
        An :class:`Explainer` named ``"Input×Gradient"``.

    Example:
        >>> from bcosify.sources import build_model
        >>> e = input_x_gradient(build_model("resnet18", weights="none"))
        >>> e.fn(torch.rand(1, 3, 32, 32), torch.tensor([3])).shape
        torch.Size([1, 32, 32])
    """
    attr = _captum("Input×Gradient")
    to_input = _prepare(model, normalize)
    method = attr.InputXGradient(model)

    def fn(images: Tensor, targets: Tensor) -> Tensor:
        x = to_input(images)
        with torch.enable_grad():
            a = method.attribute(x, target=targets.to(x.device))
        return a.detach().sum(1)

    return Explainer("Input×Gradient", fn)


def integrated_gradients(
    model: nn.Module,
    normalize: Any = "auto",
    *,
    n_steps: int = 20,
    internal_batch_size: int | None = None,
) -> Explainer:
    """Integrated Gradients (Captum) of an original model, summed over the channels.

    The path runs from the all-zero normalised input (the dataset mean colour) to the input.

    Args:
        model: the original classifier (put in eval mode).
        normalize: how ``[0, 1]`` images are normalised (see :func:`input_x_gradient`).
        n_steps: steps of the Riemann sum (Gauss-Legendre in Captum).
        internal_batch_size: images per forward pass inside Captum (default: all steps of the
            batch at once).

    Returns:
        An :class:`Explainer` named ``"Integrated Gradients"``.

    Example:
        >>> from bcosify.sources import build_model
        >>> e = integrated_gradients(build_model("resnet18", weights="none"), n_steps=4)
        >>> e.fn(torch.rand(1, 3, 32, 32), torch.tensor([3])).shape
        torch.Size([1, 32, 32])
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise BcosifyError(f"n_steps must be an int >= 1, got {n_steps!r}")
    attr = _captum("Integrated Gradients")
    to_input = _prepare(model, normalize)
    method = attr.IntegratedGradients(model)

    def fn(images: Tensor, targets: Tensor) -> Tensor:
        x = to_input(images)
        with torch.enable_grad():
            a = method.attribute(
                x,
                baselines=torch.zeros_like(x),
                target=targets.to(x.device),
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
            )
        return a.detach().sum(1)

    return Explainer("Integrated Gradients", fn)


def find_gradcam_layer(model: nn.Module, image_size: int = 224, channels: int = 3) -> str:
    """The layer Grad-CAM uses by default: the last module whose output is a spatial feature map.

    One forward pass of a zero image records, in execution order, every module whose output is
    an N x C x H x W tensor with more than one spatial position; the last one is the feature map
    that enters the global pooling (for a torchvision ResNet ``layer4``, for a DenseNet
    ``features``). Networks without such a map (vision transformers) need a layer name.

    Args:
        model: the original classifier.
        image_size: side of the probe image.
        channels: input channels of the probe image.

    Returns:
        The qualified module name, usable with ``model.get_submodule``.

    Raises:
        BcosifyError: if no module outputs a spatial feature map.

    Example:
        >>> import torchvision
        >>> find_gradcam_layer(torchvision.models.resnet18(), 64)
        'layer4'
    """
    seen: list[tuple[str, str]] = []
    handles = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
                seen.append((name, "map"))
            elif isinstance(output, Tensor) and output.dim() == 3 and output.shape[1] > 1:
                seen.append((name, "tokens"))

        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size, device=model_device(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    maps = [i for i, (_, kind) in enumerate(seen) if kind == "map"]
    if not maps or any(kind == "tokens" for _, kind in seen[maps[-1] :]):
        raise BcosifyError(
            f"found no spatial feature map (N x C x H x W output) of {type(model).__name__} that "
            "enters its classifier (a transformer works on token sequences); Grad-CAM needs a "
            "convolutional layer: pass its name, grad_cam(model, layer=NAME) (CLI: "
            "--gradcam-layer NAME), or leave Grad-CAM out (--baselines ixg,ig)"
        )
    return seen[maps[-1]][0]


def grad_cam(
    model: nn.Module,
    normalize: Any = "auto",
    *,
    layer: str | None = None,
    image_size: int = 224,
) -> Explainer:
    """Grad-CAM (Captum ``LayerGradCam``) of an original model, upsampled to the image size.

    Args:
        model: the original classifier (put in eval mode).
        normalize: how ``[0, 1]`` images are normalised (see :func:`input_x_gradient`).
        layer: qualified name of the layer whose output is weighted (default:
            :func:`find_gradcam_layer`, the last spatial feature map).
        image_size: side of the probe image used to find the default layer.

    Returns:
        An :class:`Explainer` named ``"Grad-CAM"``; its maps are bilinearly upsampled to the
        image size.

    Raises:
        BcosifyError: if ``layer`` is not a module of ``model`` or no default layer is found.

    Example:
        >>> import torchvision
        >>> m = torchvision.models.resnet18()
        >>> e = grad_cam(m, ((0.5,) * 3, (0.5,) * 3), image_size=64)
        >>> e.fn(torch.rand(1, 3, 64, 64), torch.tensor([1])).shape
        torch.Size([1, 64, 64])
    """
    attr = _captum("Grad-CAM")
    to_input = _prepare(model, normalize)
    name = layer if layer is not None else find_gradcam_layer(model, image_size)
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        names = [n for n, _ in model.named_children()]
        raise BcosifyError(
            f"Grad-CAM layer {name!r} is not a module of {type(model).__name__} ({exc}); top-level "
            f"modules are {names}"
        ) from exc
    method = attr.LayerGradCam(model, module)

    def fn(images: Tensor, targets: Tensor) -> Tensor:
        x = to_input(images)
        with torch.enable_grad():
            cam = method.attribute(x, target=targets.to(x.device))
        if cam.dim() != 4:
            raise BcosifyError(
                f"the Grad-CAM layer {name!r} outputs shape {tuple(cam.shape)}, not a feature "
                "map N x C x H x W; choose a convolutional layer"
            )
        cam = attr.LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), "bilinear")
        return cam.sum(1)

    return Explainer(f"Grad-CAM ({name})" if layer is not None else "Grad-CAM", fn)


def _uniform(masks: Tensor) -> Tensor:
    return torch.ones(masks.shape, dtype=torch.float32, device=masks.device)


def _oracle(masks: Tensor) -> Tensor:
    return masks.to(torch.float32)


def uniform_reference() -> Explainer:
    """The same attribution everywhere: scores exactly 1/g² on a g x g grid.

    Example:
        >>> uniform_reference().fn(torch.zeros(1, 4, 4, dtype=torch.bool)).sum().item()
        16.0
    """
    return Explainer("uniform", _uniform, reference=True)


def oracle_reference() -> Explainer:
    """All attribution inside the correct cell: scores 1.

    Example:
        >>> m = torch.zeros(1, 2, 2, dtype=torch.bool)
        >>> m[0, 0, 0] = True
        >>> oracle_reference().fn(m).tolist()
        [[[1.0, 0.0], [0.0, 0.0]]]
    """
    return Explainer("oracle", _oracle, reference=True)


BASELINES: dict[str, str] = {
    "ixg": "Input×Gradient",
    "ig": "Integrated Gradients",
    "gradcam": "Grad-CAM",
}
"""Short names of the post-hoc baselines (CLI ``--baselines``) and their display names."""

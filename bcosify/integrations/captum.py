"""bcosify's exact explanations behind Captum's ``Attribution`` interface.

:class:`BcosAttribution` returns, for each input pixel, its exact contribution to the target
logit (B-cos contributions: the dynamic weights times the input encoding ``[x, 1 - x]``), so
Captum's metrics (``captum.metrics.infidelity``, ``sensitivity_max``) and visualisation
(``captum.attr.visualization``) work on a converted model like on any other attribution method.
Its convergence delta, ``logit - sum(attributions) - constants``, is zero up to float rounding,
where other methods only approximate completeness.

Example:
    >>> import torch, torchvision, bcosify
    >>> from bcosify.integrations.captum import BcosAttribution
    >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> attr, delta = BcosAttribution(m).attribute(
    ...     torch.rand(2, 3, 64, 64), target=3, return_convergence_delta=True)
    >>> attr.shape, delta.shape
    (torch.Size([2, 3, 64, 64]), torch.Size([2]))
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bcosify.errors import BcosifyError


def _captum():
    try:
        import captum.attr
    except ImportError as e:  # pragma: no cover - captum is in the eval and dev extras
        raise BcosifyError(
            "bcosify.integrations.captum needs Captum: pip install 'bcosify[eval]' "
            "(or pip install captum)"
        ) from e
    return captum.attr


class BcosAttribution(_captum().Attribution):
    """Captum attribution method for a converted (or loaded) bcosify model.

    Args:
        model: a B-cos model from :func:`bcosify.convert`, :func:`bcosify.load` or
            :func:`bcosify.build_model`.
        channels: 3 (default): each image channel's contribution, the sum of its ``x`` and
            ``1 - x`` parts, the shape of the input (what Captum's metrics expect); 6: the
            contributions of the encoding ``[x, 1 - x]`` as they are.

    ``attribute(inputs, target=None)`` takes images in [0, 1] (N x 3 x H x W) and Captum's
    targets (None: the predicted class; an int; one per sample). Perturbed inputs slightly
    outside [0, 1] (robustness metrics) are explained as they are.
    """

    def __init__(self, model: nn.Module, channels: int = 3):
        from bcosify.convert import is_converted

        if not is_converted(model):
            raise BcosifyError(
                "BcosAttribution needs a converted model (bcosify.convert, bcosify.load or a "
                "published B-cos model), got an unconverted "
                f"{type(model).__name__}; for a standard model use Captum's own methods"
            )
        if channels not in (3, 6):
            raise BcosifyError(f"channels must be 3 or 6, got {channels!r}")
        super().__init__(model)
        self.model = model
        self.channels = channels

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def _explain(self, inputs: Any, target: Any):
        from bcosify.explain import explain

        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise BcosifyError(
                    f"BcosAttribution explains one image tensor, got a tuple of {len(inputs)}"
                )
            inputs = inputs[0]
        if isinstance(target, (list, tuple)) and target and isinstance(target[0], tuple):
            raise BcosifyError("targets must be class indices (one int per sample)")
        return explain(self.model, inputs, target=target, check_range=False)

    def _attributions(self, e) -> Tensor:
        c = e.contributions
        if self.channels == 6:
            return c
        half = c.shape[1] // 2
        return c[:, :half] + c[:, half:]

    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor | tuple[Tensor],
        target: int | list[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ):
        """The exact contributions (N x 3 x H x W, or N x 6 x H x W with ``channels=6``) to
        each sample's target logit, and with ``return_convergence_delta`` the per-sample delta
        ``logit - sum(attributions) - constants`` (the constants: logit bias, biases kept, ...).
        """
        if additional_forward_args is not None:
            raise BcosifyError(
                "BcosAttribution explains model(inputs): additional_forward_args is not supported"
            )
        e = self._explain(inputs, target)
        attributions = self._attributions(e).to(
            inputs.dtype if isinstance(inputs, Tensor) else e.contributions.dtype
        )
        if isinstance(inputs, tuple):
            attributions = (attributions,)
        if not return_convergence_delta:
            return attributions
        return attributions, self._delta(e)

    @staticmethod
    def _delta(e) -> Tensor:
        return e.explained_logit - e.contributions.flatten(1).sum(1) - e.constant_total

    def compute_convergence_delta(
        self, attributions: Tensor, inputs: Tensor, target: Any = None
    ) -> Tensor:
        """``logit - sum(attributions) - constants`` for given attributions (per sample)."""
        if isinstance(attributions, tuple):
            attributions = attributions[0]
        e = self._explain(inputs, target)
        total = attributions.flatten(1).sum(1).to(e.explained_logit.dtype)
        return e.explained_logit - total - e.constant_total


__all__ = ["BcosAttribution"]

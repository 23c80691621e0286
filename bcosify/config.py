"""Conversion options: :class:`BcosConfig`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from bcosify.errors import BcosifyError

__all__ = ["BcosConfig"]

_ACTIVATIONS = ("remove", "keep", "exact")
_MAXPOOLS = ("avg", "keep")
_PRODUCTS = ("detach", "error")


@dataclass(frozen=True)
class BcosConfig:
    """Options of :func:`bcosify.convert`.

    Args:
        b: the B of every B-cos unit (``b=1`` makes the units linear; 2 is the published setting).
        keep_bias: keep every bias (only meant to check the rewrite: with ``b=1``,
            ``activation="exact"`` and ``maxpool="keep"`` the converted model equals the original).
        activation: ``"remove"`` drops ReLU/ReLU6 (the B-cos non-linearity replaces them);
            ``"keep"`` keeps ReLU and turns ReLU6 into ReLU (its cap at 6 is a constant that no
            explanation could account for); ``"exact"`` keeps both as they are (to check the
            rewrite: explanations of a model with ReLU6 then miss the cap). Gated activations
            (GELU, SiLU, Hardswish, Mish) are always kept as ``x * g(x)`` with the gate detached
            in explanation mode.
        maxpool: ``"avg"`` replaces max pooling by average pooling of the same window; ``"keep"``
            keeps it (max pooling is piecewise linear, so explanations stay exact).
        normalize_weights: use unit-norm weights in B-cos units (B-cos v2 units) instead of the
            pretrained weights as they are.
        logit_bias: constant added to every logit. ``"auto"`` gives ``-log(C - 1)`` for C classes
            when biases are removed (sigmoid(bias) = 1/C) and no logit layer when ``keep_bias``;
            a float sets it; ``None`` adds no logit layer.
        skip_modules: qualified names of submodules left exactly as they are (their parameters
            kept, their biases reported as constants).
        leaf_modules: qualified names of submodules that torch.fx should not trace into (for
            modules with data-dependent control flow); they need a module rule or ``skip_modules``.
        head_before_pool: move a classifier that follows global average pooling in front of it
            (as a 1x1 convolution) so the B-cos head acts per position.
        first_layer_norm: the patch norm of the first B-cos layer, on the raw encoding
            ``[x, 1 - x]`` (``"raw"``, the B-cos v2 convention) or on the normalised encoding
            ``([x, 1 - x] - [mean, 1 - mean]) / [std, std]`` (``"normalized"``, the published
            B-cosification code). Only the norm differs: explanations are exact either way. (A
            first layer with TensorFlow 'SAME' padding, timm's ``Conv2dSame``, pads the raw
            encoding before the norm, so its border patches differ from the published
            convention; where the normalisation cannot be folded, the first layer sees the
            normalised encoding anyway.)
        products: what to do with a product of two input-dependent tensors that bcosify does not
            recognise as a gate (a sigmoid/tanh/softmax scaling a tensor) or an attention matrix:
            gating and modulation (gMLP, StarNet, FocalNet, ResNeSt's split attention), linear
            attention, a division by an input-dependent tensor (normalisations written out from
            ``var``/``sqrt``/``norm``), ``x ** p``. ``"detach"`` (default) makes one factor a
            dynamic weight, detached in explanation mode, by the policy of docs/rules.md
            ("Products"): the divisor of a division; of a product, the factor computed through a
            saturating non-linearity (softmax, sigmoid, tanh), else the right-hand factor of
            ``a * b`` (``x * modulation``) and the left-hand factor of ``a @ b`` (``weights @
            values``, as in attention). The forward is unchanged and explanations stay exact;
            every detached factor is in the conversion report. ``"error"`` reports such products
            as unsupported instead.

    Example:
        >>> cfg = BcosConfig(b=1, keep_bias=True, activation="exact", maxpool="keep")
        >>> BcosConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    b: float = 2.0
    keep_bias: bool = False
    activation: Literal["remove", "keep", "exact"] = "remove"
    maxpool: Literal["avg", "keep"] = "avg"
    normalize_weights: bool = False
    logit_bias: float | str | None = "auto"
    skip_modules: tuple[str, ...] = field(default_factory=tuple)
    leaf_modules: tuple[str, ...] = field(default_factory=tuple)
    head_before_pool: bool = True
    first_layer_norm: Literal["raw", "normalized"] = "raw"
    products: Literal["detach", "error"] = "detach"

    def __post_init__(self) -> None:
        if isinstance(self.b, bool) or not isinstance(self.b, (int, float)) or not self.b >= 1:
            raise BcosifyError(f"BcosConfig.b must be a number >= 1, got {self.b!r}")
        object.__setattr__(self, "b", float(self.b))
        if self.activation not in _ACTIVATIONS:
            raise BcosifyError(
                f"BcosConfig.activation must be one of {_ACTIVATIONS}, got {self.activation!r}"
            )
        if self.first_layer_norm not in ("raw", "normalized"):
            raise BcosifyError(
                "BcosConfig.first_layer_norm must be 'raw' or 'normalized', got "
                f"{self.first_layer_norm!r}"
            )
        if self.products not in _PRODUCTS:
            raise BcosifyError(
                f"BcosConfig.products must be one of {_PRODUCTS}, got {self.products!r}"
            )
        if self.maxpool not in _MAXPOOLS:
            raise BcosifyError(
                f"BcosConfig.maxpool must be one of {_MAXPOOLS}, got {self.maxpool!r}"
            )
        lb = self.logit_bias
        if not (lb is None or lb == "auto" or (isinstance(lb, (int, float)) and math.isfinite(lb))):
            raise BcosifyError(
                f"BcosConfig.logit_bias must be 'auto', None or a finite number, got {lb!r}"
            )
        for name in ("skip_modules", "leaf_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise BcosifyError(
                    f"BcosConfig.{name} must be a sequence of qualified names, got the string "
                    f"{value!r}; write ({value!r},)"
                )
            object.__setattr__(self, name, tuple(value))

    def resolved_logit_bias(self, num_classes: int) -> float | None:
        """The logit bias to add for ``num_classes`` outputs (None: no logit layer)."""
        if self.logit_bias == "auto":
            if self.keep_bias or num_classes < 2:
                return None
            return -math.log(num_classes - 1) if num_classes > 2 else 0.0
        return None if self.logit_bias is None else float(self.logit_bias)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all options."""
        d = dataclasses.asdict(self)
        d["skip_modules"] = list(self.skip_modules)
        d["leaf_modules"] = list(self.leaf_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BcosConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BcosifyError(
                f"unknown BcosConfig key(s) {unknown}; known keys are {sorted(known)}"
            )
        return cls(**d)

    def replace(self, **changes: Any) -> BcosConfig:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)

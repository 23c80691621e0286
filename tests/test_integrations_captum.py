"""bcosify.integrations.captum: exact contributions through Captum's Attribution interface,
checked with Captum's own methods, metrics and visualisation (the real library)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

import bcosify
from bcosify.integrations.captum import BcosAttribution
from tests.helpers import calibrate, randomize_norms

matplotlib.use("Agg")
captum_attr = pytest.importorskip("captum.attr")
captum_metrics = pytest.importorskip("captum.metrics")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    source = randomize_norms(bcosify.build_model("resnet18", weights="none", num_classes=10))
    m = bcosify.convert(source)
    return calibrate(m, torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def test_attributions_are_the_exact_contributions(model, images):
    method = BcosAttribution(model)
    assert method.has_convergence_delta() and method.multiplies_by_inputs
    attr, delta = method.attribute(images, target=[1, 2, 3], return_convergence_delta=True)
    e = bcosify.explain(model, images, target=[1, 2, 3])
    assert attr.shape == images.shape
    assert torch.allclose(attr, e.contributions[:, :3] + e.contributions[:, 3:])
    pixels = (e.explained_logit - e.constant_total).abs()
    assert (delta.abs() / pixels).max() < 1e-4
    six = BcosAttribution(model, channels=6).attribute(images, target=1)
    assert six.shape == (3, 6, 64, 64)
    # a tuple in, a tuple out (Captum's convention)
    (from_tuple,) = method.attribute((images,), target=[1, 2, 3])
    assert torch.equal(from_tuple, attr)


def test_the_delta_is_exact_where_integrated_gradients_approximates(model, images):
    """Captum's own convergence delta: ~0 for the B-cos contributions (float rounding), and the
    Riemann-sum error of Integrated Gradients on the same model and targets."""
    target = model(images).argmax(1)
    _, ours = BcosAttribution(model).attribute(images, target=target, return_convergence_delta=True)
    ig = captum_attr.IntegratedGradients(model)
    _, theirs = ig.attribute(images, target=target, n_steps=8, return_convergence_delta=True)
    assert ours.abs().max() < 1e-3 * theirs.abs().max()
    # compute_convergence_delta sees wrong attributions
    method = BcosAttribution(model)
    attr = method.attribute(images, target=target)
    assert method.compute_convergence_delta(attr, images, target).abs().max() < 1e-4
    halved = method.compute_convergence_delta(attr / 2, images, target)
    assert halved.abs().min() > 1e-3


def test_captum_metrics_and_visualisation(model, images):
    method = BcosAttribution(model)
    target = 4
    attr = method.attribute(images, target=target)

    def perturb(inputs):
        noise = 0.05 * torch.randn_like(inputs)
        return noise, inputs - noise

    torch.manual_seed(0)
    infid = captum_metrics.infidelity(
        model, perturb, images, attr, target=target, n_perturb_samples=4
    )
    assert infid.shape == (3,) and torch.isfinite(infid).all()
    sens = captum_metrics.sensitivity_max(
        method.attribute, images, target=target, n_perturb_samples=3
    )
    assert sens.shape == (3,) and torch.isfinite(sens).all() and (sens > 0).all()
    # Captum's default perturbation leaves [0, 1]: still explained, not refused
    fig, _ = captum_attr.visualization.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(),
        images[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="all",
        use_pyplot=False,
    )
    assert isinstance(fig, matplotlib.figure.Figure)


def test_bad_input():
    with pytest.raises(bcosify.BcosifyError, match="needs a converted model"):
        BcosAttribution(torch.nn.Linear(3, 2))
    model = bcosify.convert(bcosify.build_model("resnet18", weights="none", num_classes=3))
    with pytest.raises(bcosify.BcosifyError, match="channels must be 3 or 6"):
        BcosAttribution(model, channels=4)
    with pytest.raises(bcosify.BcosifyError, match="additional_forward_args"):
        BcosAttribution(model).attribute(torch.rand(1, 3, 32, 32), additional_forward_args=(1,))

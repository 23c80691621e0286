"""The local web app (`bcosify serve`): what it renders, and the page in a real headless Chromium
(Debian's chromium and chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import gc
import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

import bcosify
from bcosify.app import render
from bcosify.sources import demo_photos
from tests.helpers import calibrate

pytest.importorskip("gradio")
ROOT = Path(__file__).resolve().parents[1]
CAPTION = re.compile(
    r"\((\d+)\): logit (-?[\d.]+) = contributions (-?[\d.]+) \+ constants (-?[\d.]+)"
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    source = bcosify.build_model("resnet18", weights="none")
    return calibrate(bcosify.convert(source), torch.rand(2, 3, 224, 224))


def _script():
    spec = importlib.util.spec_from_file_location(
        "app_script", ROOT / "scripts" / "app_screenshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_captions(captions: list[str], model) -> list[int]:
    classes = []
    for c in captions:
        m = CAPTION.search(c)
        assert m, c
        t, logit, contributions, constants = int(m[1]), *map(float, m.group(2, 3, 4))
        assert abs(logit - (contributions + constants)) < 2e-4  # the completeness line holds
        classes.append(t)
    return classes


def test_render_top5_and_a_chosen_class(model):
    photo = dict(demo_photos())["chelsea"]
    shown = render(model, photo)
    assert len(shown) == 5
    for image, _ in shown:
        assert image.shape == (224, 3 * 224, 3) and image.dtype.name == "uint8"
    classes = _check_captions([c for _, c in shown], model)
    with torch.no_grad():
        want = model(model.transform(photo)[None]).topk(5).indices[0].tolist()
    assert classes == want
    one = render(model, photo, target=7)
    assert len(one) == 1 and _check_captions([one[0][1]], model) == [7]
    with pytest.raises(bcosify.BcosifyError, match=r"must lie in \[0, 999\]"):
        render(model, photo, target=1000)
    with pytest.raises(bcosify.BcosifyError, match="no image"):
        render(model, None)


@pytest.mark.slow
# Gradio's server thread (uvicorn) leaves its event loop and sockets to the garbage collector
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_page_in_a_headless_chromium(model, tmp_path):
    """Load the page, upload a packaged photo, press Explain: five explanation images appear,
    each with its completeness line."""
    pytest.importorskip("selenium")
    script = _script()
    if script.chromium() is None:
        if os.environ.get("BCOSIFY_CI"):
            pytest.fail("CI must have chromium and chromedriver (.ci/run installs them)")
        pytest.skip("no chromium/chromedriver on this machine (apt-get install chromium-driver)")
    photo = dict(demo_photos())["coffee"]
    shown = script.explain_in_browser(model, photo, screenshot=tmp_path / "page.png")
    gc.collect()  # finalise the server's leftovers here, under this test's warning filters
    assert shown["images"] == 5
    assert len(_check_captions(shown["captions"], model)) == 5
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_serve_refuses_a_directory_that_is_not_a_model(tmp_path, capsys):
    from bcosify.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    assert "bcosify: error:" in capsys.readouterr().err

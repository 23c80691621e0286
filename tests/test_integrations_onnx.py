"""ONNX export (bcosify.integrations.onnx, `bcosify export`): the exported forward runs in
onnxruntime with torch's logits to 1e-4, at any batch size; bad input gets a BcosifyError."""

from __future__ import annotations

import pytest
import torch

import bcosify
from bcosify.cli import main
from bcosify.integrations import onnx as bonnx
from tests.helpers import calibrate, randomize_norms, small_vit

ort = pytest.importorskip("onnxruntime")


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    source = randomize_norms(bcosify.build_model("resnet18", weights="none", num_classes=10))
    model = bcosify.convert(source)
    return calibrate(model, torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


def test_exported_logits_equal_torch_at_any_batch(resnet, tmp_path):
    path = bonnx.export_onnx(resnet, tmp_path / "r18.onnx", input_size=64)
    assert path.is_file() and not list(tmp_path.glob(".bcosify-onnx-*"))
    for batch in (1, 5):
        x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = resnet(x)
        got = _run(path, x)
        assert got.shape == want.shape
        assert (got - want).abs().max() / want.abs().max() < 1e-4


def test_a_converted_vit_exports(tmp_path):
    torch.manual_seed(0)
    model = bcosify.convert(small_vit(), mean=(0.5,) * 3, std=(0.5,) * 3)
    path = bonnx.export_onnx(model, tmp_path / "vit.onnx", input_size=32)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    assert (_run(path, x) - want).abs().max() / want.abs().max() < 1e-4


def test_a_graph_that_disagrees_is_not_written(resnet, tmp_path, monkeypatch):
    monkeypatch.setattr(bonnx, "TOLERANCE", 0.0)  # any float difference is then too much
    with pytest.raises(bcosify.BcosifyError, match="differ from torch's"):
        bonnx.export_onnx(resnet, tmp_path / "r18.onnx", input_size=64)
    assert not list(tmp_path.iterdir())


def test_cli_export_and_bad_input(resnet, tmp_path, capsys):
    model_dir = bcosify.save(resnet, tmp_path / "r18")
    out = tmp_path / "r18.onnx"
    assert main(["export", str(model_dir), str(out), "--input-size", "64"]) == 0
    assert "explanations stay in PyTorch" in capsys.readouterr().out
    assert main(["export", str(model_dir), str(out), "--input-size", "64"]) == 2
    assert "pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main(["export", str(model_dir), str(tmp_path / "m.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "x.onnx")]) == 2
    assert "bcosify: error:" in capsys.readouterr().err
    with pytest.raises(bcosify.BcosifyError, match="needs a converted bcosify model"):
        bonnx.export_onnx(torch.nn.Linear(3, 2), tmp_path / "l.onnx")

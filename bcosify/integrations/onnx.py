"""ONNX export of a converted model's forward pass.

:func:`export_onnx` writes the model's logits function as an ONNX file (``torch.onnx.export``,
the dynamo exporter, a dynamic batch dimension) and checks it with onnxruntime: the logits of
the file must equal torch's to 1e-4 (relative to the largest). Explanations stay in torch: an
ONNX graph has no explanation mode (the dynamic weights detached from the graph) and no input
gradient, so ``bcosify.explain`` needs the PyTorch model. Needs ``pip install 'bcosify[onnx]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from bcosify.errors import BcosifyError

TOLERANCE = 1e-4


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BcosifyError(
            f"ONNX export needs {module}: pip install 'bcosify[onnx]' "
            "(onnx, onnxscript and onnxruntime)"
        ) from e


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: int | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Write ``model``'s forward (images in [0, 1], N x 3 x H x W -> N x classes logits) to
    ``path`` as ONNX, with a dynamic batch size, and check it with onnxruntime.

    Args:
        model: a converted model (:func:`bcosify.convert`, :func:`bcosify.load`).
        path: the ``.onnx`` file to write.
        input_size: the image side (default: the model's preprocessing, else 224). The graph is
            exported at this size; models that compute, e.g., a position embedding from the
            input size keep what they computed at it.
        overwrite: replace an existing file (otherwise an existing file is an error).
        check: run the file in onnxruntime on two random images and compare the logits with
            torch's (relative error ≤ 1e-4; a larger one is an error and the file is removed).

    Returns:
        The path written.
    """
    from bcosify.convert import is_converted

    if not is_converted(model):
        raise BcosifyError(
            f"export_onnx needs a converted bcosify model, got an unconverted "
            f"{type(model).__name__}; convert it first (bcosify.convert)"
        )
    path = Path(path)
    if path.suffix != ".onnx":
        raise BcosifyError(f"{path}: the output file must end in .onnx")
    if path.exists() and not overwrite:
        raise BcosifyError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.parent and not path.parent.exists():
        raise BcosifyError(f"{path.parent} does not exist; create the directory first")
    _need("onnx")
    _need("onnxscript")
    pre = getattr(model, "bcosify_preprocessing", None)
    size = input_size or (pre.input_size if pre is not None and pre.input_size else 224)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    # written in a scratch directory next to the target under the final name (the weights may
    # go to "<name>.data" beside it, referenced by name), moved into place once checked
    scratch = Path(tempfile.mkdtemp(prefix=".bcosify-onnx-", dir=path.parent))
    tmp = scratch / path.name
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False,
            )
        if check:
            _check(model, tmp, x)
        data = scratch / (path.name + ".data")
        if data.exists():
            os.replace(data, path.with_name(data.name))
        os.replace(tmp, path)
    except BcosifyError:
        raise
    except Exception as e:  # exporter failures: say which model and what
        raise BcosifyError(
            f"torch.onnx.export could not export this {type(model).__name__}: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        model.train(was_training)
    return path


def _check(model: nn.Module, file: Path, x: torch.Tensor) -> None:
    ort = _need("onnxruntime")
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
    with torch.no_grad():
        want = model(x).float().cpu()
    err = float((torch.from_numpy(got) - want).abs().max() / want.abs().max().clamp_min(1e-30))
    if err > TOLERANCE:
        raise BcosifyError(
            f"the exported graph's logits differ from torch's by {err:.1e} (relative; at most "
            f"{TOLERANCE:g} is accepted): the file was not written"
        )


__all__ = ["export_onnx"]

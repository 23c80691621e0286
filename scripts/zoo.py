"""Check bcosify's published B-cos models against the published code, and write docs/zoo.md.

For every ``bcos-v2/`` entry: build ``bcos``'s own model of that name with random weights (its
norms' scales drawn at random, its BatchNorms given the statistics of a random batch, so that
the logits depend on the input), save its state dict as the published files are laid out, load
that file with ``bcosify.build_model(name, weights=FILE)``, and compare, in float64. For a B-cos
entry:

- the logits on two random images: their pixel parts (the logit minus the logit bias, which
  would otherwise hide an error), relative to the largest, and the logit biases;
- the dynamic weights of the predicted class, against those of ``bcos``'s own ``explain()``.

It passes when both are within 1e-5 (relative to the largest value) and the logit biases agree
to float32 rounding (1e-6). For a standard ViT (a source model): the logits, within 1e-5, and
bcosify's conversion of it, whose explanations must be complete (pixel part, 1e-6). For a
B-cosification entry: the logits' pixel parts, within 1e-5, against its published procedure
rebuilt from ``bcos``'s units (:func:`bcosification_reference`; the ViTs:
:func:`_published_vit_reference`).

    python scripts/zoo.py                      # every entry; writes the two files below
    python scripts/zoo.py --only resnet18 densenet121 --no-write
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
ONE_PER_FAMILY = (
    "bcosification/resnet18",
    "bcosification/densenet121",
    "bcosification/simple_vit_ti_patch16_224",
    "bcosification/vitc_ti_patch1_14",
    "bcos-v2/resnet18",
    "bcos-v2/densenet121",
    "bcos-v2/vgg11_bnu",
    "bcos-v2/convnext_tiny",
    "bcos-v2/convnext_tiny_bnu",
    "bcos-v2/simple_vit_ti_patch16_224",
    "bcos-v2/vitc_ti_patch1_14",
    "bcos-v2/standard_simple_vit_ti_patch16_224",
    "bcos-v2/standard_vitc_ti_patch1_14",
)
"""The smallest entry of each family (the ConvNeXts: of each norm), as CI runs them."""


def reference(name: str, seed: int = 0) -> torch.nn.Module:
    """``bcos``'s model ``name`` with random weights (a B-cosification entry: the published
    procedure applied to torchvision's model, :func:`bcosification_reference`): every norm's
    scale drawn from U(0.5, 1.5) (and its shift, where it has one, from U(-0.5, 0.5)), BatchNorm
    statistics from a random batch, so that the logits depend on the input."""
    from bcos.models import pretrained

    from bcosify.sources import zoo_entry

    entry = zoo_entry(name)
    torch.manual_seed(seed)
    if entry.release == "bcosification" and entry.family in ("simple_vit", "vitc"):
        model = _published_vit_reference(entry)
    elif entry.release == "bcosification":
        model = bcosification_reference(entry)
    else:
        model = getattr(pretrained, entry.hub_name)(pretrained=False)
    norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    g = torch.Generator().manual_seed(seed + 1)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norms) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        for m in batch_norms:
            m.momentum = 1.0  # running_var := the variance of the next batch
        if batch_norms:
            model.train()
            model(_inputs(entry, torch.rand(8, 3, 224, 224, generator=g)))
    for m in batch_norms:
        m.momentum = 0.1
    return model.eval()


class _Published(torch.nn.Module):
    """A B-cosified torchvision ResNet or DenseNet as B-cosification's public code lays it out:
    ``model.`` (its wrapper) around ``model.`` (the network), the 6-channel input normalised by
    ``([x, 1 - x] - [m, 1 - m]) / [s, s]`` inside, the classifier before the pooling, ReLU kept,
    a logit bias of ``-log(C - 1)``. Written here from that layout, with ``bcos``'s units."""

    def __init__(self, net: torch.nn.Module, mean, std):
        super().__init__()
        self.model = net
        m = torch.tensor(mean)
        s = torch.tensor(std)
        self.register_buffer("shift", torch.cat([m, 1 - m]).reshape(1, 6, 1, 1), persistent=False)
        self.register_buffer("scale", torch.cat([s, s]).reshape(1, 6, 1, 1), persistent=False)

    def forward(self, x6: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        net = self.model
        x = (x6 - self.shift) / self.scale
        if hasattr(net, "layer1"):  # ResNet
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
            x = net.fc(x)
        else:  # DenseNet
            x = net.classifier(F.relu(net.features(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x - math.log(x.shape[1] - 1)


def _published_unit(layer: torch.nn.Module) -> torch.nn.Module:
    """A conv (or the classifier, as a 1x1 conv) as B-cosification's unit: ``bcos``'s
    ``BcosConv2d`` (B=2) holding a plain, bias-free convolution with the raw weight."""
    from bcos.modules import BcosConv2d

    if isinstance(layer, torch.nn.Linear):
        cin, cout, weight = layer.in_features, layer.out_features, layer.weight[..., None, None]
        args: tuple = (1, 1, 0, 1, 1)
    else:
        cin, cout, weight = layer.in_channels, layer.out_channels, layer.weight
        # bcos's unit takes square sizes as ints
        sizes = (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        args = (*(v[0] for v in sizes), layer.groups)
    unit = BcosConv2d(cin, cout, *args, b=2)
    unit.linear = torch.nn.Conv2d(cin, cout, *args, bias=False)
    with torch.no_grad():
        unit.linear.weight.copy_(weight)
    return unit


def bcosification_reference(entry) -> torch.nn.Module:
    """B-cosification's model of ``entry`` with random weights, made by its published procedure
    (first conv ``cat(W, -W) / 2`` on 6 channels, then trained apart: perturbed here; every
    conv and the classifier B-cos units with raw weights; BatchNorm uncentered without bias;
    max pooling as ``AvgPool2d(3, 2, 1)``; ReLU kept), wrapped as its checkpoints are."""
    import torchvision
    from bcos.modules.norms import BatchNormUncentered2d

    net = torchvision.models.get_model(entry.architecture, weights=None)

    def swap(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)):
                setattr(module, name, _published_unit(child))
            elif isinstance(child, torch.nn.BatchNorm2d):
                norm = BatchNormUncentered2d(child.num_features)
                norm.bias = None
                setattr(module, name, norm)
            elif isinstance(child, torch.nn.MaxPool2d):
                setattr(module, name, torch.nn.AvgPool2d(3, 2, 1))
            else:
                swap(child)

    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    w = first.weight.detach()
    first.in_channels = 6
    first.weight = torch.nn.Parameter(
        torch.cat([w, -w], 1) / 2 + 0.01 * torch.randn_like(w.repeat(1, 2, 1, 1))
    )
    swap(net)
    pre = entry.preprocessing
    wrapper = torch.nn.Module()
    wrapper.model = _Published(net, pre.mean, pre.std)
    wrapper.forward = wrapper.model.forward
    return wrapper


class _PublishedViT(_Published):
    """A ViT B-cosified as B-cosification's public code lays it out: ``model.`` around the
    network, the 6-channel normalised input, the classifier (norm and linear) applied to every
    token before the mean over tokens (its ``gap_reorder``), a logit bias of ``-log(C - 1)``.
    Written here from that layout, around ``bcos``'s standard SimpleViT."""

    def forward(self, x6: torch.Tensor) -> torch.Tensor:
        net = self.model
        x = net.to_patch_embedding((x6 - self.shift) / self.scale)
        pe = net.positional_embedding(x)
        x = net.transformer(x.flatten(1, 2) + pe)
        x = net.linear_head(x).mean(dim=1)
        return x - math.log(x.shape[1] - 1)


def _published_vit_reference(entry) -> torch.nn.Module:
    """B-cosification's ViT of ``entry`` with random weights, by its published procedure on
    ``bcos``'s standard ViT of that name: the first layer on 6 channels (the patch linear's
    weight, laid out per pixel as ``(p1 p2 c)``, becomes ``[W / 2, -W / 2]`` per pixel; a
    stem's first conv ``cat(W, -W) / 2``), then trained apart: perturbed here; every linear
    layer but the q/k/v projection and every conv a B-cos unit (B=2) with its raw weight; all
    biases removed; LayerNorm and GroupNorm detachable, without bias; GELU a detachable gate."""
    from bcos.models import pretrained
    from bcos.modules import BcosLinear
    from bcos.modules.common import DetachableModule
    from bcos.modules.norms import DetachableGroupNorm2d, DetachableLayerNorm

    class Gelu(DetachableModule):  # GELU as x * Phi(x), the gate detachable
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
            return x * (gate.detach() if self.detach else gate)

    def linear_unit(layer: torch.nn.Linear) -> torch.nn.Module:
        unit = BcosLinear(layer.in_features, layer.out_features, b=2)
        unit.linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        with torch.no_grad():
            unit.linear.weight.copy_(layer.weight)
        return unit

    def norm(layer: torch.nn.Module) -> torch.nn.Module:
        if isinstance(layer, torch.nn.GroupNorm):
            new = DetachableGroupNorm2d(layer.num_groups, layer.num_channels, layer.eps)
        else:
            new = DetachableLayerNorm(layer.normalized_shape, layer.eps)
        new.bias = None
        return new

    def swap(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Conv2d):
                setattr(module, name, _published_unit(child))
            elif isinstance(child, torch.nn.Linear) and name != "to_qkv":
                setattr(module, name, linear_unit(child))
            elif isinstance(child, torch.nn.Linear):
                child.bias = None
            elif isinstance(child, torch.nn.GELU):
                setattr(module, name, Gelu())
            elif isinstance(child, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                setattr(module, name, norm(child))
            else:
                swap(child)

    net = getattr(pretrained, "standard_" + entry.hub_name)(pretrained=False)
    embedding = net.to_patch_embedding
    with torch.no_grad():
        if hasattr(embedding, "conv_stem"):
            first = embedding.conv_stem[0]
            w = first.weight
            first.in_channels = 6
            w6 = torch.cat([w, -w], 1) / 2
        else:
            first = embedding.linear
            w = first.weight.view(first.out_features, -1, 3)
            first.in_features *= 2
            w6 = torch.cat([w / 2, -w / 2], 2).flatten(1)
        first.weight = torch.nn.Parameter(w6 + 0.01 * torch.randn_like(w6))
    swap(net)
    pre = entry.preprocessing
    wrapper = torch.nn.Module()
    wrapper.model = _PublishedViT(net, pre.mean, pre.std)
    wrapper.forward = wrapper.model.forward
    return wrapper


def _inputs(entry, x: torch.Tensor) -> torch.Tensor:
    """What the reference takes: ``[x, 1 - x]`` (B-cos) or normalised images (standard)."""
    if entry.bcos:
        return torch.cat([x, 1 - x], 1)
    return entry.preprocessing.normalize(x)


def _relative(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return ((a - b).abs().max() / scale.abs().max()).item()


def verify(name: str, seed: int = 0) -> dict[str, object]:
    """Compare bcosify's ``name`` with ``bcos``'s on random weights (see the module docstring).

    A B-cos entry: the logits' pixel parts, the logit biases and the dynamic weights of the
    predicted class (``bcos``'s ``explain()``). A standard ViT: the logits, then bcosify's
    conversion of it, whose explanations must be complete."""
    import bcosify
    from bcosify.nn import LogitLayer
    from bcosify.sources import zoo_entry

    entry = zoo_entry(name)
    ref = reference(name, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "published.pth"
        torch.save(ref.state_dict(), path)
        start = time.perf_counter()
        model = bcosify.build_model(name, weights=str(path))
        build_s = time.perf_counter() - start
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(2, 3, 224, 224, generator=g, dtype=torch.float64)
    check = "standard" if not entry.bcos else entry.release
    result: dict[str, object] = {"name": name, "check": check, "build_s": round(build_s, 2)}
    with torch.no_grad():
        theirs = ref(_inputs(entry, x))
        ours = model(x if entry.bcos else entry.preprocessing.normalize(x))
    if not entry.bcos:
        result["logits_rel_error"] = _relative(ours, theirs, theirs)
        converted = bcosify.convert(model.float()).double()
        e = bcosify.explain(converted, x)
        result["dynamic_weights_rel_error"] = None
        result["pixel_completeness_error"] = float(e.pixel_completeness_error.max())
        result["passed"] = (
            result["logits_rel_error"] <= TOLERANCE and result["pixel_completeness_error"] <= 1e-6
        )
        return result
    # B-cos v2 adds -log(C - 1) as a Python float; bcosify keeps it in a buffer of the model's
    # dtype (float32, rounded once). The pixel parts are compared, and the biases on their own.
    bias = -math.log(theirs.shape[1] - 1)
    ours_bias = sum(float(m.logit_bias) for m in model.modules() if isinstance(m, LogitLayer))
    logits_err = _relative(ours - ours_bias, theirs - bias, theirs - bias)
    bias_err = abs(ours_bias - bias) / abs(bias)

    if entry.release == "bcosification":
        # its dynamic weights are taken w.r.t. the normalised encoding (with the mean shift as
        # a hidden constant), bcosify's w.r.t. [x, 1 - x] bias-free: equal maps on images, but
        # different 6-channel tensors. The logits are compared, and bcosify's completeness.
        e = bcosify.explain(model, x)
        result.update(
            logits_rel_error=logits_err,
            dynamic_weights_rel_error=None,
            pixel_completeness_error=float(e.pixel_completeness_error.max()),
            logit_bias_rel_error=bias_err,
            passed=logits_err <= TOLERANCE and bias_err <= 1e-6,
        )
        return result
    x1 = _inputs(entry, x[:1]).requires_grad_(True)
    out = ref.explain(x1)
    target = int(out["explained_class_idx"])
    theirs_w = out["dynamic_linear_weights"].detach()
    e = bcosify.explain(model, x[:1], target=target)
    weights_err = _relative(e.dynamic_weights, theirs_w, theirs_w)
    result.update(
        logits_rel_error=logits_err,
        dynamic_weights_rel_error=weights_err,
        pixel_completeness_error=float(e.pixel_completeness_error.max()),
        logit_bias_rel_error=bias_err,
        passed=max(logits_err, weights_err) <= TOLERANCE and bias_err <= 1e-6,
    )
    return result


def _errors(res: dict[str, object]) -> str:
    done = f"logits {res['logits_rel_error']:.1e}"
    if res["check"] == "standard":
        return done + f"  converted: completeness {res['pixel_completeness_error']:.1e}"
    if res["check"] == "bcosification":
        return done + f"  completeness {res['pixel_completeness_error']:.1e}"
    return done + f"  weights {res['dynamic_weights_rel_error']:.1e}"


def _top1(row: dict[str, object]) -> str:
    return "–" if row["top1"] is None else f"{row['top1']:.2f} %"


def markdown(rows: list[dict[str, object]], results: dict[str, dict[str, object]], cmd: str) -> str:
    lines = [
        "# Published B-cos models in bcosify",
        "",
        "Generated by `" + cmd + "`; do not edit by hand.",
        "",
        "- `bcos-v2/NAME`: the B-cos v2 ImageNet models (Böhle et al., TPAMI 2024;",
        "  https://github.com/B-cos/B-cos-v2) under their torch.hub names, with the top-1",
        "  accuracy published with each. `bcosify.build_model(name)` returns a B-cos entry as a",
        "  B-cos model with its published weights (downloaded into the torch.hub cache, sha256",
        "  checked; `weights=PATH` for a local copy), and a standard ViT as a source model for",
        "  `bcosify.convert`. The ResNets, ResNeXt and DenseNets are bcosify's conversions of",
        "  the torchvision models of the same name; VGG-11-BNU, the ConvNeXts and the ViTs",
        "  differ from any torchvision model, and bcosify builds them from its own B-cos layers.",
        "- `bcosification/NAME`: the B-cosified models of B-cosification (Arya et al., NeurIPS",
        "  2024; https://github.com/shrebox/B-cosification). The CNNs are torchvision's",
        "  ResNet-18/50 and DenseNet-121 converted as there (raw weights, ReLU kept, the first",
        "  layer's patch norm on the normalised input; the 6-channel first layer is folded onto",
        "  bcosify's bias-free input encoding). The ViTs are B-cos v2's standard SimpleViTs and",
        "  ViT-Cs B-cosified as in its `bcosifyv2_NAME_0.001[_lrWarmup]_gapReorder` experiments",
        "  (raw weights, no biases, GELU kept as a detachable gate, the classifier before the",
        "  mean over tokens); bcosify builds them with their trained 6-channel first layer,",
        "  which takes the normalised encoding `[h, -h]`. The release lists no file names or",
        "  hashes to check, so checkpoints load from a local file (`weights=PATH`; a Lightning",
        "  checkpoint's `state_dict` and its `model.` prefixes are unwrapped).",
        "",
        "**Verified** means: with random weights (norm scales drawn at random, BatchNorm",
        "statistics from a random batch), in float64,",
        "",
        "- a B-cos v2 entry computes the same logits as the `bcos` package's model of that name",
        "  (the pixel part, the logit minus the logit bias, and the logit bias to float32",
        "  rounding), and the same dynamic weights as `bcos`'s own `explain()`, to "
        f"{TOLERANCE:g} relative;",
        f"- a standard ViT computes the same logits as `bcos`'s, to {TOLERANCE:g}, and bcosify's",
        "  conversion of it explains completely (pixel part, 1e-6);",
        "- a B-cosification entry computes the same logits (pixel part) as its published",
        "  procedure applied with `bcos`'s units to torchvision's model (the CNNs) or to `bcos`'s",
        "  standard ViT of that name (the ViTs), laid out as its checkpoints are",
        "  (`scripts/zoo.py`, `bcosification_reference` and `_published_vit_reference`: written",
        f"  from the repository's public code, which cannot be installed here), to {TOLERANCE:g};",
        "  the residual (~1e-6 for the CNNs, ~1e-9 for the ViTs) is the float32 rounding of the",
        "  input normalisation's constants. Dynamic weights are not compared: the published",
        "  ones are taken with respect to the normalised input, bcosify's with respect to",
        "  `[x, 1 - x]`.",
        "",
        "Errors are the largest absolute difference over the largest value.",
        "",
        "| name | kind | published top-1 | made as | logits error | weights error | verified |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        res = results.get(str(row["name"]))
        if res is None:
            errs, verdict = "– | –", "not run"
        else:
            w = res["dynamic_weights_rel_error"]
            if res["check"] == "standard":
                weights = f"– (converted: complete to {res['pixel_completeness_error']:.0e})"
            else:
                weights = "–" if w is None else f"{w:.1e}"
            errs = f"{res['logits_rel_error']:.1e} | {weights}"
            verdict = "yes" if res["passed"] else "**no**"
        lines.append(
            f"| `{row['name']}` | {row['kind']} | {_top1(row)} | {row['how']} "
            f"| {errs} | {verdict} |"
        )
    n_ok = sum(1 for r in results.values() if r["passed"])
    lines += [
        "",
        f"{n_ok} of {len(rows)} entries verified "
        f"({sum(1 for r in rows if r['kind'] == 'B-cos')} B-cos, of which "
        f"{sum(1 for r in rows if str(r['name']).startswith('bcosification/'))} B-cosified; "
        f"{sum(1 for r in rows if r['kind'] == 'standard')} standard ViTs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bcosify.sources._zoo import list_zoo, zoo_entry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="entry names (the bcos-v2/ prefix optional)")
    parser.add_argument("--one-per-family", action="store_true", help=str(ONE_PER_FAMILY))
    parser.add_argument(
        "--json",
        default=str(ROOT / "bcosify" / "zoo.json"),
        help="results (package data: `bcosify models --zoo` marks the verified entries)",
    )
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "zoo.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    rows = list_zoo()
    if args.only:
        names = [zoo_entry(n).name for n in args.only]
    elif args.one_per_family:
        names = list(ONE_PER_FAMILY)
    else:
        names = [str(r["name"]) for r in rows]
    results = {}
    for name in names:
        res = verify(name)
        results[name] = res
        print(f"{name:44s} {_errors(res)}  {'ok' if res['passed'] else 'FAILED'}", flush=True)
    cmd = "python scripts/zoo.py" + ("" if argv is None else " " + " ".join(argv))
    if argv is None and len(sys.argv) > 1:
        cmd = "python scripts/zoo.py " + " ".join(sys.argv[1:])
    if not args.no_write:
        Path(args.json).write_text(
            json.dumps({"command": cmd, "tolerance": TOLERANCE, "results": results}, indent=2)
            + "\n"
        )
        Path(args.markdown).write_text(markdown(rows, results, cmd))
    failed = [n for n, r in results.items() if not r["passed"]]
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

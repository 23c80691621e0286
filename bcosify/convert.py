"""``convert`` and ``analyze``: trace a model, rewrite it into a B-cos network, report."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bcosify import metadata
from bcosify import nn as bnn
from bcosify.config import BcosConfig
from bcosify.errors import BcosifyError, TraceError, UnsupportedLayerError
from bcosify.fx import nodemap, passes, registry, trace
from bcosify.fx.specialize import example_images, specialize_shape_dependent
from bcosify.fx.tracer import untraceable_modules
from bcosify.preprocessing import IMAGENET_DEFAULT, Preprocessing
from bcosify.report import ConversionReport

__all__ = ["convert", "analyze", "is_converted"]


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` is (or contains) a bcosify-converted network."""
    return hasattr(model, "bcosify_config") or any(
        isinstance(m, (bnn.InputEncoding, bnn.DetachableModule)) for m in model.modules()
    )


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise BcosifyError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise BcosifyError(
            f"cannot convert a {type(model).__name__}-wrapped model; convert model.module and wrap "
            "the converted model afterwards"
        )
    if is_converted(model):
        raise BcosifyError(
            "this model is already a B-cos network (it contains bcosify modules); convert the "
            "original model instead"
        )


def _resolve_preprocessing(
    model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...], Preprocessing]:
    known = Preprocessing.from_model(model)
    if mean is None and std is None and known is None:
        warnings.warn(
            "the preprocessing of this model is unknown: assuming ImageNet mean/std; pass "
            "convert(model, mean=..., std=...) to set it",
            UserWarning,
            stacklevel=3,
        )
    base = known or IMAGENET_DEFAULT
    mean_t = tuple(float(v) for v in (mean if mean is not None else base.mean))
    std_t = tuple(float(v) for v in (std if std is not None else base.std))
    if len(mean_t) != len(std_t) or any(s <= 0 for s in std_t):
        raise BcosifyError(
            f"mean and std need one value per input channel and std > 0; got mean={mean_t}, "
            f"std={std_t}"
        )
    return mean_t, std_t, dataclasses.replace(base, mean=mean_t, std=std_t)


def _run(
    model: nn.Module,
    config: BcosConfig | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    dry_run: bool,
    input_size: int | None = None,
) -> tuple[nn.Module, ConversionReport]:
    _check_model(model)
    registry.load_library_rules()  # before tracing: types with a rule are leaves
    if config is None:
        config = BcosConfig()
    elif not isinstance(config, BcosConfig):
        raise BcosifyError(f"config must be a BcosConfig, got {type(config).__name__}")
    mean_t, std_t, preprocessing = _resolve_preprocessing(model, mean, std)
    if input_size is not None:
        preprocessing = _with_input_size(preprocessing, input_size)
    report = ConversionReport(
        model=type(model).__name__, config=config.to_dict(), mean=mean_t, std=std_t
    )
    was_training = model.training
    source = copy.deepcopy(model).eval()
    leaf_names = tuple(config.leaf_modules) + tuple(config.skip_modules)
    traced_size = _specialize(source, leaf_names, preprocessing, report)
    gm = trace(source, leaf_names)
    _check_trace(source, gm, preprocessing, report)
    passes.positional_operands(gm)
    in_place = passes.functionalize_in_place(gm)
    nodemap.tag_origins(gm.graph)
    outputs = nodemap.scope_outputs(gm.graph)
    blocks = nodemap.block_modules(source, outputs, gm.graph)
    first_input = {n.name: n.all_input_nodes[0].name for n in gm.graph.nodes if n.all_input_nodes}
    head_input = nodemap.head_input(source, gm.graph)
    ctx = passes.RewriteContext(gm, config, report)
    ctx.unsupported_nodes.extend(in_place)
    passes.convert_nodes(ctx)
    report.unsupported = list(ctx.unsupported_nodes)
    if report.unsupported and not dry_run:
        raise UnsupportedLayerError(report.unsupported)
    if config.head_before_pool:
        passes.move_head_before_pool(ctx)
    passes.encode_input(ctx, mean_t, std_t, traced_size)
    num_classes = passes.infer_num_classes(ctx)
    if num_classes is None:
        num_classes = _probe_num_classes(source, preprocessing)
    report.num_classes = num_classes
    logit_bias = config.resolved_logit_bias(num_classes)
    if logit_bias is not None:
        passes.add_logit(ctx, logit_bias)
    gm.graph.lint()
    gm.recompile()
    node_map = nodemap.collect(
        gm,
        outputs,
        blocks,
        ctx.aliases,
        first_input.get(ctx.pool_origin, head_input),
        nodemap.channels_last_blocks(source, blocks),
    ).to_dict()
    gm.delete_all_unused_submodules()
    gm = metadata.BcosGraphModule(gm, gm.graph, type(gm).__name__)
    gm.train(was_training)
    source_info = dict(getattr(model, "bcosify_source", {}) or {})
    if not source_info.get("name") and not dry_run:
        from bcosify.sources._recognise import recognise_architecture

        name = recognise_architecture(model, num_classes)
        if name is not None:  # a torchvision or timm model built outside bcosify
            source_info = {"name": name, "num_classes": num_classes, "weights": None}
            source_info["recognised"] = "by its class, state-dict keys and shapes"
    if not dry_run:
        source_info["architecture_sha256"] = metadata.architecture_fingerprint(gm)
    metadata.attach(
        gm,
        bcosify_config=config,
        bcosify_preprocessing=preprocessing,
        bcosify_num_classes=num_classes,
        bcosify_source=source_info,
        bcosify_node_map=node_map,
        conversion_report=report,
        transform=preprocessing.transform(),
    )
    return gm, report


def _check_trace(
    source: nn.Module, gm: torch.fx.GraphModule, preprocessing: Preprocessing, report
) -> None:
    """The traced graph must compute what the model computes. torch.fx traces some Python
    silently wrong: ``x += y`` where another name still refers to ``x`` (the graph adds out of
    place, the model in place). Checked on one random batch at the model's input size; a model
    that does not run at that size is not checked (the report says so)."""
    side = preprocessing.input_size
    (x,) = example_images(source, (len(preprocessing.mean), side, side), (1,))
    try:
        with torch.no_grad():
            want = source(x)
    except Exception as exc:  # noqa: BLE001 - any failure: the model does not run at this size
        why = f"{type(exc).__name__} at {side}x{side}; pass input_size= to check at its size"
        report.add("not checked", "the trace against the model", "", why)
        return
    try:
        with torch.no_grad():
            got = gm(x)
    except Exception as exc:  # noqa: BLE001 - the model runs, its traced graph does not
        raise TraceError(
            f"torch.fx traced {type(source).__name__} into a graph that fails where the model "
            f"runs ({type(exc).__name__}: {exc})"
        ) from exc
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
        return  # a model that returns more than logits is refused later, with its own message
    scale = want.abs().max().clamp_min(1e-12)
    if got.shape != want.shape or ((got - want).abs().max() / scale).item() > 1e-4:
        raise TraceError(
            f"torch.fx traced {type(source).__name__} into a graph that computes something "
            "else than the model (checked on a random batch). The usual cause is an in-place "
            "update of a tensor that another name still refers to (`alias = x; x += y`), which "
            "torch.fx records out of place; write it out of place (`x = x + y`)"
        )


def _with_input_size(preprocessing: Preprocessing, size: Any) -> Preprocessing:
    """``preprocessing`` for ``size`` x ``size`` images (the resize keeps its crop ratio)."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise BcosifyError(f"input_size must be a positive int (the image side), got {size!r}")
    ratio = preprocessing.resize_size / preprocessing.input_size
    resize = max(size, round(size * ratio))
    return dataclasses.replace(preprocessing, input_size=size, resize_size=resize)


def _specialize(
    source: nn.Module,
    leaf_names: tuple[str, ...],
    preprocessing: Preprocessing,
    report: ConversionReport,
) -> tuple[int, int] | None:
    """Trace the modules of ``source`` that branch on their input's size at the model's input
    size (:mod:`bcosify.fx.specialize`), in place; returns that size if any was."""
    modules = untraceable_modules(source, leaf_names)
    if not modules:
        return None
    side = preprocessing.input_size
    shape = (len(preprocessing.mean), side, side)
    done, left = specialize_shape_dependent(source, modules, shape)
    for name, kind in done.items():
        report.add("specialized", f"{kind} traced at {side}x{side} (it branches on the size)", name)
    for name, why in left.items():
        report.add("kept whole", f"{type(modules[name]).__name__}: not traceable ({why})", name)
    return (side, side) if done else None


def _probe_num_classes(model: nn.Module, preprocessing: Preprocessing) -> int:
    size = preprocessing.input_size
    x = torch.zeros(1, len(preprocessing.mean), size, size)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise BcosifyError(
            f"could not determine the number of classes: a forward pass at {size}x{size} failed "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return int(out.shape[-1])


def convert(
    model: nn.Module,
    config: BcosConfig | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    rules: Mapping[Any, Callable] | None = None,
    input_size: int | None = None,
) -> torch.fx.GraphModule:
    """Convert ``model`` into a B-cos network.

    The model is traced with torch.fx and rewritten by the rule tables: conv/linear become B-cos
    units, BatchNorm becomes uncentered, biases and ReLUs are removed, gated activations get
    detachable gates, the input is encoded as ``[x, 1 - x]`` with the normalisation folded into the
    first layer, and a logit bias is added. ``model`` itself is not modified.

    Args:
        model: the source classifier (eval or train mode; the result keeps the mode).
        config: conversion options (default ``BcosConfig()``: B=2, no biases, no ReLU).
        mean, std: the normalisation the source model expects; by default taken from the model's
            known preprocessing (bcosify sources, timm ``pretrained_cfg``).
        rules: rules for this call only (module types -> module rules, functions or method
            names -> function rules; see :func:`bcosify.fx.registry.scoped_rules`); they win over
            the registered ones.
        input_size: the side of the square images the model will be used at (default: its
            known preprocessing's ``input_size``, else 224). Modules whose code branches on the
            input size (timm's no-trace modules: TinyViT, Twins, ConViT, MobileViT, ...) are
            traced at that size, and the converted model then accepts that size only (the
            report lists them as ``specialized``). Without such modules it changes nothing but
            the preprocessing.

    Returns:
        A ``torch.fx.GraphModule`` taking images in [0, 1] (no normalisation outside), with
        attributes ``bcosify_config``, ``bcosify_preprocessing``, ``bcosify_num_classes``,
        ``conversion_report`` and ``transform`` (resize/crop/to-tensor).

    Raises:
        UnsupportedLayerError: listing every operation no rule covers.
        TraceError: when torch.fx cannot trace the model.
        BcosifyError: for a DDP-wrapped or already converted model, or bad options.

    Example:
        >>> import torchvision
        >>> m = convert(torchvision.models.resnet18(), mean=(0.485, 0.456, 0.406),
        ...             std=(0.229, 0.224, 0.225))
        >>> m(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 1000])
    """
    with registry.scoped_rules(rules):
        gm, _ = _run(model, config, mean, std, dry_run=False, input_size=input_size)
    return gm


def analyze(
    model: nn.Module,
    config: BcosConfig | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    rules: Mapping[Any, Callable] | None = None,
    input_size: int | None = None,
) -> ConversionReport:
    """Dry run of :func:`convert`: the report of what would change, unsupported operations
    included (``report.unsupported``) instead of raised. ``model`` is not modified.

    Example:
        >>> import torchvision
        >>> report = analyze(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> report.ok
        True
    """
    with registry.scoped_rules(rules):
        _, report = _run(model, config, mean, std, dry_run=True, input_size=input_size)
    return report

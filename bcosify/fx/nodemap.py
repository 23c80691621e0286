"""Which node of the source graph each node of the converted graph comes from.

The converter rewrites the traced graph node by node, so it can say, for every value the source
model computes, which node of the converted model computes its counterpart. Before the passes run,
every node of the traced source is tagged with its own name (``node.meta["bcosify_origin"]``);
replacements copy the tag, and a removed node (a ReLU, a dropout) hands its value to its input.
After the passes the tags are read back into a :class:`NodeMap`.

The map also knows the module structure of the source: the node that computes the output of each
module (``outputs``: qualified module name -> source node), the *blocks* (the modules held by a
``Sequential``, ``ModuleList`` or ``ModuleDict`` that are not containers themselves: residual
blocks, transformer blocks, dense layers) and the *features* node (what fed the global pooling
before the classifier was moved in front of it). Feature alignment (``train.loss: align``) uses the
blocks and the features node by default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import fx, nn

__all__ = ["NodeMap", "ORIGIN", "tag_origins", "scope_outputs", "block_modules", "node_map"]

ORIGIN = "bcosify_origin"
"""Key of ``node.meta`` that holds the name of the source node a converted node comes from."""

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_METADATA = {"size", "dim", "numel", "shape", "ndim", "dtype", "device"}


def is_metadata(node: fx.Node) -> bool:
    """Whether ``node`` reads tensor metadata (a shape, a dtype), not tensor values."""
    if node.op == "call_method":
        return node.target in _METADATA
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _METADATA
    return False


@dataclasses.dataclass
class NodeMap:
    """Source node -> converted node, plus the source's module structure.

    Attributes:
        nodes: source node name -> name of the converted node that computes its counterpart.
        outputs: qualified module name -> the source node that is that module's output (only
            where it is a single node: a module called once, or a block with one result).
        blocks: qualified names of the source's blocks, in graph order.
        features: the source node of the features the classifier reads: what fed the global
            pooling in front of it (a CNN), or its input (a class token); None if not found.
        channels_last: blocks whose 4-d output is (N, H, W, C) (Swin: layer norms and linear
            maps, no convolution), so that their channel axis is the last one.

    Example:
        >>> import torchvision, bcosify
        >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> nm = bcosify.node_map(m)
        >>> nm.blocks[:2], nm.outputs["layer1.0"], nm.nodes["layer1_0_relu_1"]
        (['layer1.0', 'layer1.1'], 'layer1_0_relu_1', 'add')
    """

    nodes: dict[str, str]
    outputs: dict[str, str]
    blocks: list[str]
    features: str | None = None
    channels_last: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NodeMap:
        return cls(
            nodes=dict(values.get("nodes", {})),
            outputs=dict(values.get("outputs", {})),
            blocks=list(values.get("blocks", [])),
            features=values.get("features"),
            channels_last=list(values.get("channels_last", [])),
        )

    def channel_dim(self, name: str, ndim: int) -> int:
        """The channel axis of the features at module or node ``name`` (``ndim`` dimensions):
        1 for (N, C, H, W) maps, the last one for tokens, vectors and channels-last blocks."""
        last = set(self.channels_last) | {self.outputs[b] for b in self.channels_last}
        return 1 if ndim == 4 and name not in last else -1

    def source_node(self, name: str) -> str | None:
        """A module name (``layer3.1``) or a source node name (``layer3_1_relu_1``) as the source
        node it denotes, or None if it is neither."""
        if name in self.outputs:
            return self.outputs[name]
        if name in self.nodes:
            return name
        return None


def tag_origins(graph: fx.Graph) -> None:
    """Tag every node of a freshly traced source graph with its own name."""
    for node in graph.nodes:
        node.meta[ORIGIN] = node.name


def _scopes(node: fx.Node) -> set[str]:
    stack = node.meta.get("nn_module_stack") or {}
    out = set()
    for key in stack:
        path = str(key).split("@", 1)[0]
        parts = path.split(".")
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    if node.op == "call_module":
        out.add(str(node.target))
    return out


def scope_outputs(graph: fx.Graph) -> dict[str, str]:
    """Qualified module name -> the one source node through which that module's result leaves it.

    A node is an output of module ``P`` when it runs inside ``P`` and one of its users runs outside
    it. Modules with several such nodes (called more than once, or returning a tuple) are left out.
    """
    scopes = {n: _scopes(n) for n in graph.nodes}
    found: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr") or is_metadata(node):
            continue
        for path in scopes[node]:
            if any(path not in scopes[u] or u.op == "output" for u in node.users):
                found.setdefault(path, []).append(node.name)
    return {p: names[0] for p, names in found.items() if len(names) == 1}


def block_modules(root: nn.Module, outputs: dict[str, str], graph: fx.Graph) -> list[str]:
    """Modules held by a container that are not containers themselves and have submodules (the
    residual, transformer and dense blocks), in the order the graph computes their outputs."""
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    blocks = []
    for parent_name, parent in root.named_modules():
        if not isinstance(parent, _CONTAINERS):
            continue
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, _CONTAINERS) or not any(True for _ in child.children()):
                continue
            if name in outputs:
                blocks.append(name)
    # the outermost ones: a squeeze-excitation inside an inverted residual block is not a block
    blocks = [b for b in blocks if not any(b.startswith(o + ".") for o in blocks)]
    return sorted(set(blocks), key=lambda b: order[outputs[b]])


def channels_last_blocks(root: nn.Module, blocks: list[str]) -> list[str]:
    """Blocks built of layer norms and linear maps without any convolution (Swin's blocks keep
    their maps as (N, H, W, C))."""
    out = []
    for name in blocks:
        kinds = [type(m) for m in root.get_submodule(name).modules()]
        if any(issubclass(k, nn.LayerNorm) for k in kinds) and not any(
            issubclass(k, nn.modules.conv._ConvNd) for k in kinds
        ):
            out.append(name)
    return out


def head_input(root: nn.Module, graph: fx.Graph) -> str | None:
    """The source node that feeds the classifier: the last linear layer before the output,
    through dropout, flatten and the like."""
    out = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    node = out.args[0] if out is not None else None
    for _ in range(8):
        if not isinstance(node, fx.Node) or not node.all_input_nodes:
            return None
        if node.op == "call_module" and isinstance(root.get_submodule(node.target), nn.Linear):
            return node.all_input_nodes[0].name
        node = node.all_input_nodes[0]
    return None


def collect(
    converted: fx.GraphModule,
    outputs: dict[str, str],
    blocks: list[str],
    aliases: dict[str, str],
    features: str | None,
    channels_last: list[str],
) -> NodeMap:
    """Read the origin tags of the converted graph back into a :class:`NodeMap`.

    ``aliases`` maps removed source nodes to the source node whose value took their place.
    """
    nodes: dict[str, str] = {}
    for node in converted.graph.nodes:
        origin = node.meta.get(ORIGIN)
        if origin is None or node.op in ("placeholder", "output"):
            continue
        nodes[origin] = node.name  # the last node carrying a tag computes the final value
    for removed in aliases:
        target = removed
        for _ in range(len(aliases) + 1):
            if target in nodes or target not in aliases:
                break
            target = aliases[target]
        if removed not in nodes and target in nodes:
            nodes[removed] = nodes[target]
    outputs = {p: n for p, n in outputs.items() if n in nodes}
    blocks = [b for b in blocks if b in outputs]
    if features not in nodes:
        features = None
    return NodeMap(
        nodes=nodes,
        outputs=outputs,
        blocks=blocks,
        features=features,
        channels_last=[b for b in channels_last if b in blocks],
    )


def node_map(model: nn.Module) -> NodeMap:
    """The :class:`NodeMap` of a converted model.

    Raises:
        BcosifyError: if ``model`` is not a model converted by this version of bcosify.

    Example:
        >>> import torchvision, bcosify
        >>> m = bcosify.convert(torchvision.models.resnet18(), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> bcosify.node_map(m).features
        'layer4_1_relu_1'
    """
    from bcosify.errors import BcosifyError

    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    model = getattr(model, "_orig_mod", model)  # torch.compile
    values = getattr(model, "bcosify_node_map", None)
    source = getattr(model, "bcosify_source", None) or {}
    if values is None and source.get("zoo") and source.get("name") is None:
        raise BcosifyError(
            f"{source['zoo']} has no node map: bcosify builds this published B-cos model itself, "
            "it was not converted from a source model whose nodes could be matched (feature "
            "alignment needs a converted model; plain fine-tuning works)"
        )
    if values is None:
        raise BcosifyError(
            f"this {type(model).__name__} has no node map: it is not a converted model, or it was "
            "converted by an older bcosify; convert the source again with bcosify.convert"
        )
    return NodeMap.from_dict(values)

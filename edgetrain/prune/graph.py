"""Coupled channel groups of a model, from Torch-Pruning's dependency graph.

A *channel group* is a set of channels that must be removed (or added) together: the
output channels of every producer feeding one tensor, the batch-norm channels on it,
and the input channels of every consumer reading it. At a residual add all producers
and consumers of the summed tensor join one group. Each member records, per index it
touches, which channel of the group (``root_idxs``) the index belongs to, so a linear
layer after a flatten (one conv channel = H*W input features) is handled too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgetrain._optional import require
from edgetrain.errors import ConfigError, one_line
from edgetrain.models import WEIGHT_LAYER_TYPES
from edgetrain.models import output_layers as find_output_layers
from edgetrain.models.surgery import ChannelBias

__all__ = [
    "ChannelGroup",
    "Member",
    "build_graph",
    "channel_groups",
    "dependency_graph",
    "example_input",
]


def _tp():  # noqa: ANN202 - module object
    return require("torch_pruning", "prune", package="torch-pruning")


@dataclass(frozen=True)
class Member:
    """One layer's share of a channel group.

    Attributes:
        name: the module's qualified name.
        module: the module.
        role: ``"out"`` (a producer's output channels or a batch-norm's channels) or
            ``"in"`` (a consumer's input channels).
        idxs: the indices this member touches along its channel dimension.
        root_idxs: for each index, the group channel it belongs to.
    """

    name: str
    module: nn.Module
    role: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]

    @property
    def is_weight_layer(self) -> bool:
        return isinstance(self.module, WEIGHT_LAYER_TYPES)


@dataclass
class ChannelGroup:
    """Channels coupled through the dependency graph; ``root`` names the producer the
    group was found from, ``size`` its channel count."""

    root: str
    size: int
    members: list[Member] = field(default_factory=list)
    #: Torch-Pruning's own group, for its importance criteria
    tp_group: Any = field(default=None, compare=False, repr=False)
    #: the attention modules whose embedding these channels are (channel ``c`` belongs to
    #: head ``c // (size // heads)``); such a group is thinned by whole heads only
    attention: tuple[str, ...] = ()
    heads: int = 0

    def head_channels(self, head: int) -> list[int]:
        """The group channels of one attention head."""
        width = self.size // self.heads
        return list(range(head * width, (head + 1) * width))

    def weight_members(self) -> list[Member]:
        return [m for m in self.members if m.is_weight_layer]

    def mixing_norms(self) -> list[str]:
        """Members that normalise across channels (LayerNorm, GroupNorm, RMSNorm...):
        removing a channel, even a dead one, changes their statistics."""
        return sorted({m.name for m in self.members if isinstance(m.module, MIXING_NORMS)})

    def layer_names(self, role: str | None = None) -> list[str]:
        return sorted({m.name for m in self.members if role is None or m.role == role})

    def channel_norms(self) -> torch.Tensor:
        """Per group channel: the L2 norm over every conv/linear weight of that channel
        (producers' output slices and consumers' input slices together)."""
        sq = torch.zeros(self.size, dtype=torch.float64)
        for m in self.weight_members():
            w = m.module.weight.detach()
            dim = 0 if m.role == "out" else 1
            per_idx = w.double().pow(2).transpose(0, dim).reshape(w.shape[dim], -1).sum(1)
            idx = torch.tensor(m.idxs, dtype=torch.long)
            sq.index_add_(0, torch.tensor(m.root_idxs, dtype=torch.long), per_idx[idx].cpu())
        return sq.sqrt()


#: Normalisations whose statistics span the channels of a group.
MIXING_NORMS: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)


def _channel_bias_pruner():  # noqa: ANN202
    tp = _tp()

    class _ChannelBiasPruner(tp.pruner.BasePruningFunc):
        """Teaches the dependency graph that a :class:`ChannelBias` couples its input and
        output channels (like a batch-norm)."""

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(layer.bias.numel())) - set(idxs))
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.bias.numel()

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.bias.numel()

    return _ChannelBiasPruner()


def example_input(model: nn.Module, example: torch.Tensor | None = None) -> torch.Tensor:
    """``example`` or, for zoo models, one zero sample of ``model.input_shape`` on the
    device and in the floating dtype of the model's first floating parameter or buffer."""
    if example is not None:
        return example
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            f"{type(model).__name__} has no input_shape; pass example_input (one batch of "
            "inputs, e.g. torch.zeros(1, *sample_shape))"
        )
    ref = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if ref is None:
        return torch.zeros(1, *shape)
    return torch.zeros(1, *shape, device=ref.device, dtype=ref.dtype)


def dependency_graph(model: nn.Module, example: torch.Tensor):  # noqa: ANN201 - tp.DependencyGraph
    """Torch-Pruning's dependency graph of ``model`` traced with ``example``, for callers
    that read only which module follows which; :func:`build_graph` also refuses models
    whose channel correspondences the graph would get wrong.

    The trace leaves the model as it was: it runs in eval mode (running statistics
    untouched) and every submodule gets its own train/eval mode back; frozen parameters
    require gradients during the trace only (the graph is read from the autograd graph of
    one forward pass, so gradients must flow through frozen layers too), also under
    ``torch.no_grad()``. Parameters used outside a layer (a per-channel offset) are
    followed without Torch-Pruning's warning about them.
    """
    tp = _tp()
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example,
                customized_pruners={ChannelBias: _channel_bias_pruner()},
            )
    except Exception as exc:  # tracing failures surface as many types
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example)
        raise ConfigError(
            f"could not trace {type(model).__name__} for channel dependencies with an example "
            f"input of shape {shape} ({one_line(exc)}); the model needs a traceable forward "
            "and an example_input it accepts"
        ) from exc
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m, training in modes:
            m.training = training


def build_graph(model: nn.Module, example: torch.Tensor):  # noqa: ANN201 - tp.DependencyGraph
    """Torch-Pruning's dependency graph of ``model`` traced with ``example``
    (:func:`dependency_graph`), refusing models with a submodule that declares
    ``traceable_channels = False`` (its channel map is not one the graph can follow)."""
    opaque = [n for n, m in model.named_modules() if not getattr(m, "traceable_channels", True)]
    if opaque:
        kind = type(model.get_submodule(opaque[0])).__name__
        raise ConfigError(
            f"cannot trace {type(model).__name__} for channel dependencies: '{opaque[0]}' "
            f"({kind}) maps channels in a way the dependency graph cannot follow; use a "
            "shortcut with weights (resnet_cifar shortcut='conv1x1' or 'conv3x3')"
        )
    return dependency_graph(model, example)


def _role(tp, handler) -> str | None:  # noqa: ANN001
    name = getattr(handler, "__name__", "")
    if name == "prune_out_channels":
        return "out"
    if name == "prune_in_channels":
        return "in"
    return None


def untraceable(model: nn.Module, exc: BaseException) -> str:
    """Why Torch-Pruning's graph could not follow a layer's channels, in one line (naming
    the model's recurrent layers, the usual cause)."""
    rnns = [
        f"'{n}' ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, nn.RNNBase)
    ]
    through = f", which feed the recurrent layer {rnns[0]}" if rnns else ""
    return f"Torch-Pruning's graph cannot follow its channels{through} ({one_line(exc)})"


def _all_groups(
    model: nn.Module,
    graph: Any,
    ignored: list[nn.Module],
    names: dict[nn.Module, str],
    refused: dict[str, str] | None,
) -> Iterator[Any]:
    """Torch-Pruning's groups, one per output-channel root (what its ``get_all_groups``
    yields), with each root traced on its own: a root whose channels the graph cannot
    follow (an op without index mapping) is refused by name instead of ending the walk."""
    ignored = ignored + list(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[int] = set()
    for module in list(graph.module2node):
        if module in ignored or not isinstance(module, WEIGHT_LAYER_TYPES) or id(module) in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        channels = pruner.get_out_channels(module)
        try:
            group = graph.get_pruning_group(
                module, pruner.prune_out_channels, list(range(channels))
            )
        except (IndexError, KeyError, RuntimeError, ValueError) as exc:
            if refused is not None:
                refused.setdefault(names.get(module, "?"), untraceable(model, exc))
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable = prunable and dep.target.module not in ignored
        if prunable:
            yield group


def _whole_heads(model: nn.Module, attention: list[str], size: int) -> str | None:
    """Why the channels of attention modules cannot be thinned by whole heads, or None."""
    modules = [model.get_submodule(a) for a in attention]
    counts = {m.num_heads for m in modules}
    if len(counts) > 1:
        return (
            f"its channels are the embedding of attentions with different head counts "
            f"({', '.join(attention)}), which no whole-head cut keeps even"
        )
    for name, m in zip(attention, modules, strict=True):
        if m.embed_dim != size or not m._qkv_same_embed_dim or m.num_heads < 2:
            return (
                f"its channels are the embedding of the attention '{name}', whose heads "
                "cannot be thinned (a single head, or separate key/value widths)"
            )
    return None


def channel_groups(
    model: nn.Module,
    example: torch.Tensor | None = None,
    graph=None,  # noqa: ANN001 - tp.DependencyGraph
    output_layers: Sequence[str] | None = None,
    refused: dict[str, str] | None = None,
    heads: bool = False,
) -> list[ChannelGroup]:
    """Every group of coupled channels whose channels may change.

    The model's outputs are fixed: the output channels of ``output_layers`` (default:
    the layers whose outputs are the model's outputs, as the traced forward shows, or
    ``model.output_layer``) form no group. The input channels of the
    first layer are never a group either (they are the data's channels).

    Args:
        model: any module the dependency graph can trace.
        example: one batch of inputs (default: zeros of ``model.input_shape``).
        graph: a dependency graph already built for ``model``.
        output_layers: names of layers whose outputs are the model's outputs.
        refused: filled with ``{layer: why}`` for the producers of groups left out because
            their channels cannot change correctly: channels that are an attention
            module's embedding (``nn.MultiheadAttention`` keeps every head as wide as the
            embedding divided by the head count, so removing single channels would leave
            heads of different widths; unless ``heads``), channels that feed a recurrent
            layer (its gates are stacked per hidden unit), and producers whose channels
            Torch-Pruning's graph cannot follow.
        heads: keep attention embeddings as groups to be thinned by whole heads
            (:attr:`ChannelGroup.attention`, :attr:`ChannelGroup.heads`).
    """
    tp = _tp()
    example = example_input(model, example)
    graph = graph if graph is not None else build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    if output_layers is None:
        output_layers = find_output_layers(model, tuple(example.shape[1:]))
    ignored = [model.get_submodule(n) for n in output_layers]
    groups: list[ChannelGroup] = []
    for group in _all_groups(model, graph, ignored, names, refused):
        items = list(group.items)
        root = items[0].dep.target.module
        members: list[Member] = []
        for item in items:
            module = item.dep.target.module
            role = _role(tp, item.dep.handler)
            if module not in names or role is None:
                continue  # graph-internal nodes (reshape, add, relu ...)
            members.append(
                Member(
                    name=names[module],
                    module=module,
                    role="out" if isinstance(module, nn.modules.batchnorm._BatchNorm) else role,
                    idxs=tuple(int(i) for i in item.idxs),
                    root_idxs=tuple(int(i) for i in item.root_idxs),
                )
            )
        recurrent = sorted({m.name for m in members if isinstance(m.module, nn.RNNBase)})
        if recurrent:
            if refused is not None:
                kind = type(model.get_submodule(recurrent[0])).__name__
                for m in members:
                    if m.role == "out" and m.is_weight_layer:
                        refused.setdefault(
                            m.name,
                            f"its channels feed the recurrent layer '{recurrent[0]}' ({kind}), "
                            "whose weights Torch-Pruning cannot thin channel by channel",
                        )
            continue
        size = 1 + max((r for m in members for r in m.root_idxs), default=-1)
        attention = sorted({m.name for m in members if isinstance(m.module, nn.MultiheadAttention)})
        why = _whole_heads(model, attention, size) if attention and heads else None
        if attention and heads and why is None:
            counts = {model.get_submodule(a).num_heads for a in attention}
            groups.append(
                ChannelGroup(
                    root=names.get(root, "?"),
                    size=size,
                    members=members,
                    tp_group=group,
                    attention=tuple(attention),
                    heads=counts.pop(),
                )
            )
            continue
        if attention:
            if refused is not None:
                for m in members:
                    if m.role == "out" and m.is_weight_layer:
                        refused.setdefault(
                            m.name,
                            why
                            or f"its channels are the embedding of the attention "
                            f"'{attention[0]}', whose heads cannot be thinned channel by "
                            "channel",
                        )
            continue
        groups.append(
            ChannelGroup(root=names.get(root, "?"), size=size, members=members, tp_group=group)
        )
    return groups

"""Physically remove dead channels in the middle of training, optimizer state included.

:func:`reconfigure` is PruneTrain's "sparsify + reconfigure" step:

1. zero every conv/linear weight with ``|w| < threshold``;
2. find the coupled channel groups (Torch-Pruning's dependency graph, so any residual or
   branching net works);
3. *channel union*: a channel of a group is removed only when every conv/linear weight
   touching it (producers' output slices, consumers' input slices) is zero, so the
   removed channel provably contributes nothing;
4. a residual block whose inner channels all died is replaced by its shortcut plus the
   constant its residual branch still adds (:class:`~edgetrain.models.surgery.ResidualBypass`);
5. remove the channels (conv, batch-norm with running stats, linear) and slice the
   optimizer state (momentum buffers, Adam moments; step counts kept) the same way, in
   place, so training continues as if the model had always had the smaller shape.

The state slicing uses *index tracing*: before Torch-Pruning rewrites the layers every
parameter's values are replaced by the index of each element; whatever indices survive
in the rewritten parameter say exactly which elements were kept, whatever the layer
type or index mapping (flatten, residual adds). Real values and every per-parameter
optimizer tensor are then gathered with those indices.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from edgetrain.cost import analyze
from edgetrain.engine.optim import rebind_parameters
from edgetrain.errors import ConfigError
from edgetrain.models import WEIGHT_LAYER_TYPES
from edgetrain.models.surgery import set_module
from edgetrain.prune.graph import ChannelGroup, build_graph, channel_groups
from edgetrain.prune.graph import example_input as default_input

__all__ = ["ReconfigureResult", "dead_channels", "reconfigure", "remove_channels", "sparsify"]


@dataclass
class ReconfigureResult:
    """What a reconfiguration changed.

    Attributes:
        model: the reconfigured model (the same object, changed in place).
        channels_before / channels_after: output channels per conv/linear layer.
        bypassed: residual blocks reduced to their shortcut in this step.
        zeroed: weights set to zero by the threshold.
        params_before / params_after: parameter counts.
        macs_before / macs_after: inference MACs per sample (cost model).
    """

    model: nn.Module
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    bypassed: list[str] = field(default_factory=list)
    zeroed: int = 0
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.bypassed) or self.channels_before != self.channels_after

    @property
    def removed_channels(self) -> int:
        return sum(self.channels_before.values()) - sum(self.channels_after.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no model), for metrics files and reports."""
        d = asdict(self)  # deep-copies the model, so drop it afterwards
        d.pop("model")
        d["removed_channels"] = self.removed_channels
        return d

    def summary(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * (1 - b / a):.1f}%" if a else "-"

        lines = [
            f"channels {sum(self.channels_before.values())} -> "
            f"{sum(self.channels_after.values())}, params {self.params_before:,} -> "
            f"{self.params_after:,} (-{pct(self.params_before, self.params_after)}), "
            f"inference MACs {self.macs_before:,} -> {self.macs_after:,} "
            f"(-{pct(self.macs_before, self.macs_after)})"
        ]
        if self.bypassed:
            lines.append(f"residual blocks removed: {', '.join(self.bypassed)}")
        return "\n".join(lines)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]


def _out_channels(model: nn.Module) -> dict[str, int]:
    return {n: int(m.weight.shape[0]) for n, m in _weight_layers(model)}


def sparsify(model: nn.Module, threshold: float = 1e-4) -> int:
    """Zero every conv/linear weight with ``|w| < threshold``; returns how many were zeroed
    (counting only weights that were not zero already)."""
    count = 0
    with torch.no_grad():
        for _, m in _weight_layers(model):
            small = m.weight.abs() < threshold
            count += int((small & (m.weight != 0)).sum())
            m.weight.masked_fill_(small, 0.0)
    return count


def dead_channels(group: ChannelGroup) -> list[int]:
    """Channels of ``group`` whose every conv/linear weight is zero (the channel union)."""
    return [int(i) for i in torch.nonzero(group.channel_norms() == 0).flatten()]


def _bypassable_block(model: nn.Module, group: ChannelGroup) -> str | None:
    """The residual block whose inner channels ``group`` is, when removing them all leaves
    the block's last conv with only zeros to read (the block then reduces exactly)."""
    names = [m.name for m in group.members]
    best: str | None = None
    for block_name, block in model.named_modules():
        if not block_name or not callable(getattr(block, "bypass", None)):
            continue
        prefix = block_name + "."
        if not all(n.startswith(prefix) for n in names):
            continue
        last_conv = f"{prefix}conv{getattr(block, 'depth', 0)}"
        if any(m.name == last_conv and m.role == "in" for m in group.members) and (
            best is None or len(block_name) > len(best)
        ):
            best = block_name
    return best


def _prune_plan(
    model: nn.Module, example: torch.Tensor, output_layers: list[str] | None
) -> tuple[Any, list[tuple[ChannelGroup, list[int]]], list[str]]:
    """Bypass dead residual blocks until none is left, then list each group's removals."""
    bypassed: list[str] = []
    while True:
        graph = build_graph(model, example)
        groups = channel_groups(model, example, graph=graph, output_layers=output_layers)
        plan: list[tuple[ChannelGroup, list[int]]] = []
        blocks: list[str] = []
        for group in groups:
            dead = dead_channels(group)
            if not dead:
                continue
            norms = group.mixing_norms()
            if norms:
                # Kept (as zeros): the normalisation still counts them.
                warnings.warn(
                    f"{len(dead)} dead channels of '{group.root}' kept: {', '.join(norms)} "
                    "normalises across these channels, so removing them would change the "
                    "model's outputs",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            if len(dead) == group.size:
                block = _bypassable_block(model, group)
                if block is not None:
                    blocks.append(block)
                    continue
                # Keep one (zero) channel: the layer stays valid and the function unchanged.
                dead = dead[1:]
                if not dead:
                    continue
            plan.append((group, dead))
        if not blocks:
            return graph, plan, bypassed
        for name in dict.fromkeys(blocks):
            set_module(model, name, model.get_submodule(name).bypass())
            bypassed.append(name)


def _slice_state(
    value: Any, old_shape: torch.Size, index: torch.Tensor, new_shape: torch.Size
) -> Any:
    if isinstance(value, torch.Tensor) and value.shape == old_shape and old_shape != new_shape:
        return value.flatten()[index.to(value.device)].view(new_shape).clone()
    return value


def reconfigure(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    example_input: torch.Tensor | None = None,
    threshold: float = 1e-4,
    output_layers: list[str] | None = None,
) -> ReconfigureResult:
    """Zero small weights, then physically remove every channel that is zero in all the
    layers it couples, slicing the optimizer state the same way.

    Args:
        model: the model (changed in place; not a DDP wrapper: pass ``.module``).
        optimizer: the optimizer training ``model``; its parameter groups and state are
            updated in place (momentum of kept channels unchanged, pruned ones gone).
        example_input: one batch of inputs (default: zeros of ``model.input_shape``).
        threshold: weights with ``|w| < threshold`` are zeroed first (0 disables).
        output_layers: layers whose outputs are the model's outputs (default: the last).

    Returns:
        A :class:`ReconfigureResult`; ``result.model`` is ``model``.

    Example:
        >>> from edgetrain import models
        >>> net = models.create("small_cnn")
        >>> with torch.no_grad():
        ...     net.conv2.weight[:4] = 0
        >>> reconfigure(net).channels_after["conv2"] < 16  # doctest: +SKIP
        True
    """
    example = default_input(model, example_input)
    input_shape = tuple(example.shape[1:])
    before = _out_channels(model)
    params_before = sum(p.numel() for p in model.parameters())
    macs_before = analyze(model, input_shape, memory="layerwise").total().forward_macs
    zeroed = sparsify(model, threshold) if threshold > 0 else 0

    names = {id(p): name for name, p in model.named_parameters()}
    graph, plan, bypassed = _prune_plan(model, example, output_layers)
    removals = {group.root: dead for group, dead in plan}
    if removals or bypassed:
        # Bypassed blocks already left the model: rebind their optimizer entries too.
        remove_channels(model, removals, optimizer, example, graph=graph, names=names)

    return ReconfigureResult(
        model=model,
        channels_before=before,
        channels_after=_out_channels(model),
        bypassed=bypassed,
        zeroed=zeroed,
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        macs_before=macs_before,
        macs_after=analyze(model, input_shape, memory="layerwise").total().forward_macs,
    )


def remove_channels(
    model: nn.Module,
    removals: dict[str, list[int]],
    optimizer: torch.optim.Optimizer | None = None,
    example_input: torch.Tensor | None = None,
    *,
    graph: Any = None,
    names: dict[int, str] | None = None,
) -> nn.Module:
    """Physically remove output channels of the named layers, and every channel coupled
    to them, slicing the optimizer state alike; in place.

    This is the one channel-removal path of edgetrain: PruneTrain's reconfiguration and
    the compression pipeline's filter pruning both end here.

    Args:
        model: the model to thin.
        removals: ``{layer name: [output channel indices]}``; each layer names the group
            of channels coupled to its outputs (a residual add's whole group included).
        optimizer: updated in place: parameters rebound, per-parameter state sliced.
        example_input: one batch of inputs (default: zeros of ``model.input_shape``).
        graph: a dependency graph already built for ``model`` as it is now.
        names: ``{id(param): name}`` from before any earlier edit in the same step (so the
            optimizer can also drop parameters of modules removed before this call).

    Example:
        >>> from edgetrain.models import create
        >>> net = remove_channels(create("vgg_small"), {"conv1": [0, 1]})
        >>> net.conv1.out_channels, net.conv2.in_channels
        (14, 14)
    """
    example = default_input(model, example_input)
    names = names if names is not None else {id(p): n for n, p in model.named_parameters()}
    old_shapes = {name: p.shape for name, p in model.named_parameters()}
    index: dict[str, torch.Tensor] = {}
    removals = {k: sorted(set(v)) for k, v in removals.items() if v}
    if removals:
        graph = graph if graph is not None else build_graph(model, example)
        for layer, idxs in removals.items():
            size = int(model.get_submodule(layer).weight.shape[0])
            if idxs[0] < 0 or idxs[-1] >= size or len(idxs) >= size:
                raise ConfigError(
                    f"cannot remove channels {idxs[:4]}... of '{layer}' ({size} channels): "
                    "indices must be in range and at least one channel must stay"
                )
        originals = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                originals[name] = p.detach().clone()
                p.grad = None
                p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
        try:
            for layer, idxs in removals.items():
                root = model.get_submodule(layer)
                handler = graph.get_pruner_of_module(root).prune_out_channels
                graph.get_pruning_group(root, handler, idxs=idxs).prune()
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    idx = p.detach().flatten().long()
                    index[name] = idx
                    orig = originals.get(name)
                    if orig is not None:
                        p.data = orig.flatten()[idx].view(p.shape).clone()
    if optimizer is not None:

        def slice_state(name: str, new: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
            idx = index.get(name)
            if idx is None:
                return state
            return {k: _slice_state(v, old_shapes[name], idx, new.shape) for k, v in state.items()}

        rebind_parameters(optimizer, names, model, slice_state)
    return model

"""Pruning methods by name, and which layers a method may prune together.

A pruning method is a function ``method(model, layers, sparsity, *, example_input=None,
**options) -> list[PrunedGroup]`` registered in :data:`PRUNERS`; recipes name it by its
key (``method: l1_filter``) and its extra options are checked against its signature.
Methods registered with ``structured=True`` remove whole filters, so the layers they get
must be the complete sets of *tied producers*: layers whose output channels are one
channel group (every conv feeding the same residual add shares its output channels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edgetrain.errors import ConfigError
from edgetrain.models import WEIGHT_LAYER_TYPES, output_layers
from edgetrain.prune.graph import ChannelGroup, channel_groups
from edgetrain.registry import Registry

__all__ = [
    "PRUNERS",
    "PRUNER_ARGS",
    "PrunedGroup",
    "TiedLayers",
    "check_prunable",
    "output_layer",
    "tied_layers",
]

PRUNERS: Registry[list[PrunedGroup]] = Registry("pruning method")

# Arguments the pipeline passes to every pruning method; never recipe options.
PRUNER_ARGS = ("model", "layers", "sparsity", "example_input")


@dataclass(frozen=True)
class PrunedGroup:
    """What one pruning step did to one channel group.

    Attributes:
        layers: the tied producers whose filters were removed together.
        before / after: the group's channel count.
        removed: the removed channel indices (in the numbering before removal).
    """

    layers: tuple[str, ...]
    before: int
    after: int
    removed: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"], d["removed"] = list(self.layers), list(self.removed)
        return d


@dataclass
class TiedLayers:
    """A channel group and its producers: the layers whose filters must go together."""

    group: ChannelGroup
    producers: tuple[str, ...]

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1


def output_layer(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The layers whose outputs are the model's outputs (their channels are the classes),
    from the traced forward or ``model.output_layer``."""
    return output_layers(model, tuple(example.shape[1:]))


def _producers(group: ChannelGroup, order: dict[str, int]) -> tuple[str, ...]:
    names = {m.name for m in group.members if m.role == "out" and m.is_weight_layer}
    return tuple(sorted(names, key=order.__getitem__))


def tied_layers(
    model: nn.Module,
    example: torch.Tensor,
    groups: Sequence[ChannelGroup] | None = None,
    refused: dict[str, str] | None = None,
) -> dict[str, TiedLayers]:
    """``{layer: its TiedLayers}`` for every conv/linear whose output channels can change.

    Layers absent from the mapping have fixed outputs (the model's output layer, a
    layer tied to it, or one ``refused`` names with the reason). The embedding of an
    attention is one group, to be thinned by whole heads.
    """
    if groups is None:
        groups = channel_groups(model, example, refused=refused, heads=True)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    tied: dict[str, TiedLayers] = {}
    for group in groups:
        entry = TiedLayers(group, _producers(group, order))
        for name in entry.producers:
            tied.setdefault(name, entry)
    return tied


def check_prunable(
    model: nn.Module,
    layers: Sequence[str],
    example: torch.Tensor,
    tied: dict[str, TiedLayers] | None = None,
    what: str = "pruner",
    refused: dict[str, str] | None = None,
) -> list[TiedLayers]:
    """The channel groups that pruning exactly ``layers`` touches, refusing incomplete ones.

    Raises:
        ConfigError: a layer that is not a conv/linear, the output layer, a layer whose
            outputs are fixed, or a layer listed without the layers tied to it.
    """
    refused = {} if refused is None else refused
    tied = tied if tied is not None else tied_layers(model, example, refused=refused)
    outputs = output_layer(model, example)
    listed = set(layers)
    targets: dict[int, TiedLayers] = {}
    for name in layers:
        module = model.get_submodule(name)
        if not isinstance(module, WEIGHT_LAYER_TYPES):
            raise ConfigError(
                f"{what}: '{name}' is a {type(module).__name__}, not a conv or linear layer; "
                "list the conv/linear layers whose filters to remove (e.g. 'layer1.*.conv1')"
            )
        if name in outputs:
            raise ConfigError(
                f"{what}: '{name}' is the model's output layer (its outputs are the classes) "
                "and cannot lose filters; remove it from layers"
            )
        entry = tied.get(name)
        if entry is None and name in refused:
            raise ConfigError(f"{what}: '{name}' cannot lose filters: {refused[name]}")
        if entry is None:
            raise ConfigError(
                f"{what}: the output channels of '{name}' are tied to the model's output "
                "and cannot change; remove it from layers"
            )
        missing = [p for p in entry.producers if p not in listed]
        if missing:
            raise ConfigError(
                f"{what}: '{name}' shares its output channels with "
                f"{', '.join(p for p in entry.producers if p != name)} (their outputs are "
                "added, as at a residual connection); "
                f"tied layers are pruned together: also list {', '.join(missing)}"
            )
        targets[id(entry)] = entry
    return list(targets.values())

"""L1 filter pruning with physical removal (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017).

Each listed layer's output filters are ranked by their mean absolute weight (the L1 norm
divided by the filter size: the same order within a layer, comparable across layers
with different kernels); the ``m = floor(sparsity * n)`` lowest-ranked filters go, at most
``n - 1``, and so does every filter tied with the ``m``-th smallest score (still at most
``n - 1``). The ranking is deterministic: a stable sort by score, then by index.

Layers whose output channels are tied (every conv feeding one residual add) lose the
same channels: such a group is ranked by the mean, over its tied producers, of each
producer's per-filter score, so every producer has an equal say whatever its kernel size.

``importance: group`` ranks by Torch-Pruning's group importance instead
(``GroupMagnitudeImportance``: the L2 norm of every weight a channel touches, in the
producers, their batch-norms and the consumers' input slices, averaged over the group;
``group_l1`` for the L1 norm): the criterion of Torch-Pruning's ``MagnitudePruner``.

The embedding of an attention (``nn.MultiheadAttention``) loses whole heads: the heads
are ranked by the mean score of their channels, ``floor(sparsity * heads)`` of them go
(at least one stays), and every head left keeps its width.

Removal is physical ("thinning"): the filters, their batch-norm channels and every
consumer's input channels are cut by :func:`~edgetrain.prune.reconfigure.remove_channels`,
the one channel-removal path of edgetrain, so the result is a dense, smaller network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from edgetrain._optional import require
from edgetrain.compress.pruning import (
    PRUNERS,
    PrunedGroup,
    TiedLayers,
    check_prunable,
    tied_layers,
)
from edgetrain.errors import ConfigError
from edgetrain.prune.graph import build_graph, channel_groups
from edgetrain.prune.graph import example_input as default_input
from edgetrain.prune.reconfigure import remove_channels

__all__ = ["IMPORTANCES", "filter_scores", "filters_to_remove", "group_scores", "l1_filter"]

IMPORTANCES = ("l1", "group", "group_l1")
"""How ``l1_filter`` ranks channels: Li et al.'s mean |w| of the producers' filters, or
Torch-Pruning's group magnitude importance (L2, or L1) over every coupled layer."""

# Products like 0.29 * 100 = 28.999999999999996 must floor to 29, as written.
_FLOOR_SLACK = 1e-9


def filter_scores(weight: torch.Tensor) -> torch.Tensor:
    """Mean ``|w|`` of each output filter (dimension 0), in float64."""
    return weight.detach().double().abs().reshape(weight.shape[0], -1).mean(dim=1).cpu()


def filters_to_remove(
    scores: Sequence[float] | torch.Tensor, sparsity: float, multiple_of: int | None = None
) -> list[int]:
    """Indices of the filters L1 pruning removes at ``sparsity``, ascending.

    ``m = floor(sparsity * n)`` filters with the smallest scores, at most ``n - 1``;
    filters whose score equals the ``m``-th smallest go too (still at most ``n - 1``,
    the higher indices among equal scores staying). With ``multiple_of``, the number of
    filters kept is then rounded *up* to a multiple of it (never more than ``n``), the
    lowest-ranked filters going first: runtimes whose conv kernels work on blocks of
    channels (ONNX Runtime's NCHWc blocks of 8 on AVX2) gain nothing from a partial block.

    Example:
        >>> filters_to_remove([0.3, 0.1, 0.2, 0.1], 0.25)
        [1, 3]
        >>> filters_to_remove(list(range(16)), 0.6, multiple_of=8)  # keep 7 -> 8
        [0, 1, 2, 3, 4, 5, 6, 7]
    """
    values = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
    n = len(values)
    m = min(math.floor(sparsity * n + _FLOOR_SLACK), n - 1)
    if m <= 0:
        return []
    order = sorted(range(n), key=lambda i: (values[i], i))
    threshold = values[order[m - 1]]
    removed = [i for i in order if values[i] <= threshold][: n - 1]
    if multiple_of is not None:
        keep = min(n, math.ceil((n - len(removed)) / multiple_of) * multiple_of)
        removed = order[: n - keep]
    return sorted(removed)


def group_scores(model: nn.Module, target: TiedLayers, importance: str = "l1") -> torch.Tensor:
    """Per channel of the group: the mean over its tied producers of their filter scores
    (``l1``), or Torch-Pruning's group magnitude importance (``group``: L2,
    ``group_l1``: L1) of the whole coupled group."""
    if importance != "l1":
        return _torch_pruning_importance(target, 2 if importance == "group" else 1)
    size = target.group.size
    total = torch.zeros(size, dtype=torch.float64)
    count = torch.zeros(size, dtype=torch.float64)
    seen: set[str] = set()
    for member in target.group.members:
        if member.role != "out" or not member.is_weight_layer or member.name in seen:
            continue
        seen.add(member.name)
        scores = filter_scores(model.get_submodule(member.name).weight)
        root = torch.tensor(member.root_idxs, dtype=torch.long)
        total.index_add_(0, root, scores[torch.tensor(member.idxs, dtype=torch.long)])
        count.index_add_(0, root, torch.ones(len(member.idxs), dtype=torch.float64))
    return total / count.clamp(min=1)


def _torch_pruning_importance(target: TiedLayers, p: int) -> torch.Tensor:
    tp = require("torch_pruning", "prune", package="torch-pruning")
    group = target.group.tp_group
    if group is None:
        raise ConfigError(
            f"group importance needs the Torch-Pruning group of '{target.group.root}'; "
            "build the channel groups with edgetrain.prune.graph.channel_groups"
        )
    scores = tp.importance.GroupMagnitudeImportance(p=p)(group)
    if scores is None or len(scores) != target.group.size:
        raise ConfigError(
            f"Torch-Pruning gives no group importance for the channels of "
            f"'{target.group.root}'; use importance: l1"
        )
    return scores.detach().double().cpu()


@PRUNERS.register("l1_filter", structured=True)
def l1_filter(
    model: nn.Module,
    layers: Sequence[str],
    sparsity: float,
    *,
    multiple_of: int | None = None,
    importance: str = "l1",
    example_input: torch.Tensor | None = None,
) -> list[PrunedGroup]:
    """Remove the filters with the smallest mean |w| (Li et al., 2017), physically.

    Args:
        model: the model, thinned in place.
        layers: conv/linear layers to prune; layers with tied outputs (one residual add)
            must be listed together and lose the same channels.
        sparsity: fraction of each layer's (or tied group's) filters to remove, in [0, 1).
        multiple_of: round the filters kept up to a multiple of this (a recipe option,
            ``multiple_of: 8``), see :func:`filters_to_remove`.
        importance: how channels are ranked, one of :data:`IMPORTANCES`: ``l1`` (Li et
            al.'s mean |w| of the filters) or Torch-Pruning's group magnitude importance
            over every coupled layer (``group``, L2 as Torch-Pruning's
            ``MagnitudePruner``; ``group_l1``).
        example_input: one batch of inputs (default: zeros of ``model.input_shape``).

    Returns:
        One :class:`PrunedGroup` per layer or tied group, in the order first listed.

    Example:
        >>> from edgetrain.models import create
        >>> net = create("resnet20")
        >>> [g.after for g in l1_filter(net, ["layer1.0.conv1"], 0.5)]  # doctest: +SKIP
        [8]
    """
    if multiple_of is not None and (isinstance(multiple_of, bool) or multiple_of < 1):
        raise ConfigError(f"multiple_of must be a positive whole number, got {multiple_of!r}")
    if importance not in IMPORTANCES:
        raise ConfigError(
            f"unknown importance {importance!r} for l1_filter; choose one of: "
            f"{', '.join(IMPORTANCES)}"
        )
    example = default_input(model, example_input)
    graph = build_graph(model, example)
    tied = tied_layers(model, example, channel_groups(model, example, graph=graph, heads=True))
    targets = check_prunable(model, list(layers), example, tied, what="l1_filter")
    removals: dict[str, list[int]] = {}
    results: list[PrunedGroup] = []
    heads: dict[nn.MultiheadAttention, int] = {}
    for target in targets:
        scores = group_scores(model, target, importance)
        if target.group.heads:
            removed = _heads_to_remove(model, target, scores, sparsity, heads)
        else:
            removed = filters_to_remove(scores, sparsity, multiple_of)
        root = target.group.root
        removals[root] = _root_indices(target, removed)
        results.append(
            PrunedGroup(
                layers=target.producers,
                before=target.group.size,
                after=target.group.size - len(removed),
                removed=tuple(removed),
            )
        )
    remove_channels(model, removals, example_input=example, graph=graph)
    for attention, count in heads.items():  # the heads left keep their width
        attention.num_heads = count
        attention.head_dim = attention.embed_dim // count
    return results


def _heads_to_remove(
    model: nn.Module,
    target: TiedLayers,
    scores: torch.Tensor,
    sparsity: float,
    heads: dict[nn.MultiheadAttention, int],
) -> list[int]:
    """The channels of the whole attention heads to remove: heads are ranked by the mean
    score of their channels and ``floor(sparsity * heads)`` go (at least one stays)."""
    group = target.group
    per_head = [float(scores[group.head_channels(h)].mean()) for h in range(group.heads)]
    gone = filters_to_remove(per_head, sparsity)
    for name in group.attention:
        heads[model.get_submodule(name)] = group.heads - len(gone)
    return sorted(c for h in gone for c in group.head_channels(h))


def _root_indices(target: TiedLayers, channels: list[int]) -> list[int]:
    """The root layer's output indices of group channels ``channels``."""
    root = next(m for m in target.group.members if m.name == target.group.root and m.role == "out")
    index = dict(zip(root.root_idxs, root.idxs, strict=True))
    return [index[c] for c in channels]

"""Shrink networks while they train and grow them without starting over.

Example:
    >>> from edgetrain.prune import PruneTrain
    >>> callback = PruneTrain(ratio=0.2, interval=10, threshold=1e-4)
"""

from __future__ import annotations

from edgetrain.prune.batch import (
    AdaptiveBatch,
    BatchPredictor,
    max_batch_estimate,
    max_batch_search,
)
from edgetrain.prune.callback import PruneTrain
from edgetrain.prune.graph import ChannelGroup, Member, channel_groups
from edgetrain.prune.group_lasso import group_lasso, lasso_layers, penalty_lambda
from edgetrain.prune.grow import deepen, widen
from edgetrain.prune.grow_prune import GrowPrune
from edgetrain.prune.lars import LARS
from edgetrain.prune.morphnet import (
    ChannelWidths,
    MorphNet,
    MorphNetStructure,
    morphnet_iterate,
    resize_groups,
    width_multiplier,
)
from edgetrain.prune.reconfigure import (
    ReconfigureResult,
    dead_channels,
    reconfigure,
    remove_channels,
    sparsify,
)

__all__ = [
    "AdaptiveBatch",
    "BatchPredictor",
    "ChannelGroup",
    "ChannelWidths",
    "GrowPrune",
    "LARS",
    "Member",
    "MorphNet",
    "MorphNetStructure",
    "PruneTrain",
    "ReconfigureResult",
    "channel_groups",
    "dead_channels",
    "deepen",
    "group_lasso",
    "lasso_layers",
    "max_batch_estimate",
    "max_batch_search",
    "morphnet_iterate",
    "penalty_lambda",
    "reconfigure",
    "remove_channels",
    "resize_groups",
    "sparsify",
    "widen",
    "width_multiplier",
]

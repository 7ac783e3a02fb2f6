"""Analyses of what training did to the weights: snapshots and run-to-run similarity.

Example:
    >>> from edgetrain.analysis import similarity
    >>> result = similarity(["runs/a", "runs/b"])  # doctest: +SKIP
    >>> result.angle_deg["fc"]  # doctest: +SKIP
"""

from __future__ import annotations

from edgetrain.analysis.similarity import SimilarityResult, best_epoch, similarity
from edgetrain.analysis.snapshots import WeightSnapshots, layer_weights, load_snapshots
from edgetrain.analysis.trajectories import TrajectoryPoint, trajectories

__all__ = [
    "SimilarityResult",
    "TrajectoryPoint",
    "WeightSnapshots",
    "best_epoch",
    "layer_weights",
    "load_snapshots",
    "similarity",
    "trajectories",
]

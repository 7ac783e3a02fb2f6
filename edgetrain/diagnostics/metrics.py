"""Dataset-level activation-pattern metrics of one layer, from count vectors.

A count vector ``c`` holds how many samples fell on each pattern (exact mode) or each
hash bucket (hash mode). Two vectors of the same layer compare entry by entry: bucket
tables use the same hash at every measurement, and exact counts are first aligned on
the union of their patterns (:func:`align_counts`). The metrics follow the activation
pattern analyses of ReLU networks (Hanin & Rolnick, "Deep ReLU Networks Have
Surprisingly Few Activation Patterns", NeurIPS 2019):

- distinct patterns ``sum [c_i > 0]``;
- pattern changes against the previous measurement ``(appeared - disappeared) / total``
  with ``total`` the distinct patterns now;
- weighted Jaccard ``sum min(c, c') / sum max(c, c')`` (to the initialisation, the
  previous measurement, the final state);
- most-frequent-pattern share ``max c / sum c``;
- entropy ``H = -sum p log2 p`` and relative entropy ``H / min(channels, log2 sum c)``.

Example:
    >>> import torch
    >>> c = torch.tensor([2, 2, 0, 4])
    >>> entropy(c)
    1.5
    >>> weighted_jaccard(c, torch.tensor([2, 0, 2, 4]))
    0.6
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "METRICS",
    "align_counts",
    "appeared_disappeared",
    "distinct_patterns",
    "entropy",
    "layer_metrics",
    "pattern_changes",
    "relative_entropy",
    "top_share",
    "weighted_jaccard",
]

METRICS = (
    "distinct",
    "changes",
    "jaccard_init",
    "jaccard_prev",
    "jaccard_final",
    "top_share",
    "entropy",
    "relative_entropy",
    "occupancy",
)
"""Per-layer metric names of a measurement record (``occupancy`` from the recorder)."""


def align_counts(
    counts_a: torch.Tensor,
    keys_a: torch.Tensor | None,
    counts_b: torch.Tensor,
    keys_b: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two count vectors over the same entries.

    Bucket tables (``keys`` None) are returned as they are. Exact counts (``keys`` the
    sorted distinct patterns) are spread over the union of both key sets.

    Raises:
        ValueError: one vector is exact and the other hashed, or the tables differ in size.
    """
    if keys_a is None and keys_b is None:
        if counts_a.shape != counts_b.shape:
            raise ValueError(
                f"bucket tables differ in size: {counts_a.numel()} vs {counts_b.numel()}"
            )
        return counts_a, counts_b
    if keys_a is None or keys_b is None:
        raise ValueError("cannot compare exact counts with hashed counts")
    union = torch.unique(torch.cat([keys_a, keys_b.to(keys_a.device)]))
    out = []
    for keys, counts in ((keys_a, counts_a), (keys_b, counts_b)):
        dense = torch.zeros(len(union), dtype=counts.dtype, device=union.device)
        dense[torch.searchsorted(union, keys.to(union.device))] = counts.to(union.device)
        out.append(dense)
    return out[0], out[1]


def distinct_patterns(counts: torch.Tensor) -> int:
    """Number of non-empty entries ``sum [c_i > 0]``."""
    return int((counts > 0).sum().item())


def appeared_disappeared(counts: torch.Tensor, previous: torch.Tensor) -> tuple[int, int]:
    """Entries non-empty now but not before, and before but not now (aligned vectors)."""
    now, before = counts > 0, previous > 0
    return int((now & ~before).sum().item()), int((before & ~now).sum().item())


def pattern_changes(counts: torch.Tensor, previous: torch.Tensor) -> float:
    """``(appeared - disappeared) / total``, ``total`` the distinct patterns now (0 if none)."""
    appeared, disappeared = appeared_disappeared(counts, previous)
    total = distinct_patterns(counts)
    return (appeared - disappeared) / total if total else 0.0


def weighted_jaccard(counts: torch.Tensor, other: torch.Tensor) -> float:
    """``sum min(c, c') / sum max(c, c')``; 1.0 for two empty vectors."""
    a, b = counts.double(), other.double()
    high = torch.maximum(a, b).sum().item()
    return torch.minimum(a, b).sum().item() / high if high else 1.0


def top_share(counts: torch.Tensor) -> float:
    """Share of the samples on the most frequent pattern ``max c / sum c`` (0 if empty)."""
    total = counts.sum().item()
    return counts.max().item() / total if total else 0.0


def entropy(counts: torch.Tensor) -> float:
    """Pattern entropy in bits ``-sum p log2 p`` with ``p = c / sum c``."""
    c = counts[counts > 0].double()
    if c.numel() == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * torch.log2(p)).sum().item()) + 0.0  # + 0.0 turns -0.0 into 0.0


def relative_entropy(counts: torch.Tensor, channels: int) -> float:
    """Entropy over its largest possible value ``min(channels, log2 sum c)``.

    ``channels`` bits allow at most ``2^channels`` patterns and ``sum c`` samples at most
    ``sum c`` distinct ones; 0 when a single sample (or none) was seen.
    """
    total = counts.sum().item()
    bound = min(float(channels), math.log2(total)) if total > 0 else 0.0
    return entropy(counts) / bound if bound > 0 else 0.0


def layer_metrics(
    counts: torch.Tensor,
    channels: int,
    keys: torch.Tensor | None = None,
    previous: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    init: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    final: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> dict[str, Any]:
    """All metrics of one layer's measurement.

    Args:
        counts: this measurement's count vector.
        channels: bits of a pattern.
        keys: the patterns of ``counts`` in exact mode (None for a bucket table).
        previous, init, final: ``(counts, keys)`` of the previous measurement, the
            initialisation and the final state of a previous pass; None when unknown.

    Returns:
        ``distinct``, ``appeared``, ``disappeared``, ``changes``, ``jaccard_init``,
        ``jaccard_prev``, ``jaccard_final``, ``top_share``, ``entropy``,
        ``relative_entropy`` (comparisons are None where the reference is missing or
        of another shape, e.g. after pruning).
    """
    out: dict[str, Any] = {
        "distinct": distinct_patterns(counts),
        "appeared": None,
        "disappeared": None,
        "changes": None,
        "top_share": top_share(counts),
        "entropy": entropy(counts),
        "relative_entropy": relative_entropy(counts, channels),
    }
    for label, ref in (("prev", previous), ("init", init), ("final", final)):
        aligned = _aligned(counts, keys, ref)
        out[f"jaccard_{label}"] = None if aligned is None else weighted_jaccard(*aligned)
        if label == "prev" and aligned is not None:
            now, before = aligned
            out["appeared"], out["disappeared"] = appeared_disappeared(now, before)
            out["changes"] = pattern_changes(now, before)
    return out


def _aligned(
    counts: torch.Tensor,
    keys: torch.Tensor | None,
    ref: tuple[torch.Tensor, torch.Tensor | None] | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if ref is None:
        return None
    try:
        return align_counts(counts, keys, ref[0].to(counts.device), ref[1])
    except ValueError:
        return None

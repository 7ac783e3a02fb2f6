"""Dataset-level pattern metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from edgetrain.diagnostics import (
    align_counts,
    distinct_patterns,
    entropy,
    layer_metrics,
    pattern_changes,
    relative_entropy,
    top_share,
    weighted_jaccard,
)

# Two measurements of a layer over 6 buckets.
BEFORE = torch.tensor([4, 0, 2, 2, 0, 0])
NOW = torch.tensor([3, 1, 0, 2, 2, 0])


def test_distinct_patterns_counts_non_empty_entries() -> None:
    assert distinct_patterns(BEFORE) == 3
    assert distinct_patterns(NOW) == 4
    assert distinct_patterns(torch.zeros(5, dtype=torch.int64)) == 0


def test_pattern_changes_is_appeared_minus_disappeared_over_total() -> None:
    # Appeared: buckets 1 and 4; disappeared: bucket 2; total now: 4 -> (2 - 1) / 4.
    assert pattern_changes(NOW, BEFORE) == pytest.approx(0.25)
    # Back again: appeared 2, disappeared 1 and 4 -> (1 - 2) / 3.
    assert pattern_changes(BEFORE, NOW) == pytest.approx(-1 / 3)
    assert pattern_changes(NOW, NOW) == 0.0


def test_weighted_jaccard_is_sum_min_over_sum_max() -> None:
    # min: 3 0 0 2 0 0 = 5; max: 4 1 2 2 2 0 = 11.
    assert weighted_jaccard(NOW, BEFORE) == pytest.approx(5 / 11)
    assert weighted_jaccard(BEFORE, NOW) == pytest.approx(5 / 11)
    assert weighted_jaccard(NOW, NOW) == 1.0
    assert weighted_jaccard(NOW, torch.zeros(6, dtype=torch.int64)) == 0.0
    empty = torch.zeros(3, dtype=torch.int64)
    assert weighted_jaccard(empty, empty) == 1.0


def test_top_share_is_the_largest_count_over_the_total() -> None:
    assert top_share(BEFORE) == pytest.approx(4 / 8)
    assert top_share(NOW) == pytest.approx(3 / 8)


def test_entropy_in_bits_and_relative_entropy() -> None:
    # p = 1/2, 1/4, 1/4 -> H = 0.5 + 0.5 + 0.5 = 1.5 bits.
    assert entropy(BEFORE) == pytest.approx(1.5)
    # p = 3/8, 1/8, 2/8, 2/8.
    h_now = -(3 / 8 * math.log2(3 / 8) + 1 / 8 * math.log2(1 / 8) + 2 * 2 / 8 * math.log2(2 / 8))
    assert entropy(NOW) == pytest.approx(h_now)
    # 8 samples: at most log2 8 = 3 bits; a 2-channel layer at most 2 bits.
    assert relative_entropy(BEFORE, channels=16) == pytest.approx(1.5 / 3)
    assert relative_entropy(BEFORE, channels=2) == pytest.approx(1.5 / 2)
    assert entropy(torch.tensor([0, 7, 0])) == 0.0
    assert relative_entropy(torch.tensor([1]), channels=4) == 0.0  # one sample: bound 0


def test_exact_counts_are_aligned_on_the_union_of_patterns() -> None:
    a, b = align_counts(
        torch.tensor([3, 1]), torch.tensor([2, 7]), torch.tensor([5, 4]), torch.tensor([7, 9])
    )
    assert a.tolist() == [3, 1, 0]  # patterns 2, 7, 9
    assert b.tolist() == [0, 5, 4]
    assert align_counts(BEFORE, None, NOW, None) == (BEFORE, NOW)
    with pytest.raises(ValueError, match="exact counts with hashed"):
        align_counts(BEFORE, None, torch.tensor([1]), torch.tensor([3]))


def test_layer_metrics_combines_everything_and_skips_missing_references() -> None:
    first = layer_metrics(BEFORE, channels=3)
    assert first["distinct"] == 3 and first["entropy"] == pytest.approx(1.5)
    assert first["relative_entropy"] == pytest.approx(1.5 / 3)
    assert first["jaccard_prev"] is first["changes"] is first["jaccard_final"] is None

    m = layer_metrics(NOW, channels=3, previous=(BEFORE, None), init=(BEFORE, None))
    assert m["appeared"] == 2 and m["disappeared"] == 1
    assert m["changes"] == pytest.approx(0.25)
    assert m["jaccard_prev"] == m["jaccard_init"] == pytest.approx(5 / 11)
    assert m["top_share"] == pytest.approx(3 / 8)

    # Exact counts: patterns {1: 2, 4: 2} now, {1: 4} before -> J = 2 / (4 + 2).
    exact = layer_metrics(
        torch.tensor([2, 2]),
        channels=3,
        keys=torch.tensor([1, 4]),
        previous=(torch.tensor([4]), torch.tensor([1])),
        final=(torch.tensor([2, 2]), torch.tensor([1, 4])),
    )
    assert exact["jaccard_prev"] == pytest.approx(2 / 6)
    assert exact["jaccard_final"] == 1.0
    assert exact["changes"] == pytest.approx((1 - 0) / 2)
    # A reference of another kind (hashed vs exact) is skipped, not compared.
    assert (
        layer_metrics(NOW, channels=3, init=(torch.tensor([1]), torch.tensor([0])))["jaccard_init"]
        is None
    )

"""Pruning sensitivity: targets, rows, the unchanged model, CSV and plot."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from edgetrain.compress.sensitivity import sensitivity, sensitivity_targets, write_sensitivity_csv
from edgetrain.compress.source import evaluate_model
from edgetrain.errors import ConfigError
from edgetrain.models import create

pytest.importorskip("torch_pruning")

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def net():
    torch.manual_seed(0)
    return create(
        "resnet_cifar", stages=1, blocks=[2], widths=[4], in_channels=1, num_classes=4, input_size=8
    ).eval()


def test_targets_take_in_tied_layers_and_groups(net):
    targets = sensitivity_targets(net, ["layer1.*.conv1", "layer1.0.conv2", ["layer1.*.conv1"]])
    assert [(t.label, t.layers, t.heads) for t in targets] == [
        ("layer1.0.conv1", ("layer1.0.conv1",), ("layer1.0.conv1",)),
        ("layer1.1.conv1", ("layer1.1.conv1",), ("layer1.1.conv1",)),
        (
            "layer1.0.conv2 (+2 tied)",
            ("conv1", "layer1.0.conv2", "layer1.1.conv2"),
            ("conv1",),
        ),
        (
            "layer1.*.conv1",
            ("layer1.0.conv1", "layer1.1.conv1"),
            ("layer1.0.conv1", "layer1.1.conv1"),
        ),
    ]
    everything = sensitivity_targets(net)
    assert [t.label for t in everything] == [
        "conv1 (+2 tied)",
        "layer1.0.conv1",
        "layer1.1.conv1",
    ]
    with pytest.raises(ConfigError, match="matches no conv/linear layer whose filters can be"):
        sensitivity_targets(net, ["fc"])
    with pytest.raises(ConfigError, match="'layer9' matches no module"):
        sensitivity_targets(net, ["layer9"])


def test_rows_per_target_and_sparsity_without_changing_the_model(net, make_blobs, tmp_path):
    data = make_blobs(48, num_classes=4, shape=(1, 8, 8))
    state = copy.deepcopy(net.state_dict())
    rows = sensitivity(net, data, ["layer1.0.conv1", ["layer1.*.conv1"]], (0.25, 0.5, 0.9))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [(r.target, r.sparsity, r.filters_before, r.filters_after) for r in rows] == [
        ("layer1.0.conv1", 0.0, 4, 4),
        ("layer1.0.conv1", 0.25, 4, 3),
        ("layer1.0.conv1", 0.5, 4, 2),
        ("layer1.0.conv1", 0.9, 4, 1),
        ("layer1.*.conv1", 0.0, 8, 8),
        ("layer1.*.conv1", 0.25, 8, 6),
        ("layer1.*.conv1", 0.5, 8, 4),
        ("layer1.*.conv1", 0.9, 8, 2),
    ]
    baseline = evaluate_model(copy.deepcopy(net), data)
    assert rows[0].top1 == rows[4].top1 == baseline["top1"]
    assert rows[0].loss == pytest.approx(baseline["loss"])
    macs = [r.macs for r in rows[:4]]
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]
    assert all(0.0 <= r.top1 <= 100.0 for r in rows)

    path = write_sensitivity_csv(rows, tmp_path / "s.csv")
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    assert table[5]["layers"] == "layer1.0.conv1 layer1.1.conv1"
    assert float(table[5]["sparsity"]) == 0.25

    from edgetrain.report.sensitivity import plot_sensitivity

    png = plot_sensitivity(rows, tmp_path / "plots" / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sparsities_out_of_range_are_refused(net, make_blobs):
    with pytest.raises(ConfigError, match=r"sparsities must be in \[0, 1\), got 1.0"):
        sensitivity(net, make_blobs(8), ["layer1.0.conv1"], (0.5, 1.0))

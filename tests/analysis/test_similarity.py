"""Weight snapshots and run-to-run similarity, on tiny runs with hand-checkable matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgetrain.analysis import (
    WeightSnapshots,
    best_epoch,
    layer_weights,
    load_snapshots,
    similarity,
)
from edgetrain.data import ArrayDataset, DatasetInfo
from edgetrain.engine import RunDirectory, Trainer
from edgetrain.errors import EdgetrainError


def _data(n: int = 32) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + y[:, None].float()
    info = DatasetInfo("toy", "classification", (4,), ("a", "b"), {"train": n, "test": n}, "-")
    return ArrayDataset(x, y, info)


def _run(path, lr: float, freeze_first: bool = False, epochs: int = 3):
    torch.manual_seed(0)  # every run starts from the same weights
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    if freeze_first:
        model[0].requires_grad_(False)
    data = _data()
    Trainer(
        model,
        data,
        val_data=data,
        batch_size=8,
        run_dir=path,
        progress=False,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        callbacks=[WeightSnapshots()],
    ).fit(epochs)
    return path


def test_snapshots_every_epoch_from_the_start(tmp_path):
    run = _run(tmp_path / "a", 0.1)
    snaps = load_snapshots(run)
    assert sorted(snaps) == [0, 1, 2, 3]
    assert set(snaps[0]) == {"0", "2"} and snaps[0]["2"].shape == (8 * 2 + 2,)
    assert not torch.equal(snaps[0]["2"], snaps[3]["2"])


def test_matrices_diagonal_and_hand_computed_entries(tmp_path):
    a, b = _run(tmp_path / "a", 0.1), _run(tmp_path / "b", 0.3)
    result = similarity([a, b])
    snaps = [load_snapshots(a), load_snapshots(b)]
    ea = best_epoch(a)
    for layer in result.layers:
        assert result.distance[layer][0][0] == 0.0 and result.angle_deg[layer][0][0] == 0.0
        wa, wb, w0 = snaps[0][ea][layer], snaps[1][ea][layer], snaps[0][0][layer]
        assert result.distance[layer][0][1] == pytest.approx(float((wa - wb).norm()), rel=1e-6)
        cos = float(torch.dot(wa - w0, wb - w0) / ((wa - w0).norm() * (wb - w0).norm()))
        assert result.angle_deg[layer][0][1] == pytest.approx(
            math.degrees(math.acos(max(-1.0, min(1.0, cos)))), abs=1e-3
        )
    assert result.most_similar("a", result.layers[0]) == ["b"]
    csv_text = result.to_csv()
    assert csv_text.splitlines()[0] == "layer,run,other,distance,angle_deg"
    assert len(csv_text.splitlines()) == 1 + len(result.layers) * 4


def test_layers_no_run_changed_are_left_out(tmp_path):
    a = _run(tmp_path / "a", 0.1, freeze_first=True)
    b = _run(tmp_path / "b", 0.2, freeze_first=True)
    assert similarity([a, b]).layers == ["2"]


def test_runs_without_snapshots_name_the_fix(tmp_path):
    RunDirectory(tmp_path / "x").create()
    with pytest.raises(EdgetrainError, match="weight-snapshots"):
        load_snapshots(tmp_path / "x")


def test_layer_weights_include_biases():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1, bias=False))
    w = layer_weights(net)
    assert w["0"].numel() == 2 * 9 + 2 and w["2"].numel() == 8


def test_report_with_similarity(tmp_path):
    from edgetrain.report import build_report

    a, b = _run(tmp_path / "runs" / "a", 0.1), _run(tmp_path / "runs" / "b", 0.3)
    page = build_report([a, b], tmp_path / "cmp.html", similarity=True)
    assert (tmp_path / "cmp_plots" / "similarity_angle.png").is_file()
    assert (tmp_path / "cmp_similarity.csv").is_file()
    assert page.read_text().count("data:image/png;base64,") == 4


def test_umap_trajectories_fit_on_baselines(tmp_path):
    pytest.importorskip("umap")
    from edgetrain.analysis import trajectories

    runs = [_run(tmp_path / n, lr, epochs=4) for n, lr in (("a", 0.1), ("b", 0.2), ("c", 0.3))]
    points = trajectories(runs, baselines=["a", "b"])
    layers = {p.layer for p in points}
    assert layers == {"0", "2"}
    assert len(points) == len(layers) * 3 * 5  # (layer, run, epoch 0..4)
    for layer in layers:
        for run in "abc":
            path = [p for p in points if p.layer == layer and p.run == run]
            assert sum(p.best for p in path) == 1
            assert all(p.baseline == (run in "ab") for p in path)
            assert all(math.isfinite(p.x) and math.isfinite(p.y) for p in path)
    with pytest.raises(EdgetrainError, match="not among the runs"):
        trajectories(runs, baselines=["zz"])

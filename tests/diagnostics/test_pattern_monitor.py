"""The measurement protocol and the ``ap-monitor`` Trainer callback."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from edgetrain.diagnostics import (
    FINAL_COUNTS_FILE,
    MeasurePlan,
    PatternMonitor,
    fixed_subset,
    load_counts,
    measure_patterns,
    read_pattern_records,
)
from edgetrain.engine import CALLBACKS, Trainer
from edgetrain.errors import ConfigError


def _net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU, dropout, linear-ReLU, linear: every stateful part in miniature."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 10),
        nn.ReLU(),
        nn.Linear(10, 4),
    )


def test_measurement_leaves_weights_buffers_modes_and_rng_untouched(make_blobs) -> None:
    net = _net()
    net.eval()  # a mode of the caller's choosing stays
    before = {k: v.clone() for k, v in net.state_dict().items()}
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)

    result = measure_patterns(net, make_blobs(40), batch_size=16)

    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats
    assert int(after["1.num_batches_tracked"]) == 0
    assert not net.training and all(p.requires_grad for p in net.parameters())
    assert result.samples == 40
    assert result.layers["2"].samples == 40 * 8 * 8  # every conv position is a sample
    assert result.layers["6"].samples == 40


def test_measurement_is_deterministic_skips_augmentation_and_uses_a_fixed_subset(
    make_blobs,
) -> None:
    data = make_blobs(50, transform=lambda x: x + torch.randn_like(x))
    net = _net()
    first = measure_patterns(net, data, subset=20, batch_size=8)
    second = measure_patterns(net, data, subset=20, batch_size=8)
    for name, counts in first.layers.items():
        assert torch.equal(counts.counts, second.layers[name].counts)
        assert torch.equal(counts.keys, second.layers[name].keys)
    assert first.samples == 20
    assert fixed_subset(50, 20) == fixed_subset(50, 20) == sorted(set(fixed_subset(50, 20)))
    assert fixed_subset(5, None) == [0, 1, 2, 3, 4]
    # The same 20 samples by hand, in order, through a frozen train-mode copy: same counts.
    plain = make_blobs(50)
    subset = plain.inputs[fixed_subset(50, 20)]
    assert torch.equal(
        measure_patterns(net, subset, batch_size=8).layers["6"].counts, first.layers["6"].counts
    )


def test_measure_plan_every_k_early_then_per_half_epoch() -> None:
    plan = MeasurePlan(every=5, early_steps=20, per_epoch=2)
    due = [s for s in range(0, 61) if plan.due(s, steps_per_epoch=16)]
    assert due == [0, 5, 10, 15, 20, 24, 32, 40, 48, 56]
    with pytest.raises(ConfigError, match="'every' must be >= 1"):
        MeasurePlan(every=0)


def _trainer(data, tmp_path, monitor, name="run", seed=0):
    return Trainer(
        _net(seed),
        data,
        batch_size=8,
        device="cpu",
        progress=False,
        seed=seed,
        callbacks=[monitor],
        run_dir=tmp_path / name,
    )


def test_monitor_writes_one_line_per_planned_measurement(make_blobs, tmp_path, single_thread):
    data = make_blobs(64)  # 8 steps an epoch
    monitor = CALLBACKS.create("ap-monitor", every=2, early_steps=4, per_epoch=2, subset=32)
    trainer = _trainer(data, tmp_path, monitor)
    trainer.fit(2)
    records = read_pattern_records(tmp_path / "run")
    assert [r["step"] for r in records] == [0, 2, 4, 8, 12, 16]
    assert records == monitor.records
    assert [r["epoch"] for r in records] == [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
    first, last = records[0]["layers"], records[-1]["layers"]
    assert list(first) == ["2", "6"]
    assert first["2"]["jaccard_init"] == 1.0 and first["2"]["jaccard_prev"] is None
    assert last["6"]["jaccard_init"] < 1.0  # training moved the patterns
    assert all(r["samples"] == 32 for r in records)
    assert last["2"]["channels"] == 6 and last["2"]["exact"] is True
    assert (tmp_path / "run" / FINAL_COUNTS_FILE).is_file()
    # The metrics recorded are those of the measured counts.
    final = load_counts(tmp_path / "run")
    assert final["6"].samples == 32
    assert last["6"]["distinct"] == int((final["6"].counts > 0).sum())


def test_two_pass_mode_reports_jaccard_to_the_final_state(make_blobs, tmp_path, single_thread):
    data = make_blobs(32)
    first = _trainer(data, tmp_path, PatternMonitor(MeasurePlan(every=2, early_steps=4)), "a")
    first.fit(2)
    again = PatternMonitor(
        MeasurePlan(every=2, early_steps=4), final_counts=tmp_path / "a" / FINAL_COUNTS_FILE
    )
    _trainer(data, tmp_path, again, "b").fit(2)
    records = read_pattern_records(tmp_path / "b")
    assert all(r["layers"]["6"]["jaccard_final"] is not None for r in records)
    assert records[-1]["layers"]["6"]["jaccard_final"] == 1.0  # same seed, same end
    assert records[0]["layers"]["6"]["jaccard_final"] < 1.0
    with pytest.raises(ConfigError, match="pattern counts .* not found"):
        PatternMonitor(final_counts=tmp_path / "missing.pt")


def test_training_with_the_monitor_matches_training_without(make_blobs, tmp_path, single_thread):
    data = make_blobs(32)
    plain = Trainer(_net(), data, batch_size=8, device="cpu", progress=False)
    plain.fit(2)
    watched = _trainer(data, tmp_path, PatternMonitor(MeasurePlan(every=1, early_steps=8)))
    watched.fit(2)
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, watched.model.state_dict()[key]), key


def test_a_resumed_run_writes_the_same_measurements_as_an_uninterrupted_one(
    make_blobs, tmp_path, single_thread
):
    data = make_blobs(32)

    def monitor() -> PatternMonitor:
        return PatternMonitor(MeasurePlan(every=3, early_steps=6), mode="hash", buckets=4096)

    _trainer(data, tmp_path, monitor(), "whole").fit(3)
    _trainer(data, tmp_path, monitor(), "parts").fit(1)
    resumed = _trainer(data, tmp_path, monitor(), "parts")
    resumed.load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")
    resumed.fit(3)

    def lines(name: str) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in read_pattern_records(tmp_path / name)
        ]

    assert [r["step"] for r in lines("parts")] == [0, 3, 6, 8, 10, 12]
    assert lines("parts") == lines("whole")  # incl. Jaccard to init and to previous


def test_bad_monitor_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="'mode' must be hash, exact or auto"):
        CALLBACKS.create("ap-monitor", mode="fast")
    with pytest.raises(ConfigError, match="has no option 'evry'"):
        CALLBACKS.create("ap-monitor", evry=3)
    with pytest.raises(ConfigError, match="'subset' must be >= 1"):
        CALLBACKS.create("ap-monitor", subset=0)

"""Adaptive layer schedules: the allocation under a budget, the callback in a real
Trainer (the budget holds every epoch, steps follow the current schedule, the logged
costs are the steps' costs, re-allocation follows the measured signals, resume), the
registry entry and the one-line errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from edgetrain import models
from edgetrain.engine import JsonLines, Trainer
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.finetune import AdaptiveSchedule, Schedule, allocate_updates, schedule_cost
from edgetrain.finetune.adaptive import LOG_NAME, parse_adaptive

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (1, 8, 8)


def _linear_cost(counts: tuple[int, ...]) -> tuple[float, float]:
    """Ops proportional to the updates, each row weighted by its depth (lower rows cost
    more, as their backward runs through the rows above); memory by the lowest row
    updated every step."""
    weights = [1.0, 2.0, 3.0, 4.0][: len(counts)]
    ops = sum(w * c for w, c in zip(weights, counts, strict=True)) / (4 * sum(weights))
    full = max((i for i, c in enumerate(counts) if c == 4), default=0)
    return ops, (full + 1) / len(counts)


# ------------------------------------------------------------------ allocation
def test_allocation_meets_the_budget_and_keeps_the_output_layer():
    counts = allocate_updates([1.0, 1.0, 1.0, 1.0], 4, _linear_cost, ops_budget=0.6)
    assert counts[0] == 4
    assert _linear_cost(counts)[0] <= 0.6
    # one update fewer anywhere would still fit: the allocation is not wastefully low
    assert all(
        _linear_cost(tuple(c + (j == i) for j, c in enumerate(counts)))[0] > 0.6
        for i in range(1, 4)
        if counts[i] < 4
    )


def test_a_layer_with_more_signal_keeps_more_updates():
    quiet_bottom = allocate_updates([1.0, 1.0, 1.0, 0.05], 4, _linear_cost, ops_budget=0.7)
    loud_bottom = allocate_updates([1.0, 0.05, 0.05, 1.0], 4, _linear_cost, ops_budget=0.7)
    assert quiet_bottom[3] < loud_bottom[3]
    assert loud_bottom[1] < quiet_bottom[1]


def test_min_updates_and_the_infeasible_budget():
    counts = allocate_updates([1.0, 0.0, 0.0, 0.0], 4, _linear_cost, ops_budget=0.35)
    assert min(counts) >= 1
    with pytest.raises(ValueError, match=r"cheapest allocation .* at least 2 of 4 steps"):
        allocate_updates([1, 1, 1, 1], 4, _linear_cost, ops_budget=0.3, min_updates=2)
    frozen = allocate_updates([1.0, 1.0, 0.01, 0.01], 4, _linear_cost, 0.45, min_updates=0)
    assert 0 in frozen and _linear_cost(frozen)[0] <= 0.45


def test_memory_budget_alone():
    counts = allocate_updates([1.0, 1.0, 1.0, 1.0], 4, _linear_cost, memory_budget=0.5)
    assert _linear_cost(counts)[1] <= 0.5 and counts[0] == 4


def test_nan_signals_count_as_equal():
    assert allocate_updates([math.nan] * 4, 4, _linear_cost, 0.6) == allocate_updates(
        [1.0] * 4, 4, _linear_cost, 0.6
    )


# ------------------------------------------------------------------ callback
def _vgg() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return models.create("vgg_small", in_channels=1, input_size=8, num_classes=4)


def _fit(cb: AdaptiveSchedule, data: Any, epochs: int, run_dir: Any = None, **kw: Any):
    trainer = Trainer(
        _vgg(),
        data,
        batch_size=1,
        callbacks=[cb],
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        progress=False,
        device="cpu",
        run_dir=run_dir,
        **kw,
    )
    return trainer, trainer.fit(epochs)


class _Active(AdaptiveSchedule):
    """Records which scheduled layers require grad at every forward."""

    seen: list[tuple[str, list[bool]]]

    def before_forward(self, trainer, model, inputs):
        super().before_forward(trainer, model, inputs)
        if not hasattr(self, "seen"):
            self.seen = []
        self.seen.append(
            (str(self.schedule), [p[0].requires_grad for p in self.params]),
        )


def test_every_epoch_trains_its_schedule_within_the_budget(make_blobs, tmp_path):
    cb = _Active(4, ops_budget=0.75)
    _, state = _fit(cb, make_blobs(12, shape=SHAPE), 3, run_dir=tmp_path / "run")
    assert cb.layers == ["fc", "conv6", "conv5", "conv4"]
    log = JsonLines(tmp_path / "run" / LOG_NAME).read()
    assert [r["epoch"] for r in log] == [1, 2, 3]
    for record, metrics in zip(log, state.history, strict=True):
        assert metrics["schedule_relative_ops"] <= 0.75 + 1e-9
        assert metrics["schedule_step_macs"] == record["schedule_step_macs"]
        schedule = Schedule.parse(record["schedule"])
        assert [sum(r) for r in schedule.pattern][0] == 4
        # the logged MACs are the mean of the steps trained, under the cost model
        cost = schedule_cost(cb._model, SHAPE, schedule)
        epoch = record["epoch"] - 1
        columns = [(k + epoch) % 4 for k in range(12)]
        want = sum(cost.steps[c].step_macs for c in columns) / 12
        assert record["schedule_step_macs"] == pytest.approx(want)
        assert cost.relative_ops == pytest.approx(record["schedule_relative_ops"])
    # each step trained exactly the rows its epoch's schedule has in that column
    for k, (text, active) in enumerate(cb.seen):
        epoch, index = divmod(k, 12)
        assert text == log[epoch]["schedule"]
        assert active == Schedule.parse(text).active(index + epoch)
    # the schedule of epoch e+1 is what epoch e's signals allocated
    for before, after in zip(log, log[1:], strict=False):
        assert before["next_schedule"] == after["schedule"]
        assert all(s is not None and s > 0 for s in before["signals"])


def test_reallocation_follows_the_signal(make_blobs, monkeypatch):
    cb = AdaptiveSchedule(4, ops_budget=0.8, smoothing=0.0)
    # pretend conv4 (the lowest row) changes far more than the others
    monkeypatch.setattr(cb, "_measure", lambda: [1.0, 0.01, 0.01, 5.0])
    _fit(cb, make_blobs(8, shape=SHAPE), 1)
    counts = [sum(r) for r in cb.schedule.pattern]
    assert counts[3] >= counts[1] and counts[3] >= counts[2]
    assert cb.signals == [1.0, 0.01, 0.01, 5.0]


def test_grad_norm_signal_and_memory_budget(make_blobs):
    cb = AdaptiveSchedule(4, memory_budget=0.97, signal="grad_norm")
    trainer, state = _fit(cb, make_blobs(8, shape=SHAPE), 2)
    for record in state.history:
        assert record["schedule_relative_peak_memory"] <= 0.97 + 1e-9
    assert all(math.isfinite(s) and s > 0 for s in cb.signals)
    # after training every scheduled layer is trainable again
    assert all(p.requires_grad for ps in cb.params for p in ps)


def test_resume_continues_the_schedule_it_left(make_blobs, tmp_path):
    data = make_blobs(8, shape=SHAPE)
    whole = AdaptiveSchedule(4, ops_budget=0.7)
    _fit(whole, data, 3, run_dir=tmp_path / "whole")
    first = AdaptiveSchedule(4, ops_budget=0.7)
    _fit(first, data, 2, run_dir=tmp_path / "part")
    again = AdaptiveSchedule(4, ops_budget=0.7)
    trainer = Trainer(
        _vgg(),
        data,
        batch_size=1,
        callbacks=[again],
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        progress=False,
        device="cpu",
        run_dir=tmp_path / "part",
    )
    trainer.load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert again.counts == first.counts and again.signals == first.signals
    trainer.fit(3)
    log = JsonLines(tmp_path / "part" / LOG_NAME).read()
    assert [r["epoch"] for r in log] == [1, 2, 3]
    want = JsonLines(tmp_path / "whole" / LOG_NAME).read()
    assert [r["schedule"] for r in log] == [r["schedule"] for r in want]


def test_infeasible_budget_is_one_line_before_the_trainer_exists(make_blobs):
    cb = AdaptiveSchedule(4, ops_budget=0.05)
    with pytest.raises(EdgetrainError, match=r"adaptive schedule \(4 rows\): the cheapest") as e:
        _fit(cb, make_blobs(4, shape=SHAPE), 1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give ops_budget and/or memory_budget"),
        ({"ops_budget": 1.5}, "in (0, 1]"),
        ({"ops_budget": 0.5, "signal": "hessian"}, "unknown signal 'hessian'"),
        ({"ops_budget": 0.5, "min_updates": 5}, "min_updates in 0..4"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        AdaptiveSchedule(4, **options)


def test_parse_adaptive():
    assert parse_adaptive("ops=0.7") == {"ops_budget": 0.7}
    assert parse_adaptive("mem=0.9, ops=0.8, every=2") == {
        "memory_budget": 0.9,
        "ops_budget": 0.8,
        "every": 2,
    }
    with pytest.raises(ConfigError, match="'flops=0.7' is not KEY=VALUE"):
        parse_adaptive("flops=0.7")
    with pytest.raises(ConfigError, match="every needs a int, got 'x'"):
        parse_adaptive("ops=0.7,every=x")
    with pytest.raises(ConfigError, match="in \\(0, 1\\]"):
        parse_adaptive("ops=0")


def test_a_model_beyond_the_zoo(make_blobs):
    """Depthwise conv, a concat, LayerNorm and a functional activation: the rows are the
    model's last weight layers, and the budget holds."""

    class Net(nn.Module):
        input_shape = SHAPE

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(16, 8, 1)
            self.norm = nn.LayerNorm(8 * 64)
            self.head = nn.Linear(8 * 64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.silu(self.stem(x))
            x = self.pw(torch.cat([x, self.dw(x)], dim=1))
            return self.head(self.norm(x.flatten(1)))

    cb = AdaptiveSchedule(4, ops_budget=0.8)
    trainer = Trainer(
        Net(),
        make_blobs(8, shape=SHAPE),
        batch_size=2,
        callbacks=[cb],
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
        progress=False,
        device="cpu",
    )
    state = trainer.fit(2)
    assert cb.layers == ["head", "pw", "dw", "stem"]  # weight layers: LayerNorm is none
    assert all(r["schedule_relative_ops"] <= 0.8 + 1e-9 for r in state.history)


def test_registered_and_runs_from_a_config(make_blobs):
    from edgetrain.engine import CALLBACKS

    cb = CALLBACKS.create("adaptive-schedule", rows=3, cycle=2, ops_budget=0.9)
    assert isinstance(cb, AdaptiveSchedule) and str(cb.schedule) == "222"
    assert cb.label == "adaptive-ops0.9"

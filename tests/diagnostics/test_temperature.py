"""The per-layer temperature monitor: what it measures equals the probe's distance of the
step just taken, its rows and metrics, resume, the report plot and its errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgetrain.diagnostics import (
    TEMPERATURE_FILE,
    TemperatureMonitor,
    ap_distance,
    probe_patterns,
    read_temperatures,
    temperature,
)
from edgetrain.engine import CALLBACKS, Callback, Trainer
from edgetrain.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.GELU(),
        nn.Linear(32, 4),
    )


class _Independent(Callback):
    """Measures the distance of every step itself, after the monitor."""

    def __init__(self) -> None:
        self.measured: list[dict[str, float]] = []
        self._before = None

    def before_optimizer_step(self, trainer, model, optimizer):
        self._inputs = self._batch
        self._before = probe_patterns(model, self._inputs)

    def before_forward(self, trainer, model, inputs):
        self._batch = inputs

    def on_batch_end(self, trainer, model, outputs, loss):
        self.measured.append(ap_distance(self._before, probe_patterns(model, self._inputs)))


def _fit(make_blobs, callbacks, epochs=2, run_dir=None):
    trainer = Trainer(
        _net(),
        make_blobs(64, seed=0),
        batch_size=8,
        callbacks=callbacks,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
        device="cpu",
        progress=False,
        run_dir=run_dir,
    )
    trainer.fit(epochs)
    return trainer


def test_rows_are_the_probe_distance_of_the_step_just_taken(make_blobs, tmp_path):
    monitor, check = TemperatureMonitor(every=3), _Independent()
    trainer = _fit(make_blobs, [monitor, check], run_dir=tmp_path / "run")
    assert [r["step"] for r in monitor.rows] == [0, 3, 6, 9, 12, 15]
    for row in monitor.rows:
        assert row["distance"] == check.measured[row["step"]]
        for name, d in row["distance"].items():
            want = temperature(min(d, 1 - 0.5 / 8))
            assert row["temperature"][name] == pytest.approx(want)
        assert math.isfinite(row["mean_temperature"])
    # a GELU is measured too (its sign pattern), not only the ReLU
    assert len(monitor.rows[0]["temperature"]) == 2
    assert [r["step"] for r in read_temperatures(tmp_path / "run")] == [0, 3, 6, 9, 12, 15]
    first = trainer.state.history[0]
    rows = monitor.rows[:3]
    assert first["temperature_mean"] == pytest.approx(sum(r["mean_temperature"] for r in rows) / 3)


def test_measuring_does_not_change_training(make_blobs):
    plain = _fit(make_blobs, [])
    watched = _fit(make_blobs, [TemperatureMonitor(every=1)])
    for a, b in zip(plain.model.parameters(), watched.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_drops_rows_of_steps_trained_again(make_blobs, tmp_path):
    _fit(make_blobs, [TemperatureMonitor(every=2)], epochs=1, run_dir=tmp_path / "r")
    path = tmp_path / "r" / TEMPERATURE_FILE
    rows = path.read_text().splitlines()
    path.write_text("\n".join([*rows, rows[-1].replace('"step": 6', '"step": 10')]) + "\n")
    monitor = TemperatureMonitor(every=2)
    trainer = Trainer(
        _net(),
        make_blobs(64, seed=0),
        batch_size=8,
        callbacks=[monitor],
        device="cpu",
        progress=False,
        run_dir=tmp_path / "r",
    )
    trainer.load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    trainer.fit(2)
    steps = [r["step"] for r in read_temperatures(tmp_path / "r")]
    assert steps == [0, 2, 4, 6, 8, 10, 12, 14]


def test_report_draws_the_temperature_plot(make_blobs, tmp_path):
    from edgetrain.report import build_report

    _fit(make_blobs, [TemperatureMonitor(every=2)], run_dir=tmp_path / "run")
    build_report([tmp_path / "run"])
    assert (tmp_path / "run" / "plots" / "temperature-run.png").is_file()


def test_errors_and_registry(make_blobs):
    with pytest.raises(ConfigError, match="every must be >= 1"):
        TemperatureMonitor(every=0)
    assert isinstance(CALLBACKS.create("temperature-monitor", every=5), TemperatureMonitor)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    trainer = Trainer(
        linear,
        make_blobs(16),
        batch_size=8,
        callbacks=[TemperatureMonitor()],
        device="cpu",
        progress=False,
    )
    with pytest.raises(ConfigError, match="temperature monitor") as info:
        trainer.fit(1)
    assert "\n" not in str(info.value)

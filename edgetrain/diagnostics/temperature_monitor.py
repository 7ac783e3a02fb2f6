"""Per-layer AP temperature during ordinary training (the diagnostics thesis' figures of
the temperature over training).

Every ``every`` steps the monitor reads the activation patterns of the current batch
right before the optimizer step and again right after it (the probe's measuring mode:
dropout off, buffers and random generators restored), and records per activation layer
the distance ``D_l`` (the share of samples whose layer pattern the step changed) and
its temperature ``T_l = -log2(1 - D_l)``, with the network's mean temperature and the
learning rate. A layer whose every pattern changed is recorded at the batch's
resolution, ``D = 1 - 1/(2 samples)``, so its temperature stays finite.

Rows go to ``temperature.jsonl`` in the run directory; each epoch's metrics carry the
mean over its measurements (``temperature_mean``, ``temperature_max_layer``). The
report draws ``temperature-<run>.png``: every layer's temperature over training.

Example:
    >>> from edgetrain.engine import Trainer
    >>> monitor = TemperatureMonitor(every=10)
    >>> trainer = Trainer(net, data, callbacks=[monitor])  # doctest: +SKIP

In recipes: ``callbacks: [{name: temperature-monitor, every: 10}]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgetrain.diagnostics.probe import ap_distance, probe_patterns, temperature
from edgetrain.diagnostics.sites import activation_layers, no_activation_message
from edgetrain.engine import CALLBACKS, Callback, JsonLines
from edgetrain.errors import ConfigError

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = ["TEMPERATURE_FILE", "TemperatureMonitor", "read_temperatures"]

TEMPERATURE_FILE = "temperature.jsonl"


class TemperatureMonitor(Callback):
    """Measure each activation layer's AP temperature of the step just taken.

    Args:
        every: steps between measurements (the first step of training is measured).
        layers: activation layers to measure (all when None).
    """

    def __init__(self, every: int = 10, layers: Sequence[str] | None = None) -> None:
        if every < 1:
            raise ConfigError(f"temperature-monitor: every must be >= 1, got {every}")
        self.every = every
        self.layers = None if layers is None else list(layers)
        self.rows: list[dict[str, Any]] = []
        self._epoch_rows: list[dict[str, Any]] = []
        self._inputs: torch.Tensor | None = None
        self._before: dict[str, torch.Tensor] | None = None
        self._checked = False

    @property
    def state_key(self) -> str:
        return "TemperatureMonitor"

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        step = trainer.state.global_step
        path = self._path(trainer)
        if path is not None:  # a resumed run: drop rows of steps it trains again
            JsonLines(path, strict=True).keep(lambda r: step > 0 and r.get("step", step) < step)

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._epoch_rows = []

    def before_forward(self, trainer: Trainer, model: nn.Module, inputs: torch.Tensor) -> None:
        if not self._checked:
            if not activation_layers(model, self.layers, input_shape=inputs.shape[1:]):
                raise ConfigError(no_activation_message(model, "for the temperature monitor"))
            self._checked = True
        due = trainer.state.global_step % self.every == 0
        self._inputs = inputs if due else None

    def before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        self._before = None
        if self._inputs is not None:
            self._before = probe_patterns(model, self._inputs, self.layers)

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        if self._before is None or self._inputs is None:
            return
        after = probe_patterns(model, self._inputs, self.layers)
        samples = self._inputs.shape[0]
        top = 1.0 - 0.5 / samples
        distances = ap_distance(self._before, after)
        temperatures = {name: temperature(min(d, top)) for name, d in distances.items()}
        batches = max(len(trainer.train_loader), 1)
        state = trainer.state
        self._epoch_rows.append(
            {
                "step": state.global_step - 1,  # the step just taken
                "epoch": state.epoch + 1,
                "progress": (state.global_step) / (batches * max(state.max_epochs, 1)),
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "distance": distances,
                "temperature": temperatures,
                "mean_temperature": sum(temperatures.values()) / len(temperatures),
            }
        )
        self._before = self._inputs = None

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        rows = self._epoch_rows
        if rows:
            means: dict[str, float] = {}
            for name in rows[0]["temperature"]:
                means[name] = sum(r["temperature"][name] for r in rows) / len(rows)
            hottest = max(means, key=lambda n: means[n])
            trainer.log(
                temperature_mean=sum(r["mean_temperature"] for r in rows) / len(rows),
                temperature_max_layer=means[hottest],
            )
        self.rows.extend(rows)
        self._epoch_rows = []
        path = self._path(trainer)
        if path is not None and rows:
            JsonLines(path, strict=True).append(*rows)

    @staticmethod
    def _path(trainer: Trainer) -> Path | None:
        if trainer.run_dir is None or not trainer.is_main:
            return None
        return trainer.run_dir.path / TEMPERATURE_FILE


@CALLBACKS.register("temperature-monitor")
def temperature_monitor(every: int = 10, layers: list[str] | None = None) -> TemperatureMonitor:
    """Per-layer AP temperature of the step just taken, every ``every`` steps."""
    return TemperatureMonitor(every, layers)


def read_temperatures(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run>/temperature.jsonl`` (empty when the run has none); each has
    ``step``, ``epoch``, ``progress``, ``lr``, ``distance`` and ``temperature`` per
    layer, and ``mean_temperature``."""
    rows = JsonLines(Path(run_dir) / TEMPERATURE_FILE).read()
    for row in rows:  # strict JSON keeps no infinities: none are written, but be safe
        row["temperature"] = {
            k: math.inf if v is None else float(v) for k, v in row["temperature"].items()
        }
    return rows

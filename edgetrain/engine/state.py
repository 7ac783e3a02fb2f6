"""Training state: what a checkpoint needs to continue a run exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Progress of a fit: finished epochs, optimizer steps and the metric history.

    Attributes:
        epoch: number of finished epochs (the next epoch to run, counted from 0).
        global_step: optimizer steps taken so far.
        max_epochs: the epoch count the current ``fit`` runs to.
        history: one metrics record per finished epoch.
        stop_requested: a callback sets this to end training after the current epoch.
    """

    epoch: int = 0
    global_step: int = 0
    max_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_requested: bool = False

    @property
    def last_record(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def best(self, metric: str = "val_top1", mode: str = "max") -> dict[str, Any] | None:
        """The record with the best ``metric`` (first one on ties)."""
        records = [r for r in self.history if metric in r]
        if not records:
            return None
        pick = max if mode == "max" else min
        return pick(records, key=lambda r: r[metric])

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        state.pop("stop_requested")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.max_epochs = int(state.get("max_epochs", 0))
        self.history = [dict(r) for r in state.get("history", [])]
        self.stop_requested = False

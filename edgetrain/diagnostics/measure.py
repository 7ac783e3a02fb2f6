"""Dataset-level activation-pattern measurements and the Trainer callback taking them.

The protocol (so that two measurements differ only because the weights did): the
parameters are frozen; a deep *copy* of the model runs in train mode, so batch-norm
normalises with batch statistics while the real model's running statistics stay
untouched; dropout is off; the whole data set or a fixed subset is read in a fixed
order without augmentation; the random generators (torch CPU and CUDA, Python,
NumPy) are saved before and restored after. Under ``torch.distributed`` every rank
counts its shard and the bucket tables are summed.

:class:`PatternMonitor` (registered as ``ap-monitor``) measures on the training set
every ``every`` steps for the first ``early_steps`` steps, then ``per_epoch`` times an
epoch, and writes one line per measurement to ``<run>/patterns.jsonl`` (per-layer
metrics of :mod:`edgetrain.diagnostics.metrics` and bucket occupancy). At the end it
saves the final counts to ``<run>/patterns_final.pt``; a second run with the same seed
given ``final_counts`` also reports the weighted Jaccard index to that final state.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from edgetrain.diagnostics.metrics import layer_metrics
from edgetrain.diagnostics.probe import RandomState
from edgetrain.diagnostics.recorder import (
    DEFAULT_BUCKETS,
    OCCUPANCY_WARNING,
    LayerCounts,
    OccupancyWarning,
    PatternMode,
    PatternRecorder,
    occupancy_message,
)
from edgetrain.engine import CALLBACKS, Callback, atomic_save
from edgetrain.engine.checkpoint import safe_load
from edgetrain.engine.jsonl import JsonLines
from edgetrain.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from edgetrain.engine import Trainer

__all__ = [
    "FINAL_COUNTS_FILE",
    "PATTERNS_FILE",
    "MeasurePlan",
    "PatternMeasurement",
    "PatternMonitor",
    "fixed_subset",
    "load_counts",
    "measure_patterns",
    "read_pattern_records",
    "save_counts",
]

PATTERNS_FILE = "patterns.jsonl"
FINAL_COUNTS_FILE = "patterns_final.pt"

DataLike = Dataset | DataLoader | torch.Tensor


@dataclass(frozen=True)
class PatternMeasurement:
    """One dataset-level measurement: per-layer counts, inputs read, seconds taken."""

    layers: dict[str, LayerCounts]
    samples: int
    seconds: float


def fixed_subset(size: int, count: int | None, seed: int = 0) -> list[int]:
    """``count`` indices out of ``size`` drawn once from ``seed``, sorted (all if None)."""
    if count is None or count >= size:
        return list(range(size))
    if count < 1:
        raise ConfigError(f"subset must be >= 1 samples, got {count}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:count].tolist())


def _without_augmentation(data: Dataset) -> Dataset:
    """A shallow copy of an in-memory data set with its per-sample transform removed."""
    if getattr(data, "transform", None) is None:
        return data
    plain = copy.copy(data)
    plain.transform = None  # type: ignore[attr-defined]
    return plain


def _loader(data: DataLike, subset: int | None, subset_seed: int, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        if subset is not None:
            raise ConfigError("subset needs a Dataset, not a DataLoader (subset it yourself)")
        return data
    dataset = TensorDataset(data) if isinstance(data, torch.Tensor) else data
    dataset = _without_augmentation(dataset)
    indices = fixed_subset(len(dataset), subset, subset_seed)  # type: ignore[arg-type]
    if dist.is_available() and dist.is_initialized():
        indices = indices[dist.get_rank() :: dist.get_world_size()]
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


def _measurement_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy in train mode with dropout off."""
    twin = copy.deepcopy(model)
    twin.requires_grad_(False)
    twin.train()
    for module in twin.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd | nn.AlphaDropout):
            module.eval()
    return twin


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def measure_patterns(
    model: nn.Module,
    data: DataLike,
    *,
    subset: int | None = None,
    subset_seed: int = 0,
    batch_size: int = 256,
    mode: PatternMode = "auto",
    buckets: int = DEFAULT_BUCKETS,
    layers: list[str] | None = None,
    warn_occupancy: float = OCCUPANCY_WARNING,
) -> PatternMeasurement:
    """Count the activation patterns of a data set under the measurement protocol.

    Args:
        model: the network; neither its parameters, its buffers nor any random
            generator is changed.
        data: a ``Dataset`` of ``(input, target)`` (its augmentation is skipped), a
            tensor of inputs, or a ``DataLoader`` used as given.
        subset: read only this many samples, the same ones every time (``subset_seed``).
        batch_size: batch size of the measurement (batch-norm uses batch statistics).
        mode, buckets, layers, warn_occupancy: as for :class:`PatternRecorder`.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> m = measure_patterns(net, torch.randn(100, 2))
        >>> m.samples, m.layers["1"].samples
        (100, 100)
    """
    loader = _loader(data, subset, subset_seed, batch_size)
    device = _device_of(model)
    started = time.perf_counter()
    samples = 0
    saved = RandomState.save()
    try:
        torch.manual_seed(0)  # layers that still draw random numbers draw the same ones
        twin = _measurement_copy(model)
        recorder: PatternRecorder | None = None
        try:
            with torch.no_grad():
                for batch in loader:
                    inputs = batch[0] if isinstance(batch, list | tuple) else batch
                    if recorder is None:  # the data's shape tells each layer's layout
                        recorder = PatternRecorder(
                            twin,
                            mode=mode,
                            buckets=buckets,
                            layers=layers,
                            warn_occupancy=warn_occupancy,
                            input_shape=tuple(inputs.shape[1:]),
                        )
                        recorder.start()
                    twin(inputs.to(device, non_blocking=True))
                    samples += len(inputs)
        finally:
            if recorder is not None:
                recorder.stop()
        if recorder is None:
            raise ConfigError("measure_patterns got no batches; pass a non-empty data set")
        recorder.all_reduce()
        counted = torch.tensor([samples], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counted)
        layers_counts = recorder.snapshot()
    finally:
        saved.restore()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PatternMeasurement(layers_counts, int(counted.item()), time.perf_counter() - started)


def save_counts(layers: dict[str, LayerCounts], path: str | os.PathLike[str]) -> Path:
    """Save per-layer counts (CPU tensors, plain dicts: loads with ``weights_only``)."""
    state = {
        name: {
            "counts": c.counts.cpu(),
            "keys": None if c.keys is None else c.keys.cpu(),
            "channels": c.channels,
            "occupancy": c.occupancy,
        }
        for name, c in layers.items()
    }
    return atomic_save(state, path)


def load_counts(path: str | os.PathLike[str]) -> dict[str, LayerCounts]:
    """Counts saved by :func:`save_counts`; a run directory means its final counts."""
    p = Path(path)
    if p.is_dir():
        p = p / FINAL_COUNTS_FILE
    if not p.is_file():
        raise ConfigError(
            f"pattern counts '{path}' not found; pass the {FINAL_COUNTS_FILE} of a finished "
            "run with the pattern monitor (or its run directory)"
        )
    state = safe_load(p)
    try:
        return {
            name: LayerCounts(s["counts"], s["keys"], int(s["channels"]), s["occupancy"])
            for name, s in state.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"'{p}' holds no pattern counts; pass the {FINAL_COUNTS_FILE} "
            "of a finished run with the pattern monitor"
        ) from None


@dataclass(frozen=True)
class MeasurePlan:
    """When to measure: every ``every`` steps up to step ``early_steps``, then
    ``per_epoch`` times an epoch (every half epoch by default). Step 0 is the
    initialisation and is always measured."""

    every: int = 10
    early_steps: int = 100
    per_epoch: int = 2

    def __post_init__(self) -> None:
        for name in ("every", "per_epoch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ap-monitor option '{name}' must be >= 1")
        if self.early_steps < 0:
            raise ConfigError("ap-monitor option 'early_steps' must be >= 0")

    def due(self, step: int, steps_per_epoch: int) -> bool:
        """Whether to measure after optimizer step ``step`` (0: before training)."""
        if step == 0:
            return True
        if step <= self.early_steps:
            return step % self.every == 0
        interval = max(1, round(steps_per_epoch / self.per_epoch))
        return step % interval == 0


def _sparse(layers: dict[str, LayerCounts] | None) -> dict[str, Any] | None:
    """Counts as non-zero (index, value) pairs: checkpoints stay small."""
    if layers is None:
        return None
    out = {}
    for name, c in layers.items():
        index = torch.nonzero(c.counts).flatten()
        out[name] = {
            "size": c.counts.numel(),
            "index": index.cpu(),
            "values": c.counts[index].cpu(),
            "keys": None if c.keys is None else c.keys.cpu(),
            "channels": c.channels,
            "occupancy": c.occupancy,
        }
    return out


def _dense(state: dict[str, Any] | None) -> dict[str, LayerCounts] | None:
    if state is None:
        return None
    out = {}
    for name, s in state.items():
        counts = torch.zeros(int(s["size"]), dtype=torch.int64)
        counts[s["index"]] = s["values"]
        out[name] = LayerCounts(counts, s["keys"], int(s["channels"]), s["occupancy"])
    return out


class PatternMonitor(Callback):
    """Measure the training set's activation patterns during training.

    Args:
        plan: when to measure (:class:`MeasurePlan`).
        subset: samples per measurement (a fixed subset; None: the whole training set).
        batch_size: batch size of a measurement.
        mode, buckets, layers: as for :class:`PatternRecorder`.
        final_counts: counts saved by a previous run with the same seed
            (``patterns_final.pt`` or its run directory): adds ``jaccard_final``.
        save_final: save the last measurement's counts to ``<run>/patterns_final.pt``.

    Every measurement is also kept in :attr:`records` (the ``patterns.jsonl`` lines).

    Example:
        >>> monitor = PatternMonitor(MeasurePlan(every=5, early_steps=50), subset=512)
        >>> # Trainer(net, train_set, callbacks=[monitor], run_dir="runs/ap").fit(3)
    """

    def __init__(
        self,
        plan: MeasurePlan | None = None,
        *,
        subset: int | None = None,
        batch_size: int = 256,
        mode: PatternMode = "auto",
        buckets: int = DEFAULT_BUCKETS,
        layers: list[str] | None = None,
        final_counts: str | os.PathLike[str] | None = None,
        save_final: bool = True,
    ) -> None:
        if subset is not None and subset < 1:
            raise ConfigError(f"ap-monitor option 'subset' must be >= 1, got {subset}")
        if batch_size < 1:
            raise ConfigError(f"ap-monitor option 'batch_size' must be >= 1, got {batch_size}")
        self.plan = plan or MeasurePlan()
        self.subset, self.batch_size = subset, batch_size
        self.mode, self.buckets, self.layers = mode, buckets, layers
        self.final = load_counts(final_counts) if final_counts is not None else None
        self.save_final = save_final
        self.records: list[dict[str, Any]] = []
        self._init: dict[str, LayerCounts] | None = None
        self._previous: dict[str, LayerCounts] | None = None
        self._last_step: int | None = None
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        return "PatternMonitor"

    # ----------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        path = self._path(trainer)
        if path is not None and path.is_file() and trainer.is_main:
            # Resumed: keep the lines up to the checkpoint's last measurement, the one
            # the next "previous" comparisons refer to.
            last = -1 if self._last_step is None else self._last_step
            JsonLines(path).keep(lambda r: r.get("step", last + 1) <= last)
        if self._last_step is None:
            self.measure(trainer, model)

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        step = trainer.state.global_step
        if self.plan.due(step, trainer.steps_per_epoch):
            self.measure(trainer, model)

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        if self._last_step != trainer.state.global_step:
            self.measure(trainer, model)
        if self.save_final and self._previous is not None and trainer.is_main:
            path = self._path(trainer, FINAL_COUNTS_FILE)
            if path is not None:
                save_counts(self._previous, path)

    # ------------------------------------------------------------------ measuring
    def measure(self, trainer: Trainer, model: nn.Module) -> dict[str, Any]:
        """Take one measurement now, record and write it; returns the record."""
        data = getattr(trainer.train_loader, "dataset", trainer.train_loader)
        result = measure_patterns(
            model,
            data,
            subset=self.subset,
            batch_size=self.batch_size,
            mode=self.mode,
            buckets=self.buckets,
            layers=self.layers,
            warn_occupancy=math.inf,  # warned below, once per layer and run
        )
        for name, counts in result.layers.items():
            share = counts.occupancy
            if share is not None and share > OCCUPANCY_WARNING and name not in self._warned:
                self._warned.add(name)
                warnings.warn(occupancy_message(name, share, self.buckets), OccupancyWarning, 2)
        if self._init is None:
            self._init = result.layers
        step = trainer.state.global_step
        record: dict[str, Any] = {
            "step": step,
            "epoch": step / max(1, trainer.steps_per_epoch),
            "samples": result.samples,
            "seconds": result.seconds,
            "layers": {
                name: self._layer_record(name, counts) for name, counts in result.layers.items()
            },
        }
        self._previous, self._last_step = result.layers, step
        self.records.append(record)
        path = self._path(trainer)
        if path is not None and trainer.is_main:
            JsonLines(path).append(record)
        return record

    def _layer_record(self, name: str, counts: LayerCounts) -> dict[str, Any]:
        def ref(table: dict[str, LayerCounts] | None) -> tuple[torch.Tensor, Any] | None:
            if table is None or name not in table or table[name].channels != counts.channels:
                return None
            return table[name].counts, table[name].keys

        metrics = layer_metrics(
            counts.counts,
            counts.channels,
            counts.keys,
            previous=ref(self._previous),
            init=ref(self._init),
            final=ref(self.final),
        )
        return {
            "channels": counts.channels,
            "exact": counts.exact,
            **metrics,
            "occupancy": counts.occupancy,
        }

    @staticmethod
    def _path(trainer: Trainer, filename: str = PATTERNS_FILE) -> Path | None:
        return None if trainer.run_dir is None else trainer.run_dir.path / filename

    # ---------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self._last_step,
            "init": _sparse(self._init),
            "previous": _sparse(self._previous),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_step = state.get("last_step")
        self._init = _dense(state.get("init"))
        self._previous = _dense(state.get("previous"))


def read_pattern_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete lines of a ``patterns.jsonl`` (a torn last line is skipped); a run
    directory means its ``patterns.jsonl``."""
    p = Path(path)
    return JsonLines(p / PATTERNS_FILE if p.is_dir() else p).read()


@CALLBACKS.register("ap-monitor")
def ap_monitor(
    every: int = 10,
    early_steps: int = 100,
    per_epoch: int = 2,
    subset: int | None = None,
    batch_size: int = 256,
    mode: str = "auto",
    buckets: int = DEFAULT_BUCKETS,
    layers: list[str] | None = None,
    final_counts: str | None = None,
    save_final: bool = True,
) -> PatternMonitor:
    """Measure activation patterns of the training set while training (patterns.jsonl)."""
    if mode not in ("hash", "exact", "auto"):
        raise ConfigError(f"ap-monitor option 'mode' must be hash, exact or auto, got '{mode}'")
    return PatternMonitor(
        MeasurePlan(every=every, early_steps=early_steps, per_epoch=per_epoch),
        subset=subset,
        batch_size=batch_size,
        mode=mode,  # type: ignore[arg-type]
        buckets=buckets,
        layers=layers,
        final_counts=final_counts,
        save_final=save_final,
    )

"""What the cost model reports: per-layer rows, per-step costs, the cycle, exports.

Plain dataclasses (easy to test and to serialise); :class:`CostReport` ties them
together with ``total()`` (inference), ``steps()``, ``cycle()``, ``by_layer()``,
``to_frame()`` / ``to_csv()`` / ``to_json()`` and a torchinfo-like ``summary()``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgetrain.cost.profile import DeviceProfile

__all__ = ["CostReport", "CycleCost", "LayerCost", "StepCost"]


@dataclass(frozen=True)
class LayerCost:
    """One op row of the per-layer table, for one step's plan (counts per batch)."""

    name: str
    kind: str
    op: str
    module_type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    forward: int
    input_grad: int
    weight_grad: int
    update: int
    stored_activations: int
    gradient_buffers: int
    trained: bool


@dataclass(frozen=True)
class StepCost:
    """Cost of one training step (or of inference when nothing is trained).

    MACs are for the whole batch; memory is in bytes; energy in nJ per step.
    ``trained_weights_bytes`` are the weights the step updates (0 for inference): the
    others can stay in a device's flash (see :mod:`edgetrain.cost.fit`).
    """

    plan: str
    forward_macs: int
    input_grad_macs: int
    weight_grad_macs: int
    update_macs: int
    memory_bytes: int
    memory_reuse_bytes: int
    weights_bytes: int
    optimizer_state_bytes: int
    estimated_ops: float
    estimated_seconds: float | None
    energy_nj: float
    batch_size: int = 1
    memory_method: str = "layerwise"
    memory_peak_at: str = ""
    trained_weights_bytes: int = 0

    @property
    def backward_macs(self) -> int:
        return self.input_grad_macs + self.weight_grad_macs + self.update_macs

    @property
    def step_macs(self) -> int:
        return self.forward_macs + self.backward_macs

    @property
    def energy_nj_per_sample(self) -> float:
        return self.energy_nj / self.batch_size

    def energy_nj_per_epoch(self, samples: int) -> float:
        """Energy of one epoch over ``samples`` samples (steps rounded up)."""
        return self.energy_nj * -(-samples // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            backward_macs=self.backward_macs,
            step_macs=self.step_macs,
            energy_nj_per_sample=self.energy_nj_per_sample,
        )
        return d


@dataclass(frozen=True)
class CycleCost:
    """Average and peak over the steps of a cycle (a schedule), with the conventional
    step for reference. MAC fields are averages per step; memory fields are peaks."""

    steps: int
    forward_macs: float
    input_grad_macs: float
    weight_grad_macs: float
    update_macs: float
    backward_macs: float
    step_macs: float
    average_step_macs: float
    peak_step_macs: int
    memory_bytes: int
    memory_reuse_bytes: int
    peak_memory_bytes: int
    peak_memory_reuse_bytes: int
    average_estimated_ops: float
    energy_nj: float
    conventional_step_macs: int
    conventional_memory_bytes: int
    conventional_memory_reuse_bytes: int

    @property
    def relative_average_macs(self) -> float:
        return self.average_step_macs / max(self.conventional_step_macs, 1)

    @property
    def relative_peak_macs(self) -> float:
        return self.peak_step_macs / max(self.conventional_step_macs, 1)

    @property
    def relative_peak_memory(self) -> float:
        return self.peak_memory_bytes / max(self.conventional_memory_bytes, 1)

    @property
    def relative_peak_memory_reuse(self) -> float:
        return self.peak_memory_reuse_bytes / max(self.conventional_memory_reuse_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in (
            "relative_average_macs",
            "relative_peak_macs",
            "relative_peak_memory",
            "relative_peak_memory_reuse",
        ):
            d[name] = getattr(self, name)
        return d


@dataclass
class CostReport:
    """The analysis of one model at one input shape.

    Attributes:
        model: the model's class name.
        input_shape: one sample's shape.
        batch_size: the batch the counts are for.
        profile: the device profile applied.
        optimizer: optimizer whose state is counted (``sgd``, ``momentum``, ``adam``).
        layer_order: parameter-owning modules in forward order (output last).
        unsupported: ``(op, module)`` pairs no handle covers (never counted as zero
            silently: they are listed here and in the summary).
        notes: what the numbers could not cover and how they were found instead (a
            step that cannot run on the meta device has its memory estimated layer by
            layer).
    """

    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    profile: DeviceProfile
    optimizer: str
    layer_order: list[str]
    params: int
    trainable_params: int
    torchinfo_mult_adds: int
    input_bytes: int
    forward_backward_bytes: int
    unsupported: list[tuple[str, str]]
    inference: StepCost
    conventional: StepCost
    conventional_layers: list[LayerCost]
    step_costs: list[StepCost] = field(default_factory=list)
    step_layers: list[list[LayerCost]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def total(self) -> StepCost:
        """Inference: forward MACs, naive memory and the forward-only peak with reuse."""
        return self.inference

    def steps(self) -> list[StepCost]:
        """One :class:`StepCost` per plan given to ``analyze`` (conventional if none)."""
        return self.step_costs or [self.conventional]

    def cycle(self) -> CycleCost:
        """Average and peak over the plans, with the conventional step for reference."""
        steps = self.steps()
        n = len(steps)

        def mean(attr: str) -> float:
            return sum(getattr(s, attr) for s in steps) / n

        return CycleCost(
            steps=n,
            forward_macs=mean("forward_macs"),
            input_grad_macs=mean("input_grad_macs"),
            weight_grad_macs=mean("weight_grad_macs"),
            update_macs=mean("update_macs"),
            backward_macs=mean("backward_macs"),
            step_macs=mean("step_macs"),
            average_step_macs=mean("step_macs"),
            peak_step_macs=max(s.step_macs for s in steps),
            memory_bytes=max(s.memory_bytes for s in steps),
            memory_reuse_bytes=max(s.memory_reuse_bytes for s in steps),
            peak_memory_bytes=max(s.memory_bytes for s in steps),
            peak_memory_reuse_bytes=max(s.memory_reuse_bytes for s in steps),
            average_estimated_ops=mean("estimated_ops"),
            energy_nj=mean("energy_nj"),
            conventional_step_macs=self.conventional.step_macs,
            conventional_memory_bytes=self.conventional.memory_bytes,
            conventional_memory_reuse_bytes=self.conventional.memory_reuse_bytes,
        )

    def by_layer(self, step: int | None = None) -> list[LayerCost]:
        """The per-layer table for step ``step`` (default: the first plan, or the
        conventional step when no plans were given)."""
        if step is None:
            return self.step_layers[0] if self.step_layers else self.conventional_layers
        if not 0 <= step < len(self.step_layers):
            raise IndexError(f"step {step} out of range (0..{len(self.step_layers) - 1})")
        return self.step_layers[step]

    # ------------------------------------------------------------------ exports
    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data (JSON-ready)."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "batch_size": self.batch_size,
            "profile": self.profile.name,
            "optimizer": self.optimizer,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "torchinfo_mult_adds": self.torchinfo_mult_adds,
            "unsupported": [{"op": op, "module": m} for op, m in self.unsupported],
            "notes": list(self.notes),
            "inference": self.inference.to_dict(),
            "conventional": self.conventional.to_dict(),
            "steps": [s.to_dict() for s in self.steps()],
            "cycle": self.cycle().to_dict(),
            "layers": [asdict(r) for r in self.by_layer()],
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self, step: int | None = None) -> str:
        """The per-layer table as CSV text."""
        buf = io.StringIO()
        names = [f.name for f in fields(LayerCost)]
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        for row in self.by_layer(step):
            d = asdict(row)
            d["in_shape"] = "x".join(map(str, row.in_shape))
            d["out_shape"] = "x".join(map(str, row.out_shape))
            writer.writerow(d)
        return buf.getvalue()

    def to_frame(self, step: int | None = None):  # noqa: ANN201 - pandas is optional
        """The per-layer table as a pandas DataFrame (needs pandas)."""
        from edgetrain._optional import require

        pd = require("pandas", extra="analysis", package="pandas")
        return pd.DataFrame([asdict(r) for r in self.by_layer(step)])

    def summary(self) -> str:
        """A torchinfo-like summary: params, mult-adds, pass sizes, estimated total."""
        mb = 1024**2
        params_bytes = self.params * self.profile.bytes_per_element
        total = self.input_bytes + self.forward_backward_bytes + params_bytes
        lines = [
            f"{self.model}  input {self.batch_size}x{'x'.join(map(str, self.input_shape))}",
            f"Total params: {self.params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.params - self.trainable_params:,}",
            f"Total mult-adds (torchinfo count): {self.torchinfo_mult_adds:,}",
            f"Forward MACs (border-aware): {self.inference.forward_macs:,}",
            f"Input size (MB): {self.input_bytes / mb:.2f}",
            f"Forward/backward pass size (MB): {self.forward_backward_bytes / mb:.2f}",
            f"Params size (MB): {params_bytes / mb:.2f}",
            f"Estimated Total Size (MB): {total / mb:.2f}",
        ]
        for step in dict.fromkeys([self.conventional, *self.steps()]):
            at = f" at {step.memory_peak_at}" if step.memory_peak_at else ""
            lines.append(
                f"Training step '{step.plan}' peak memory (MB, {step.memory_method}): "
                f"{step.memory_reuse_bytes / mb:.2f}{at}"
            )
        if self.unsupported:
            ops = ", ".join(f"{op} in {m}" for op, m in self.unsupported)
            lines.append(f"Unsupported ops (not counted): {ops}")
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)

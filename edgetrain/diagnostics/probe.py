"""Activation-pattern temperature of one optimizer step, with an exact undo.

The *AP distance* of one optimizer step with learning rate ``eta`` on a batch ``B`` is
the share of samples of ``B`` (every position of a conv layer is a sample) whose
whole-layer activation pattern changes through the step: forward on ``B``, step,
forward on ``B`` again, compare the packed patterns row by row. The *temperature* is
``T = -log2(1 - D)``: 0 when nothing changed, large when nearly everything did. Both
are per activation layer; the network-level distance is the mean over layers.
("ActCooLR: activation pattern temperature for learning-rate control", after Hanin &
Rolnick's activation regions; see ``specs/diagnostics.md`` section 2.)

Measuring mode. Patterns are read in train mode, so batch-norm normalises with the
batch's statistics exactly as the training forward does, with dropout switched off and
the random generators seeded alike for every measurement (so both forwards see the
same network and only the step makes a difference), without gradients. The forward
runs on the live model; batch-norm running statistics (and ``num_batches_tracked``)
and every random generator are restored afterwards, so a measurement leaves no trace
in training. This is the protocol of :mod:`edgetrain.diagnostics.measure` without its
model copy, which would cost a full copy per probe.

Probing a step at several rates needs an undo: :class:`TrainingSnapshot` keeps the
parameters, buffers, gradients, the optimizer's state (a deep copy of its
``state_dict``, learning rates included) and the random generators, and puts them back
bit for bit, so a run with probes is identical to one without.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    >>> nn.functional.cross_entropy(net(x), y).backward()
    >>> with StepProbe(net, opt, x) as probe:
    ...     d = probe.distance(10.0)
    >>> 0.0 <= network_distance(d) <= 1.0
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetrain.diagnostics.patterns import capture_patterns
from edgetrain.diagnostics.sites import activation_layers, no_activation_message
from edgetrain.errors import ConfigError

__all__ = [
    "RandomState",
    "StepProbe",
    "TrainingSnapshot",
    "ap_distance",
    "network_distance",
    "network_temperature",
    "probe_patterns",
    "probe_rates",
    "temperature",
    "temperature_distance",
]


@dataclass(frozen=True)
class RandomState:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) random generators."""

    python: Any
    numpy: Any
    torch: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def save(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class TrainingSnapshot:
    """Everything one optimizer step can change, kept to be put back exactly.

    Holds copies of the model's parameters and buffers (batch-norm running statistics,
    ``num_batches_tracked``), of the gradients, of the optimizer's state (a deep copy
    of ``state_dict()``: momentum buffers, Adam moments and step counts, the param
    groups' learning rates) and of the random generators. :meth:`restore` may be called
    any number of times; the live tensors keep their identity (values are copied in).

    Args:
        model: the network.
        optimizer: its optimizer (None: model and generators only).

    Example:
        >>> net = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> snap = TrainingSnapshot(net, opt)
        >>> net(torch.randn(4, 3)).sum().backward(); opt.step()
        >>> snap.restore()
        >>> torch.equal(net.weight, snap.tensors[0])
        True
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model, self.optimizer = model, optimizer
        self._live = [*model.parameters(), *model.buffers()]
        self.tensors = [t.detach().clone() for t in self._live]
        self._params = list(model.parameters())
        self._grads = [None if p.grad is None else p.grad.detach().clone() for p in self._params]
        self._optimizer_state = (
            copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        )
        self.random_state = RandomState.save()

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved values back into the live model, optimizer and generators."""
        for live, saved in zip(self._live, self.tensors, strict=True):
            live.copy_(saved)
        for p, saved in zip(self._params, self._grads, strict=True):
            if saved is None:
                p.grad = None
            elif p.grad is not None and p.grad.shape == saved.shape:
                p.grad.copy_(saved)
            else:
                p.grad = saved.clone()
        if self.optimizer is not None and self._optimizer_state is not None:
            # load_state_dict keeps same-device, same-dtype tensors as given: hand it a
            # copy, so the optimizer's next in-place update cannot reach the snapshot.
            self.optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))
        self.random_state.restore()


_MEASURE_SEED = 0x5EED


@contextlib.contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Train mode, dropout off, no gradients; buffers and generators restored after."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = RandomState.save()
    # Any other random layer sees the same draws in every measurement, so the forwards
    # before and after a step differ by the step alone.
    torch.manual_seed(_MEASURE_SEED)
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd | nn.AlphaDropout):
            module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        rng.restore()


def probe_patterns(
    model: nn.Module, inputs: torch.Tensor, layers: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Packed APs of ``inputs`` in the probe's measuring mode (see the module docstring).

    Returns:
        Per activation layer the int64 words ``(samples, words)`` of
        :func:`~edgetrain.diagnostics.patterns.capture_patterns`.
    """
    with _measuring(model):
        return capture_patterns(model, inputs, layers)


def ap_distance(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Per layer the share of samples whose whole-layer pattern differs.

    Args:
        before: packed patterns per layer (``(samples, words)``).
        after: the same layers' patterns of the same samples after a change.

    Example:
        >>> a = {"relu": torch.tensor([[1], [2], [3], [4]])}
        >>> ap_distance(a, {"relu": torch.tensor([[1], [0], [3], [5]])})
        {'relu': 0.5}
    """
    out: dict[str, float] = {}
    for name, words in before.items():
        other = after[name]
        if other.shape != words.shape:
            raise ValueError(
                f"layer '{name}': patterns of shape {tuple(other.shape)} cannot be compared "
                f"with {tuple(words.shape)}; measure the same batch twice"
            )
        out[name] = float((words != other).any(dim=1).float().mean().item())
    return out


def network_distance(distances: Mapping[str, float]) -> float:
    """The network-level AP distance: the mean of the per-layer distances."""
    if not distances:
        raise ValueError("no layer distances to average")
    return float(sum(distances.values()) / len(distances))


def network_temperature(distances: Mapping[str, float]) -> float:
    """The network-level temperature: the mean of the per-layer temperatures
    ``-log2(1 - D_l)`` (``inf`` when some layer changed every pattern).

    Example:
        >>> network_temperature({"a": 0.5, "b": 0.875})
        2.0
    """
    if not distances:
        raise ValueError("no layer distances to average")
    return float(sum(temperature(d) for d in distances.values()) / len(distances))


def temperature_distance(distances: Mapping[str, float], samples: int | None = None) -> float:
    """The AP distance whose temperature is the mean of the layers' temperatures,
    ``1 - 2^-mean_l(T_l)``: what a controller of the mean temperature inverts.

    With ``samples`` (the batch measured), a layer whose every pattern changed counts at
    the resolution of that batch, ``D = 1 - 1/(2 samples)``, rather than at an infinite
    temperature that would make the mean infinite because of one layer (when every
    layer changed every pattern the distance stays 1).

    Example:
        >>> temperature_distance({"a": 0.5, "b": 0.875})
        0.75
        >>> round(temperature_distance({"a": 0.5, "b": 1.0}, samples=8), 4)  # T: 1 and 4
        0.8232
    """
    if samples is not None and not all(d >= 1.0 for d in distances.values()):
        top = 1.0 - 0.5 / max(samples, 1)
        distances = {k: min(d, top) for k, d in distances.items()}
    t = network_temperature(distances)
    return 1.0 if math.isinf(t) else 1.0 - 2.0 ** (-t)


def temperature(distance: float) -> float:
    """``T = -log2(1 - D)``; ``inf`` when every pattern changed.

    Example:
        >>> temperature(0.0), temperature(0.5), temperature(0.875)
        (0.0, 1.0, 3.0)
    """
    if not 0.0 <= distance <= 1.0:
        raise ValueError(f"an AP distance lies in [0, 1], got {distance}")
    return math.inf if distance >= 1.0 else -math.log2(1.0 - distance) + 0.0


class StepProbe:
    """Take the optimizer step now pending at any learning rate, measure, undo.

    On creation the probe snapshots the training state (:class:`TrainingSnapshot`) and
    reads the batch's patterns before the step. Each :meth:`distance` call sets the
    learning rate, calls ``optimizer.step()`` with the gradients present at creation,
    reads the patterns again and restores the snapshot. Leaving the ``with`` block (or
    :meth:`close`) restores it once more. Parameter groups keep their ratios to the
    first group's learning rate (per-layer rates scale together).

    Args:
        model: the network; gradients of the step to probe must be in ``.grad``.
        optimizer: its optimizer.
        inputs: the batch the patterns are read on.
        layers: activation layers to use (all when None).

    Raises:
        ConfigError: the model has no activation layers.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        inputs: torch.Tensor,
        layers: Iterable[str] | None = None,
    ) -> None:
        self.layers = list(activation_layers(model, layers, input_shape=inputs.shape[1:]))
        if not self.layers:
            raise ConfigError(no_activation_message(model, "to probe"))
        self.model, self.optimizer, self.inputs = model, optimizer, inputs
        self.snapshot = TrainingSnapshot(model, optimizer)
        first = optimizer.param_groups[0]["lr"]
        self._scales = [g["lr"] / first if first > 0 else 1.0 for g in optimizer.param_groups]
        self.before = probe_patterns(model, inputs, self.layers)
        self.probes = 0

    def distance(self, lr: float) -> dict[str, float]:
        """Per-layer AP distance of the step at learning rate ``lr`` (state restored)."""
        try:
            for group, scale in zip(self.optimizer.param_groups, self._scales, strict=True):
                group["lr"] = lr * scale
            self.optimizer.step()
            after = probe_patterns(self.model, self.inputs, self.layers)
        finally:
            self.snapshot.restore()
        self.probes += 1
        return ap_distance(self.before, after)

    def close(self) -> None:
        """Restore the snapshot (the state before the probe was created)."""
        self.snapshot.restore()

    def __enter__(self) -> StepProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_rates(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    rates: Sequence[float],
    layers: Iterable[str] | None = None,
) -> list[dict[str, float]]:
    """Per-layer AP distances of the pending step at each learning rate in ``rates``.

    The gradients in ``.grad`` are the step's; model, optimizer, gradients and random
    generators are as before when this returns.
    """
    with StepProbe(model, optimizer, inputs, layers) as probe:
        return [probe.distance(float(r)) for r in rates]

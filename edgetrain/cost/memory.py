"""Step memory as the allocator sees it: one training step run on the meta device.

The forward, the loss, the backward and the optimizer update of a step run on ``meta``
tensors (no memory, no arithmetic) under a dispatch mode that watches every storage. A
storage counts from the op that creates it until its last reference goes (autograd's
saved tensors, views and gradients included): the moment the allocator gets it back.
So each tensor is charged once over its whole life, the input batch and the
activations of frozen layers included, and the weights, the gradients of the plan's
parameters and the optimizer state (momentum, Adam's moments) are what they are in a
real step.

The step is the one edgetrain's Trainer (and Lightning) runs: forward, loss,
``zero_grad(set_to_none=True)``, backward, ``optimizer.step()``. The step reported is a
steady one: the optimizer state exists and the previous step's gradients are
still alive during the forward, as in every step of a training run.

What it does not see: scratch memory a kernel allocates and frees inside one op (a
convolution's unfolded input on some CPU paths), and the allocator's own rounding and
caching; ``benchmarks/memory_vs_measured.py`` compares it with the CPU profiler.

Example:
    >>> from edgetrain.models import create
    >>> net = create("vgg_small")
    >>> trainable = frozenset(n for n, _ in net.named_parameters() if n.startswith("fc"))
    >>> step = simulate_step(net, (3, 32, 32), 32, trainable)
    >>> step.peak_bytes > step.persistent_bytes
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edgetrain._modules import train_mode
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["PHASES", "MemoryTimeline", "simulate_step"]

PHASES = ("forward", "backward", "update")

# Optimizer of each name the cost model knows, built over the meta parameters.
_OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, foreach=False),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=False),
    "adam": lambda params: torch.optim.Adam(params, foreach=False),
    "adamw": lambda params: torch.optim.AdamW(params, foreach=False),
}


@dataclass(frozen=True)
class MemoryTimeline:
    """Live bytes over one training step.

    Attributes:
        peak_bytes: the most bytes alive at once.
        persistent_bytes: alive when the step starts: weights, optimizer state and the
            previous step's gradients.
        allocated_bytes: ``persistent_bytes`` plus every storage the step creates, each
            once (what the step needs with no memory ever reused).
        events: ``(phase, op, live bytes after the op)`` for every op of the step, when
            asked for (empty otherwise).
        peak_phase: the phase of the op at the peak.
        peak_op: that op (ATen name).
    """

    peak_bytes: int
    persistent_bytes: int
    allocated_bytes: int
    events: tuple[tuple[str, str, int], ...]
    peak_phase: str
    peak_op: str

    def phase_peaks(self) -> dict[str, int]:
        """The peak of each phase."""
        peaks = dict.fromkeys(PHASES, self.persistent_bytes)
        for phase, _, live in self.events:
            peaks[phase] = max(peaks[phase], live)
        return peaks


class _Storages(TorchDispatchMode):
    """Counts the bytes of the storages alive, op by op.

    Finding the storages that died costs a check of every live one, so it runs when the
    count could be a new peak (it only ever lowers the count) or, for a timeline, after
    every op."""

    def __init__(self, bytes_per_element: int, timeline: bool) -> None:
        super().__init__()
        self.scale = bytes_per_element / 4  # the step runs in FP32
        self.timeline = timeline
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live = self.peak = self.allocated = 0
        self.phase, self.peak_at = PHASES[0], (PHASES[0], "")
        self.events: list[tuple[str, str, int]] = []

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref.cdata in self.refs:
            return
        size = storage.nbytes()
        if t.dtype == torch.float32:
            size = int(size * self.scale)
        self.refs[ref.cdata] = (ref, size)
        self.live += size
        self.allocated += size

    def sweep(self) -> None:
        for key in [k for k, (ref, _) in self.refs.items() if ref.expired()]:
            self.live -= self.refs.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        op = str(func.overloadpacket).removeprefix("aten.")
        if self.live > self.peak:
            self.sweep()  # the op's inputs are still referenced here: they count
            if self.live > self.peak:
                self.peak, self.peak_at = self.live, (self.phase, op)
        if self.timeline:
            self.sweep()
            self.events.append((self.phase, op, self.live))
        return out


def _loss(output: Any) -> torch.Tensor:
    """Cross-entropy for a ``(batch, classes)`` output (what classifiers train with);
    otherwise the sum of every output tensor (any loss of an output keeps the same
    tensors alive)."""
    outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    if len(outs) == 1 and outs[0].dim() == 2 and outs[0].is_floating_point():
        target = torch.zeros(outs[0].shape[0], dtype=torch.long, device=outs[0].device)
        return nn.functional.cross_entropy(outs[0], target)
    return sum(t.float().sum() for t in outs if t.is_floating_point())  # type: ignore[return-value]


def simulate_step(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    trainable: frozenset[str],
    optimizer: str = "sgd",
    bytes_per_element: int = 4,
    timeline: bool = False,
) -> MemoryTimeline:
    """Run a training step of ``model`` on the meta device and record live memory.

    Args:
        model: any module; it is not modified (its parameters and buffers are swapped for
            meta tensors for the call, its modes restored).
        input_shape: one sample's shape.
        batch_size: the batch of the step.
        trainable: names of the parameters the step updates (``resolve_plan``).
        optimizer: ``sgd``, ``momentum``, ``adam`` or ``adamw``.
        bytes_per_element: of floating-point tensors (4 for FP32).
        timeline: record the live bytes after every op (``events``); without it only
            the peak is found, which is several times faster.

    Raises:
        EdgetrainError: an op of the model that cannot run on the meta device (named).
    """
    if optimizer not in _OPTIMIZERS:
        raise EdgetrainError(
            f"unknown optimizer '{optimizer}'; choose one of: {', '.join(_OPTIMIZERS)}"
        )
    params = {
        name: torch.empty_like(p, device="meta").requires_grad_(name in trainable)
        for name, p in model.named_parameters()
    }
    buffers = {name: torch.empty_like(b, device="meta") for name, b in model.named_buffers()}
    leaves = [p for p in params.values() if p.requires_grad]
    opt = _OPTIMIZERS[optimizer](leaves) if leaves else None
    state = {**params, **buffers}
    mode = _Storages(bytes_per_element, timeline)

    def step(watched: bool) -> None:
        with mode if watched else contextlib.nullcontext():
            mode.phase = "forward"
            x = torch.empty(batch_size, *input_shape, device="meta")
            output = torch.func.functional_call(model, state, (x,))
            loss = _loss(output)
            mode.phase = "backward"
            if opt is not None:
                opt.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
            mode.phase = "update"
            if opt is not None:
                opt.step()
            del x, output, loss

    try:
        with train_mode(model):
            _previous_step(params, opt)
            for t in _persistent(params, buffers, opt):
                mode.track(t)
            persistent = mode.peak = mode.live
            step(watched=True)
            mode.sweep()
    except (NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
        raise EdgetrainError(
            f"the training step of {type(model).__name__} cannot run on the meta device "
            f"({one_line(exc)})"
        ) from exc
    return MemoryTimeline(
        peak_bytes=mode.peak,
        persistent_bytes=persistent,
        allocated_bytes=mode.allocated,
        events=tuple(mode.events),
        peak_phase=mode.peak_at[0],
        peak_op=mode.peak_at[1],
    )


def _previous_step(params: dict[str, torch.Tensor], opt: Any) -> None:
    """What an earlier step leaves: each trained parameter's gradient and the optimizer
    state one update creates (cheaper than running a whole step for it)."""
    for p in params.values():
        if p.requires_grad:
            p.grad = torch.empty_like(p)
    if opt is not None:
        opt.step()


def _persistent(
    params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], opt: Any
) -> list[torch.Tensor]:
    """Tensors alive between steps: weights, buffers, gradients, optimizer state."""
    held = [*params.values(), *buffers.values()]
    held += [p.grad for p in params.values() if p.grad is not None]
    if opt is not None:
        for slot in opt.state.values():
            held += [t for t in slot.values() if isinstance(t, torch.Tensor)]
    return held

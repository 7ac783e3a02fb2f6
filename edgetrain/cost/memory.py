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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from edgetrain._modules import train_mode
from edgetrain.errors import EdgetrainError, one_line

__all__ = ["PHASES", "MemoryTimeline", "measure_step_memory", "simulate_step"]

PHASES = ("forward", "backward", "update")

# Kernels whose scratch memory is known to be large and that fake tensors do not show:
# oneDNN's recurrent layers keep a workspace of every time step's gates.
UNSEEN_SCRATCH = frozenset({"mkldnn_rnn_layer", "mkldnn_rnn_layer_backward", "mkldnn_rnn"})

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
        events: ``(phase, op, bytes)`` for every op of the step, when asked for (empty
            otherwise): the bytes alive while the op runs, its scratch memory included.
        peak_phase: the phase of the op at the peak.
        peak_op: that op (ATen name).
        unseen: ops of the step whose scratch memory is not counted (oneDNN's recurrent
            kernels): the peak is a lower bound when this is not empty.
    """

    peak_bytes: int
    persistent_bytes: int
    allocated_bytes: int
    events: tuple[tuple[str, str, int], ...]
    peak_phase: str
    peak_op: str
    unseen: tuple[str, ...] = ()

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

    def __init__(self, bytes_per_element: int, timeline: bool, workspace: bool) -> None:
        super().__init__()
        self.scale = bytes_per_element / 4  # the step runs in FP32
        self.timeline, self.workspace = timeline, workspace
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live = self.peak = self.allocated = 0
        self.phase, self.peak_at = PHASES[0], (PHASES[0], "")
        self.events: list[tuple[str, str, int]] = []
        self.unseen: dict[str, None] = {}

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
        if op.startswith("prim."):  # fake tensors asking for their device
            return out
        if op in UNSEEN_SCRATCH:
            self.unseen[op] = None
        scratch = _conv_workspace(op, args) * self.scale if self.workspace else 0
        if self.live + scratch > self.peak:
            self.sweep()  # the op's inputs are still referenced here: they count
            if self.live + scratch > self.peak:
                self.peak, self.peak_at = int(self.live + scratch), (self.phase, op)
        if self.timeline:
            self.sweep()
            self.events.append((self.phase, op, int(self.live + scratch)))
        return out


_COLUMN_BACKENDS = ("Slow2d", "Slow3d", "SlowDilated2d", "SlowDilated3d")


def _conv_workspace(op: str, args: tuple[Any, ...]) -> int:
    """Bytes a CPU convolution kernel of this torch allocates and frees inside the op,
    by the backend torch chooses for these shapes (``_select_conv_backend``):

    - the unfolding kernels (``Slow2d``...) unfold one sample's input into columns
      (``C_in/g * kernel taps * output positions``) per thread, forward and backward;
      a 1x1 convolution with stride 1 and no padding needs none;
    - NNPACK (oneDNN off) shows no scratch in the forward; its backward takes an
      output-sized buffer and unfolds as well;
    - oneDNN (``Mkldnn``) and the others copy the output into their own layout in the
      forward and the output gradient in the backward; computing the input gradient
      takes two more buffers (of the output's and of the input's size).

    Measured on this torch's CPU kernels (``benchmarks/memory_vs_measured.py``); on
    other devices (cuDNN chooses its workspace at run time) none is counted.
    """
    if args and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
        return 0  # measured for the CPU kernels only
    if op == "convolution":
        x, w, _, stride, padding, dilation, transposed, out_pad, groups = args[:9]
        out_elems, in_grad = None, False
    elif op == "convolution_backward":
        grad, x, w, _, stride, padding, dilation, transposed, out_pad, groups, mask = args[:11]
        out_elems, in_grad = grad.numel(), bool(mask[0])
    else:
        return 0
    try:
        backend = str(
            torch._C._select_conv_backend(
                x, w, None, stride, padding, dilation, transposed, out_pad, groups, None
            )
        ).rsplit(".", 1)[-1]
    except (AttributeError, RuntimeError, TypeError):  # another torch: no estimate
        return 0
    spatial = w.shape[2:]
    if out_elems is None:
        out_elems = (
            x.shape[0]
            * w.shape[0]
            * math.prod(
                (size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, k, s, p, d in zip(
                    x.shape[2:], spatial, stride, padding, dilation, strict=True
                )
            )
        )
    # NNPACK's forward keeps its scratch to itself; its backward takes an output-sized
    # buffer and then unfolds like the slow kernels
    extra = 0
    if backend == "NnpackSpatial":
        if op == "convolution":
            return 0
        extra, backend = 4 * out_elems, "Slow2d"
    if backend in _COLUMN_BACKENDS:
        if all(k == 1 for k in spatial) and all(s == 1 for s in stride) and not any(padding):
            return extra
        positions = out_elems // (x.shape[0] * w.shape[0])
        columns = w.shape[1] * math.prod(spatial) * positions
        return extra + 4 * columns * min(torch.get_num_threads(), x.shape[0])
    return 4 * (out_elems + (out_elems + x.numel() if in_grad else 0))


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
    workspace: bool = True,
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
        workspace: count the scratch memory this torch's CPU convolution kernels take
            inside the op (:func:`_conv_workspace`); without it, tensors only.

    Raises:
        EdgetrainError: an op of the model that cannot run on the meta device (named).
    """
    if optimizer not in _OPTIMIZERS:
        raise EdgetrainError(
            f"unknown optimizer '{optimizer}'; choose one of: {', '.join(_OPTIMIZERS)}"
        )
    # Fake tensors: meta storage (no memory, no arithmetic) that says it is on the
    # model's device, so ops that choose their algorithm by device (the CPU recurrent
    # layers compute every time step's input projection at once) choose as for real.
    fake = FakeTensorMode()
    # A model on the meta device (built without memory) is costed as on the CPU.
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    if device.type == "meta":
        device = torch.device("cpu")
    with fake:
        params = {
            name: torch.empty(p.shape, dtype=p.dtype, device=device).requires_grad_(
                name in trainable
            )
            for name, p in model.named_parameters()
        }
        buffers = {
            name: torch.empty(b.shape, dtype=b.dtype, device=device)
            for name, b in model.named_buffers()
        }
    leaves = [p for p in params.values() if p.requires_grad]
    opt = _OPTIMIZERS[optimizer](leaves) if leaves else None
    state = {**params, **buffers}
    mode = _Storages(bytes_per_element, timeline, workspace)

    def step() -> None:
        with fake, mode:
            mode.phase = "forward"
            x = torch.empty(batch_size, *input_shape, device=device)
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
            with fake:
                _previous_step(params, opt)
            for t in _persistent(params, buffers, opt):
                mode.track(t)
            persistent = mode.peak = mode.live
            step()
            mode.sweep()
    except (NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
        raise EdgetrainError(
            f"the training step of {type(model).__name__} cannot run on fake tensors "
            f"({one_line(exc)})"
        ) from exc
    return MemoryTimeline(
        peak_bytes=mode.peak,
        persistent_bytes=persistent,
        allocated_bytes=mode.allocated,
        events=tuple(mode.events),
        peak_phase=mode.peak_at[0],
        peak_op=mode.peak_at[1],
        unseen=tuple(mode.unseen),
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


def measure_step_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    trainable: frozenset[str],
    optimizer: str = "sgd",
) -> int:
    """The peak bytes of a real training step of ``model`` on the CPU, measured: the
    step :func:`simulate_step` predicts, on a copy of the model, after a first step.

    torch's profiler (``profile_memory=True``) reports every allocation and free with
    the running total of the bytes allocated since it started, kernel scratch memory
    included. Two steps run under it; the peak of the second, plus the tensors alive
    since before the profiler started (weights, buffers, optimizer state), is the
    answer. (The first profiled step makes the gradients alive at the second's start
    known to the profiler; blocks allocated before it started are never subtracted.)
    It reads the profiler's event tree (``kineto_results``, not a documented API) and
    takes seconds: it checks the prediction, it does not replace it.

    Raises:
        EdgetrainError: this torch's profiler has no allocation events, or an unknown
            optimizer.
    """
    import copy

    from torch.profiler import ProfilerActivity, profile, record_function

    if optimizer not in _OPTIMIZERS:
        raise EdgetrainError(
            f"unknown optimizer '{optimizer}'; choose one of: {', '.join(_OPTIMIZERS)}"
        )
    net = copy.deepcopy(model).cpu()
    for name, p in net.named_parameters():
        p.requires_grad_(name in trainable)
    leaves = [p for p in net.parameters() if p.requires_grad]
    opt = _OPTIMIZERS[optimizer](leaves) if leaves else None
    x = torch.randn(batch_size, *input_shape)

    def step() -> None:
        output = net(x.clone())  # the batch a data loader hands over: new each step
        loss = _loss(output)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        if opt is not None:
            opt.step()

    with train_mode(net):
        step()
        for p in net.parameters():
            p.grad = None  # the profiled first step makes its own
        alive = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in _persistent(dict(net.named_parameters()), dict(net.named_buffers()), opt)
        }
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
            with record_function("edgetrain.measured_step"):
                step()
    try:
        nodes = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
        (marker,) = [n for n in nodes if n.name == "edgetrain.measured_step"]
        allocations = sorted(
            (n.start_time_ns, n.extra_fields.alloc_size, n.extra_fields.total_allocated)
            for n in nodes
            if type(n.extra_fields).__name__ == "_ExtraFields_Allocation"
        )
    except (AttributeError, ValueError) as exc:
        raise EdgetrainError(f"this torch's profiler reports no allocations ({exc})") from exc
    if not allocations:
        raise EdgetrainError("this torch's profiler reported no allocation in a training step")
    # the running total goes on from earlier profiles: count from this one's start
    _, size, total = allocations[0]
    start = total - size
    peak = max(
        (t for at, _, t in allocations if marker.start_time_ns <= at <= marker.end_time_ns),
        default=start,
    )
    return int(sum(alive.values()) + peak - start)


def _walk(nodes: Any) -> Any:
    for node in nodes:
        yield node
        yield from _walk(node.children)

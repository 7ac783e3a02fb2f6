"""``analyze``: per-layer, per-step and per-cycle costs of a model on a target.

Step memory has two accountings (``memory=``): ``allocator`` (the default) runs the
step on the meta device and follows every tensor from creation to its last use, as the
allocator frees it (:mod:`edgetrain.cost.memory`); ``layerwise`` is the spec's formula
(each trained op's stored input and gradient buffers, updates applied as soon as a
weight gradient exists, as on-device training code does), cheap enough for callers
that only read MACs.

The rules of one training step with plan P (the spec's, applied through the traced
data flow, so residual branches are handled exactly like autograd does):

1. the backward runs from the output down to the lowest layer of P and stops there;
2. every layer in P computes its weight gradient and its update;
3. every op whose input depends on a trained parameter computes its input gradient
   (frozen layers above the lowest trained one still pass gradients; the lowest
   trained layer computes none);
4. parameter-free ops on the backward path compute their backward term;
5. ops below the lowest trained layer cost forward only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torch import nn

from edgetrain.cost.handles import OpCounts
from edgetrain.cost.memory import MemoryTimeline, simulate_step
from edgetrain.cost.plans import ALL, Plan, plan_label, resolve_plan
from edgetrain.cost.profile import TERMS, DeviceProfile, load_profile
from edgetrain.cost.report import CostReport, LayerCost, StepCost
from edgetrain.cost.tracer import ROOT, OpRecord, Trace, trace
from edgetrain.errors import EdgetrainError

__all__ = [
    "MAC_CONVENTIONS",
    "MEMORY_METHODS",
    "OPTIMIZER_STATE",
    "analyze",
    "timed_analyze",
]

# Optimizer state per updated parameter, in parameter copies.
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}

MEMORY_METHODS = ("allocator", "tensors", "layerwise")

# How MACs are counted: ``border`` (the spec: only the kernel taps inside the input, and
# activations, pooling, normalisation and element-wise ops counted too) or ``dense``
# (conv and linear products only, every kernel tap, no bias: what fvcore, ptflops' aten
# backend and Torch-Pruning report).
MAC_CONVENTIONS = ("border", "dense")


def analyze(
    model: nn.Module,
    input_shape: Sequence[int],
    plans: Sequence[Plan] | None = None,
    profile: str | Path | DeviceProfile = "reference",
    optimizer: str = "sgd",
    batch_size: int = 1,
    strict: bool = False,
    memory: str = "allocator",
    macs: str = "border",
) -> CostReport:
    """What inference and training steps of ``model`` cost, without running it.

    Args:
        model: any module (analysed on the meta device; it is not modified).
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 32, 32)``.
        plans: training-step plans (``[ALL]``, ``["last:2"]``, ``[["conv6", "fc"], ...]``);
            ``None`` analyses inference plus the conventional step.
        profile: a built-in profile name, a profile file, or a :class:`DeviceProfile`.
        optimizer: whose state to count: ``sgd`` (none), ``momentum`` (1x), ``adam`` (2x).
        batch_size: the batch the counts are for.
        strict: raise instead of listing ops that no handle covers, or a step whose
            memory cannot be followed on the meta device.
        memory: ``allocator`` (every tensor over the whole step, PyTorch's kernel
            scratch included: as measured on this host), ``tensors`` (the same without
            kernel scratch: what a runtime that convolves in place, CMSIS-NN or
            hand-written C on a microcontroller, holds) or ``layerwise`` (the spec's
            per-layer formula; no step is run).
        macs: ``border`` (the spec's count) or ``dense`` (conv/linear products with
            every kernel tap, the peers' convention; the backward scaled alike).

    Example:
        >>> from edgetrain.models import create
        >>> report = analyze(create("vgg_small"), (3, 32, 32), plans=[["conv6", "fc"]])
        >>> report.total().forward_macs > 0, round(report.steps()[0].backward_macs / 1e6, 2)
        (True, 2.05)
    """
    if optimizer not in OPTIMIZER_STATE:
        raise EdgetrainError(
            f"unknown optimizer '{optimizer}'; choose one of: {', '.join(OPTIMIZER_STATE)}"
        )
    if batch_size < 1:
        raise EdgetrainError(f"batch size must be >= 1, got {batch_size}")
    if macs not in MAC_CONVENTIONS:
        raise EdgetrainError(
            f"unknown MAC convention '{macs}'; choose one of: {', '.join(MAC_CONVENTIONS)}"
        )
    if memory not in MEMORY_METHODS:
        raise EdgetrainError(
            f"unknown memory accounting '{memory}'; choose one of: {', '.join(MEMORY_METHODS)}"
        )
    prof = load_profile(profile)
    t = trace(model, tuple(input_shape), batch_size)
    if macs == "dense":
        t = replace(t, records=[replace(r, counts=_dense(r.counts)) for r in t.records])
    if strict and t.unsupported:
        listed = ", ".join(f"{op} (in {m})" for op, m in t.unsupported)
        raise EdgetrainError(f"unsupported ops: {listed}; add a handle or use strict=False")
    order = _layer_order(t.records)
    weights = sum(p.numel() for p in model.parameters())
    ctx = _Context(t, prof, OPTIMIZER_STATE[optimizer], weights, batch_size)
    notes: list[str] = []
    simulated: dict[frozenset[str], MemoryTimeline | None] = {}

    def step(label: str, plan: frozenset[str]) -> tuple[StepCost, list[LayerCost]]:
        cost, layers = ctx.step(label, plan)
        if memory in ("allocator", "tensors"):
            if plan not in simulated:
                simulated[plan] = _simulate(
                    model,
                    input_shape,
                    batch_size,
                    plan,
                    optimizer,
                    prof.bytes_per_element,
                    strict,
                    notes,
                    workspace=memory == "allocator",
                )
            found = simulated[plan]
            if found is not None:
                cost = replace(
                    cost,
                    memory_bytes=found.allocated_bytes,
                    memory_reuse_bytes=found.peak_bytes,
                    memory_method=memory,
                    memory_peak_at=f"{found.peak_phase}/{found.peak_op}",
                )
        return cost, layers

    conventional, conventional_layers = step(ALL, resolve_plan(model, ALL, order))
    step_costs, step_layers = [], []
    for plan in plans or []:
        cost, layers = step(plan_label(plan), resolve_plan(model, plan, order))
        step_costs.append(cost)
        step_layers.append(layers)
    bpe = prof.bytes_per_element
    return CostReport(
        model=type(model).__name__,
        input_shape=tuple(input_shape),
        batch_size=batch_size,
        profile=prof,
        optimizer=optimizer,
        layer_order=order,
        params=weights,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        torchinfo_mult_adds=sum(_torchinfo_macs(r) for r in t.records),
        input_bytes=t.tensor_elems[t.input_key] * bpe,
        forward_backward_bytes=2 * bpe * sum(r.out_elems for r in t.records if r.counts),
        unsupported=t.unsupported,
        inference=ctx.inference(),
        conventional=conventional,
        conventional_layers=conventional_layers,
        step_costs=step_costs,
        step_layers=step_layers,
        notes=notes,
    )


def _simulate(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    plan: frozenset[str],
    optimizer: str,
    bytes_per_element: int,
    strict: bool,
    notes: list[str],
    workspace: bool = True,
) -> MemoryTimeline | None:
    """The step's memory timeline, or None (with a note) when it cannot run on meta."""
    if not plan:
        return None  # nothing trains: no step to run, the layerwise rule is exact
    try:
        found = simulate_step(
            model,
            tuple(input_shape),
            batch_size,
            plan,
            optimizer,
            bytes_per_element,
            workspace=workspace,
        )
    except EdgetrainError as exc:
        if strict:
            raise
        note = f"{exc}; its memory is estimated layer by layer"
        if note not in notes:
            notes.append(note)
        return None
    if found.unseen:
        note = (
            f"step memory is a lower bound: the scratch of {', '.join(found.unseen)} "
            "(oneDNN's recurrent kernels) is not counted; with "
            "torch.backends.mkldnn.flags(enabled=False) the native kernels run and are "
            "counted in full"
        )
        if strict:
            raise EdgetrainError(note)
        if note not in notes:
            notes.append(note)
    return found


def timed_analyze(*args, **kwargs) -> tuple[CostReport, float]:  # noqa: ANN002, ANN003
    """:func:`analyze` and the seconds it took (benchmarks report it)."""
    start = time.perf_counter()
    report = analyze(*args, **kwargs)
    return report, time.perf_counter() - start


def _layer_order(records: list[OpRecord]) -> list[str]:
    """Weight layers (convolutions, linears) in the order the forward first uses them;
    their batch-norms are separate modules a plan names explicitly."""
    order: dict[str, None] = {}
    for r in records:
        if r.counts is not None and r.counts.kind in ("conv", "linear"):
            for p in r.params:
                order.setdefault(_owner(p), None)
    return list(order)


def _dense(counts: OpCounts | None) -> OpCounts | None:
    """``counts`` in the dense convention: the conv/linear products with every kernel
    tap, the backward products scaled by the same ratio; nothing else."""
    if counts is None:
        return None
    if not counts.products:
        return OpCounts(counts.kind, 0, 0, 0)
    ratio = counts.dense / counts.products
    return OpCounts(
        counts.kind,
        counts.dense,
        round(counts.input_grad * ratio),
        round(counts.weight_grad * ratio),
        counts.products,
        counts.dense,
    )


def _owner(param: str) -> str:
    """The module a parameter belongs to: ``fc`` for ``fc.weight`` and for a
    parametrized ``fc.parametrizations.weight.original0``; ``(model)`` for one on the
    root module itself."""
    if ".parametrizations." in param:
        return param.split(".parametrizations.")[0]
    return param.rsplit(".", 1)[0] if "." in param else ROOT


def _torchinfo_macs(r: OpRecord) -> int:
    """torchinfo's mult-adds: parameters x output positions (no border awareness)."""
    if not r.params or not r.out_shape:
        return 0
    channel_dim = len(r.out_shape) - 1 if r.counts and r.counts.kind == "linear" else 1
    positions = r.out_elems // r.out_shape[channel_dim]
    return sum(r.param_numel) * positions


class _Context:
    """Costs of one traced forward under one profile."""

    def __init__(
        self, t: Trace, profile: DeviceProfile, state_copies: int, weights: int, batch: int
    ) -> None:
        self.trace, self.profile = t, profile
        self.state_copies, self.weights, self.batch = state_copies, weights, batch

    def _bytes(self, elements: float) -> int:
        return int(elements * self.profile.bytes_per_element)

    def _energy(self, macs: int, bytes_moved: int) -> float:
        return (macs * self.profile.e_mac_pj + bytes_moved * self.profile.e_byte_pj) / 1000.0

    def _seconds(self, ops: float) -> float | None:
        peak = self.profile.peak_macs_per_s
        return None if peak is None else ops / peak

    def inference(self) -> StepCost:
        t, p = self.trace, self.profile
        forward = sum(r.counts.forward for r in t.records if r.counts)
        ops = sum(
            (
                r.counts.forward * p.multiplier("forward", r.counts.kind)
                + p.call_offset("forward", r.counts.kind)
                + sum(r.param_numel) * p.param_cost("forward", r.counts.kind)
            )
            * p.layer_factor(r.module, "forward")
            for r in t.records
            if r.counts
        )
        naive = self.weights + sum(t.tensor_elems.values())
        peak = self.weights + _forward_peak(t)
        return StepCost(
            plan="inference",
            forward_macs=forward,
            input_grad_macs=0,
            weight_grad_macs=0,
            update_macs=0,
            memory_bytes=self._bytes(naive),
            memory_reuse_bytes=self._bytes(peak),
            weights_bytes=self._bytes(self.weights),
            optimizer_state_bytes=0,
            estimated_ops=ops,
            estimated_seconds=self._seconds(ops),
            energy_nj=self._energy(forward, self._bytes(naive)),
            batch_size=self.batch,
        )

    def step(self, label: str, plan: frozenset[str]) -> tuple[StepCost, list[LayerCost]]:
        """Cost of one step updating the parameters in ``plan``, and its layer rows."""
        p = self.profile
        depends: dict[int, bool] = {}
        updated: set[str] = set()
        rows: list[LayerCost] = []
        totals = dict.fromkeys(TERMS, 0)
        ops = float(p.offset_per_step)
        # (stored input, input-gradient buffer or None to pass the gradient through, w-grad)
        walk: list[tuple[int, int | None, int]] = []
        for r in self.trace.records:
            in_dep = any(depends.get(k, False) for k in r.inputs)
            trained = [(n, k) for n, k in zip(r.params, r.param_numel, strict=True) if n in plan]
            out_dep = in_dep or bool(trained)
            for k in r.outputs:
                depends[k] = out_dep
            c = r.counts
            if c is None:
                continue
            fresh = [(n, k) for n, k in trained if n not in updated]
            updated.update(n for n, _ in fresh)
            terms = {
                "forward": c.forward,
                "input_grad": c.input_grad if in_dep else 0,
                "weight_grad": c.weight_grad if trained else 0,
                "update": sum(k for _, k in fresh),
            }
            runs = {
                "forward": True,
                "input_grad": in_dep,
                "weight_grad": bool(trained),
                "update": bool(fresh),
            }
            layer_params = sum(r.param_numel)
            for term, value in terms.items():
                totals[term] += value
                if runs[term]:
                    ops += (
                        value * p.multiplier(term, c.kind)
                        + p.call_offset(term, c.kind)
                        + layer_params * p.param_cost(term, c.kind)
                    ) * p.layer_factor(r.module, term)
            # residual adds pass gradients through without storing or allocating anything
            keeps = c.kind != "add"
            stored = r.in_elems if out_dep and keeps else 0
            grad_buf = r.in_elems if in_dep and keeps else 0
            if out_dep:
                walk.append((stored, grad_buf if keeps else None, terms["update"]))
            rows.append(
                LayerCost(
                    name=r.module,
                    kind=c.kind,
                    op=r.op,
                    module_type=r.module_type,
                    in_shape=r.in_shape,
                    out_shape=r.out_shape,
                    params=sum(r.param_numel),
                    forward=terms["forward"],
                    input_grad=terms["input_grad"],
                    weight_grad=terms["weight_grad"],
                    update=terms["update"],
                    stored_activations=stored,
                    gradient_buffers=grad_buf + terms["update"],
                    trained=bool(trained),
                )
            )
        trained_numel = totals["update"]
        state = self.state_copies * trained_numel
        persistent = self.weights + state
        stored_total = sum(w[0] for w in walk)
        naive = persistent + stored_total + sum(w[1] or 0 for w in walk) + trained_numel
        # Walk the backward from the output down: an op's stored input is freed once its
        # backward ran, the gradient it received once it produced its own input gradient,
        # a weight gradient once the update (applied right away) consumed it.
        peak, remaining, incoming = persistent, stored_total, 0
        for stored, kept_grad, wgrad in reversed(walk):
            own = 0 if kept_grad is None else kept_grad
            peak = max(peak, persistent + remaining + incoming + own + wgrad)
            remaining -= stored
            if kept_grad is not None:
                incoming = kept_grad
        macs = sum(totals.values())
        cost = StepCost(
            plan=label,
            forward_macs=totals["forward"],
            input_grad_macs=totals["input_grad"],
            weight_grad_macs=totals["weight_grad"],
            update_macs=totals["update"],
            memory_bytes=self._bytes(naive),
            memory_reuse_bytes=self._bytes(peak),
            weights_bytes=self._bytes(self.weights),
            optimizer_state_bytes=self._bytes(state),
            trained_weights_bytes=self._bytes(trained_numel),
            estimated_ops=ops,
            estimated_seconds=self._seconds(ops),
            energy_nj=self._energy(macs, self._bytes(naive)),
            batch_size=self.batch,
        )
        return cost, _unique_names(rows)


def _forward_peak(t: Trace) -> int:
    """Most activation elements alive at once during the forward (buffers are freed
    after their last use; the network output stays)."""
    born = {t.input_key: -1}
    last = {t.input_key: -1}
    for r in t.records:
        for k in r.outputs:
            born.setdefault(k, r.index)
            last[k] = max(last.get(k, r.index), r.index)
        for k in r.inputs:
            last[k] = max(last.get(k, r.index), r.index)
    end = len(t.records)
    for k in t.output_keys:
        last[k] = end
    delta = [0] * (end + 3)
    for k, b in born.items():
        delta[b + 1] += t.tensor_elems[k]
        delta[min(last[k], end) + 2] -= t.tensor_elems[k]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _unique_names(rows: list[LayerCost]) -> list[LayerCost]:
    """Suffix ``#2``, ``#3`` ... to repeated module names (a module called twice)."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        n = seen.get(row.name, 0) + 1
        seen[row.name] = n
        if n > 1:
            row = LayerCost(**{**row.__dict__, "name": f"{row.name}#{n}"})
        out.append(row)
    return out

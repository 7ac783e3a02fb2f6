"""The analytical cost model: what inference or one training step costs on a target.

MACs of the forward pass and of the three backward terms (input gradient, weight
gradient, update) per layer, with border-aware convolution taps; memory per step, naive
and with buffer reuse, plus optimizer state; energy; device profiles that calibrate the
raw counts to a target. Ops are traced at the dispatch level on the meta device, so any
model is analysed without allocating it.

Example:
    >>> from edgetrain.cost import analyze
    >>> from edgetrain.models import create
    >>> report = analyze(create("vgg_small"), (3, 32, 32), plans=["last:2"])
    >>> report.total().forward_macs, report.steps()[0].backward_macs
    (9063626, 2054218)
"""

from __future__ import annotations

from edgetrain.cost.analysis import OPTIMIZER_STATE, analyze, timed_analyze
from edgetrain.cost.fit import MemoryFit, memory_fit, step_fit
from edgetrain.cost.handles import HANDLES, KINDS, OpCounts
from edgetrain.cost.plans import ALL, all_trainable, resolve_plan
from edgetrain.cost.profile import TERMS, DeviceProfile, list_profiles, load_profile
from edgetrain.cost.report import CostReport, CycleCost, LayerCost, StepCost
from edgetrain.cost.shift_add import ShiftAddCost, shift_add_costs, shift_add_ops
from edgetrain.cost.taps import conv_output_length, kernel_taps, taps_1d
from edgetrain.cost.tracer import OpRecord, Trace, trace

__all__ = [
    "MemoryFit",
    "memory_fit",
    "step_fit",
    "ShiftAddCost",
    "shift_add_costs",
    "shift_add_ops",
    "ALL",
    "HANDLES",
    "KINDS",
    "OPTIMIZER_STATE",
    "TERMS",
    "CostReport",
    "CycleCost",
    "DeviceProfile",
    "LayerCost",
    "OpCounts",
    "OpRecord",
    "StepCost",
    "Trace",
    "all_trainable",
    "analyze",
    "conv_output_length",
    "kernel_taps",
    "list_profiles",
    "load_profile",
    "resolve_plan",
    "taps_1d",
    "timed_analyze",
    "trace",
]

"""Layer-scheduled fine-tuning: which layers to train, and how often.

Example:
    >>> from edgetrain.finetune import Schedule
    >>> Schedule.parse("4421").mean_rates
    (1.0, 1.0, 0.5, 0.25)
"""

from __future__ import annotations

from edgetrain.finetune.adaptive import SIGNALS, AdaptiveSchedule, adaptive_label, allocate_updates
from edgetrain.finetune.callback import LayerSchedule
from edgetrain.finetune.costing import (
    ScheduleCost,
    optimise_placement,
    schedule_cost,
    schedule_layers,
    step_plans,
    suggest_schedules,
)
from edgetrain.finetune.fold import fold_batchnorm
from edgetrain.finetune.schedule import MODES, Schedule, even_placement

__all__ = [
    "MODES",
    "SIGNALS",
    "AdaptiveSchedule",
    "LayerSchedule",
    "Schedule",
    "ScheduleCost",
    "adaptive_label",
    "allocate_updates",
    "even_placement",
    "fold_batchnorm",
    "optimise_placement",
    "schedule_cost",
    "schedule_layers",
    "step_plans",
    "suggest_schedules",
]

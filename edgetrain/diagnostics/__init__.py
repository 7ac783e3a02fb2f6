"""Training diagnostics: activation-pattern recorder and metrics, measurement protocol,
activation-cell pictures; AP temperature probe, learning-rate sensitivity and the
ActCoolLR controller.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from edgetrain.diagnostics import PatternRecorder
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with PatternRecorder(net) as rec:
    ...     _ = net(torch.randn(64, 2))
    >>> sorted(rec.counts())
    ['1']
"""

from __future__ import annotations

from edgetrain.diagnostics.actcool import (
    ACTCOOL_FILE,
    COOLING_PLANS,
    ActCoolLR,
    DivergenceError,
    FloorWarning,
    cooling_plan,
    lr_for_temperature,
    read_actcool,
    target_probability,
)
from edgetrain.diagnostics.cells import CellPicture, activation_cells, count_regions, plot_cells
from edgetrain.diagnostics.lr_sensitivity import (
    LR_SENSITIVITY_FILE,
    TRANSITION_MODELS,
    LRSensitivity,
    SensitivityMeasurement,
    TransitionFit,
    fit_transition,
    fit_transition_models,
    log_rates,
    measure_lr_sensitivity,
    rate_for_distance,
    read_lr_sensitivity,
    transition_distance,
)
from edgetrain.diagnostics.measure import (
    FINAL_COUNTS_FILE,
    PATTERNS_FILE,
    MeasurePlan,
    PatternMeasurement,
    PatternMonitor,
    fixed_subset,
    load_counts,
    measure_patterns,
    read_pattern_records,
    save_counts,
)
from edgetrain.diagnostics.metrics import (
    METRICS,
    align_counts,
    distinct_patterns,
    entropy,
    layer_metrics,
    pattern_changes,
    relative_entropy,
    top_share,
    weighted_jaccard,
)
from edgetrain.diagnostics.patterns import (
    ACTIVATION_TYPES,
    ActivationMarker,
    activation_layers,
    capture_patterns,
    hash_words,
    pack_bits,
    pack_pre_activation,
    pattern_samples,
)
from edgetrain.diagnostics.probe import (
    RandomState,
    StepProbe,
    TrainingSnapshot,
    ap_distance,
    network_distance,
    network_temperature,
    probe_patterns,
    probe_rates,
    temperature,
    temperature_distance,
)
from edgetrain.diagnostics.recorder import (
    DEFAULT_BUCKETS,
    OCCUPANCY_WARNING,
    LayerCounts,
    OccupancyWarning,
    PatternRecorder,
)
from edgetrain.diagnostics.temperature_monitor import (
    TEMPERATURE_FILE,
    TemperatureMonitor,
    read_temperatures,
)

__all__ = [
    "TEMPERATURE_FILE",
    "TemperatureMonitor",
    "read_temperatures",
    "ACTCOOL_FILE",
    "COOLING_PLANS",
    "LR_SENSITIVITY_FILE",
    "TRANSITION_MODELS",
    "ActCoolLR",
    "DivergenceError",
    "FloorWarning",
    "LRSensitivity",
    "RandomState",
    "SensitivityMeasurement",
    "StepProbe",
    "TrainingSnapshot",
    "TransitionFit",
    "ap_distance",
    "cooling_plan",
    "fit_transition",
    "fit_transition_models",
    "log_rates",
    "lr_for_temperature",
    "measure_lr_sensitivity",
    "network_distance",
    "network_temperature",
    "probe_patterns",
    "probe_rates",
    "rate_for_distance",
    "read_actcool",
    "read_lr_sensitivity",
    "target_probability",
    "temperature",
    "temperature_distance",
    "transition_distance",
    "ACTIVATION_TYPES",
    "DEFAULT_BUCKETS",
    "FINAL_COUNTS_FILE",
    "METRICS",
    "OCCUPANCY_WARNING",
    "PATTERNS_FILE",
    "ActivationMarker",
    "CellPicture",
    "LayerCounts",
    "MeasurePlan",
    "OccupancyWarning",
    "PatternMeasurement",
    "PatternMonitor",
    "PatternRecorder",
    "activation_cells",
    "activation_layers",
    "align_counts",
    "capture_patterns",
    "count_regions",
    "distinct_patterns",
    "entropy",
    "fixed_subset",
    "hash_words",
    "layer_metrics",
    "load_counts",
    "measure_patterns",
    "pack_bits",
    "pack_pre_activation",
    "pattern_changes",
    "pattern_samples",
    "plot_cells",
    "read_pattern_records",
    "relative_entropy",
    "save_counts",
    "top_share",
    "weighted_jaccard",
]

"""The sweep config: what to search, how, against which metric, within which budget.

Close to what users know from W&B sweeps; validated on load, every mistake gives one
line naming the key and the fix::

    name: resnet20-latency
    method: bayes                  # grid | random | bayes (TPE) | gp | nsga2
    metric: {name: latency_ms, goal: minimize}   # or a list for multi-objective
    constraints: [{name: top1_drop, max: 1.0}]   # top-1 at most 1 point below baseline
    parameters:
      stage1.sparsity: {min: 0.0, max: 0.9}
      finetune.epochs: {values: [0, 2, 4]}
      finetune.lr: {min: 0.001, max: 0.1, log: true}
    budget: {trials: 40, timeout_h: 2}
    recipe: resnet20-l1            # YAML path or shipped compression recipe
    model: runs/digits-resnet20    # run directory (or a checkpoint inside one)
    reference: resnet20-l1         # optional hand-made recipe, marked in the report
    runtime: {name: onnxruntime, threads: 1, runs: 100, repeats: 3}
    # runtime: {name: openvino, bench_worker: true}: one device measures for all workers
    trial_pruner: {name: median}   # stop clearly worse fine-tunings early (optional)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgetrain.compress.recipe import Recipe, load_recipe
from edgetrain.compress.runtime import RUNTIMES
from edgetrain.configs import StrictConfig, load_validated, read_mapping
from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.registry import check_kwargs
from edgetrain.search.methods import SAMPLERS
from edgetrain.search.pruners import TRIAL_PRUNERS

__all__ = [
    "METRICS",
    "BudgetSpec",
    "ConstraintSpec",
    "MetricSpec",
    "ParameterSpec",
    "RuntimeSpec",
    "SweepConfig",
    "load_sweep",
]


# What a trial records, with the direction a user usually wants. Accuracy in percent.
METRICS: dict[str, str] = {
    "top1": "maximize",
    "top5": "maximize",
    "loss": "minimize",
    "top1_drop": "minimize",
    "top1_pruned": "maximize",
    "latency_ms": "minimize",
    "latency_p90_ms": "minimize",
    "compute_ms": "minimize",
    "latency_ratio": "minimize",
    "throughput": "maximize",
    "size_bytes": "minimize",
    "macs": "minimize",
    "params": "minimize",
    "macs_ratio": "minimize",
    "params_ratio": "minimize",
}
_PERCENT = ("top1", "top5", "top1_pruned")
THROUGHPUT_BATCH = 32  # the batch of throughput runs when a sweep needs them unasked


class _Strict(StrictConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _metric_name(v: str) -> str:
    if v not in METRICS:
        raise ValueError(f"unknown metric '{v}'; choose one of: {', '.join(METRICS)}")
    return v


class MetricSpec(_Strict):
    """An objective: a recorded metric and whether to minimize or maximize it."""

    name: str
    goal: Literal["minimize", "maximize"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _metric_name(v)

    @property
    def direction(self) -> str:
        return self.goal or METRICS[self.name]


class ConstraintSpec(_Strict):
    """A bound a feasible trial must meet: ``{name: top1, min: 85}``."""

    name: str
    min: float | None = None
    max: float | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _metric_name(v)

    @model_validator(mode="after")
    def _bounds(self) -> ConstraintSpec:
        if self.min is None and self.max is None:
            raise ValueError(f"constraint on '{self.name}' needs min or max")
        if self.name in _PERCENT:
            for bound in (self.min, self.max):
                if bound is not None and 0 < bound <= 1:
                    raise ValueError(
                        f"{self.name} is in percent (0-100); write {bound * 100:g} for {bound:.0%}"
                    )
        return self

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 when met, the distance to the bound otherwise."""
        if not math.isfinite(value):
            return math.inf
        over = value - self.max if self.max is not None else -math.inf
        under = self.min - value if self.min is not None else -math.inf
        return max(over, under)


class ParameterSpec(_Strict):
    """A searched parameter: ``{values: [...]}`` or ``{min, max, log, step}``, or a
    fixed ``{value: x}``."""

    values: list[Any] | None = Field(None, min_length=1)
    min: int | float | None = None
    max: int | float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    value: Any = None

    @model_validator(mode="after")
    def _kind(self) -> ParameterSpec:
        ranged = self.min is not None or self.max is not None
        kinds = sum([self.values is not None, ranged, self.value is not None])
        if kinds != 1:
            raise ValueError("give exactly one of: values: [...], min and max, or value")
        if ranged:
            if self.min is None or self.max is None:
                raise ValueError("a range needs both min and max")
            if self.min >= self.max:
                raise ValueError(f"min {self.min:g} must be below max {self.max:g}")
            if self.log and self.min <= 0:
                raise ValueError("log: true needs min > 0")
        return self

    @property
    def is_int(self) -> bool:
        """A range of whole numbers (``{min: 0, max: 10}``) is searched as integers."""
        return isinstance(self.min, int) and isinstance(self.max, int)

    def example(self) -> Any:
        """A value of this parameter (to check it against the recipe)."""
        if self.values is not None:
            return self.values[0]
        if self.value is not None:
            return self.value
        return int(self.min) if self.is_int else float(self.min)  # type: ignore[arg-type]


class BudgetSpec(_Strict):
    """How many trials (over all workers) and how long each worker may run."""

    trials: int = Field(20, ge=1)
    timeout_h: float | None = Field(None, gt=0)


class RuntimeSpec(_Strict):
    """Where and how latency is measured (see ``edgetrain bench``)."""

    name: str = "onnxruntime"
    threads: int = Field(1, ge=1)
    warmup: int = Field(10, ge=0)
    runs: int = Field(100, ge=1)
    repeats: int = Field(3, ge=1)
    throughput_batch: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    bench_worker: bool = False
    wait_s: float = Field(3600.0, gt=0)

    @field_validator("name")
    @classmethod
    def _runtime(cls, v: str) -> str:
        RUNTIMES.entry(v)
        return v

    @model_validator(mode="after")
    def _options(self) -> RuntimeSpec:
        # Build the runtime once: unknown options, a missing package (with its install
        # line), an unavailable device or provider are refused before any trial runs.
        # With a bench worker the runtime is the device's, built by the bench worker.
        if self.bench_worker:
            return self
        try:
            RUNTIMES.create(self.name, **self.options)
        except EdgetrainError as exc:
            raise ValueError(str(exc)) from None
        return self

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`edgetrain.compress.measure`."""
        return {
            "runtime": self.name,
            "runtime_options": self.options or None,
            "threads": self.threads,
            "warmup": self.warmup,
            "runs": self.runs,
            "repeats": self.repeats,
            "throughput_batch": self.throughput_batch,
        }


class TrialPrunerSpec(_Strict):
    """Early stopping of trials: a key of
    :data:`~edgetrain.search.pruners.TRIAL_PRUNERS` and its options."""

    name: str = "median"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> TrialPrunerSpec:
        entry = TRIAL_PRUNERS.entry(self.name)  # an unknown name lists the choices
        check_kwargs(entry.fn, dict(self.options), f"trial_pruner '{self.name}'", ("max_resource",))
        return self

    def make(self, max_resource: int) -> Any:
        """The Optuna pruner (None for ``none``)."""
        return TRIAL_PRUNERS.create(self.name, max_resource=max_resource, **self.options)


class SweepConfig(_Strict):
    """A validated sweep; build it with :func:`load_sweep`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    method: str = "bayes"
    metric: MetricSpec | list[MetricSpec]
    constraints: list[ConstraintSpec] = Field(default_factory=list)
    parameters: dict[str, ParameterSpec] = Field(min_length=1)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    recipe: str
    model: str
    data: str | None = None
    reference: str | None = None
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    trial_pruner: TrialPrunerSpec | None = None
    seed: int = 0
    heartbeat_s: int = Field(60, ge=1)
    keep_models: bool = False

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @property
    def metrics(self) -> list[MetricSpec]:
        """The objectives as a list (one for single-objective sweeps)."""
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def directions(self) -> list[str]:
        return [m.direction for m in self.metrics]

    def runtime_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`edgetrain.compress.measure` for every trial: the
        runtime's settings, with throughput runs at batch ``THROUGHPUT_BATCH`` (as
        ``edgetrain bench`` runs them) when a metric or a constraint is the throughput
        and ``runtime.throughput_batch`` is not set."""
        settings = self.runtime.settings()
        used = {m.name for m in self.metrics} | {c.name for c in self.constraints}
        if "throughput" in used and settings["throughput_batch"] is None:
            settings["throughput_batch"] = THROUGHPUT_BATCH
        return settings

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        SAMPLERS.entry(v)  # an unknown method lists the choices
        return v

    @model_validator(mode="after")
    def _coherent(self) -> SweepConfig:
        n = len(self.metrics)
        if n == 0:
            raise ValueError("metric: give at least one metric")
        if len({m.name for m in self.metrics}) != n:
            raise ValueError("metric: each metric may appear once")
        meta = SAMPLERS.entry(self.method).meta
        least = int(meta.get("min_objectives", 1))
        if n < least:
            raise ValueError(
                f"method {self.method} is multi-objective: give a list of {least} or more metrics"
            )
        if n > 1 and self.trial_pruner is not None and self.trial_pruner.name != "none":
            raise ValueError(
                "trial_pruner: Optuna cannot prune multi-objective studies; drop the "
                "trial_pruner section or optimise one metric"
            )
        if meta.get("enumerates"):
            ranged = [k for k, p in self.parameters.items() if p.min is not None]
            if ranged:
                raise ValueError(
                    f"method {self.method} needs values: [...] for every parameter; "
                    f"{', '.join(ranged)} gives a range"
                )
        return self

    def load_recipe(self, base: Path | None = None) -> Recipe:
        """The sweep's recipe (a path relative to the config file, or a shipped name)."""
        return load_recipe(_relative(self.recipe, base))

    def check(self, recipe: Recipe) -> None:
        """Every parameter names a recipe key, and its values make a valid recipe."""
        for key, spec in self.parameters.items():
            samples = spec.values if spec.values is not None else [spec.example()]
            if spec.min is not None:
                samples = [spec.min, spec.max]
            for value in samples:
                if spec.is_int and value is not None:
                    value = int(value)
                try:
                    recipe.with_params({key: value})
                except ConfigError as exc:
                    raise ConfigError(f"parameters.{key}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _relative(value: str, base: Path | None) -> str:
    if base is None or Path(value).is_absolute():
        return value
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def load_sweep(source: str | Path | dict[str, Any]) -> tuple[SweepConfig, Path | None]:
    """Load and validate a sweep config from a YAML file or a dict.

    Returns:
        ``(config, folder of the file)``; relative ``recipe``/``model``/``reference``
        paths are resolved against that folder first.

    Raises:
        ConfigError: a missing file, bad YAML, or an invalid key or value (one line).

    Example:
        >>> cfg, _ = load_sweep({"name": "s", "metric": "latency_ms", "recipe": "r.yaml",
        ...     "model": "runs/m", "parameters": {"s1.sparsity": {"min": 0, "max": 0.9}}})
        >>> cfg.method, cfg.directions
        ('bayes', ['minimize'])
    """
    tree, file = read_mapping(
        source, what="sweep config", hint="name, method, metric, recipe, model, parameters"
    )
    base = file.resolve().parent if file is not None else None
    return load_validated(SweepConfig, tree, what="sweep config", where=file), base

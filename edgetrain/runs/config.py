"""Run configuration: a validated YAML recipe plus command-line overrides.

A recipe names registry entries only (data set, model, optimizer, scheduler,
callbacks); every option is checked against the entry's signature, so a typo gives one
line naming the key and the valid choices.

Example recipe::

    name: digits-pretrain
    epochs: 10
    data: {name: digits-32, options: {channels: 1}, batch_size: 64}
    model: {name: vgg_small, options: {in_channels: 1, num_classes: 10}}
    optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
    scheduler: {name: onecycle}

Instead of a scheduler, an LR controller (a callback setting the rate every step, such
as ``actcool`` from :mod:`edgetrain.diagnostics`) can be named: ``lr_control: actcool``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgetrain._callables import import_callable
from edgetrain._yaml import YAMLError, safe_load
from edgetrain.configs import NamedConfig, StrictConfig, load_validated, read_mapping
from edgetrain.data import DATASETS, SHIFTS
from edgetrain.data.spec import is_data_spec
from edgetrain.data.transforms import AUGMENTATIONS
from edgetrain.engine.callbacks.registry import CALLBACKS, LR_CONTROLLERS
from edgetrain.engine.optim import OPTIMIZERS, SCHEDULER_ARGS, SCHEDULERS
from edgetrain.errors import ConfigError
from edgetrain.models import resolve_model
from edgetrain.prune.grow import GROW_OPS
from edgetrain.recipes import RECIPES
from edgetrain.registry import Registry, check_kwargs

__all__ = [
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "apply_overrides",
    "load_config",
]


def _check_registered(registry: Registry[Any], name: str) -> str:
    registry.entry(name)  # raises UnknownNameError listing the choices
    return name


class _Strict(StrictConfig):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _named(registry: Registry[Any], value: NamedConfig, skip: tuple[str, ...] = ()) -> NamedConfig:
    entry = registry.entry(value.name)
    check_kwargs(entry.fn, value.options, f"{registry.kind} '{value.name}'", reserved=skip)
    return value


class DataConfig(_Strict):
    """Which data set, how it is shifted/augmented and batched."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "test"
    shift: str | None = None
    augment: list[str | dict[str, Any]] = Field(default_factory=list)
    # Per process: under torchrun each of N processes takes batch_size samples a step
    # (a global batch of N x batch_size); global_batch_size is divided across them.
    batch_size: int = Field(64, ge=1)
    global_batch_size: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_batch_size(self) -> DataConfig:
        if self.global_batch_size is not None and "batch_size" in self.model_fields_set:
            raise ValueError(
                "give batch_size (per process) or global_batch_size (divided across the "
                "processes), not both"
            )
        return self

    def process_batch_size(self, world_size: int) -> int:
        """The batch one of ``world_size`` processes takes per step."""
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size % world_size:
            raise ConfigError(
                f"data.global_batch_size {self.global_batch_size} does not divide across "
                f"{world_size} processes; give a multiple of {world_size}"
            )
        return self.global_batch_size // world_size

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if is_data_spec(v):  # the user's own: recorded by absolute path
            return import_callable(v, "data-set spec").text
        return _check_registered(DATASETS, v)

    @field_validator("shift")
    @classmethod
    def _shift(cls, v: str | None) -> str | None:
        return v if v is None else _check_registered(SHIFTS, v)

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for item in v:
            if isinstance(item, str):
                _check_registered(AUGMENTATIONS, item)
            else:
                options = dict(item)
                if "name" not in options:
                    raise ValueError("each augment entry needs a 'name'")
                entry = AUGMENTATIONS.entry(options.pop("name"))
                check_kwargs(entry.fn, options, f"augmentation '{entry.name}'")
        return v

    @model_validator(mode="after")
    def _options(self) -> DataConfig:
        if is_data_spec(self.name):
            fn = import_callable(self.name, "data-set spec").fn
            check_kwargs(fn, self.options, f"data set '{self.name}'")
            return self
        entry = DATASETS.entry(self.name)
        check_kwargs(entry.fn, self.options, f"data set '{self.name}'", reserved=("split",))
        # The user's files by absolute path: the run reopens from any folder.
        for key in entry.meta.get("paths", ()):
            value = self.options.get(key)
            if value is not None and not Path(str(value)).is_absolute():
                self.options[key] = str(Path(str(value)).expanduser().resolve())
        return self


class ModelConfig(_Strict):
    """Which model (a zoo name, ``file.py:fn`` or ``module:fn``), optional initial
    weights, growth operations, and layers to freeze.

    ``sha256`` is filled in for a file spec: the content hash of the file when the run
    was configured."""

    name: str
    sha256: str | None = None
    # The layers whose outputs are the model's outputs, when the traced forward cannot
    # tell (they are never pruned).
    output_layer: str | list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None
    init_exclude: list[str] = Field(default_factory=list)
    # Net2Net growth applied after loading init_from: [{op: widen, layer: conv2, width: 32}]
    grow: list[dict[str, Any]] = Field(default_factory=list)
    grow_init: Literal["net2net", "random"] = "net2net"
    freeze: list[str] = Field(default_factory=list)

    @field_validator("grow")
    @classmethod
    def _grow(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, op in enumerate(v):
            if str(op.get("op")) not in GROW_OPS:
                raise ValueError(
                    f"grow[{i}]: unknown op {op.get('op')!r}; choose one of: "
                    f"{', '.join(GROW_OPS.names())}"
                )
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # A file spec is recorded by its absolute path, so the run reopens from anywhere.
        return resolve_model(v).text

    @model_validator(mode="after")
    def _spec(self) -> ModelConfig:
        # ... and by its content hash, so reopening says when the file changed since.
        spec = resolve_model(self.name)
        spec.warn_if_changed(self.sha256)
        spec.check_options(self.options)
        if spec.sha256 != self.sha256:
            object.__setattr__(self, "sha256", spec.sha256)
        return self


class RunConfig(_Strict):
    """A whole training run, as written to ``config.yaml`` in the run directory."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    epochs: int = Field(ge=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)  # torch seeds are 64-bit
    deterministic: bool = False
    device: str = "auto"
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    data: DataConfig
    model: ModelConfig
    # The same default as the Trainer's: SGD, lr 0.01, momentum 0.9.
    optimizer: NamedConfig = Field(
        default_factory=lambda: NamedConfig(name="sgd", lr=0.01, momentum=0.9)
    )
    scheduler: NamedConfig | None = None
    lr_control: NamedConfig | None = None
    callbacks: list[NamedConfig] = Field(default_factory=list)
    checkpoint_every: int = Field(1, ge=1)
    # Under torchrun with a per-process batch the global batch grows with the processes:
    # "linear" multiplies the learning rate by their number, "sqrt" by its square root.
    lr_world_scaling: Literal["none", "linear", "sqrt"] = "none"
    full: dict[str, Any] = Field(default_factory=dict)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, v: Any) -> Any:
        # YAML and "--precision 32" read an unquoted 32 as a number
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_default_name(cls, v: Any) -> Any:
        # "--set optimizer.lr=0.5" on a recipe without an optimizer section tunes the default.
        return {"name": "sgd", **v} if isinstance(v, dict) and "name" not in v else v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: NamedConfig) -> NamedConfig:
        return _named(OPTIMIZERS, v, skip=("params",))

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: NamedConfig | None) -> NamedConfig | None:
        return v if v is None else _named(SCHEDULERS, v, skip=SCHEDULER_ARGS)

    @field_validator("callbacks")
    @classmethod
    def _callbacks(cls, v: list[NamedConfig]) -> list[NamedConfig]:
        return [_named(CALLBACKS, c) for c in v]

    @field_validator("lr_control", mode="before")
    @classmethod
    def _lr_control_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v  # "lr_control: actcool"

    @field_validator("lr_control")
    @classmethod
    def _lr_control(cls, v: NamedConfig | None) -> NamedConfig | None:
        return v if v is None else _named(LR_CONTROLLERS, v)

    @model_validator(mode="after")
    def _one_lr_policy(self) -> RunConfig:
        if self.lr_control is not None and self.scheduler is not None:
            raise ValueError(
                f"lr_control '{self.lr_control.name}' sets the learning rate every step and "
                f"cannot be combined with scheduler '{self.scheduler.name}'; remove the "
                "scheduler (--set scheduler=null)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``config.yaml`` (fully resolved: defaults written out)."""
        return self.model_dump(mode="json")


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config tree."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        try:
            value = safe_load(raw) if raw.strip() else None
        except YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    return tree


def load_config(
    source: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    full: bool = False,
    **typed: Any,
) -> RunConfig:
    """Validate a recipe (path or dict) with overrides into a :class:`RunConfig`.

    Args:
        source: a YAML path or an already-parsed mapping (not modified).
        overrides: ``["optimizer.lr=0.01", ...]``.
        full: apply the recipe's ``full:`` section (``dotted.key: value`` pairs), the
            long version of a scenario for users with more time or a GPU.
        **typed: typed overrides from CLI options (``epochs=3``); ``None`` values are ignored.

    Raises:
        ConfigError: one line naming the bad key or value and the valid choices.
    """
    file = None
    if isinstance(source, dict):
        tree = copy.deepcopy(source)
    else:
        tree, file = read_mapping(
            source, what="recipe", shipped=RECIPES, hint="name, epochs, data, model, ..."
        )
    if full:
        sizes = tree.get("full")
        if not isinstance(sizes, dict) or not sizes:
            raise ConfigError("this recipe has no 'full:' section; drop --full or add one")
        for key, value in sizes.items():
            _set_path(tree, str(key), value)
    apply_overrides(tree, list(overrides or []))
    for key, value in typed.items():
        if value is not None:
            _set_path(tree, key, value)
    return load_validated(RunConfig, tree, what="run config", where=file)

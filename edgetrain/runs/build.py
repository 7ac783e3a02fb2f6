"""Build the data, the model and a :class:`Trainer` from a :class:`RunConfig`.

Data and model come from their registries, then initial weights (with the pruned or
grown architecture they were saved in), growth operations and frozen layers;
optimizer, scheduler, callbacks and LR controller from the config.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from edgetrain import models
from edgetrain.cost import trace
from edgetrain.cost.tracer import Trace
from edgetrain.engine import CALLBACKS, LR_CONTROLLERS, Trainer, build_optimizer, build_scheduler
from edgetrain.engine.checkpoint import load_model_weights, load_weights, resolve_checkpoint
from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import ConfigError, EdgetrainError, one_line
from edgetrain.prune.grow import apply_grow_ops
from edgetrain.runs.config import RunConfig
from edgetrain.runs.data import build_data
from edgetrain.runs.reopen import restore_saved_architecture

__all__ = ["build_model", "build_run_model", "build_trainer"]


@contextlib.contextmanager
def _building(section: str) -> Iterator[None]:
    """Turn a constructor's ValueError/TypeError into a one-line error naming the section."""
    try:
        yield
    except EdgetrainError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{section}: {one_line(exc)}") from exc


def build_model(
    config: RunConfig,
    num_classes: int | None,
    input_shape: tuple[int, ...],
    load_init: bool = True,
    freeze: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The configured model; classes, channels and input size default from the data set.

    Args:
        config: the run config.
        num_classes: classes of the data set.
        input_shape: one sample's shape.
        load_init: load ``model.init_from`` (skipped on resume, where ``last.pt`` wins).
        freeze: apply ``model.freeze``.

    Returns:
        The model and its plain-data architecture ``{"name", "options"}``.
    """
    options = dict(config.model.options)
    params = inspect.signature(models.resolve_model(config.model.name).fn).parameters
    defaults = {"num_classes": num_classes, "in_channels": input_shape[0] if input_shape else None}
    if len(input_shape) == 3:
        defaults["input_size"] = input_shape[-1]
    elif len(input_shape) == 2:
        defaults["length"] = input_shape[-1]
    for key, value in defaults.items():
        if key in params and value is not None:
            options.setdefault(key, value)
    with _building(f"model '{config.model.name}'"):
        model = models.create(config.model.name, **options)
    if config.model.output_layer:
        _name_output_layer(model, config.model.output_layer)
    traced = _check_input(model, config.model.name, input_shape)
    init_arch: dict[str, Any] = {}
    if config.model.init_from and (load_init or Path(config.model.init_from).exists()):
        # On resume only the architecture is taken (pruned or grown); last.pt has weights.
        # Any weights file: an edgetrain checkpoint, a plain state_dict, {"state_dict": ...}.
        try:
            path = resolve_checkpoint(config.model.init_from, prefer="best")
        except EdgetrainError as exc:
            raise ConfigError(
                f"model.init_from: {exc}; train that run first, or point model.init_from at "
                "a run directory or weights file (--set model.init_from=runs/demo/NAME after "
                "'edgetrain demo')"
            ) from None
        state, init_arch = load_weights(path)
        exclude = tuple(n for n, _ in models.select_modules(model, config.model.init_exclude))
        restore_saved_architecture(model, {"model": state, "architecture": init_arch}, exclude)
        if load_init:
            load_model_weights(model, state, str(path), exclude)
    architecture: dict[str, Any] = {"name": config.model.name, "options": options}
    if config.model.sha256:  # a model file: reopening warns when it changed
        architecture["sha256"] = config.model.sha256
    if config.model.output_layer:
        architecture["output_layer"] = config.model.output_layer
    grown = [*init_arch.get("grown", []), *config.model.grow]
    if config.model.grow:
        with _building("model.grow"):
            apply_grow_ops(model, config.model.grow, init=config.model.grow_init)
    if grown:
        architecture["grown"] = grown
    if init_arch.get("pruned"):
        architecture.update(pruned=True, bypassed=init_arch.get("bypassed", []))
    if freeze and config.model.freeze:
        models.freeze(model, config.model.freeze)
    _check_classes(config, traced.output_shapes, num_classes)
    return model, architecture


def _check_classes(
    config: RunConfig, outputs: tuple[tuple[int, ...], ...], num_classes: int | None
) -> None:
    """A classifier needs an output per class of the data, and two classes at least."""
    if num_classes is None:
        return
    data = config.data.name
    if num_classes < 2:
        raise ConfigError(
            f"data set '{data}' has a single class; a classifier needs two or more (check "
            "the labels, or the split that holds them)"
        )
    if len(outputs) == 1 and len(outputs[0]) == 2 and outputs[0][1] < num_classes:
        raise ConfigError(
            f"model '{config.model.name}' gives {outputs[0][1]} outputs but data set '{data}' "
            f"has {num_classes} classes (labels 0-{num_classes - 1}); set "
            f"model.options.num_classes: {num_classes}"
        )


def _name_output_layer(model: torch.nn.Module, names: str | list[str]) -> None:
    """Record the model's output layers on it, where every technique looks for them."""
    for name in [names] if isinstance(names, str) else names:
        try:
            model.get_submodule(name)
        except AttributeError:
            layers = [n for n, _ in models.parameter_layers(model)]
            raise ConfigError(
                f"model.output_layer: the model has no layer '{name}'; its weight layers: "
                f"{', '.join(layers[-6:])}"
            ) from None
    setattr(model, "output_layer", names)  # noqa: B010 - a plain attribute on the module


def _check_input(model: torch.nn.Module, name: str, input_shape: tuple[int, ...]) -> Trace:
    """Trace one forward on the meta device, so a shape mismatch fails before training."""
    try:
        return trace(model, input_shape, batch_size=2)
    except EdgetrainError as exc:
        shape = "x".join(map(str, input_shape))
        cause = one_line(exc.__cause__) if exc.__cause__ else str(exc)
        raise ConfigError(
            f"model '{name}' cannot take the data's {shape} inputs ({cause}); "
            "set model.options to match the data set"
        ) from exc


def build_run_model(config: RunConfig) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model a run of ``config`` trains (architecture of ``model.init_from``, growth,
    options defaulted from the data; no weights loaded, nothing frozen) and the data's
    input shape: what the cost model should count for the run."""
    info = build_data(config.data, "test").info
    model, _ = build_model(config, info.num_classes, info.input_shape, False, freeze=False)
    return model, tuple(info.input_shape)


def _scaled_lr(config: RunConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The optimizer options with the learning rate scaled to the number of processes
    (``lr_world_scaling``); unchanged for one process or ``none``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.lr_world_scaling == "none" or world == 1:
        return options
    if "lr" not in options:
        raise ConfigError(
            f"lr_world_scaling '{config.lr_world_scaling}' scales optimizer.lr, which the "
            "recipe does not give; set optimizer.lr"
        )
    factor = world if config.lr_world_scaling == "linear" else world**0.5
    return {**options, "lr": float(options["lr"]) * factor}


def _process_batch(config: RunConfig) -> int:
    """This process's batch; under torchrun, says what the global batch is."""
    d = config.data
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = d.process_batch_size(world)
    said = d.global_batch_size is not None or config.lr_world_scaling != "none"
    if world > 1 and not said and int(os.environ.get("RANK", "0")) == 0:
        warnings.warn(
            f"data.batch_size {d.batch_size} is per process: {world} processes train with a "
            f"global batch of {world * d.batch_size} at the same learning rate; set "
            "data.global_batch_size to fix the global batch, or lr_world_scaling to scale "
            "the learning rate",
            stacklevel=2,
        )
    return batch


def build_trainer(
    config: RunConfig, run_dir: RunDirectory | None, progress: bool = True, load_init: bool = True
) -> Trainer:
    """A ready :class:`Trainer` for ``config`` writing to ``run_dir`` (None: nothing)."""
    d = config.data
    train = build_data(d, "train", augment=True)
    test = build_data(d, "test")
    info = train.info
    torch.manual_seed(config.seed)  # model initialisation depends on the run seed only
    model, architecture = build_model(config, info.num_classes, info.input_shape, load_init)
    opt_cfg, sched_cfg = config.optimizer, config.scheduler
    with _building("callbacks"):
        callbacks = [CALLBACKS.create(c.name, **c.options) for c in config.callbacks]
    if config.lr_control is not None:  # last: it sets the rate after the gradient hooks
        control = config.lr_control
        with _building(f"lr_control '{control.name}'"):
            callbacks.append(LR_CONTROLLERS.create(control.name, **control.options))

    options = _scaled_lr(config, dict(opt_cfg.options))

    def optimizer(params: Any) -> torch.optim.Optimizer:  # params: tensors or groups
        with _building(f"optimizer '{opt_cfg.name}'"):
            return build_optimizer(params, opt_cfg.name, **options)

    def scheduler(opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        assert sched_cfg is not None  # only passed to the Trainer with a scheduler section
        with _building(f"scheduler '{sched_cfg.name}'"):
            return build_scheduler(
                opt, sched_cfg.name, config.epochs, steps_per_epoch, **sched_cfg.options
            )

    return Trainer(
        model,
        train,
        val_data=test,
        optimizer=optimizer,
        scheduler=None if sched_cfg is None else scheduler,
        batch_size=_process_batch(config),
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        callbacks=callbacks,
        run_dir=run_dir,
        device=config.device,
        seed=config.seed,
        deterministic=config.deterministic,
        precision=config.precision,
        progress=progress,
        checkpoint_every=config.checkpoint_every,
        architecture={**architecture, "data": info.name, "input_shape": list(info.input_shape)},
    )

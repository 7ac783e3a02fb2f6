"""Build a :class:`Trainer` from a :class:`RunConfig` and run it in a run directory.

This is what ``edgetrain train`` calls: data and model from their registries, initial
weights, frozen layers, optimizer/scheduler/callbacks from the config, a fresh or
resumed run directory.
"""

from __future__ import annotations

import contextlib
import inspect
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgetrain import data as data_sets
from edgetrain import models
from edgetrain.cost import trace
from edgetrain.engine.callbacks.registry import CALLBACKS
from edgetrain.engine.checkpoint import (
    load_checkpoint,
    load_model_weights,
    resolve_checkpoint,
    restore_saved_architecture,
)
from edgetrain.engine.config import LR_CONTROLLERS, RunConfig, load_config
from edgetrain.engine.optim import SCHEDULERS, build_optimizer, build_scheduler
from edgetrain.engine.rundir import RunDirectory
from edgetrain.engine.trainer import Trainer
from edgetrain.errors import CheckpointError, ConfigError, EdgetrainError, one_line
from edgetrain.models.surgery import apply_grow_ops

__all__ = [
    "RunResult",
    "build_model",
    "build_trainer",
    "load_trained_model",
    "resume_run",
    "start_run",
]


@dataclass
class RunResult:
    """Where a run was written and what it achieved (``is_main``: this process wrote it)."""

    run_dir: RunDirectory
    config: RunConfig
    summary: dict[str, Any]
    is_main: bool = True


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
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The configured model; classes, channels and input size default from the data set.

    Args:
        config: the run config.
        num_classes: classes of the data set.
        input_shape: one sample's shape.
        load_init: load ``model.init_from`` (skipped on resume, where ``last.pt`` wins).

    Returns:
        The model and its plain-data architecture ``{"name", "options"}``.
    """
    options = dict(config.model.options)
    params = inspect.signature(models.MODELS.entry(config.model.name).fn).parameters
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
    _check_input(model, config.model.name, input_shape)
    init_arch: dict[str, Any] = {}
    if config.model.init_from and (load_init or Path(config.model.init_from).exists()):
        # On resume only the architecture is taken (pruned or grown); last.pt has weights.
        path = resolve_checkpoint(config.model.init_from, prefer="best")
        ckpt = load_checkpoint(path)
        exclude = tuple(n for n, _ in models.select_modules(model, config.model.init_exclude))
        restore_saved_architecture(model, ckpt, exclude)
        if load_init:
            load_model_weights(model, ckpt["model"], str(path), exclude)
        init_arch = ckpt.get("architecture") or {}
    architecture: dict[str, Any] = {"name": config.model.name, "options": options}
    grown = [*init_arch.get("grown", []), *config.model.grow]
    if config.model.grow:
        with _building("model.grow"):
            apply_grow_ops(model, config.model.grow, init=config.model.grow_init)
    if grown:
        architecture["grown"] = grown
    if init_arch.get("pruned"):
        architecture.update(pruned=True, bypassed=init_arch.get("bypassed", []))
    if config.model.freeze:
        models.freeze(model, config.model.freeze)
    return model, architecture


def _check_input(model: torch.nn.Module, name: str, input_shape: tuple[int, ...]) -> None:
    """Trace one forward on the meta device, so a shape mismatch fails before training."""
    try:
        trace(model, input_shape, batch_size=2)
    except EdgetrainError as exc:
        shape = "x".join(map(str, input_shape))
        cause = one_line(exc.__cause__) if exc.__cause__ else str(exc)
        raise ConfigError(
            f"model '{name}' cannot take the data's {shape} inputs ({cause}); "
            "set model.options to match the data set"
        ) from exc


def build_trainer(
    config: RunConfig, run_dir: RunDirectory | None, progress: bool = True, load_init: bool = True
) -> Trainer:
    """A ready :class:`Trainer` for ``config`` writing to ``run_dir`` (None: nothing)."""
    d = config.data
    train = data_sets.create(
        d.name, d.train_split, shift=d.shift, augment=d.augment or None, **d.options
    )
    test = data_sets.create(d.name, d.eval_split, shift=d.shift, **d.options)
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

    def optimizer(params: Any) -> torch.optim.Optimizer:  # params: tensors or groups
        with _building(f"optimizer '{opt_cfg.name}'"):
            return build_optimizer(params, opt_cfg.name, **opt_cfg.options)

    def scheduler(opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
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
        batch_size=d.batch_size,
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


def start_run(
    config: RunConfig,
    runs_root: str | Path = "runs",
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train ``config`` into ``<runs_root>/<config.name>``.

    Everything (data, model, optimizer) is built before the folder is touched, so bad
    input never leaves a run directory behind, and ``overwrite`` never loses an old run
    to a new one that cannot start.

    Raises:
        EdgetrainError: when the run directory exists and ``overwrite`` is False.
    """
    run_dir = RunDirectory(Path(runs_root) / config.name)
    if run_dir.path.exists() and any(run_dir.path.iterdir()) and not overwrite:
        raise EdgetrainError(
            f"run directory '{run_dir.path}' exists; continue it with --resume "
            f"{run_dir.path}, or pass --overwrite or another --name"
        )
    trainer = build_trainer(config, None, progress)
    if trainer.is_main:
        if run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        trainer.attach_run_dir(run_dir)
        run_dir.write_config(config.to_dict())
    try:
        trainer.fit(config.epochs)
    except EdgetrainError:
        # A callback refusing its settings at fit start: leave no run folder behind.
        if trainer.is_main and trainer.state.epoch == 0 and run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        raise
    return RunResult(run_dir, config, run_dir.read_summary(), trainer.is_main)


def resume_run(path: str | Path, epochs: int | None = None, progress: bool = True) -> RunResult:
    """Continue the run in ``path`` from its last finished epoch (same config, same seed)."""
    run_dir = RunDirectory(path)
    config = load_config(run_dir.read_config())
    if run_dir.read_summary().get("status") == "stopped" and epochs is None:
        raise ConfigError(
            f"run '{run_dir.path}' was stopped early by a callback and is finished; "
            "pass --epochs to train further anyway"
        )
    if epochs is not None and epochs != config.epochs:
        sched = config.scheduler
        if sched is not None and SCHEDULERS.entry(sched.name).meta.get("length_dependent"):
            raise ConfigError(
                f"the '{sched.name}' schedule of '{run_dir.path}' was planned for "
                f"{config.epochs} epochs and cannot be stretched to {epochs}; resume without "
                "--epochs, or start a new run with model.init_from set to this run"
            )
        config = load_config(config.to_dict(), epochs=epochs)
    last = run_dir.checkpoints / "last.pt"
    trainer = build_trainer(config, None, progress, load_init=not last.is_file())
    if trainer.is_main:
        trainer.attach_run_dir(run_dir)  # before loading: its writers restore their state too
        run_dir.write_config(config.to_dict())
    if last.is_file():
        trainer.load_checkpoint(last)
    trainer.fit(config.epochs)
    return RunResult(run_dir, config, run_dir.read_summary(), trainer.is_main)


def load_trained_model(path: str | Path, prefer: str = "best") -> torch.nn.Module:
    """Rebuild a trained zoo model from a run directory (or checkpoint file) alone.

    Args:
        path: a run directory (``checkpoints/<prefer>.pt``, else ``last.pt``) or a file.
        prefer: ``"best"`` or ``"last"``.

    Example:
        >>> model = load_trained_model("runs/digits-pretrain")  # doctest: +SKIP
    """
    file = resolve_checkpoint(path, prefer=prefer)
    ckpt = load_checkpoint(file)
    arch = ckpt.get("architecture") or {}
    if "name" not in arch:
        raise CheckpointError(
            f"checkpoint '{file}' records no architecture; build the model yourself and "
            "load its weights with edgetrain.engine.load_model_weights"
        )
    model = models.create(arch["name"], **arch.get("options", {}))
    restore_saved_architecture(model, ckpt)
    load_model_weights(model, ckpt["model"], str(file))
    return model.eval()

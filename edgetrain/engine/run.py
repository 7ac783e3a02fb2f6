"""Build a :class:`Trainer` from a :class:`RunConfig` and run it in a run directory.

This is what ``edgetrain train`` calls: data and model from their registries, initial
weights, frozen layers, optimizer/scheduler/callbacks from the config, a fresh or
resumed run directory.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgetrain import data as data_sets
from edgetrain import models
from edgetrain.engine.callbacks.registry import CALLBACKS
from edgetrain.engine.checkpoint import load_checkpoint, load_model_weights, resolve_checkpoint
from edgetrain.engine.config import RunConfig, load_config
from edgetrain.engine.optim import SCHEDULERS, build_optimizer, build_scheduler
from edgetrain.engine.rundir import RunDirectory
from edgetrain.engine.trainer import Trainer
from edgetrain.errors import CheckpointError, ConfigError, EdgetrainError

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
    """Where a run was written and what it achieved."""

    run_dir: RunDirectory
    config: RunConfig
    summary: dict[str, Any]


def build_model(config: RunConfig, num_classes: int | None, input_shape: tuple[int, ...]):
    """The configured model; ``num_classes``/channels default from the data set."""
    options = dict(config.model.options)
    entry = models.MODELS.entry(config.model.name)
    params = inspect.signature(entry.fn).parameters
    if "num_classes" in params and num_classes is not None:
        options.setdefault("num_classes", num_classes)
    if "in_channels" in params and input_shape:
        options.setdefault("in_channels", input_shape[0])
    model = models.create(config.model.name, **options)
    if config.model.init_from:
        path = resolve_checkpoint(config.model.init_from, prefer="best")
        ckpt = load_checkpoint(path)
        load_model_weights(model, ckpt["model"], str(path), tuple(config.model.init_exclude))
    if config.model.freeze:
        models.freeze(model, config.model.freeze)
    return model, {"name": config.model.name, "options": options}


def build_trainer(
    config: RunConfig, run_dir: RunDirectory | None, progress: bool = True
) -> Trainer:
    """A ready :class:`Trainer` for ``config`` writing to ``run_dir``."""
    d = config.data
    train = data_sets.create(
        d.name, d.train_split, shift=d.shift, augment=d.augment or None, **d.options
    )
    test = data_sets.create(d.name, d.eval_split, shift=d.shift, **d.options)
    info = train.info
    torch.manual_seed(config.seed)  # model initialisation depends on the run seed only
    model, architecture = build_model(config, info.num_classes, info.input_shape)
    steps = -(-len(train) // d.batch_size)
    opt_cfg, sched_cfg = config.optimizer, config.scheduler
    callbacks = [CALLBACKS.create(c.name, **c.options) for c in config.callbacks]
    return Trainer(
        model,
        train,
        val_data=test,
        optimizer=lambda params: build_optimizer(params, opt_cfg.name, **opt_cfg.options),
        scheduler=None
        if sched_cfg is None
        else (
            lambda opt: build_scheduler(
                opt, sched_cfg.name, config.epochs, steps, **sched_cfg.options
            )
        ),
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        callbacks=callbacks,
        run_dir=run_dir,
        device=config.device,
        seed=config.seed,
        deterministic=config.deterministic,
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

    Raises:
        EdgetrainError: when the run directory exists and ``overwrite`` is False.
    """
    run_dir = RunDirectory(Path(runs_root) / config.name)
    if run_dir.path.exists() and any(run_dir.path.iterdir()):
        if not overwrite:
            raise EdgetrainError(
                f"run directory '{run_dir.path}' exists; continue it with --resume "
                f"{run_dir.path}, or pass --overwrite or another --name"
            )
        shutil.rmtree(run_dir.path)
    trainer = build_trainer(config, None, progress)  # validate everything before writing
    trainer.attach_run_dir(run_dir)
    run_dir.write_config(config.to_dict())
    trainer.fit(config.epochs)
    return RunResult(run_dir, config, run_dir.read_summary())


def resume_run(path: str | Path, epochs: int | None = None, progress: bool = True) -> RunResult:
    """Continue the run in ``path`` from its last finished epoch (same config, same seed)."""
    run_dir = RunDirectory(path)
    config = load_config(run_dir.read_config())
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
    trainer = build_trainer(config, None, progress)
    trainer.attach_run_dir(run_dir)
    if last.is_file():
        trainer.load_checkpoint(last)
    if epochs is not None:
        run_dir.write_config(config.to_dict())
    trainer.fit(config.epochs)
    return RunResult(run_dir, config, run_dir.read_summary())


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
    load_model_weights(model, ckpt["model"], str(file))
    return model.eval()

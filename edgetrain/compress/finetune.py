"""Fine-tune a compressed model with the engine, as an ordinary training run.

The compressed model is saved as a checkpoint whose architecture record says
``pruned: true`` (widths are read back from the weights' shapes), and the fine-tuning
run is the trained run's config with that checkpoint as ``model.init_from``, the
recipe's epochs, learning rate, optimizer and schedule, and no technique callbacks. So
the fine-tuning run directory is a normal one: it resumes with ``edgetrain train
--resume``, reports like any run, and its checkpoints reload with
:func:`~edgetrain.engine.load_trained_model`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgetrain.compress.recipe import FinetuneSpec
from edgetrain.engine.callback import Callback
from edgetrain.engine.checkpoint import FORMAT, atomic_save
from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import ConfigError
from edgetrain.runs import RunConfig, build_trainer, load_config

__all__ = [
    "COMPRESSED_CHECKPOINT",
    "FinetuneResult",
    "finetune",
    "finetune_config",
    "save_compressed",
]

# Where a compressed model lies in its fine-tuning run directory.
COMPRESSED_CHECKPOINT = "checkpoints/compressed.pt"


@dataclass
class FinetuneResult:
    """The fine-tuned model (last epoch), the per-epoch records and the run directory."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def final_top1(self) -> float | None:
        return self.history[-1].get("val_top1") if self.history else None

    @property
    def best_top1(self) -> float | None:
        values = [r["val_top1"] for r in self.history if "val_top1" in r]
        return max(values) if values else None


def save_compressed(model: nn.Module, path: str | Path, architecture: dict[str, Any]) -> Path:
    """Save a compressed model as an edgetrain checkpoint that reloads alone.

    Args:
        model: the compressed model.
        path: the ``.pt`` file to write (atomically).
        architecture: the original checkpoint's architecture record (zoo name, options,
            growth history); ``pruned: true`` is added, so loading reads the widths from
            the weights' shapes.
    """
    arch = {**architecture, "pruned": True, "bypassed": list(architecture.get("bypassed", []))}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_save({"format": FORMAT, "architecture": arch, "model": state}, path)


def finetune_config(
    config: RunConfig, settings: FinetuneSpec, init_from: str | Path, name: str | None = None
) -> RunConfig:
    """The fine-tuning run's config: ``config`` (the trained run's) starting from
    ``init_from``, with the recipe's settings and without technique callbacks."""
    if settings.epochs < 1:
        raise ConfigError("finetune.epochs is 0: there is nothing to fine-tune")
    tree = config.to_dict()
    tree["name"] = name or f"{config.name}-compressed"
    tree["epochs"] = settings.epochs
    tree["callbacks"] = []
    tree["full"] = {}
    tree["model"].update(init_from=str(init_from), init_exclude=[], grow=[], freeze=[])
    optimizer = settings.optimizer.model_dump() if settings.optimizer else tree["optimizer"]
    tree["optimizer"] = {**optimizer, "lr": settings.lr}
    tree["scheduler"] = settings.scheduler.model_dump() if settings.scheduler else None
    if settings.batch_size is not None:
        tree["data"]["batch_size"] = settings.batch_size
    return load_config(tree)


def finetune(
    model: nn.Module,
    settings: FinetuneSpec,
    config: RunConfig,
    *,
    architecture: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """Fine-tune a compressed ``model`` with the engine's Trainer.

    Args:
        model: the compressed model (not changed: training runs on a copy rebuilt from
            its checkpoint, which proves the checkpoint reloads).
        settings: the recipe's ``finetune`` section.
        config: the trained run's config (data, model, seed, device, batch size).
        architecture: the trained checkpoint's architecture record (default: the zoo
            name and options of ``config``).
        run_dir: write a run directory here (``checkpoints/compressed.pt`` holds the
            model before fine-tuning); None trains without writing anything.
        name: the run's name (default ``<config.name>-compressed``).
        progress: show a progress bar.
        callbacks: more callbacks for the Trainer (a sweep's trial reporter).

    Example:
        >>> result = finetune(net, recipe.finetune, run.config, run_dir="runs/c")  # doctest: +SKIP
    """
    arch = architecture or {"name": config.model.name, "options": dict(config.model.options)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = RunDirectory(run_dir) if run_dir is not None else None
        ckpt = (folder.path if folder else Path(tmp)) / COMPRESSED_CHECKPOINT
        save_compressed(model, ckpt, arch)
        cfg = finetune_config(config, settings, ckpt, name)
        trainer = build_trainer(cfg, None, progress)
    trainer.callbacks.extend(callbacks)
    if folder is not None and trainer.is_main:
        trainer.attach_run_dir(folder)
        folder.write_config(cfg.to_dict())
    state = trainer.fit(cfg.epochs)
    return FinetuneResult(
        trainer.model.eval(), list(state.history), folder.path if folder else None
    )

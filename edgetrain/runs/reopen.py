"""The one path that reopens a run: its config, its architecture (pruned or grown) and
its weights, from a run directory or a checkpoint file alone.

Every command that starts from a trained run (compress, export, grow, report, sweeps)
comes through here, so a pruned run reopens pruned everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgetrain import models
from edgetrain.data import ArrayDataset
from edgetrain.engine.checkpoint import (
    in_modules,
    load_checkpoint,
    load_model_weights,
    resolve_checkpoint,
)
from edgetrain.engine.rundir import RunDirectory
from edgetrain.errors import CheckpointError, ConfigError
from edgetrain.models.surgery import restore_architecture
from edgetrain.prune.grow import apply_grow_ops
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.data import build_data

__all__ = [
    "TrainedRun",
    "load_trained_model",
    "load_trained_run",
    "open_run_config",
    "restore_saved_architecture",
]


def restore_saved_architecture(
    model: nn.Module,
    ckpt: dict[str, Any],
    exclude: tuple[str, ...] = (),
    replay_growth: bool = True,
) -> bool:
    """Reshape a freshly built ``model`` into the architecture a checkpoint records when it
    was grown (``architecture.grown``: operations replayed) or pruned
    (``architecture.pruned``: widths from the weights, bypassed blocks), in place, before
    its weights are loaded.

    Args:
        model: the model as built from its zoo entry.
        ckpt: a loaded checkpoint.
        exclude: modules whose saved shapes are ignored (e.g. a new classifier).
        replay_growth: replay the growth operations (False when ``model`` was built with
            them already, as when a grown run resumes).

    Returns:
        Whether ``model`` was reshaped.
    """
    arch = ckpt.get("architecture") or {}
    grown = arch.get("grown") or []
    if not arch.get("pruned") and not grown:
        return False
    if grown and replay_growth:
        apply_grow_ops(model, grown, init="random")  # values come from the checkpoint
    state = ckpt["model"]
    if exclude:
        state = {k: v for k, v in state.items() if not in_modules(k, exclude)}
    restore_architecture(model, state, arch.get("bypassed", ()))
    return True


COMPRESSION_RECIPE = "recipe.yaml"
"""What a compression output folder holds from its start."""
COMPRESSION_REPORT = "compress.json"
"""What it holds only once the compression finished (written last)."""


def check_not_partial(run_dir: str | Path, what: str) -> None:
    """Refuse a compression output whose compression was killed before it finished: its
    fine-tuning checkpoints exist, but its report and files do not."""
    folder = Path(run_dir)
    if (folder / COMPRESSION_RECIPE).is_file() and not (folder / COMPRESSION_REPORT).is_file():
        raise ConfigError(
            f"'{folder}' is a compression that did not finish (no {COMPRESSION_REPORT}); "
            f"{what} would take it for a complete one: run edgetrain compress again with "
            "--overwrite"
        )


def load_trained_model(path: str | Path, prefer: str = "best") -> nn.Module:
    """Rebuild a trained zoo model from a run directory (or checkpoint file) alone.

    Args:
        path: a run directory (``checkpoints/<prefer>.pt``, else ``last.pt``) or a file.
        prefer: ``"best"`` or ``"last"``.

    Example:
        >>> model = load_trained_model("runs/digits-pretrain")  # doctest: +SKIP
    """
    file = resolve_checkpoint(path, prefer=prefer)
    if file.parent.name == "checkpoints":
        check_not_partial(file.parent.parent, "using its weights")
    return _model_from_checkpoint(load_checkpoint(file), file)


def _model_from_checkpoint(ckpt: dict[str, Any], file: Path) -> nn.Module:
    arch = ckpt.get("architecture") or {}
    if "name" not in arch:
        raise CheckpointError(
            f"checkpoint '{file}' records no architecture; build the model yourself and "
            "load its weights with edgetrain.engine.load_model_weights"
        )
    spec = models.resolve_model(arch["name"])
    spec.warn_if_changed(arch.get("sha256"))
    model = spec.build(**arch.get("options", {}))
    restore_saved_architecture(model, ckpt)
    load_model_weights(model, ckpt["model"], str(file))
    if arch.get("output_layer"):
        setattr(model, "output_layer", arch["output_layer"])  # noqa: B010
    if not getattr(model, "input_shape", None) and arch.get("input_shape"):
        # A model of the user's own records no input shape; the run's data does, and
        # export, compression and the cost model read it where zoo models keep theirs.
        setattr(model, "input_shape", tuple(arch["input_shape"]))  # noqa: B010
    return model.eval()


def open_run_config(path: str | Path) -> RunConfig:
    """The validated config of the run directory ``path``.

    Raises:
        ConfigError: ``path`` is not a run directory, naming what to pass instead.
    """
    run_dir = RunDirectory(path)
    if not run_dir.config_path.is_file():
        raise ConfigError(
            f"'{run_dir.path}' is not a run directory (no config.yaml); "
            "pass a folder written by 'edgetrain train'"
        )
    return load_config(run_dir.read_config())


@dataclass
class TrainedRun:
    """A trained model with what produced it.

    Attributes:
        model: the model in eval mode, weights loaded.
        config: the run's resolved config.
        architecture: the checkpoint's architecture record (zoo name and options, plus
            growth or pruning history), which compressed checkpoints carry on.
        checkpoint: the checkpoint file the weights came from.
        run_dir: the run directory.
    """

    model: nn.Module
    config: RunConfig
    architecture: dict[str, Any]
    checkpoint: Path
    run_dir: Path

    def test_data(self) -> ArrayDataset:
        """The run's evaluation split (same data set, options and shift as in training)."""
        return build_data(self.config.data, "test")

    def train_data(self) -> ArrayDataset:
        """The run's training split without augmentation (calibration batches)."""
        return build_data(self.config.data, "train")


def load_trained_run(
    path: str | Path, prefer: str = "best", data: dict[str, Any] | None = None
) -> TrainedRun:
    """Load a run directory (``checkpoints/<prefer>.pt``) or a checkpoint inside one.

    Args:
        path: the run directory or a checkpoint in it.
        prefer: ``"best"`` or ``"last"``.
        data: the data section (``{"name": ..., "options": {...}}``) for a run trained
            from Python, whose ``config.yaml`` is the Trainer's description and names
            no data set; ignored for runs made from a recipe.

    Example:
        >>> run = load_trained_run("runs/digits-resnet20")  # doctest: +SKIP
    """
    file = resolve_checkpoint(path, prefer=prefer)
    run_dir = Path(path) if Path(path).is_dir() else file.parent.parent
    check_not_partial(run_dir, "using its weights")
    ckpt = load_checkpoint(file)
    described = _trainer_description(run_dir)
    if described is not None:
        config = _python_run_config(run_dir, described, ckpt, data)
    else:
        config = open_run_config(run_dir)
    model = _model_from_checkpoint(ckpt, file)
    return TrainedRun(model, config, dict(ckpt.get("architecture") or {}), file, run_dir)


def _trainer_description(run_dir: Path) -> dict[str, Any] | None:
    """The ``config.yaml`` of a run trained from Python (the Trainer's description)."""
    folder = RunDirectory(run_dir)
    if not folder.config_path.is_file():
        return None
    tree = folder.read_config()
    return tree if tree.get("written_by") == "Trainer" else None


def _python_run_config(
    run_dir: Path, described: dict[str, Any], ckpt: dict[str, Any], data: dict[str, Any] | None
) -> RunConfig:
    """A run config for a run trained from Python: its model from the checkpoint, its
    data as given, its seed and batch size from the Trainer's description."""
    arch = ckpt.get("architecture") or {}
    if data is None:
        raise ConfigError(
            f"'{run_dir}' was trained from Python and its config.yaml names no data set; "
            "name it (--data NAME, --data-option key=value)"
        )
    if "name" not in arch:
        raise ConfigError(
            f"'{run_dir}' records no model architecture; build the model with "
            "edgetrain.models.create (or pass architecture= to the Trainer)"
        )
    tree = {
        "name": str(described.get("name") or run_dir.name),
        "epochs": int(described.get("epochs") or 1),
        "seed": int(described.get("seed") or 0),
        "data": {**data, "batch_size": int(described.get("batch_size") or 64)},
        "model": {"name": arch["name"], "options": dict(arch.get("options") or {})},
    }
    return load_config(tree)

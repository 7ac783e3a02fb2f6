"""The MorphNet loop as runs: one run per round from a recipe, each trained with the
regulariser on the widths the previous round proposed, and (optionally) the final
proposal trained from scratch without it. Resumable: a finished round run is reused.

Example:
    >>> result = run_morphnet(load_config("digits-resnet20"), budget=2e6)  # doctest: +SKIP
    >>> result["rounds"][-1]["next_widths"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetrain.engine import RunDirectory
from edgetrain.engine.rundir import atomic_write_text
from edgetrain.runs.config import RunConfig, load_config
from edgetrain.runs.train import start_run

__all__ = ["run_morphnet"]


def _train(
    config: RunConfig,
    name: str,
    callbacks: list[dict[str, Any]],
    root: Path,
    overwrite: bool,
    progress: bool,
    epochs: int | None = None,
) -> Path:
    tree = config.to_dict()
    tree["name"] = name
    tree["callbacks"] = [*tree["callbacks"], *callbacks]
    if epochs is not None:
        tree["epochs"] = epochs
    cfg = load_config(tree)
    folder = RunDirectory(root / name)
    summary = folder.read_summary()
    done = summary.get("status") == "completed" and summary.get("epochs_finished") == cfg.epochs
    if overwrite or not done:
        start_run(cfg, root, overwrite=True, progress=progress)
    return folder.path


def _best_top1(run: Path) -> float | None:
    best = RunDirectory(run).read_summary().get("best") or {}
    value = best.get("val_top1")
    return None if value is None else float(value)


def run_morphnet(
    config: RunConfig,
    budget: float,
    cost: str = "flops",
    strength: float = 1e-9,
    threshold: float = 1e-2,
    rounds: int = 2,
    final_epochs: int | None = None,
    runs_root: str | Path = "runs",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run MorphNet's shrink/expand rounds from a recipe; returns (and writes as
    ``<runs_root>/<name>-morphnet.json``) each round's widths, alive widths, costs and
    best top-1, the proposal, and the from-scratch run of the proposal when
    ``final_epochs`` is given."""
    from edgetrain.prune.morphnet import MorphNetStructure, width_multiplier
    from edgetrain.runs import load_trained_model

    root = Path(runs_root)
    widths: list[int] | None = None
    history: list[dict[str, Any]] = []
    for k in range(1, rounds + 1):
        callbacks: list[dict[str, Any]] = []
        if widths is not None:
            callbacks.append({"name": "channel-widths", "widths": widths})
        callbacks.append(
            {"name": "morphnet", "strength": strength, "cost": cost, "threshold": threshold}
        )
        run = _train(config, f"{config.name}-morphnet-r{k}", callbacks, root, overwrite, progress)
        model = load_trained_model(run / "checkpoints" / "last.pt")
        structure = MorphNetStructure.of(model)
        trained = structure.widths()
        alive = structure.alive(threshold)
        multiplier, expanded = width_multiplier(structure, alive, budget, cost)
        history.append(
            {
                "round": k,
                "run": str(run),
                "val_top1": _best_top1(run),
                "widths": trained,
                "cost": structure.cost(trained, cost),
                "alive": alive,
                "alive_cost": structure.cost(alive, cost),
                "multiplier": multiplier,
                "next_widths": expanded,
                "next_cost": structure.cost(expanded, cost),
            }
        )
        widths = expanded
    result: dict[str, Any] = {
        "recipe": config.name,
        "budget": budget,
        "cost": cost,
        "strength": strength,
        "threshold": threshold,
        "rounds": history,
        "proposal": widths,
    }
    if final_epochs is not None and widths is not None:
        run = _train(
            config,
            f"{config.name}-morphnet-final",
            [{"name": "channel-widths", "widths": widths}],
            root,
            overwrite,
            progress,
            epochs=final_epochs,
        )
        result["final"] = {
            "run": str(run),
            "val_top1": _best_top1(run),
            "cost": history[-1]["next_cost"],
        }
    path = root / f"{config.name}-morphnet.json"
    result["path"] = str(path)
    atomic_write_text(path, json.dumps(result, indent=2))
    return result

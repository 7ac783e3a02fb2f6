"""``edgetrain prune-train`` (shrink while training) and ``edgetrain grow`` (Net2Net)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgetrain.cli._common import console, handle_errors
from edgetrain.errors import ConfigError

__all__ = ["grow_command", "grow_prune_command", "morphnet_command", "prune_train_command"]


# What the options' help shows, without importing the library (the help starts at once);
# a test keeps it equal to the library's.
PENALTY_MODES = ("loss", "grad")


@handle_errors
def prune_train_command(
    config: str = typer.Argument(
        None, help="YAML recipe (path, or name of a shipped recipe); or give --config."
    ),
    config_opt: str = typer.Option(None, "--config", help="The recipe, as an option."),
    ratio: float = typer.Option(
        None, help="Group-lasso penalty ratio in (0, 1) [default: the recipe's, else 0.2]."
    ),
    interval: int = typer.Option(
        None, min=1, help="Epochs between reconfigurations [default: the recipe's, else 10]."
    ),
    threshold: float = typer.Option(
        None, min=0.0, help="Weights below it are zeroed [default: the recipe's, else 1e-4]."
    ),
    stop_epoch: int = typer.Option(None, min=1, help="No reconfiguration after this epoch."),
    penalty: str = typer.Option(
        None,
        help=f"How the penalty is applied: {', '.join(PENALTY_MODES)} [default: the "
        "recipe's, else loss].",
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    seed: int = typer.Option(None, help="Random seed."),
    precision: str = typer.Option(None, help="32, 16-mixed or bf16-mixed."),
    adaptive_batch: bool = typer.Option(
        False, help="Grow the batch as the model shrinks (constant step memory, linear LR)."
    ),
    name: str = typer.Option(
        None,
        help="Run name (default: <recipe name>-prunetrain<ratio>; the recipe's name when it "
        "has a prunetrain callback).",
    ),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    full: bool = typer.Option(False, help="Apply the recipe's 'full:' section."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Train with PruneTrain: group lasso plus channel removal every --interval epochs,
    keeping the optimizer state. A recipe that already has a prunetrain callback keeps it
    (and its name); the options given here change its settings. Resume with 'edgetrain
    train --resume runs/<name>'.

    Example: edgetrain prune-train digits-resnet20 --ratio 0.2 --interval 5 --epochs 30
    """
    from edgetrain.cli.train import run_and_report
    from edgetrain.runs import load_config

    config = _recipe_argument(config, config_opt)
    overrides = [*(set_ or []), *([f"precision={precision}"] if precision else [])]
    base = load_config(config, overrides, full=full, epochs=epochs, seed=seed)
    tree = base.to_dict()
    given = {
        "ratio": ratio,
        "interval": interval,
        "threshold": threshold,
        "stop_epoch": stop_epoch,
        "penalty": penalty,
    }
    given = {k: v for k, v in given.items() if v is not None}
    callbacks = tree["callbacks"]
    own = next((c for c in callbacks if c.get("name") == "prunetrain"), None)
    if own is not None:  # the recipe's PruneTrain, with the options given here
        own.update(given)
        tree["name"] = name or base.name
    else:
        defaults = {"ratio": 0.2, "interval": 10, "threshold": 1e-4, "stop_epoch": None}
        settings = {**defaults, "penalty": "loss", **given}
        callbacks.append({"name": "prunetrain", **settings})
        tree["name"] = name or f"{base.name}-prunetrain{settings['ratio']:g}"
    if adaptive_batch:
        callbacks.append({"name": "adaptive-batch"})
    cfg = load_config(tree)
    run_and_report(cfg, runs_dir, overwrite, progress, report)
    print_pruning(runs_dir / cfg.name)


def print_pruning(run_dir: Path) -> None:
    """A table of the run's architecture per epoch (params, MACs, cumulative savings)."""
    from rich.table import Table

    from edgetrain.report.extract import load_run
    from edgetrain.report.pruning import pruning_rows

    rows = pruning_rows(load_run(run_dir))
    if not rows:
        return
    table = Table(title="PruneTrain")
    header = [
        "epoch",
        "val top-1",
        "params",
        "inference MACs",
        "train MACs (cum.)",
        "vs baseline",
        "epoch s",
    ]
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(
            str(r.epoch),
            "-" if r.val_top1 is None else f"{r.val_top1:.2f}",
            f"{r.params:,}",
            f"{r.inference_macs:,}",
            f"{r.cumulative_train_macs:.3g}",
            f"{r.cumulative_ratio:.3f}",
            f"{r.epoch_time:.2f}",
        )
    console.print(table)


def _recipe_argument(positional: str | None, option: str | None) -> str:
    """The recipe given as the argument or as --config (not both, not neither)."""
    if positional and option and positional != option:
        raise ConfigError(f"two recipes given ('{positional}' and --config '{option}'); give one")
    recipe = positional or option
    if not recipe:
        raise ConfigError("pass a recipe (e.g. digits-resnet20 or --config recipe.yaml)")
    return recipe


def _grow_ops(widen: list[str], deepen: list[str]) -> list[dict[str, object]]:
    ops: list[dict[str, object]] = []
    for item in widen:
        layer, sep, width = item.partition("=")
        if not sep or not width.strip().isdigit():
            raise ConfigError(f"--widen '{item}' is not LAYER=WIDTH; e.g. --widen conv2=32")
        ops.append({"op": "widen", "layer": layer.strip(), "width": int(width)})
    ops += [{"op": "deepen", "after": name.strip()} for name in deepen]
    return ops


@handle_errors
def grow_command(
    config: str = typer.Argument(
        None, help="YAML recipe (path or shipped name) the grown model trains with."
    ),
    config_opt: str = typer.Option(None, "--config", help="The recipe, as an option."),
    from_: str = typer.Option(
        None, "--from", help="Run directory (or checkpoint) of the trained model to grow."
    ),
    widen: list[str] = typer.Option(
        None, help="LAYER=WIDTH: widen a conv/linear (and every layer tied to it); repeatable."
    ),
    deepen: list[str] = typer.Option(
        None,
        help="Insert an identity layer after a conv, or an identity block after a "
        "residual block (e.g. layer2.1); repeatable.",
    ),
    init: str = typer.Option(
        "net2net", help="net2net (function-preserving) or random (the control)."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    seed: int = typer.Option(None, help="Random seed."),
    name: str = typer.Option(None, help="Run name (default: <recipe name>-grown-<init>)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Grow a trained model (Net2Net) and keep training it, without starting over.

    Without --from the grown architecture trains from scratch (the third comparison).

    Example: edgetrain grow digits-resnet20 --from runs/digits-resnet20
    --widen layer1.0.conv1=32 --deepen layer2.2 --epochs 5
    """
    from edgetrain.cli.train import run_and_report
    from edgetrain.runs import load_config

    config = _recipe_argument(config, config_opt)
    ops = _grow_ops(list(widen or []), list(deepen or []))
    if not ops:
        raise ConfigError("nothing to grow; pass --widen LAYER=WIDTH and/or --deepen LAYER")
    base = load_config(config, list(set_ or []), epochs=epochs, seed=seed)
    tree = base.to_dict()
    tree["name"] = name or f"{base.name}-grown-{init if from_ else 'scratch'}"
    tree["model"]["grow"] = ops
    tree["model"]["grow_init"] = init
    if from_ is not None:
        tree["model"]["init_from"] = from_
    run_and_report(load_config(tree), runs_dir, overwrite, progress, report)


@handle_errors
def grow_prune_command(
    config: str = typer.Argument(
        None, help="YAML recipe (path, or name of a shipped recipe); or give --config."
    ),
    config_opt: str = typer.Option(None, "--config", help="The recipe, as an option."),
    target_macs: float = typer.Option(
        ..., min=1.0, help="Inference MACs per sample the final architecture must not exceed."
    ),
    ratio: float = typer.Option(0.2, help="Group-lasso penalty ratio in (0, 1)."),
    interval: int = typer.Option(5, min=1, help="Epochs between prune (and grow) steps."),
    threshold: float = typer.Option(1e-4, min=0.0, help="Weights below it are zeroed."),
    growth: float = typer.Option(1.5, help="Widening factor of a layer lacking capacity."),
    saturated: float = typer.Option(
        0.9,
        help="Share of a layer's channels in full use (norm at least half the mean) for it "
        "to count as lacking capacity.",
    ),
    cycles: int = typer.Option(3, min=0, help="Most widening steps."),
    max_step: float = typer.Option(
        0.3, help="Most share of the MACs one step removes by channel norm while above."
    ),
    stop_epoch: int = typer.Option(
        None, min=1, help="No prune/grow step after this epoch (fine-tune the rest)."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Number of epochs."),
    seed: int = typer.Option(None, help="Random seed."),
    name: str = typer.Option(None, help="Run name (default: <recipe name>-growprune)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    report: bool = typer.Option(True, help="Write plots and report.html at the end."),
) -> None:
    """Grow and prune in one run: PruneTrain removes what group lasso zeroed every
    --interval epochs; while the network is above --target-macs, the channels group
    lasso weakened most are removed too (at most --max-step of the MACs per step, to a
    little below the target), and while it is below, the layers whose channels are all
    in use are widened with Net2Net (function-preserving). The best epoch within the
    target is saved as checkpoints/best_within_target.pt. Resume with
    'edgetrain train --resume runs/<name>'.

    Example: edgetrain grow-prune digits-resnet20 --target-macs 2e6 --interval 5 --epochs 30
    """
    from edgetrain.cli.train import run_and_report
    from edgetrain.prune.grow_prune import GrowPrune
    from edgetrain.runs import load_config

    config = _recipe_argument(config, config_opt)
    settings = {
        "target_macs": target_macs,
        "ratio": ratio,
        "interval": interval,
        "threshold": threshold,
        "growth": growth,
        "saturated": saturated,
        "cycles": cycles,
        "max_step": max_step,
        "stop_epoch": stop_epoch,
    }
    GrowPrune(**settings)  # every setting checked before the run starts
    base = load_config(config, list(set_ or []), epochs=epochs, seed=seed)
    tree = base.to_dict()
    if any(c.get("name") in ("prunetrain", "grow-prune") for c in tree["callbacks"]):
        raise ConfigError(
            f"recipe '{config}' already prunes while training (a prunetrain or grow-prune "
            "callback); remove it or use a recipe without one"
        )
    tree["callbacks"].append({"name": "grow-prune", **settings})
    tree["name"] = name or f"{base.name}-growprune"
    cfg = load_config(tree)
    run_and_report(cfg, runs_dir, overwrite, progress, report)
    print_pruning(runs_dir / cfg.name)
    _print_within_target(runs_dir / cfg.name, target_macs)


def _print_within_target(run_dir: Path, target: float) -> None:
    from edgetrain.engine import RunDirectory

    records = RunDirectory(run_dir).read_metrics()
    within = [r for r in records if r.get("val_top1_within_target") is not None]
    if not within:
        console.print(
            f"[yellow]no epoch met the target[/] of {target:,.0f} inference MACs: train "
            "longer, raise --ratio or lower --interval",
            highlight=False,
        )
        return
    best = max(within, key=lambda r: r["val_top1_within_target"])
    console.print(
        f"best within {target:,.0f} MACs: epoch {best['epoch']}, val top-1 "
        f"{best['val_top1_within_target']:.2f} % at {best['grow_prune_macs']:,.0f} MACs: "
        f"{run_dir / 'checkpoints' / 'best_within_target.pt'}",
        highlight=False,
        soft_wrap=True,
    )


@handle_errors
def morphnet_command(
    config: str = typer.Argument(
        None, help="YAML recipe (path, or name of a shipped recipe); or give --config."
    ),
    config_opt: str = typer.Option(None, "--config", help="The recipe, as an option."),
    budget: float = typer.Option(
        ..., min=1.0, help="Cost budget: inference MACs per sample (flops) or weights (size)."
    ),
    cost: str = typer.Option("flops", help="flops or size."),
    strength: float = typer.Option(1e-9, help="MorphNet regulariser strength (lambda)."),
    threshold: float = typer.Option(1e-2, help="Channel strength above which it is alive."),
    rounds: int = typer.Option(2, min=1, help="Shrink/expand rounds."),
    final_epochs: int = typer.Option(
        None, min=1, help="Also train the proposed architecture from scratch this long."
    ),
    set_: list[str] = typer.Option(None, "--set", "-s", help="Override: key.sub=value."),
    epochs: int = typer.Option(None, min=1, help="Epochs per round."),
    seed: int = typer.Option(None, help="Random seed."),
    runs_dir: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    overwrite: bool = typer.Option(False, help="Replace existing round runs."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """MorphNet: train with the resource-aware regulariser, shrink to the channels still
    alive, expand uniformly to the budget; repeat --rounds times, one run per round
    (<name>-morphnet-r<k>), then (--final-epochs) train the proposal from scratch.
    Prints the widths per round and writes morphnet.json.

    Example: edgetrain morphnet digits-resnet20 --budget 2e6 --rounds 2 --epochs 10
    """
    from edgetrain.prune.morphnet import COSTS
    from edgetrain.runs import load_config
    from edgetrain.runs.morphnet import run_morphnet

    if cost not in COSTS:
        raise ConfigError(f"--cost must be one of {', '.join(COSTS)}, got '{cost}'")
    if strength <= 0:
        raise ConfigError(f"--strength must be > 0, got {strength}")
    config = _recipe_argument(config, config_opt)
    base = load_config(config, list(set_ or []), epochs=epochs, seed=seed)
    result = run_morphnet(
        base,
        budget,
        cost=cost,
        strength=strength,
        threshold=threshold,
        rounds=rounds,
        final_epochs=final_epochs,
        runs_root=runs_dir,
        overwrite=overwrite,
        progress=progress,
    )
    from rich.table import Table

    table = Table(title=f"MorphNet ({cost} budget {budget:,.0f})")
    for h in ("round", "val top-1", "cost trained", "alive cost", "multiplier", "next cost"):
        table.add_column(h, justify="right")
    for r in result["rounds"]:
        table.add_row(
            str(r["round"]),
            "-" if r["val_top1"] is None else f"{r['val_top1']:.2f}",
            f"{r['cost']:,.0f}",
            f"{r['alive_cost']:,.0f}",
            f"{r['multiplier']:.3f}",
            f"{r['next_cost']:,.0f}",
        )
    console.print(table)
    final = result.get("final")
    if final is not None:
        console.print(
            f"proposal trained from scratch: val top-1 {final['val_top1']:.2f} % at "
            f"{final['cost']:,.0f} ({final['run']})",
            highlight=False,
        )
    console.print(f"[green]written:[/] {result['path']}")

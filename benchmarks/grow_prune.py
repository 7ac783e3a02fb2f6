"""Grow-and-prune vs PruneTrain alone vs MorphNet vs the final architecture from scratch,
at one inference-MAC target, on digits-32 and the keyword data.

Every method starts from ResNet-20 (1 input channel) and trains with the settings of the
``digits-resnet20-prunetrain`` recipe (SGD momentum 0.9, weight decay 5e-4, LR 0.1 / 10
at 75 % of the epochs, batch 16, crop augmentation on the digits), for ``--epochs``:

1. ``grow-prune``: :class:`~edgetrain.prune.GrowPrune` with the target (PruneTrain
   ratio ``--ratio``, a step every ``--interval`` epochs, no step in the last 2 epochs,
   widening of saturated layers by 1.5x while below the target, at most 3 times).
2. ``prunetrain``: the same callback with ``cycles=0``: PruneTrain steered to the same
   target (the weakest channels removed while above it), never growing; the ablation.
3. ``morphnet``: ``--rounds`` MorphNet rounds of ``epochs / rounds`` epochs each
   (budget = the target), then the proposal trained from scratch for ``--epochs``.
4. ``scratch``: grow-prune's final channel widths trained from scratch for ``--epochs``
   (blocks PruneTrain bypassed are kept, so it may carry a few more MACs).

Reported per method: best top-1 among the epochs whose architecture meets the target
(grow-prune, prunetrain; the final-shape runs meet it by construction, checked), final
inference MACs, total training MACs (the cost model's training-step MACs of each
epoch's architecture times its samples; for MorphNet the rounds plus the final run),
and the wall time of training (sum of epoch times; one torch thread).

Run: python benchmarks/grow_prune.py [--datasets digits,keywords] [--epochs 24]
     [--target 0.25] [--out runs/grow-prune-bench]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import print_table, write_result

from edgetrain import data as data_sets
from edgetrain.cost import analyze
from edgetrain.engine import RunDirectory
from edgetrain.prune import MorphNetStructure
from edgetrain.runs import build_run_model, load_config, load_trained_model, start_run
from edgetrain.runs.morphnet import run_morphnet

DATASETS = {
    "digits": {"name": "digits-32", "options": {"channels": 1}},
    "keywords": {"name": "keywords-en", "options": {}},
}


def base_tree(dataset: str, epochs: int) -> dict[str, Any]:
    d = DATASETS[dataset]
    augment = [{"name": "crop", "padding": 2}] if dataset == "digits" else []
    return {
        "name": f"gp-{dataset}",
        "epochs": epochs,
        "seed": 0,
        "data": {**d, "augment": augment, "batch_size": 16},
        "model": {"name": "resnet20", "options": {"in_channels": 1}},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005},
        "scheduler": {"name": "multistep", "milestones": [int(0.75 * epochs)], "gamma": 0.1},
    }


def inference_macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    return int(analyze(model, shape, memory="layerwise").total().forward_macs)


def step_macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    return int(analyze(model, shape, memory="layerwise").conventional.step_macs)


def run(tree: dict[str, Any], root: Path) -> Path:
    """Train unless a completed run of this config exists; the run folder."""
    config = load_config(tree)
    folder = RunDirectory(root / config.name)
    summary = folder.read_summary()
    if summary.get("status") != "completed" or summary.get("epochs_finished") != config.epochs:
        start_run(config, root, overwrite=True, progress=False)
    return folder.path


def wall(run_dir: Path) -> float:
    return sum(float(m.get("epoch_time", 0.0)) for m in RunDirectory(run_dir).read_metrics())


def fixed_shape_costs(run_dir: Path, shape: tuple[int, ...], samples: int) -> dict[str, Any]:
    """A run whose architecture never changed: its MACs, training MACs and best top-1."""
    model = load_trained_model(run_dir / "checkpoints" / "last.pt")
    records = RunDirectory(run_dir).read_metrics()
    return {
        "macs": inference_macs(model, shape),
        "train_macs": step_macs(model, shape) * samples * len(records),
        "best_top1": max(float(m["val_top1"]) for m in records),
        "wall_s": wall(run_dir),
    }


def pruning_costs(run_dir: Path, shape: tuple[int, ...]) -> dict[str, Any]:
    """A grow-prune run: best top-1 within the target, final MACs, logged training MACs."""
    records = RunDirectory(run_dir).read_metrics()
    within = [float(m["val_top1_within_target"]) for m in records if m.get("meets_target")]
    model = load_trained_model(run_dir / "checkpoints" / "last.pt")
    return {
        "macs": inference_macs(model, shape),
        "train_macs": sum(float(m["train_macs"]) for m in records),
        "best_top1": max(within) if within else None,
        "best_top1_any": max(float(m["val_top1"]) for m in records),
        "epochs_within_target": len(within),
        "grow_cycles": int(max(float(m.get("grow_cycles", 0)) for m in records)),
        "wall_s": wall(run_dir),
    }


def bench(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    root = args.out / dataset
    tree = base_tree(dataset, args.epochs)
    seed_model, shape = build_run_model(load_config(tree))
    samples = data_sets.describe(tree["data"]["name"], **tree["data"]["options"]).split_sizes[
        "train"
    ]
    full_macs = inference_macs(seed_model, shape)
    target = args.target * full_macs
    print(f"{dataset}: ResNet-20 {full_macs:,} MACs, target {target:,.0f}", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    settings = {
        "target_macs": target,
        "ratio": args.ratio,
        "interval": args.interval,
        "stop_epoch": args.epochs - 2,
    }
    for method, cycles in (("grow-prune", 3), ("prunetrain", 0)):
        t = json.loads(json.dumps(tree))
        t["name"] = f"gp-{dataset}-{method}"
        t["callbacks"] = [{"name": "grow-prune", **settings, "cycles": cycles}]
        rows[method] = pruning_costs(run(t, root), shape)
        print(f"  {method}: {rows[method]}", flush=True)
    # MorphNet: rounds of epochs/rounds each, then the proposal from scratch
    per_round = max(1, args.epochs // args.rounds)
    mtree = json.loads(json.dumps(tree))
    mtree["epochs"] = per_round
    mtree["scheduler"] = None
    result = run_morphnet(
        load_config(mtree),
        target,
        strength=args.strength,
        rounds=args.rounds,
        final_epochs=args.epochs,
        runs_root=root,
        progress=False,
    )
    final_dir = Path(result["final"]["run"])
    final = fixed_shape_costs(final_dir, shape, samples)
    round_macs = sum(
        fixed_shape_costs(Path(r["run"]), shape, samples)["train_macs"] for r in result["rounds"]
    )
    round_wall = sum(wall(Path(r["run"])) for r in result["rounds"])
    rows["morphnet"] = {
        **final,
        "train_macs": final["train_macs"] + round_macs,
        "train_macs_final_only": final["train_macs"],
        "wall_s": final["wall_s"] + round_wall,
        "widths": result["proposal"],
    }
    print(f"  morphnet: {rows['morphnet']}", flush=True)
    # scratch: grow-prune's final widths from scratch
    grown = load_trained_model(root / f"gp-{dataset}-grow-prune" / "checkpoints" / "last.pt")
    widths = MorphNetStructure.of(grown).widths()
    stree = json.loads(json.dumps(tree))
    stree["name"] = f"gp-{dataset}-scratch"
    stree["callbacks"] = [{"name": "channel-widths", "widths": widths}]
    rows["scratch"] = fixed_shape_costs(run(stree, root), shape, samples)
    print(f"  scratch: {rows['scratch']}", flush=True)
    baseline_train = step_macs(seed_model, shape) * samples * args.epochs
    for r in rows.values():
        r["meets_target"] = r["macs"] <= target
        r["train_macs_relative"] = r["train_macs"] / baseline_train
    return {
        "dataset": dataset,
        "seed_macs": full_macs,
        "target_macs": target,
        "baseline_train_macs": baseline_train,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="digits,keywords")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--target", type=float, default=0.25, help="share of ResNet-20's MACs")
    parser.add_argument("--ratio", type=float, default=0.6)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--strength", type=float, default=1e-8)
    parser.add_argument("--out", type=Path, default=Path("runs/grow-prune-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for dataset in [d for d in args.datasets.split(",") if d]:
        if dataset not in DATASETS:
            parser.error(f"unknown dataset '{dataset}'; choose from {', '.join(DATASETS)}")
        r = bench(dataset, args)
        results[dataset] = r
        print_table(
            f"{dataset}: target {r['target_macs']:,.0f} MACs "
            f"({100 * args.target:g} % of ResNet-20), {args.epochs} epochs",
            ["method", "best top-1 within target", "final MACs", "train MACs rel.", "wall s"],
            [
                [
                    name,
                    "-" if row["best_top1"] is None else f"{row['best_top1']:.2f}",
                    f"{row['macs']:,}" + ("" if row["meets_target"] else " (over)"),
                    f"{row['train_macs_relative']:.3f}",
                    f"{row['wall_s']:.0f}",
                ]
                for name, row in r["rows"].items()
            ],
        )
    suffix = "" if args.datasets == "digits,keywords" else "-" + args.datasets.replace(",", "-")
    if args.target != 0.25:
        suffix += f"-t{args.target:g}"
    path = write_result(
        f"grow_prune{suffix}",
        {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""A compression sweep with and without a trial pruner: trials and wall time to the best.

The same ResNet-20 sweep as ``benchmarks/compression.py`` (digits-32 with 3 channels;
per-stage L1 sparsities of the inner convs and the fine-tuning LR, minimising ONNX
Runtime latency under the constraint top-1 at most 1 point below the baseline), run
twice per seed: once without early stopping, once with ``trial_pruner: {name: median}``
(MedianPruner, 4 startup trials, pruning from the first epoch). The LR range is wide
(0.001..0.5) so that some fine-tunings go badly, as in a real search. Once a trial is
pruned the two runs' samplers see different histories, so their proposals part ways:
the comparison is over ``--seeds`` seeds.

Per run: total wall time, trials pruned, feasible trials found, the best feasible
latency, and the wall time and trials until the best feasible latency first reaches the
best both runs of that seed reach (when both found a feasible trial). Wall time is
Optuna's trial start-to-finish time summed (the baseline's setup excluded).

Run: python benchmarks/sweep_pruning.py [--trials 16 --ft-epochs 4 --seeds 3 --threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from _common import RESULTS, print_table, write_result

from edgetrain.compress import load_recipe
from edgetrain.recipes import RECIPES
from edgetrain.runs import load_config, start_run
from edgetrain.search import load_sweep, open_storage, run


def _baseline(work: Path, epochs: int) -> Path:
    folder = work / "runs" / "digits-resnet20"
    if (folder / "checkpoints" / "best.pt").is_file():
        return folder
    tree = yaml.safe_load(RECIPES.path("digits-resnet20").read_text())
    tree.update(epochs=epochs)
    tree.pop("full", None)
    start_run(load_config(tree), runs_root=work / "runs", overwrite=True, progress=False)
    return folder


def _sweep(
    name: str, work: Path, model: Path, args: argparse.Namespace, prune: bool, seed: int
) -> Any:
    recipe = load_recipe("resnet20-l1").with_params({"finetune.epochs": args.ft_epochs})
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    tree: dict[str, Any] = {
        "name": name,
        "method": "bayes",
        "seed": seed,
        "metric": {"name": "latency_ms"},
        "constraints": [{"name": "top1_drop", "max": 1.0}],
        "parameters": {
            "stage1.sparsity": {"min": 0.0, "max": 0.9},
            "stage2.sparsity": {"min": 0.0, "max": 0.9},
            "stage3.sparsity": {"min": 0.0, "max": 0.9},
            "finetune.lr": {"min": 0.001, "max": 0.5, "log": True},
        },
        "budget": {"trials": args.trials},
        "recipe": str(work / "recipe.yaml"),
        "model": str(model),
        "runtime": {"threads": 1, "runs": 50, "repeats": 1},
    }
    if prune:
        tree["trial_pruner"] = {
            "name": "median",
            "options": {"n_startup_trials": 4, "n_warmup_steps": 1},
        }
    config, base = load_sweep(tree)
    storage = f"sqlite:///{work / name / 'study.db'}"
    started = time.perf_counter()
    run(config, base, storage=storage, root=work, log=print)
    print(f"{name}: {time.perf_counter() - started:.0f} s")
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def _curve(study: Any) -> list[dict[str, Any]]:
    """Per trial in order: state, seconds, cumulative seconds, best feasible latency."""
    rows, total, best = [], 0.0, math.inf
    for t in sorted(study.trials, key=lambda t: t.number):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        total += seconds
        feasible = t.state.name == "COMPLETE" and all(
            c <= 0 for c in t.user_attrs.get("constraints", [1])
        )
        if feasible:
            best = min(best, float(t.user_attrs["latency_ms"]))
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "seconds": seconds,
                "elapsed": total,
                "best_ms": best,
                "feasible": feasible,
                "top1": t.user_attrs.get("top1", t.user_attrs.get("top1_at_pruning")),
                "lr": t.params.get("finetune.lr"),
            }
        )
    return rows


def _reach(rows: list[dict[str, Any]], target: float) -> tuple[int | None, float | None]:
    for r in rows:
        if r["best_ms"] <= target:
            return r["trial"] + 1, r["elapsed"]
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--ft-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15, help="baseline training epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default=str(RESULTS / "sweep-pruning-work"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    model = _baseline(work, args.epochs)
    modes = (("no-pruner", False), ("median-pruner", True))
    runs: dict[str, dict[str, Any]] = {}
    table = []
    for seed in range(args.seeds):
        curves = {
            mode: _curve(_sweep(f"{mode}-s{seed}", work, model, args, prune, seed))
            for mode, prune in modes
        }
        finals = {mode: rows[-1]["best_ms"] for mode, rows in curves.items()}
        target = max(finals.values())  # the best both runs of this seed reach
        for mode, rows in curves.items():
            trials, seconds = _reach(rows, target) if math.isfinite(target) else (None, None)
            record = {
                "seed": seed,
                "mode": mode,
                "total_seconds": rows[-1]["elapsed"],
                "pruned": sum(r["state"] == "PRUNED" for r in rows),
                "feasible": sum(1 for r in rows if r["feasible"]),
                "best_ms": finals[mode],
                "target_ms": target,
                "trials_to_target": trials,
                "seconds_to_target": seconds,
                "curve": rows,
            }
            runs[f"{mode}-s{seed}"] = record
            table.append(
                [
                    seed,
                    mode,
                    record["total_seconds"],
                    record["pruned"],
                    record["feasible"],
                    finals[mode],
                    target,
                    trials if trials else "-",
                    "-" if seconds is None else f"{seconds:.0f}",
                ]
            )
    print_table(
        f"{args.trials} trials per sweep, {args.ft_epochs} fine-tuning epochs",
        [
            "seed",
            "sweep",
            "total s",
            "pruned",
            "feasible",
            "best ms",
            "both reach ms",
            "trials to it",
            "s to it",
        ],
        table,
    )
    for mode, _ in modes:
        mine = [r for r in runs.values() if r["mode"] == mode]
        print(
            f"{mode}: {statistics.fmean(r['total_seconds'] for r in mine):.0f} s per sweep, "
            f"{sum(r['pruned'] for r in mine)} pruned, {sum(r['feasible'] for r in mine)} "
            "feasible trials in all"
        )
    write_result("sweep_pruning", {"settings": vars(args), "runs": runs})


if __name__ == "__main__":
    main()

"""A recipe grouped from the latency sensitivity vs the hand-made reference.

``edgetrain compress sensitivity --metric latency --recipe-out`` prunes every target
alone at 0.1..0.9, evaluates it without fine-tuning and times it on ONNX Runtime, then
keeps each target at its fastest sparsity within ``--max-drop`` points and groups
targets of equal sparsity into pruners. This script measures what that buys on one
trained network (ResNet-56 on 3-channel digits by default, the compression benchmark's
baseline, reused from ``--work``):

1. Latency sensitivity of the inner convs, per layer (``layer{1,2,3}.*.conv1``) and per
   stage (the convs of a stage pruned together); the per-layer curves also grouped by
   MACs (Li et al.'s accuracy-only method, automated) for comparison.
2. Each grouped recipe applied and fine-tuned with the reference's settings and epochs
   (``--ft-epochs``), next to the hand-made reference (``resnet56-a2``).
3. Every model exported and timed side by side (round-robin, ``--rounds`` rounds of 100
   runs at batch 1 on one thread), top-1 on the test split.

Run: python benchmarks/sensitivity_recipe.py [--model resnet56 --ft-epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, print_table, write_result
from compression import REFERENCES, _train

from edgetrain.compress import Compression, benchmark, evaluate_onnx, export_onnx, load_recipe
from edgetrain.compress.sensitivity import (
    LatencyProbe,
    recipe_from_sensitivity,
    sensitivity,
    write_sensitivity_csv,
)
from edgetrain.cost import analyze
from edgetrain.runs import load_trained_run


def _targets(mode: str) -> list[str | list[str]]:
    if mode == "layers":
        return [f"layer{s}.*.conv1" for s in (1, 2, 3)]
    return [[f"layer{s}.*.conv1"] for s in (1, 2, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--epochs", type=int, default=15, help="baseline training epochs")
    parser.add_argument("--ft-epochs", type=int, default=4)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--min-gain", type=float, default=0.005)
    parser.add_argument("--modes", default="stages,layers")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per repeat")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin latency rounds")
    parser.add_argument("--work", type=Path, default=RESULTS / "compression-work")
    args = parser.parse_args()
    run_dir = _train(args.model, args.epochs, args.work)
    trained = load_trained_run(run_dir)
    test = trained.test_data()
    reference = load_recipe(REFERENCES[args.model]).with_params({"finetune.epochs": args.ft_epochs})
    finetune = reference.to_dict()["finetune"]
    probe = LatencyProbe(threads=1, runs=args.runs, repeats=3)
    folder = args.work / "sensitivity-recipe" / args.model
    folder.mkdir(parents=True, exist_ok=True)
    recipes: dict[str, dict[str, Any]] = {}
    payload: dict[str, Any] = {"settings": {**vars(args), "work": str(args.work)}}
    for mode in args.modes.split(","):
        start = time.perf_counter()
        rows = sensitivity(trained.model, test, _targets(mode), latency=probe)
        seconds = time.perf_counter() - start
        write_sensitivity_csv(rows, folder / f"sensitivity-{mode}.csv")
        print(f"== {mode}: {len(rows)} points in {seconds:.0f} s")
        metrics = ("latency", "macs") if mode == "layers" else ("latency",)
        for metric in metrics:
            recipe = recipe_from_sensitivity(
                rows,
                max_drop=args.max_drop,
                metric=metric,
                min_gain=args.min_gain,
                finetune=finetune,
            )
            chosen = recipe.pop("chosen")
            label = f"{mode} by {metric}"
            recipes[label] = recipe
            payload[label] = {"chosen": chosen, "pruners": recipe["pruners"], "seconds": seconds}
            print(f"  {label}: {len(chosen)} targets pruned")
            for target, point in chosen.items():
                print(
                    f"    {target}: sparsity {point['sparsity']:g}, drop "
                    f"{point['top1_drop']:+.2f}, latency {point.get('latency_relative', 1):.3f}"
                )
    candidates: list[tuple[str, Any]] = [("baseline", trained.model)]
    jobs: list[tuple[str, Any]] = [(f"reference {REFERENCES[args.model]}", reference)]
    for label, recipe in recipes.items():
        if recipe["pruners"]:
            jobs.append((label, recipe))
        else:
            print(f"  {label}: nothing pruned, left out")
    for label, recipe in jobs:
        print(f"== fine-tuning {label}")
        job = Compression(trained, recipe)
        job.finetune()
        candidates.append((label, job.model))
    files = []
    for label, net in candidates:
        path = folder / f"{label.replace(' ', '-')}.onnx"
        export_onnx(net, path)
        macs = analyze(net, tuple(trained.model.input_shape), memory="layerwise").total()
        files.append(
            {
                "candidate": label,
                "path": path,
                "top1": evaluate_onnx(path, test)["top1"],
                "params": sum(p.numel() for p in net.parameters()),
                "macs": int(macs.forward_macs),
                "latencies": [],
            }
        )
    for _ in range(args.rounds):
        for f in files:
            f["latencies"].append(benchmark(f["path"], runs=100, repeats=1).latency_ms)
    base = files[0]
    table = []
    for f in files:
        f["latency_ms"] = statistics.median(f["latencies"])
        f["latency_ratio"] = f["latency_ms"] / statistics.median(base["latencies"])
        f["path"] = str(f["path"])
        table.append(
            [
                f["candidate"],
                f"{f['top1']:.2f}",
                f"{f['top1'] - base['top1']:+.2f}",
                f"{f['params']:,}",
                f"{f['macs'] / 1e6:.1f}",
                f"{f['latency_ms']:.3f}",
                f"{f['latency_ratio']:.3f}",
            ]
        )
    payload["files"] = files
    print_table(
        f"{args.model}: grouped from sensitivity vs the reference (ONNX Runtime, 1 thread)",
        ["candidate", "top-1 %", "vs base", "params", "MACs (M)", "latency ms", "vs base"],
        table,
        width=150,
    )
    print(write_result(f"sensitivity_recipe-{args.model}", payload))


if __name__ == "__main__":
    main()

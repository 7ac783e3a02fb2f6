"""Channel blocking on ONNX Runtime: does a filter count off a multiple of 8 cost latency?

ResNet-20 trained by ``benchmarks/compression.py`` (``--work`` folder), pruned with the
``resnet20-l1`` recipe at sparsities that keep 7/23/58 (the recipe), 9/17/57,
8/24/56 and 8/16/56 filters in the inner convs of stages 1/2/3, without fine-tuning
(latency does not depend on the weights). Each file is timed at batch 1 on one thread,
``--rounds`` round-robin rounds of 100 runs; median of the rounds relative to the
unpruned baseline, next to the MACs ratio.

Run: python benchmarks/channel_alignment.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

from _common import RESULTS, print_table, write_result

from edgetrain.compress import apply, benchmark, export_onnx, load_recipe
from edgetrain.runs import load_trained_run

VARIANTS = {
    "recipe 7/23/58": {},
    "9/17/57": {"stage1.sparsity": 0.4375, "stage2.sparsity": 0.46875, "stage3.sparsity": 0.109375},
    "8/24/56": {"stage1.sparsity": 0.5, "stage2.sparsity": 0.25, "stage3.sparsity": 0.125},
    "8/16/56": {"stage1.sparsity": 0.5, "stage2.sparsity": 0.5, "stage3.sparsity": 0.125},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--run", type=Path, default=RESULTS / "compression-work" / "runs" / "digits-resnet20"
    )
    args = parser.parse_args()
    run = load_trained_run(args.run)
    recipe = load_recipe("resnet20-l1")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"baseline": Path(tmp) / "baseline.onnx"}
        macs = {"baseline": 1.0}
        export_onnx(run.model, paths["baseline"])
        for i, (name, params) in enumerate(VARIANTS.items()):
            model, report = apply(copy.deepcopy(run.model), recipe.with_params(params))
            paths[name] = Path(tmp) / f"v{i}.onnx"
            export_onnx(model, paths[name])
            macs[name] = report.macs_ratio
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for name, path in paths.items():
                result = benchmark(path, runs=100, repeats=1, throughput_batch=None, profile=False)
                times[name].append(result.latency_ms)
    base = statistics.median(times["baseline"])
    rows = [
        [
            name,
            f"{macs[name]:.3f}",
            f"{statistics.median(t):.3f}",
            f"{statistics.median(t) / base:.3f}",
        ]
        for name, t in times.items()
    ]
    print_table(
        "inner conv filters vs latency (ONNX Runtime, 1 thread, batch 1)",
        ["filters (stage 1/2/3)", "MACs vs baseline", "latency ms", "latency vs baseline"],
        rows,
    )
    payload = {
        name: {"macs_ratio": macs[name], "latencies_ms": t, "ratio": statistics.median(t) / base}
        for name, t in times.items()
    }
    print(write_result("channel_alignment", {"rounds": args.rounds, "variants": payload}))


if __name__ == "__main__":
    main()

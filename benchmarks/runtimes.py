"""The compression benchmark's candidates on every runtime, side by side in one run.

The architectures are those of ``benchmarks/compression.py``'s final table (BENCHMARKS.md,
"Compression and search on ONNX Runtime"): for ResNet-20 and ResNet-56, the baseline,
the hand-made reference recipe ``resnet20-l1`` and the best feasible sweep trial, plus
ResNet-20's best trial of the ``multiple_of: 8`` sweep. They are rebuilt by applying
the same recipes with the same sparsities to freshly initialised networks: L1 pruning
keeps as many filters per layer as on the trained ones (checked against the parameter
counts that benchmark recorded), and a runtime's latency does not depend on the weight
values. Accuracy is not measured here (BENCHMARKS.md has it).

Every file is measured on every installed runtime configuration (ONNX Runtime FP32,
int8 static QDQ and FP16 files; OpenVINO at FP32 and, where the CPU has them, FP16 and
BF16 inference precision; ExecuTorch XNNPACK FP32) at batch 1 on ``--threads`` threads:
``--rounds`` round-robin rounds of ``edgetrain bench``'s median over ``--runs`` runs, so
every file sees the same machine conditions; the table shows the median of the rounds,
the latency relative to the same runtime's FP32 baseline, and each runtime's ranking of
the candidates.

Run: python benchmarks/runtimes.py [--threads 1 --rounds 5 --runs 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import print_table, write_result

from edgetrain import models
from edgetrain.compress import apply, benchmark, export_model, load_recipe, quantize_onnx
from edgetrain.compress.openvino_runtime import OpenVinoRuntime
from edgetrain.compress.runtime import RUNTIMES
from edgetrain.cost import analyze

# (model, candidate, stage sparsities or None for the baseline, multiple_of, params recorded)
CANDIDATES: list[tuple[str, str, tuple[float, float, float] | None, int | None, int]] = [
    ("resnet20", "baseline", None, None, 272474),
    ("resnet20", "reference", (0.6, 0.3, 0.1), None, 238214),
    ("resnet20", "best trial 3", (0.51, 0.83, 0.065), None, 216094),
    ("resnet20", "m8 best trial 9", (0.55, 0.56, 0.85), 8, 143114),
    ("resnet56", "baseline", None, None, 855770),
    ("resnet56", "reference", (0.6, 0.3, 0.1), None, 774638),
    ("resnet56", "best trial 4", (0.0, 0.72, 0.69), None, 650556),
]


def _build(model: str, sparsities: tuple[float, float, float] | None, multiple: int | None) -> Any:
    torch.manual_seed(0)
    net = models.create(model)
    if sparsities is None:
        return net
    recipe = load_recipe("resnet20-l1").with_params(
        {f"stage{i + 1}.sparsity": s for i, s in enumerate(sparsities)}
    )
    if multiple is not None:
        tree = recipe.to_dict()
        for pruner in tree["pruners"].values():
            pruner["multiple_of"] = multiple
        recipe = load_recipe(tree)
    net, _ = apply(net, recipe)
    return net


def _configurations() -> list[tuple[str, str, dict[str, Any], str]]:
    """(label, runtime, options, file kind) of every installed configuration."""
    configs: list[tuple[str, str, dict[str, Any], str]] = [
        ("ORT fp32", "onnxruntime", {}, "onnx"),
        ("ORT int8", "onnxruntime", {}, "int8"),
        ("ORT fp16 file", "onnxruntime", {}, "fp16"),
    ]
    if OpenVinoRuntime.missing() is None:
        configs.append(("OpenVINO fp32", "openvino", {}, "onnx"))
        for precision in ("fp16", "bf16"):
            try:
                OpenVinoRuntime(precision=precision)
            except Exception:  # the CPU lacks it: not measured, said in the output
                print(f"OpenVINO {precision}: not offered by this CPU")
                continue
            configs.append((f"OpenVINO {precision}", "openvino", {"precision": precision}, "onnx"))
    if RUNTIMES.entry("executorch").fn.missing() is None:
        configs.append(("ExecuTorch fp32", "executorch", {}, "pte"))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--models", default="resnet20,resnet56")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = set(args.models.split(","))
    configs = _configurations()
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetrain-runtimes-") as tmp:
        files: list[tuple[dict[str, Any], str, Path]] = []  # (row, config label, file)
        for model, candidate, sparsities, multiple, recorded in CANDIDATES:
            if model not in wanted:
                continue
            net = _build(model, sparsities, multiple).eval()
            params = sum(p.numel() for p in net.parameters())
            if params != recorded:
                raise SystemExit(
                    f"{model} {candidate}: {params} parameters, the compression benchmark "
                    f"recorded {recorded}; the rebuilt architecture differs"
                )
            macs = int(analyze(net, net.input_shape, memory="layerwise").total().forward_macs)
            stem = Path(tmp) / f"{model}-{candidate.replace(' ', '_')}"
            onnx_file = export_model(net, stem.with_suffix(".onnx")).path
            kinds = {"onnx": onnx_file}
            kinds["fp16"] = export_model(net, Path(f"{stem}.fp16.onnx"), precision="fp16").path
            calib = [torch.randn(8, *net.input_shape) for _ in range(8)]
            kinds["int8"] = quantize_onnx(
                onnx_file, Path(f"{stem}.int8.onnx"), calibration_data=calib
            ).path
            if any(kind == "pte" for *_, kind in configs):
                kinds["pte"] = export_model(net, stem.with_suffix(".pte"), "executorch").path
            for label, _, _, kind in configs:
                row = {"model": model, "candidate": candidate, "config": label}
                row.update(params=params, macs=macs, latencies=[])
                rows_out.append(row)
                files.append((row, label, kinds[kind]))
            print(f"{model} {candidate}: {params:,} params, {macs / 1e6:.1f} M MACs, exported")
        runtimes = {label: RUNTIMES.create(rt, **opts) for label, rt, opts, _ in configs}
        for r in range(args.rounds):
            for row, label, path in files:
                result = benchmark(
                    path,
                    runtimes[label],
                    threads=args.threads,
                    runs=args.runs,
                    repeats=1,
                    throughput_batch=None,
                    profile=False,
                )
                row["latencies"].append(result.latency_ms)
            print(f"round {r + 1}/{args.rounds} done")
    for row in rows_out:
        row["latency_ms"] = statistics.median(row["latencies"])
    base = {
        (row["model"], row["config"]): row["latency_ms"]
        for row in rows_out
        if row["candidate"] == "baseline"
    }
    for row in rows_out:
        row["vs_baseline"] = row["latency_ms"] / base[(row["model"], row["config"])]
    ranks: dict[str, dict[str, list[str]]] = {}
    for model in sorted({row["model"] for row in rows_out}):
        for label, *_ in configs:
            same = [r for r in rows_out if r["model"] == model and r["config"] == label]
            order = sorted(same, key=lambda r: r["latency_ms"])
            ranks.setdefault(model, {})[label] = [r["candidate"] for r in order]
            for i, r in enumerate(order, start=1):
                r["rank"] = i
    print_table(
        f"latency at batch 1, {args.threads} thread(s), median of {args.rounds} rounds",
        ["model", "candidate", "runtime", "MACs (M)", "ms", "vs baseline", "rank"],
        [
            [r["model"], r["candidate"], r["config"], r["macs"] / 1e6, r["latency_ms"],
             r["vs_baseline"], r["rank"]]
            for r in rows_out
        ],
        width=140,
    )  # fmt: skip
    for model, per in ranks.items():
        orders = {tuple(v) for v in per.values()}
        print(f"{model}: {len(orders)} distinct ranking(s) over {len(per)} runtime settings")
    write_result(
        "runtimes",
        {"settings": vars(args), "configs": [c[0] for c in configs], "rows": rows_out,
         "ranks": ranks},
    )  # fmt: skip


if __name__ == "__main__":
    main()

"""Compression and search on the runtime: baseline, reference recipe, best sweep trial, int8.

For each model of ``--models`` (ResNet-20 and ResNet-56, 3-channel digits at 32x32):

1. Train the baseline (``digits-resnet20`` recipe with the model swapped; reused when the
   run exists in ``--work``).
2. Sweep (Optuna TPE, ``--trials`` trials): the L1 sparsity of each stage's inner
   convs (``layer{1,2,3}.*.conv1``) and the fine-tuning LR, minimising ONNX Runtime
   latency (1 thread) under the constraint top-1 >= baseline - 1 point. The shipped
   hand-made recipe is the reference (same fine-tuning epochs): ``resnet20-l1`` for
   ResNet-20, the compression thesis' ``resnet56-a2`` for ResNet-56.
3. Final measurement side by side in one process: FP32 and int8 (static QDQ,
   per-channel) of the baseline, the reference without retraining (pruned only), the
   reference and the best feasible trial; latency is the median over ``--rounds``
   round-robin rounds of ``edgetrain bench``'s median (100 runs each), so every file
   sees the same machine conditions.
4. Does latency follow MACs? Pearson and Spearman correlation over all sweep trials
   (latency measured during the sweep) and a scatter plot.
5. ``--multiple-of 8`` searches with every pruner's kept filters rounded up to a multiple
   of 8 (``l1_filter``'s ``multiple_of`` option), reported as ``<model>-m8``.

Run: python benchmarks/compression.py [--models resnet20,resnet56 --trials 16 --ft-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from _common import RESULTS, print_table, write_result

from edgetrain.compress import benchmark, evaluate_onnx, export_onnx, load_recipe, quantize_onnx
from edgetrain.compress.runtime import op_times
from edgetrain.recipes import RECIPES
from edgetrain.report.sweep import build_sweep_report
from edgetrain.runs import load_config, load_trained_run, start_run
from edgetrain.search import load_sweep, load_sweep_data, run


def _train(model: str, epochs: int, work: Path) -> Path:
    folder = work / "runs" / f"digits-{model}"
    if (folder / "checkpoints" / "best.pt").is_file():
        return folder
    import yaml

    tree = yaml.safe_load(RECIPES.path("digits-resnet20").read_text())
    tree.update(name=f"digits-{model}", epochs=epochs)
    tree["model"] = {"name": model}
    tree.pop("full", None)
    start_run(load_config(tree), runs_root=work / "runs", overwrite=True, progress=False)
    return folder


# The hand-made reference recipe of each model (shipped recipes).
REFERENCES = {"resnet20": "resnet20-l1", "resnet56": "resnet56-a2"}


def _reference(name: str, args: argparse.Namespace) -> Any:
    return load_recipe(REFERENCES[name]).with_params({"finetune.epochs": args.ft_epochs})


def _sweep(label: str, name: str, run_dir: Path, args: argparse.Namespace, work: Path) -> Any:
    reference = _reference(name, args)
    ref_path = work / f"reference-{label}.yaml"
    ref_path.write_text(_yaml(reference.to_dict()))
    stage = {"method": "l1_filter", "sparsity": 0.5}
    if args.multiple_of:
        stage["multiple_of"] = args.multiple_of
    searched = {
        "version": 1,
        "pruners": {f"stage{s}": {**stage, "layers": [f"layer{s}.*.conv1"]} for s in (1, 2, 3)},
        **{k: v for k, v in reference.to_dict().items() if k in ("finetune", "export")},
    }
    recipe_path_ = work / f"searched-{label}.yaml"
    recipe_path_.write_text(_yaml(load_recipe(searched).to_dict()))
    tree = {
        "name": f"compress-{label}",
        "method": "bayes",
        "metric": {"name": "latency_ms", "goal": "minimize"},
        "constraints": [{"name": "top1_drop", "max": 1.0}],
        "parameters": {
            "stage1.sparsity": {"min": 0.0, "max": 0.9},
            "stage2.sparsity": {"min": 0.0, "max": 0.9},
            "stage3.sparsity": {"min": 0.0, "max": 0.9},
            "finetune.epochs": {"value": args.ft_epochs},
            "finetune.lr": {"min": 0.003, "max": 0.05, "log": True},
        },
        "budget": {"trials": args.trials},
        "recipe": str(recipe_path_),
        "model": str(run_dir),
        "reference": str(ref_path),
        "runtime": {"threads": 1, "runs": 100, "repeats": 3},
        "keep_models": True,
        "seed": args.seed,
    }
    config, _ = load_sweep(tree)
    storage = f"sqlite:///{work / 'sweeps' / config.name / 'study.db'}"

    def show(t: Any) -> None:
        a = t.user_attrs
        if t.state.name == "COMPLETE":
            print(
                f"  trial {t.number}: top1 {a['top1']:.2f} latency {a['latency_ms']:.3f} ms "
                f"MACs {a['macs'] / 1e6:.1f} M"
            )
        else:
            print(f"  trial {t.number}: failed ({a.get('fail_reason')})")

    run(config, storage=storage, root=work / "sweeps", on_trial=show, log=print)
    data = load_sweep_data(config.name, storage)
    build_sweep_report(data, work / "sweeps" / config.name / "report")
    return data


def _yaml(tree: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)


def _correlation(data: Any) -> dict[str, float | None]:
    from scipy.stats import pearsonr, spearmanr

    pts = [(t.get("macs"), t.get("latency_ms")) for t in data.complete]
    pts = [(a, b) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
    if len(pts) < 3:
        return {"pearson": None, "spearman": None, "points": len(pts)}
    xs, ys = zip(*pts, strict=True)
    return {
        "pearson": float(pearsonr(xs, ys).statistic),
        "spearman": float(spearmanr(xs, ys).statistic),
        "points": len(pts),
    }


def _final(
    model: str, name: str, run_dir: Path, data: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from edgetrain.compress import Compression
    from edgetrain.runs import load_trained_model

    trained = load_trained_run(run_dir)
    test, train = trained.test_data(), trained.train_data()
    folder = args.work / "final" / model
    folder.mkdir(parents=True, exist_ok=True)
    sweep_dir = args.work / "sweeps" / data.name
    best = data.best(1)
    candidates: list[tuple[str, Any, dict[str, Any]]] = [("baseline", trained.model, data.baseline)]
    if data.reference:
        # pruned by the reference recipe and not retrained: its accuracy and latency
        # before retraining, next to the retrained reference's
        pruned = Compression(trained, _reference(name, args))
        candidates.append(("reference, not retrained", pruned.model, data.reference))
        reference = load_trained_model(sweep_dir / "reference" / "model.pt")
        candidates.append(("reference", reference, data.reference))
    if best:
        tuned = load_trained_model(sweep_dir / "trials" / f"{best[0].number:04d}" / "model.pt")
        candidates.append((f"best trial {best[0].number}", tuned, best[0].metrics))
    files: list[dict[str, Any]] = []
    for label, net, metrics in candidates:
        onnx = folder / f"{label.replace(', ', '-').replace(' ', '-')}.onnx"
        export_onnx(net, onnx)
        int8 = quantize_onnx(
            onnx, onnx.with_suffix(".int8.onnx"), calibration_data=_batches(train, 32)
        ).path
        for kind, path in (("fp32", onnx), ("int8", int8)):
            acc = evaluate_onnx(path, test)
            files.append(
                {
                    "model": model,
                    "candidate": label,
                    "format": kind,
                    "path": path,
                    "top1": acc["top1"],
                    "macs": metrics.get("macs"),
                    "params": metrics.get("params"),
                    "latencies": [],
                }
            )
    for _ in range(args.rounds):  # round-robin: every file sees the same conditions
        for f in files:
            f["latencies"].append(benchmark(f["path"], runs=100, repeats=1).latency_ms)
    base = statistics.median(files[0]["latencies"])
    for f in files:
        f["latency_ms"] = statistics.median(f["latencies"])
        f["latency_ratio"] = f["latency_ms"] / base
        # where the time goes (explains an int8 model that is not faster)
        f["op_ms"] = op_times(f["path"], runs=50) if f["candidate"] == "baseline" else None
        f["path"] = str(f["path"])
    return files


def _batches(dataset: Any, n: int) -> Any:
    from torch.utils.data import DataLoader

    for i, (x, _) in enumerate(DataLoader(dataset, batch_size=32)):
        if i >= n:
            return
        yield x


def _scatter(datas: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, data in datas.items():
        rows = data.complete
        ax.scatter(
            [t.get("macs") / 1e6 for t in rows], [t.get("latency_ms") for t in rows], label=model
        )
    ax.set_xlabel("inference MACs (M)")
    ax.set_ylabel("ONNX Runtime latency, 1 thread (ms)")
    ax.set_title("does latency follow MACs? (every sweep trial)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--epochs", type=int, default=15, help="baseline training epochs")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin latency rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--multiple-of",
        type=int,
        default=None,
        help="search with channel counts kept to a multiple",
    )
    parser.add_argument("--work", type=Path, default=RESULTS / "compression-work")
    args = parser.parse_args()
    rows, payload, datas = [], {"settings": {**vars(args), "work": str(args.work)}}, {}
    for name in args.models.split(","):
        model = f"{name}-m{args.multiple_of}" if args.multiple_of else name
        print(f"== {model}: training the baseline")
        run_dir = _train(name, args.epochs, args.work)
        print(f"== {model}: sweep of {args.trials} trials")
        data = _sweep(model, name, run_dir, args, args.work)
        datas[model] = data
        print(f"== {model}: final side-by-side measurement")
        files = _final(model, name, run_dir, data, args)
        best_top1 = files[0]["top1"]
        for f in files:
            rows.append(
                [
                    model,
                    f["candidate"],
                    f["format"],
                    f"{f['top1']:.2f}",
                    f"{f['top1'] - best_top1:+.2f}",
                    f"{f['params']:,}" if f["params"] else "-",
                    f"{f['macs'] / 1e6:.2f}" if f["macs"] else "-",
                    f"{f['latency_ms']:.3f}",
                    f"{f['latency_ratio']:.2f}",
                ]
            )
        payload[model] = {
            "files": files,
            "trials": len(data.complete),
            "failed": len(data.failed),
            "feasible": sum(t.feasible for t in data.complete),
            "beat_reference": len(data.beats_reference()),
            "ruined_rate": data.ruined_rate,
            "latency_vs_macs": _correlation(data),
            "importance": data.importance,
        }
    header = [
        "model",
        "candidate",
        "format",
        "top-1 %",
        "vs base",
        "params",
        "MACs (M)",
        "latency ms",
        "vs base FP32",
    ]
    print_table("compression: FP32 and int8 on ONNX Runtime (1 thread)", header, rows, width=170)
    for model in datas:
        by = {(f["candidate"], f["format"]): f for f in payload[model]["files"]}
        for kind in ("fp32", "int8"):
            before, after = by.get(("reference, not retrained", kind)), by.get(("reference", kind))
            if before and after:
                ratio = after["latency_ms"] / before["latency_ms"]
                payload[model][f"reference_retrained_latency_ratio_{kind}"] = ratio
                print(
                    f"{model} reference {kind}: top-1 {before['top1']:.2f} -> {after['top1']:.2f} "
                    f"by retraining; latency {before['latency_ms']:.3f} -> "
                    f"{after['latency_ms']:.3f} ms ({ratio:.3f}x)"
                )
    for model in datas:
        c = payload[model]["latency_vs_macs"]
        print(
            f"{model}: latency vs MACs over {c['points']} trials: Pearson {c['pearson']}, "
            f"Spearman {c['spearman']}"
        )
    for model in datas:
        base = [f for f in payload[model]["files"] if f["op_ms"]]
        ops = sorted(
            {op for f in base for op in f["op_ms"]}, key=lambda o: -base[-1]["op_ms"].get(o, 0)
        )
        print_table(
            f"{model} baseline: kernel ms per operator type (ORT profiler, batch 1)",
            ["operator", *[f["format"] for f in base]],
            [[op, *[f"{f['op_ms'].get(op, 0.0):.3f}" for f in base]] for op in ops[:8]],
        )
    _scatter(datas, RESULTS / "compression_latency_vs_macs.png")
    # Models measured by earlier invocations stay in the result file.
    previous = RESULTS / "compression.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        for model, result in old.items():
            if model not in payload and model not in ("machine", "settings"):
                payload[model] = result
    print(write_result("compression", payload))


if __name__ == "__main__":
    main()

"""L1 filter pruning at 50 %: edgetrain's ``l1_filter`` vs Torch-Pruning's magnitude pruner.

On the edge zoo (MobileNetV2, DS-CNN, ViT-tiny, ResNet-20) both prune every layer whose
filters can go at 50 %, ranked by L1 magnitude, with the classifier kept. Both pruned
models are counted by the same counter (Torch-Pruning's ``count_ops_and_params``), run on
one batch (shape and finiteness checked), and timed side by side in one process, one
thread, the median of ``--repeats`` runs on fresh copies. A second pair ranks by
Torch-Pruning's group importance (``importance: group`` against ``MagnitudePruner`` with
``GroupMagnitudeImportance(p=2)``) and checks that both keep bit-identical weights.

Usage:
    python benchmarks/pruning_vs_torch_pruning.py --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, print_table, write_result  # noqa: E402

from edgetrain import models  # noqa: E402
from edgetrain.compress import apply, l1_filter, load_recipe  # noqa: E402
from edgetrain.errors import EdgetrainError  # noqa: E402

CASES = {
    "mobilenet_v2": ({}, (3, 32, 32)),
    "ds_cnn": ({"size": "M"}, (1, 49, 10)),
    "vit_tiny": ({"depth": 4}, (3, 32, 32)),
    "resnet20": ({}, (3, 32, 32)),
}


RECIPE = {
    "version": 1,
    "pruners": {"all": {"method": "l1_filter", "sparsity": 0.5, "layers": ["*"]}},
}


def _edgetrain(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """``compress.apply``: the recipe's checks, the pruning, and its report (parameters
    and MACs before and after, counted by the cost model)."""
    pruned, _ = apply(model, RECIPE, example_input=example)
    return pruned


def _edgetrain_pruning(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """The same checks and pruning without the report, as Torch-Pruning's step has none."""
    layers = load_recipe(RECIPE).check(model, example)["all"]
    l1_filter(model, layers, 0.5, example_input=example)
    return model


def _edgetrain_group(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """The pruning alone, ranked by Torch-Pruning's group importance."""
    layers = load_recipe(RECIPE).check(model, example)["all"]
    l1_filter(model, layers, 0.5, importance="group", example_input=example)
    return model


def _torch_pruning(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    return _tp_magnitude(model, example, group=False)


def _torch_pruning_group(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    return _tp_magnitude(model, example, group=True)


def _tp_magnitude(model: torch.nn.Module, example: torch.Tensor, group: bool) -> torch.nn.Module:
    import torch_pruning as tp

    outputs = [model.get_submodule(n) for n in models.output_layers(model)]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    importance = (
        tp.importance.GroupMagnitudeImportance(p=2)
        if group
        else tp.importance.MagnitudeImportance(p=1)
    )
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=importance,
        pruning_ratio=0.5,
        ignored_layers=outputs,
        # whole heads, as edgetrain thins attention: half the heads go, each keeps its width
        num_heads=heads,
        prune_num_heads=bool(heads),
        prune_head_dims=False,
        head_pruning_ratio=0.5,
    )
    pruner.step()
    return model


def _measure(build: Any, fn: Any, example: torch.Tensor, repeats: int) -> dict[str, Any]:
    import torch_pruning as tp

    times, model, error = [], None, None
    for _ in range(repeats):
        fresh = copy.deepcopy(build).eval()
        start = time.perf_counter()
        try:
            model = fn(fresh, example)
        except (EdgetrainError, RuntimeError, ValueError, AssertionError) as exc:
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            break
        times.append(time.perf_counter() - start)
    if model is None:
        return {"error": error}
    macs, params = tp.utils.count_ops_and_params(model, example)
    with torch.no_grad():
        out = model(example)
    ok = tuple(out.shape) == (example.shape[0], 10) and bool(torch.isfinite(out).all())
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return {
        "seconds": statistics.median(times),
        "params": int(params),
        "macs": int(macs),
        "output_ok": ok,
        "weights_sha256": digest.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [], {}
    for name, (options, shape) in CASES.items():
        torch.manual_seed(0)
        net = models.create(name, num_classes=10, **options).eval()
        example = torch.randn(2, *shape)
        import torch_pruning as tp

        macs0, params0 = tp.utils.count_ops_and_params(net, example)
        ours = _measure(net, _edgetrain, example, args.repeats)
        bare = _measure(net, _edgetrain_pruning, example, args.repeats)
        theirs = _measure(net, _torch_pruning, example, args.repeats)
        group = _measure(net, _edgetrain_group, example, args.repeats)
        theirs_group = _measure(net, _torch_pruning_group, example, args.repeats)
        results[name] = {
            "before": {"params": params0, "macs": macs0},
            "edgetrain": ours,
            "edgetrain_no_report": bare,
            "torch_pruning": theirs,
            "edgetrain_group": group,
            "torch_pruning_group": theirs_group,
        }
        for label, r in (
            ("edgetrain apply", ours),
            ("edgetrain, no report", bare),
            ("torch-pruning", theirs),
            ("edgetrain importance=group", group),
            ("torch-pruning group importance", theirs_group),
        ):
            if "error" in r:
                rows.append([name, label, "-", "-", "-", "-", r["error"]])
                continue
            rows.append(
                [
                    name,
                    label,
                    f"{r['params'] / params0:.3f}",
                    f"{r['macs'] / macs0:.3f}",
                    f"{r['seconds']:.3f}",
                    "yes" if r["output_ok"] else "NO",
                    "",
                ]
            )
        if "error" not in ours and "error" not in theirs and "error" not in bare:
            results[name]["time_ratio"] = ours["seconds"] / theirs["seconds"]
            results[name]["time_ratio_no_report"] = bare["seconds"] / theirs["seconds"]
        if "error" not in group and "error" not in theirs_group:
            results[name]["group_time_ratio"] = group["seconds"] / theirs_group["seconds"]
            results[name]["group_identical_weights"] = (
                group["weights_sha256"] == theirs_group["weights_sha256"]
            )
    header = ["model", "pruner", "params kept", "MACs kept", "seconds", "output ok", "error"]
    print_table("L1 pruning at 50 %, every prunable layer", header, rows)
    for name, r in results.items():
        if "time_ratio" in r:
            print(
                f"{name}: edgetrain takes {r['time_ratio']:.2f}x Torch-Pruning's time "
                f"({r['time_ratio_no_report']:.2f}x without the report)"
            )
        if "group_time_ratio" in r:
            same = "identical" if r["group_identical_weights"] else "DIFFERENT"
            print(
                f"{name}: group importance: {same} weights, "
                f"{r['group_time_ratio']:.2f}x Torch-Pruning's time"
            )
    path = write_result("pruning_vs_torch_pruning", {"cases": results, "machine": machine()})
    print(f"written: {path}")


if __name__ == "__main__":
    main()

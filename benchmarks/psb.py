"""Progressive stochastic binarization of vgg_small on digits-32: accuracy vs samples,
fine-tuning through the straight-through estimator, options, and computational attention.

1. vgg_small (1 input channel) is trained ``--epochs`` epochs on digits-32 (SGD momentum
   0.9, cosine learning rate, crop augmentation): the float reference.
2. Converted with ``to_psb`` (no batch-norm in vgg_small, so nothing to fold), then
   fine-tuned ``--ft-epochs`` epochs at each ``--train-samples`` count (0: not
   fine-tuned) and evaluated ``--repeats`` times at each ``--eval-samples`` count:
   the train-samples x eval-samples grid of test top-1 (mean ± std over repeats) and
   cross-entropy (more sensitive than top-1 on this easy task), with
   the shifts and adds of one forward per image.
3. Options at ``--option-samples`` samples, not fine-tuned: pruning 25 / 50 % of each
   layer's smallest weights, p rounded to 4 / 2 / 1 bits, 16-bit fixed point Q7.8.
4. Computational attention on the not-fine-tuned model and on the model fine-tuned at
   the lowest nonzero train-samples: low 1 or 2 samples, high ``--high``, with and
   without dilation; top-1 of the low pass, the high pass, attention and the random
   mask of the same coverage (the four from the same two forwards), coverage, and
   shifts relative to the full high-sample forward (receptive fields counted).

Run: python benchmarks/psb.py [--epochs 8 --ft-epochs 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import matplotlib
import torch
from _common import RESULTS, print_table, write_result

from edgetrain import data
from edgetrain.compress import (
    SampleGrid,
    draw_sample_grid,
    evaluate_attention,
    finetune_psb,
    operation_cost,
    psb_accuracy,
    to_psb,
)
from edgetrain.engine import Trainer
from edgetrain.engine.evaluate import evaluate
from edgetrain.models import create

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def train_float(args: argparse.Namespace, train: Any, test: Any) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = create("vgg_small", in_channels=1, num_classes=10)
    trainer = Trainer(
        model,
        train,
        val_data=test,
        batch_size=32,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, weight_decay=5e-4),
        scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, args.epochs),
        progress=False,
        seed=args.seed,
        device="cpu",
    )
    trainer.fit(args.epochs)
    return trainer.model.eval()


def grid_runs(
    args: argparse.Namespace, model: torch.nn.Module, train: Any, test: Any
) -> tuple[SampleGrid, dict[int, torch.nn.Module], list[dict[str, Any]]]:
    """The train-samples x eval-samples grid; also returns the converted models."""
    loader = torch.utils.data.DataLoader(test, batch_size=256)
    reference = evaluate(model, loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
    scores, nets, timings = [], {}, []
    for t in args.train_samples:
        net = to_psb(copy.deepcopy(model), samples=max(t, 1))
        started = time.perf_counter()
        if t:
            finetune_psb(
                net, train, t, args.ft_epochs, lr=args.ft_lr, batch_size=32, seed=args.seed
            )
        timings.append({"train_samples": t, "finetune_s": time.perf_counter() - started})
        row = [psb_accuracy(net, test, e, args.repeats, seed=args.seed) for e in args.eval_samples]
        scores.append(row)
        nets[t] = net
        print(
            f"train-samples {t}: " + ", ".join(f"{c.top1:.1f} ({c.loss:.3f})" for c in row),
            flush=True,
        )
    grid = SampleGrid(
        list(args.train_samples),
        list(args.eval_samples),
        scores,
        reference["top1"],
        reference["loss"],
        args.repeats,
        {"epochs": args.ft_epochs, "lr": args.ft_lr, "batch_size": 32, "seed": args.seed},
    )
    return grid, nets, timings


def option_runs(args: argparse.Namespace, model: torch.nn.Module, test: Any) -> list[dict]:
    n = args.option_samples
    variants: list[tuple[str, dict[str, Any]]] = [
        ("plain", {}),
        ("prune 25%", {"prune": 0.25}),
        ("prune 50%", {"prune": 0.5}),
        ("p 4 bits", {"p_bits": 4}),
        ("p 2 bits", {"p_bits": 2}),
        ("p 1 bit", {"p_bits": 1}),
        ("fixed point Q7.8", {"fixed_point": 8}),
        ("prune 50% + p 2 bits + Q7.8", {"prune": 0.5, "p_bits": 2, "fixed_point": 8}),
    ]
    rows = []
    for label, options in variants:
        net = to_psb(copy.deepcopy(model), samples=n, **options)
        score = psb_accuracy(net, test, n, args.repeats, seed=args.seed)
        cost = operation_cost(net)
        rows.append(
            {
                "variant": label,
                "options": options,
                "samples": n,
                **score._asdict(),
                "shifts": cost.shifts,
                "adds": cost.adds,
            }
        )
        print(f"{label}: {score.top1:.2f} ± {score.top1_std:.2f}", flush=True)
    return rows


def attention_runs(
    args: argparse.Namespace, nets: dict[int, torch.nn.Module], test: Any
) -> list[dict[str, Any]]:
    rows = []
    tuned = [t for t in args.train_samples if t]
    for t in [0, *tuned[:1]]:
        for low in args.low:
            for dilate in (False, True):
                results = [
                    evaluate_attention(
                        nets[t], test, low=low, high=args.high, dilate=dilate, seed=args.seed + r
                    )
                    for r in range(args.repeats)
                ]
                row: dict[str, Any] = {
                    "train_samples": t,
                    "low": low,
                    "high": args.high,
                    "dilate": dilate,
                    "coverage": statistics.fmean(r.coverage for r in results),
                    "positions": results[0].positions,
                    "ops_ratio": statistics.fmean(r.ops_ratio for r in results),
                    "receptive_share": results[0].receptive_share,
                    "shifts": results[0].shifts,
                }
                for key in ("low", "high", "attention", "random"):
                    values = [r.top1[key] for r in results]
                    row[f"top1_{key}"] = statistics.fmean(values)
                    row[f"std_{key}"] = statistics.pstdev(values)
                    losses = [r.loss[key] for r in results]
                    row[f"loss_{key}"] = statistics.fmean(losses)
                    row[f"loss_std_{key}"] = statistics.pstdev(losses)
                # paired: attention and random share the two forwards of each repeat
                row["attention_minus_random"] = statistics.fmean(
                    r.top1["attention"] - r.top1["random"] for r in results
                )
                row["loss_attention_minus_random"] = statistics.fmean(
                    r.loss["attention"] - r.loss["random"] for r in results
                )
                rows.append(row)
                print(
                    f"attention t={t} low={low} dilate={dilate}: coverage {row['coverage']:.2f}, "
                    f"low {row['top1_low']:.1f}, attention {row['top1_attention']:.1f}, "
                    f"random {row['top1_random']:.1f}, high {row['top1_high']:.1f}; loss "
                    f"{row['loss_low']:.4f} / {row['loss_attention']:.4f} / "
                    f"{row['loss_random']:.4f} / {row['loss_high']:.4f}",
                    flush=True,
                )
    return rows


def plot(grid: SampleGrid, attention: list[dict[str, Any]], path: Any) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=110)
    draw_sample_grid(grid, left)
    left.set_title("vgg_small on digits-32: accuracy vs samples")
    labels = [
        f"t={r['train_samples']}\n{r['low']}->{r['high']}\n{'dilated' if r['dilate'] else 'plain'}"
        f"\ncov {r['coverage']:.2f}"
        for r in attention
    ]
    xs = range(len(attention))
    width = 0.2
    for j, key in enumerate(("low", "random", "attention", "high")):
        right.bar(
            [x + (j - 1.5) * width for x in xs],
            [r[f"loss_{key}"] for r in attention],
            width,
            yerr=[r[f"loss_std_{key}"] for r in attention],
            label=key,
            capsize=2,
        )
    right.set_xticks(list(xs), labels, fontsize="x-small")
    right.set_ylabel("test cross-entropy (lower is better)")
    right.set_title("computational attention vs a random mask of equal coverage")
    right.legend(fontsize="small", ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ft-epochs", type=int, default=2)
    parser.add_argument("--ft-lr", type=float, default=0.002)
    parser.add_argument("--train-samples", type=_ints, default=[0, 1, 4, 16])
    parser.add_argument("--eval-samples", type=_ints, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--option-samples", type=int, default=8)
    parser.add_argument("--low", type=_ints, default=[1, 2])
    parser.add_argument("--high", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    train = data.create("digits-32", "train", augment=[{"name": "crop", "padding": 2}])
    test = data.create("digits-32", "test")
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    model = train_float(args, train, test)
    phases["train float"] = time.perf_counter() - mark
    mark = time.perf_counter()
    grid, nets, timings = grid_runs(args, model, train, test)
    phases["grid"] = time.perf_counter() - mark
    shape = model.input_shape
    costs = {
        e: {
            "shifts": operation_cost(nets[0], shape, samples=e).shifts,
            "adds": operation_cost(nets[0], shape, samples=e).adds,
        }
        for e in args.eval_samples
    }
    products = operation_cost(nets[0], shape, samples=1).products
    print_table(
        f"vgg_small on digits-32: test top-1 (%) by STE train-samples (rows) and eval-samples "
        f"(columns), mean ± std of {args.repeats}; float {grid.float_top1:.2f}",
        ["train samples", *map(str, grid.eval_samples)],
        [
            [t if t else "none", *[f"{c.top1:.1f} ± {c.top1_std:.1f}" for c in row]]
            for t, row in zip(grid.train_samples, grid.scores, strict=True)
        ]
        + [
            [f"loss, {t if t else 'none'}", *[f"{c.loss:.4f}" for c in row]]
            for t, row in zip(grid.train_samples, grid.scores, strict=True)
        ]
        + [
            ["shifts / image", *[f"{costs[e]['shifts'] / 1e6:.1f} M" for e in grid.eval_samples]],
        ],
        width=180,
    )
    mark = time.perf_counter()
    options = option_runs(args, model, test)
    phases["options"] = time.perf_counter() - mark
    print_table(
        f"options at {args.option_samples} samples, not fine-tuned",
        ["variant", "top-1", "std", "loss", "shifts / image", "adds / image"],
        [
            [
                r["variant"],
                r["top1"],
                r["top1_std"],
                f"{r['loss']:.4f}",
                f"{r['shifts']:,}",
                f"{r['adds']:,}",
            ]
            for r in options
        ],
    )
    mark = time.perf_counter()
    attention = attention_runs(args, nets, test)
    phases["attention"] = time.perf_counter() - mark
    print_table(
        f"computational attention (mean of {args.repeats} seeds; {attention[0]['positions']} "
        "positions of the last 4x4 map)",
        [
            "train samples",
            "low -> high",
            "dilate",
            "coverage",
            "top-1 low",
            "top-1 random",
            "top-1 attention",
            "top-1 high",
            "attention - random",
            "loss low / random / attention / high",
            "shifts vs high",
        ],
        [
            [
                r["train_samples"] if r["train_samples"] else "none",
                f"{r['low']} -> {r['high']}",
                "yes" if r["dilate"] else "no",
                r["coverage"],
                r["top1_low"],
                r["top1_random"],
                r["top1_attention"],
                r["top1_high"],
                r["attention_minus_random"],
                f"{r['loss_low']:.4f} / {r['loss_random']:.4f} / {r['loss_attention']:.4f} / "
                f"{r['loss_high']:.4f}",
                r["ops_ratio"],
            ]
            for r in attention
        ],
        width=180,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "psb.png"
    plot(grid, attention, png)
    path = write_result(
        "psb",
        {
            "args": vars(args),
            "float_top1": grid.float_top1,
            "float_loss": grid.float_loss,
            "grid": grid.to_dict(),
            "products_per_image": products,
            "ops_per_image": costs,
            "finetune": timings,
            "options": options,
            "attention": attention,
            "phase_seconds": phases,
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"results: {path}, {png}")


if __name__ == "__main__":
    main()

"""PruneTrain vs baseline, adaptive batch on/off, and Net2Net growth, on digits-32.

1. ResNet-20 (1 input channel) trained for ``--epochs`` epochs at batch ``--batch-size``
   (SGD momentum 0.9, LR 0.1 divided by 10 at 75 %): the baseline, then PruneTrain at
   each ``--ratios`` penalty ratio (reconfiguring every ``--interval`` epochs).
   Reported: final and best top-1, inference MACs removed, cumulative training MACs
   removed (cost model, per epoch x samples), total wall time relative to the baseline,
   and the training-step time of each final architecture relative to the baseline's,
   timed round-robin in one process (the comparable timing; wall time is exposed to
   whatever else the machine runs).
2. PruneTrain at the largest ratio with adaptive batch size (constant step memory,
   linear LR scaling): batch sizes, epoch time and accuracy.
3. Growth: a half-width ResNet-20 trained ``--grow-epochs`` epochs, then widened to the
   full width with Net2Net (function-preserving), with random new channels (the
   control), and a full-width network trained from scratch; each then trains
   ``--grow-epochs`` more epochs. Reported: accuracy after equal epochs.

Run: python benchmarks/prunetrain.py [--epochs 80 --interval 4 --ratios 0.3,0.6] [--no-grow]
(about 45 minutes on two cores; at 40 epochs ratios 0.1 and 0.2 remove almost nothing:
the penalty needs thousands of steps at full LR on a set this small)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from _common import print_table, write_result

from edgetrain import data
from edgetrain.cost import analyze
from edgetrain.engine import Trainer
from edgetrain.models import create
from edgetrain.prune import AdaptiveBatch, PruneTrain, channel_groups, widen


def _data() -> tuple[Any, Any]:
    train = data.create("digits-32", "train", augment=[{"name": "crop", "padding": 2}])
    test = data.create("digits-32", "test")
    return train, test


def _fit(
    model: torch.nn.Module,
    epochs: int,
    callbacks: list[Any],
    lr: float,
    seed: int,
    batch_size: int = 64,
) -> Trainer:
    train, test = _data()
    trainer = Trainer(
        model,
        train,
        val_data=test,
        batch_size=batch_size,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=5e-4),
        # Step decay at 75 % (as PruneTrain's paper): the penalty keeps a large step long.
        scheduler=lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [int(0.75 * epochs)], 0.1),
        callbacks=callbacks,
        progress=False,
        seed=seed,
    )
    trainer.fit(epochs)
    return trainer


def _resnet(widths: tuple[int, int, int] = (16, 32, 64)) -> torch.nn.Module:
    """ResNet-20 (3 blocks per stage, 1x1-conv shortcuts) for 1-channel 32x32 digits."""
    return create(
        "resnet_cifar",
        blocks=[3, 3, 3],
        widths=list(widths),
        shortcut="conv1x1",
        in_channels=1,
        num_classes=10,
    )


def _summary(name: str, trainer: Trainer, baseline: dict[str, Any] | None) -> dict[str, Any]:
    row = _row(name, trainer, baseline)
    print(
        f"{name}: top-1 {row['final_top1']:.2f}, params {row['params']:,}, "
        f"inference MACs -{100 * row.get('inference_removed', 0):.1f}%, "
        f"train MACs -{100 * row.get('train_removed', 0):.1f}%, {row['wall_s']:.0f} s",
        flush=True,
    )
    return row


def _row(name: str, trainer: Trainer, baseline: dict[str, Any] | None) -> dict[str, Any]:
    hist = trainer.state.history
    model = trainer.model
    shape = model.input_shape
    inference = analyze(model, shape).total().forward_macs
    train_macs = sum(r.get("train_macs", 0) for r in hist)
    if not train_macs:  # the baseline has no PruneTrain records: cost model x samples
        step = analyze(model, shape).conventional.step_macs
        train_macs = step * len(trainer.train_loader.dataset) * len(hist)
    row = {
        "run": name,
        "final_top1": hist[-1]["val_top1"],
        "best_top1": max(r["val_top1"] for r in hist),
        "params": sum(p.numel() for p in model.parameters()),
        "inference_macs": inference,
        "train_macs": train_macs,
        "wall_s": sum(r["epoch_time"] for r in hist),
        "last_epoch_s": hist[-1]["epoch_time"],
        "epoch_times": [r["epoch_time"] for r in hist],
        "batch_sizes": [r["batch_size"] for r in hist],
        "lrs": [r["lr"] for r in hist],
    }
    if baseline is not None:
        row["inference_removed"] = 1 - inference / baseline["inference_macs"]
        row["train_removed"] = 1 - train_macs / baseline["train_macs"]
        row["wall_ratio"] = row["wall_s"] / baseline["wall_s"]
        row["last_epoch_ratio"] = row["last_epoch_s"] / baseline["last_epoch_s"]
        row["top1_delta"] = row["final_top1"] - baseline["final_top1"]
    return row


def step_times(
    nets: list[torch.nn.Module], batch: int = 64, steps: int = 8, repeats: int = 5
) -> list[float]:
    """Median seconds per training step of each model, timed round-robin (side by side)."""
    x = torch.randn(batch, *nets[0].input_shape)
    y = torch.randint(0, 10, (batch,))
    opts = [torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.9) for n in nets]
    times: list[list[float]] = [[] for _ in nets]
    for n in nets:
        n.train()
    for _ in range(repeats):
        for i, (n, opt) in enumerate(zip(nets, opts, strict=True)):
            started = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(n(x), y).backward()
                opt.step()
            times[i].append((time.perf_counter() - started) / steps)
    return [statistics.median(t) for t in times]


def prunetrain_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    torch.manual_seed(args.seed)
    base = _fit(_resnet(), args.epochs, [], args.lr, args.seed, args.batch_size)
    baseline = _summary("baseline", base, None)
    rows.append(baseline)
    finals = [copy.deepcopy(base.model)]
    ratios = [float(r) for r in args.ratios.split(",")]
    for ratio in ratios:
        torch.manual_seed(args.seed)
        cb = PruneTrain(
            ratio=ratio,
            interval=args.interval,
            threshold=args.threshold,
            stop_epoch=args.epochs - args.interval // 2 or None,
        )
        trainer = _fit(_resnet(), args.epochs, [cb], args.lr, args.seed, args.batch_size)
        rows.append(_summary(f"prunetrain {ratio:g}", trainer, baseline))
        finals.append(copy.deepcopy(trainer.model))
    if args.adaptive:
        ratio = ratios[-1]  # the strongest penalty: where the model shrinks most
        torch.manual_seed(args.seed)
        cb = PruneTrain(
            ratio=ratio,
            interval=args.interval,
            threshold=args.threshold,
            stop_epoch=args.epochs - args.interval // 2 or None,
        )
        trainer = _fit(
            _resnet(),
            args.epochs,
            [cb, AdaptiveBatch(max_batch=512)],
            args.lr,
            args.seed,
            args.batch_size,
        )
        rows.append(_summary(f"prunetrain {ratio:g} + adaptive batch", trainer, baseline))
        finals.append(copy.deepcopy(trainer.model))
    # The final architectures' training-step times, measured side by side.
    seconds = step_times(finals)
    for row, sec in zip(rows, seconds, strict=True):
        row["step_s"] = sec
        row["step_time_ratio"] = sec / seconds[0]
    return rows


def grow_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Half width for E epochs, then full width for E more (Net2Net / random / scratch)."""
    e = args.grow_epochs
    torch.manual_seed(args.seed)
    small = _fit(_resnet((8, 16, 32)), e, [], args.lr, args.seed, args.batch_size).model
    rows = []
    for init in ("net2net", "random"):
        model = copy.deepcopy(small).eval()
        x = torch.randn(8, *model.input_shape)
        with torch.no_grad():
            before = model(x)
        for group in channel_groups(model):
            widen(
                model,
                group.root,
                2 * group.size,
                init=init,
                generator=torch.Generator().manual_seed(args.seed),
            )
        with torch.no_grad():
            change = float((model(x) - before).norm() / before.norm())
        trainer = _fit(model, e, [], args.lr, args.seed + 1, args.batch_size)
        hist = trainer.state.history
        rows.append(
            {
                "run": f"grown ({init})",
                "output_change_at_growth": change,
                "first_epoch_top1": hist[0]["val_top1"],
                "final_top1": hist[-1]["val_top1"],
                "params": sum(p.numel() for p in trainer.model.parameters()),
            }
        )
    torch.manual_seed(args.seed)
    trainer = _fit(_resnet(), e, [], args.lr, args.seed + 1, args.batch_size)
    hist = trainer.state.history
    rows.append(
        {
            "run": "from scratch (full width)",
            "output_change_at_growth": None,
            "first_epoch_top1": hist[0]["val_top1"],
            "final_top1": hist[-1]["val_top1"],
            "params": sum(p.numel() for p in trainer.model.parameters()),
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--ratios", default="0.3,0.6")
    parser.add_argument("--threshold", type=float, default=1e-4)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grow-epochs", type=int, default=6)
    parser.add_argument("--no-adaptive", dest="adaptive", action="store_false")
    parser.add_argument("--no-grow", dest="grow", action="store_false")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = prunetrain_runs(args)
    print_table(
        f"PruneTrain, resnet20 on digits-32, {args.epochs} epochs, interval {args.interval}",
        [
            "run",
            "final top-1",
            "best top-1",
            "Δ top-1",
            "params",
            "inference MACs removed",
            "train MACs removed",
            "wall ratio",
            "final step-time ratio",
            "last batch",
        ],
        [
            [
                r["run"],
                r["final_top1"],
                r["best_top1"],
                r.get("top1_delta", 0.0),
                f"{r['params']:,}",
                r.get("inference_removed", 0.0),
                r.get("train_removed", 0.0),
                r.get("wall_ratio", 1.0),
                r["step_time_ratio"],
                r["batch_sizes"][-1],
            ]
            for r in rows
        ],
    )
    grow = grow_runs(args) if args.grow else []
    if grow:
        print_table(
            f"Net2Net growth: half width {args.grow_epochs} epochs, then full width "
            f"{args.grow_epochs} epochs",
            ["run", "output change at growth", "top-1 after 1 epoch", "final top-1", "params"],
            [
                [
                    r["run"],
                    "-"
                    if r["output_change_at_growth"] is None
                    else f"{r['output_change_at_growth']:.2e}",
                    r["first_epoch_top1"],
                    r["final_top1"],
                    f"{r['params']:,}",
                ]
                for r in grow
            ],
        )
    path = write_result(
        "prunetrain",
        {
            "args": vars(args),
            "prunetrain": rows,
            "grow": grow,
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

"""Trainer overhead against a minimal hand-written PyTorch loop.

Same model (vgg_small), data (digits-32 train/test), batch size, optimizer and epoch
count; the Trainer runs with its default callbacks (metrics logging, checkpoint at
every epoch end, progress bar) and its per-epoch evaluation, the hand loop evaluates
too. Runs alternate (hand, trainer, hand, trainer ...) in one process so machine noise
hits both; the reported figure is the median of the paired time ratios.

On ``--device cuda`` both loops move the model and every batch to the GPU and the clock
stops after a synchronisation.

Usage: python benchmarks/engine_overhead.py [--repeats 5] [--epochs 1] [--device cuda]
Target: ratio <= 1.05 at batch 64 and <= 1.10 at batch 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _common import median_ratio, print_table, write_result
from torch import nn
from torch.utils.data import DataLoader

from edgetrain import data, models
from edgetrain.engine import Trainer

TARGETS = {64: 1.05, 1: 1.10}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hand_loop(
    model: nn.Module, train, test, batch_size: int, epochs: int, device: str = "cpu"
) -> float:
    """The loop a PyTorch user writes by hand; returns seconds."""
    torch.manual_seed(0)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test, batch_size=256)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
    _sync(device)
    return time.perf_counter() - start


def trainer_loop(
    model: nn.Module, train, test, batch_size: int, epochs: int, device: str = "cpu"
) -> float:
    """The Trainer with its default callbacks writing a real run directory; seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model,
            train,
            val_data=test,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
            batch_size=batch_size,
            run_dir=f"{tmp}/run",
            progress=True,
            device=device,
        )
        start = time.perf_counter()
        trainer.fit(epochs)
        _sync(device)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    train = data.create("digits-32", "train")
    test = data.create("digits-32", "test")
    rows, results = [], {}
    for bs in args.batch_sizes:
        hand, ours = [], []
        for _ in range(args.repeats):
            net = models.create("vgg_small", in_channels=1)
            hand.append(hand_loop(net, train, test, bs, args.epochs, args.device))
            net = models.create("vgg_small", in_channels=1)
            ours.append(trainer_loop(net, train, test, bs, args.epochs, args.device))
        ratio = median_ratio(ours, hand)
        target = TARGETS.get(bs)
        results[f"batch_{bs}"] = {
            "hand_seconds": hand,
            "trainer_seconds": ours,
            "median_ratio": ratio,
            "target": target,
            "steps_per_epoch": -(-len(train) // bs),
        }
        rows.append(
            [
                bs,
                min(hand),
                min(ours),
                ratio,
                target or "-",
                "yes" if target and ratio <= target else "no",
            ]
        )
    print_table(
        f"Trainer vs hand loop, vgg_small on digits-32 ({args.device}), {args.epochs} epoch(s), "
        f"{args.repeats} paired repeats",
        ["batch", "hand s (min)", "trainer s (min)", "median ratio", "target", "met"],
        rows,
    )
    name = "engine_overhead" if args.device == "cpu" else f"engine_overhead-{args.device}"
    path = write_result(
        name,
        {"epochs": args.epochs, "repeats": args.repeats, "device": args.device, "results": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

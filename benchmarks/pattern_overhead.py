"""Cost of the activation-pattern recorder: per training step and per measurement.

1. Training step: a plain SGD step (forward, backward, step) against the same step with
   a :class:`PatternRecorder` counting every activation layer, in hash mode (the default
   2^20 buckets per layer) and in exact mode (``torch.unique``, layers of <= 64
   channels). Blocks of ``--steps`` steps run round-robin (plain, hash, exact, plain,
   ...) ``--repeats`` times in one process; the figure is the median of the paired
   ratios of each recorder block to its plain block.
2. Dataset measurement: :func:`measure_patterns` (frozen train-mode copy, fixed order,
   RNG saved and restored) over ``--samples`` inputs in batches of ``--eval-batch``,
   in samples/s, against plain train-mode forward passes over the same batches (no
   gradients), timed round-robin as well.

Models: ``vgg_small`` and ``resnet20`` (3x32x32 inputs, 10 classes) on random inputs.

Usage: python benchmarks/pattern_overhead.py [--batch 64 --steps 4 --repeats 5 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import median_ratio, print_table, write_result
from torch import nn

from edgetrain.diagnostics import (
    OccupancyWarning,
    PatternRecorder,
    activation_layers,
    measure_patterns,
)
from edgetrain.models import create

MODELS = ("vgg_small", "resnet20")
MODES = ("hash", "exact")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def step_overhead(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per training step, plain and with the recorder on, side by side."""
    device = torch.device(args.device)
    model = model.to(device).train()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    recorders = {m: PatternRecorder(model, mode=m) for m in MODES}

    def steps() -> None:
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    def recorded(mode: str) -> Callable[[], None]:
        def run() -> None:
            with recorders[mode]:
                steps()

        return run

    for warm in (steps, *(recorded(m) for m in MODES)):  # allocate tables, warm caches
        warm()
    plain: list[float] = []
    with_recorder: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        plain.append(_timed(steps, device) / args.steps)
        for mode in MODES:
            with_recorder[mode].append(_timed(recorded(mode), device) / args.steps)
    out: dict[str, Any] = {"plain_step_s": statistics.median(plain)}
    for mode in MODES:
        out[f"{mode}_step_s"] = statistics.median(with_recorder[mode])
        out[f"{mode}_ratio"] = median_ratio(with_recorder[mode], plain)
    return out


def measurement_throughput(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Samples/s of a dataset measurement vs plain train-mode forward passes."""
    device = torch.device(args.device)
    model = model.to(device)
    inputs = torch.randn(args.samples, 3, 32, 32)

    def forward_only() -> None:
        model.train()
        with torch.no_grad():
            for chunk in inputs.split(args.eval_batch):
                model(chunk.to(device))

    def measure(mode: str) -> Callable[[], None]:
        def run() -> None:
            measure_patterns(model, inputs, batch_size=args.eval_batch, mode=mode)

        return run

    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain: list[float] = []
    timed: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.measure_repeats):
        plain.append(_timed(forward_only, device))
        model.load_state_dict(state)  # plain train-mode passes moved the BN statistics
        for mode in MODES:
            timed[mode].append(_timed(measure(mode), device))
    out: dict[str, Any] = {"forward_samples_per_s": args.samples / statistics.median(plain)}
    for mode in MODES:
        out[f"{mode}_samples_per_s"] = args.samples / statistics.median(timed[mode])
        out[f"{mode}_time_ratio"] = median_ratio(timed[mode], plain)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="round-robin rounds")
    parser.add_argument("--samples", type=int, default=1024, help="inputs per measurement")
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--measure-repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Random inputs give nearly one pattern per sample: tables fill; timing is unaffected.
    warnings.simplefilter("ignore", OccupancyWarning)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        model = create(name, in_channels=3, num_classes=10)
        row: dict[str, Any] = {
            "model": name,
            "activation_layers": len(activation_layers(model)),
            **step_overhead(model, args),
            **measurement_throughput(model, args),
        }
        rows.append(row)
        print(f"{name}: done", flush=True)
    print_table(
        f"Pattern recorder cost, batch {args.batch} (3x32x32), {args.device}, "
        f"{torch.get_num_threads()} threads",
        [
            "model",
            "act. layers",
            "plain step ms",
            "hash step ratio",
            "exact step ratio",
            "forward samples/s",
            "measure hash samples/s",
            "measure exact samples/s",
            "measure hash / forward",
            "measure exact / forward",
        ],
        [
            [
                r["model"],
                r["activation_layers"],
                1000 * r["plain_step_s"],
                r["hash_ratio"],
                r["exact_ratio"],
                f"{r['forward_samples_per_s']:,.0f}",
                f"{r['hash_samples_per_s']:,.0f}",
                f"{r['exact_samples_per_s']:,.0f}",
                r["hash_time_ratio"],
                r["exact_time_ratio"],
            ]
            for r in rows
        ],
        width=200,
    )
    path = write_result("pattern_overhead", {"settings": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Layer schedules: measured saving per cycle vs the cost model's prediction.

Scenario 1 (vgg_small, 1x32x32) and scenario 2 (kws_cnn, 1x32x32) at batch 1, plain SGD,
trained through the Trainer with the `LayerSchedule` callback. The conventional cycle
(every trained row every step) and the schedule's cycle alternate inside one training
run: the callback runs the 2T-column matrix [conventional | schedule] (an `_m`
schedule with its cost-model placement), and a callback times every training step (from
its start, batch loaded, to its end: data loading is left out, as the cost model leaves
it out) by column. Per epoch: each column's median step time; a cycle is the sum of its T
columns; the measured saving is 1 - schedule cycle / conventional cycle. The result is
the median over `--models` fresh models x `--epochs` epochs each (each model's first
epoch is a warm-up and not counted).

Why interleaved: on a shared VM the step time of a fresh model moves as a whole, epoch to
epoch and process to process (kws_cnn's conventional epochs ranged 5.6-6.5 ms/step in one
run), by more than most schedules save. Alternating cycles inside one run puts both arms
on the same model, the same memory layout and the same minute of machine load.

The measured saving is compared with the predicted saving 1 - ops(schedule) /
ops(conventional), from the raw counts (`reference`), from a profile calibrated on this
machine at the start of the run (`host`: this CPU's per-term rates, per-call costs and,
for linear layers, per-weight costs; `edgetrain cost calibrate`), and from that profile
fitted to the scenario's model in two ways (`edgetrain cost calibrate --model`), both
timed in a plain loop before the schedules run: `anchored` (`--anchor offset`) times the
conventional step and charges its whole residual as a fixed cost per step; `fitted`
(`--anchor scale`) times the steps that train the last 1, 2, ..., N of the schedule's
rows, in turn, and fits a per-step offset plus one factor on every layer term; `layers`
(`--anchor layers`, the default) also times each row alone and all rows but each (on 5
fresh copies, in a new random order every round), and fits what each step saves with
one factor per group: the backward of activations, pooling and normalisation, and per
row the input gradient and the weight gradient with the update of its conv/linear
layers. No schedule's own step is timed for any of them.

glibc's heap trimming is switched off first (`keep_freed_memory`): otherwise, in some runs
and not others, the 6.4 MB `fc1` gradient that `set_to_none` frees every step is handed
back to the kernel and faulted in again by the next backward, which costs more per step
than a schedule saves.

Usage: python benchmarks/schedule_speed.py [--models 5] [--epochs 3] [--steps 256]
       [--threads N] [--scenario kws_cnn] [--schedule 4442 ...] [--device cuda]
With ``--device cuda`` the steps run on the GPU (each step's clock synchronises the
device at both ends) and only the raw-count prediction is compared: the calibrated
profiles time this machine's CPU, not the GPU.
The last column compares the same in time saved per step, measured and as the host
profile predicts it (its predicted step time times its predicted saving): where the
profile misses part of a step's time that no schedule removes, the relative saving is
over-predicted while the time saved can still match.

Target: the measured saving realises at least 80% of the predicted saving, every schedule.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import print_table, write_result
from torch import nn

from edgetrain.cost import DeviceProfile
from edgetrain.cost.calibrate import ANCHORS, anchor_profile, calibrate
from edgetrain.data import ArrayDataset, DatasetInfo
from edgetrain.engine import Callback, Trainer, keep_freed_memory
from edgetrain.finetune import LayerSchedule, Schedule, schedule_cost
from edgetrain.finetune.costing import optimise_placement, schedule_layers
from edgetrain.models import create

SCENARIOS = {"1 vgg_small": ("vgg_small", {"in_channels": 1}), "2 kws_cnn": ("kws_cnn", {})}
SCHEDULES = ["4442", "4432", "4422", "4422_m", "4421", "4211_m"]
# predictions of profiles timed on this CPU: the calibrated profile, and it anchored on
# the scenario's model by each of `edgetrain cost calibrate --anchor`'s methods
ROW_OF_ANCHOR = {"offset": "anchored", "scale": "fitted", "layers": "per-layer"}
ANCHOR_ROWS = ("host", *ROW_OF_ANCHOR.values())


class ColumnClock(Callback):
    """Training-step seconds by schedule column, per epoch (data loading left out)."""

    def __init__(self, schedule: LayerSchedule, sync: bool = False) -> None:
        self.schedule = schedule
        self.sync = sync  # a GPU step ends when its kernels have run, not when queued
        self.epochs: list[dict[int, list[float]]] = []
        self._start = 0.0
        self._column = 0

    def on_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        self.epochs.append({})

    def on_batch_start(self, trainer: Trainer, model: nn.Module, batch: Any, index: int) -> None:
        self._column = self.schedule.column
        if self.sync:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        if self.sync:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        self.epochs[-1].setdefault(self._column, []).append(seconds)


def interleaved(schedule: Schedule) -> Schedule:
    """The 2T-column matrix: the conventional cycle of ``schedule``'s rows, then its own."""
    t = schedule.cycle_length
    rows = [("1" * t if any(row) else "0" * t) + "".join(map(str, row)) for row in schedule.pattern]
    return Schedule.from_matrix(rows, name=f"conventional|{schedule}")


def cycle_seconds(
    name: str,
    options: dict,
    schedule: Schedule,
    data: ArrayDataset,
    epochs: int,
    seed: int,
    device: str = "cpu",
) -> list[tuple[float, float]]:
    """Per timed epoch of one fresh model: (conventional, schedule) seconds per cycle, each
    the sum of its columns' median step times."""
    torch.manual_seed(seed)
    model = create(name, **options)
    scheduler = LayerSchedule(interleaved(schedule), optimise_m=False)
    clock = ColumnClock(scheduler, sync=device.startswith("cuda"))
    trainer = Trainer(
        model,
        data,
        batch_size=1,
        progress=False,
        device=device,
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-4),
        callbacks=[scheduler, clock],
    )
    trainer.fit(epochs + 1)
    t = schedule.cycle_length
    out = []
    for columns in clock.epochs[1:]:
        median = {c: statistics.median(v) for c, v in columns.items()}
        out.append((sum(median[c] for c in range(t)), sum(median[c] for c in range(t, 2 * t))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=5, help="fresh models per schedule")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--scenario", action="append", help="run only scenarios whose name contains this"
    )
    parser.add_argument("--schedule", action="append", choices=SCHEDULES)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    steady_heap = keep_freed_memory()
    scenarios = {
        k: v
        for k, v in SCENARIOS.items()
        if not args.scenario or any(part in k for part in args.scenario)
    }
    schedules = args.schedule or SCHEDULES
    host = None if gpu else calibrate()
    nan = float("nan")
    rows, records = [], []
    for scenario, (name, options) in scenarios.items():
        model = create(name, **options)
        shape = tuple(model.input_shape)
        info = DatasetInfo(
            "random",
            "classification",
            shape,
            tuple("abcdefgh"),
            {"train": args.steps, "test": 0},
            "random",
        )
        data = ArrayDataset(
            torch.randn(args.steps, *shape), torch.randint(0, 8, (args.steps,)), info
        )
        anchored: dict[tuple[str, ...], dict[str, DeviceProfile]] = {}
        for text in schedules:
            schedule = Schedule.parse(text)
            if schedule.memory_optimised:
                schedule = optimise_placement(schedule, model, shape)
            layers = tuple(schedule_layers(model, schedule))
            if host is not None and layers not in anchored:  # steps of these rows, timed
                anchored[layers] = {
                    mode: anchor_profile(host, model, shape, plan=list(layers), anchor=mode)
                    for mode in ANCHORS
                }
            pairs = [
                pair
                for seed in range(args.models)
                for pair in cycle_seconds(
                    name, options, schedule, data, args.epochs, seed, args.device
                )
            ]
            t = schedule.cycle_length
            savings = [1 - ours / conv for conv, ours in pairs]
            measured = statistics.median(savings)
            q1, _, q3 = statistics.quantiles(savings, n=4) if len(savings) > 1 else [measured] * 3
            ref = schedule_cost(model, shape, schedule)
            predicted = {"reference": 1 - ref.relative_ops, **dict.fromkeys(ANCHOR_ROWS, nan)}
            conv_step = statistics.median(c for c, _ in pairs) / t
            conv_steps = dict.fromkeys(ANCHOR_ROWS, nan)
            if host is not None:
                profiles = {
                    "host": host,
                    **{ROW_OF_ANCHOR[m]: p for m, p in anchored[layers].items()},
                }
                for row, profile in profiles.items():
                    cost = schedule_cost(model, shape, schedule, profile=profile)
                    predicted[row] = 1 - cost.relative_estimated_ops
                    assert host.peak_macs_per_s is not None
                    conv_steps[row] = cost.conventional.estimated_ops / host.peak_macs_per_s
            conv_est = conv_steps["host"]
            realised = {k: measured / v if v > 0 else nan for k, v in predicted.items()}
            # the same comparison in time saved per step
            saved = statistics.median((c - o) / t for c, o in pairs)
            saved_est = conv_est * predicted["host"]
            records.append(
                {
                    "scenario": scenario,
                    "schedule": text,
                    "placement": schedule.bits(),
                    "measured_saving": measured,
                    "measured_saving_quartiles": [q1, q3],
                    "predicted_saving": predicted,
                    "realised": realised,
                    "conventional_step_seconds": conv_step,
                    **{f"conventional_step_seconds_{r}": v for r, v in conv_steps.items()},
                    "saved_seconds_per_step": saved,
                    "saved_seconds_per_step_host": saved_est,
                    "savings": savings,
                    "cycle_seconds": pairs,
                }
            )
            rows.append(
                [
                    scenario,
                    text,
                    f"{1e3 * conv_step:.2f} / {1e3 * conv_est:.2f}",
                    measured,
                    f"{q1:.3f}-{q3:.3f}",
                    *(predicted[r] for r in ("reference", *ANCHOR_ROWS)),
                    *(realised[r] for r in ("reference", *ANCHOR_ROWS)),
                    f"{1e6 * saved:.0f} / {1e6 * saved_est:.0f}",
                ]
            )
    print_table(
        f"schedule saving per cycle on {args.device}, batch 1, {args.steps} steps, "
        f"{args.models} models x {args.epochs} epochs, cycles interleaved",
        [
            "scenario",
            "schedule",
            "conv. ms/step meas. / host",
            "measured",
            "quartiles",
            *(f"pred. ({r})" for r in ("ref", *ANCHOR_ROWS)),
            *(f"realised ({r})" for r in ("ref", *ANCHOR_ROWS)),
            "us saved/step meas. / host",
        ],
        rows,
    )
    subset = len(scenarios) < len(SCENARIOS) or len(schedules) < len(SCHEDULES)
    stem = "schedule_speed_subset" if subset else "schedule_speed"
    path = write_result(
        f"{stem}-cuda" if gpu else stem,
        {
            "device": args.device,
            "steps": args.steps,
            "models": args.models,
            "epochs": args.epochs,
            "steady_heap": steady_heap,
            "records": records,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

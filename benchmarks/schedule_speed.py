"""Layer schedules: measured wall-clock saving per cycle vs the cost model's prediction.

Scenario 1 (vgg_small, 1x32x32) and scenario 2 (kws_cnn, 1x32x32) at batch 1, plain SGD:
training epochs of 256 steps run through the Trainer with the `LayerSchedule` callback,
alternating each schedule with the conventional run of the same rows (every row every
step) in one process. A callback times every cycle (T steps: every column of the
schedule once) twice: the training steps' own time (from a step's start, with its batch
loaded, to its end: data loading is left out, as the cost model leaves it out) and the
wall clock with data loading. Each epoch gives T-step cycle times; the epoch's median
cycle is robust to the other load of a shared machine (a preempted cycle is an outlier,
not a shift of the mean). The measured saving 1 - t(schedule)/t(conv.) is the median over
the paired epochs of the ratio of their median cycles; realised uses the steps' time. It is compared
with the predicted saving 1 - ops(schedule)/ops(conventional), from the raw counts
(`reference`) and from a profile calibrated on this machine in the same run (`host`: the
cost model with this CPU's per-term rates and per-call costs, `edgetrain cost calibrate`).

glibc's heap trimming is switched off first (`keep_freed_memory`): otherwise, in some runs
and not others, the 6.4 MB `fc1` gradient that `set_to_none` frees every step is handed
back to the kernel and faulted in again by the next backward, which costs more per step
than a schedule saves. Each scenario starts with one untimed epoch.

Usage: python benchmarks/schedule_speed.py [--repeats 9] [--steps 256] [--threads N]
       [--scenario kws_cnn] [--schedule 4442 ...]
Target: the measured saving realises at least 80% of the predicted saving, every schedule.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import median_ratio, print_table, write_result
from torch import nn

from edgetrain.cost.calibrate import calibrate
from edgetrain.data import ArrayDataset, DatasetInfo
from edgetrain.engine import Callback, Trainer, keep_freed_memory
from edgetrain.finetune import LayerSchedule, Schedule, schedule_cost
from edgetrain.models import create

SCENARIOS = {"1 vgg_small": ("vgg_small", {"in_channels": 1}), "2 kws_cnn": ("kws_cnn", {})}
SCHEDULES = ["4442", "4432", "4422", "4422_m", "4421", "4211_m"]


class CycleClock(Callback):
    """Per ``length``-step cycle of an epoch: wall-clock time (stamped at the start of
    each cycle) and training-step time (from each step's start to its end: the batch is
    already loaded, so data loading is left out, as the cost model leaves it out)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.stamps: list[float] = []
        self.steps: list[float] = []
        self._step_start = 0.0
        self._cycle = 0.0

    def on_batch_start(self, trainer: Trainer, model: nn.Module, batch: Any, index: int) -> None:
        now = time.perf_counter()
        if index % self.length == 0:
            self.stamps.append(now)
        self._step_start = now

    def on_batch_end(
        self, trainer: Trainer, model: nn.Module, outputs: torch.Tensor, loss: torch.Tensor
    ) -> None:
        self._cycle += time.perf_counter() - self._step_start
        if (trainer.state.global_step) % self.length == 0:
            self.steps.append(self._cycle)
            self._cycle = 0.0

    def on_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        self.stamps.append(time.perf_counter())  # closes the last cycle

    def cycles(self) -> list[float]:
        """Wall-clock seconds of each complete cycle."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)][:-1]


def cycle_seconds(
    name: str, options: dict, schedule: Schedule, data: ArrayDataset
) -> tuple[float, float]:
    """Median seconds of one cycle of ``schedule`` over one training epoch: the steps'
    own time, and wall clock (with data loading)."""
    torch.manual_seed(0)
    model = create(name, **options)
    clock = CycleClock(schedule.cycle_length)
    trainer = Trainer(
        model,
        data,
        batch_size=1,
        progress=False,
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-4),
        callbacks=[LayerSchedule(str(schedule)), clock],
    )
    trainer.fit(1)
    return statistics.median(clock.steps), statistics.median(clock.cycles())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--scenario", action="append", help="run only scenarios whose name contains this"
    )
    parser.add_argument("--schedule", action="append", choices=SCHEDULES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steady_heap = keep_freed_memory()
    scenarios = {
        k: v
        for k, v in SCENARIOS.items()
        if not args.scenario or any(part in k for part in args.scenario)
    }
    schedules = args.schedule or SCHEDULES
    host = calibrate()
    rows, records = [], []
    for scenario, (name, options) in scenarios.items():
        model = create(name, **options)
        shape = model.input_shape
        x = torch.randn(args.steps, *shape)
        info = DatasetInfo(
            "random",
            "classification",
            shape,
            tuple("abcdefgh"),
            {"train": args.steps, "test": 0},
            "random",
        )
        data = ArrayDataset(x, torch.randint(0, 8, (args.steps,)), info)
        cycle_seconds(name, options, Schedule.parse(schedules[0]).in_mode("conventional"), data)
        for text in schedules:
            schedule = Schedule.parse(text)
            conventional = schedule.in_mode("conventional")
            ours, base = [], []
            for _ in range(args.repeats):
                base.append(cycle_seconds(name, options, conventional, data))
                ours.append(cycle_seconds(name, options, schedule, data))
            measured = 1 - median_ratio([t[0] for t in ours], [t[0] for t in base])
            wall = 1 - median_ratio([t[1] for t in ours], [t[1] for t in base])
            ref = schedule_cost(model, shape, schedule)
            cal = schedule_cost(model, shape, schedule, profile=host)
            predicted_ref = 1 - ref.relative_ops
            predicted_cal = 1 - (
                sum(s.estimated_ops for s in cal.steps)
                / len(cal.steps)
                / cal.conventional.estimated_ops
            )
            realised = measured / predicted_ref if predicted_ref > 0 else float("nan")
            realised_cal = measured / predicted_cal if predicted_cal > 0 else float("nan")
            records.append(
                {
                    "scenario": scenario,
                    "schedule": text,
                    "measured_saving": measured,
                    "measured_saving_wall": wall,
                    "predicted_saving_reference": predicted_ref,
                    "predicted_saving_calibrated": predicted_cal,
                    "realised_reference": realised,
                    "realised_calibrated": realised_cal,
                    "schedule_cycle_seconds": [t[0] for t in ours],
                    "conventional_cycle_seconds": [t[0] for t in base],
                    "schedule_cycle_wall_seconds": [t[1] for t in ours],
                    "conventional_cycle_wall_seconds": [t[1] for t in base],
                }
            )
            rows.append(
                [
                    scenario,
                    text,
                    1e3 * statistics.median(t[0] for t in base) / schedule.cycle_length,
                    wall,
                    measured,
                    predicted_ref,
                    predicted_cal,
                    realised,
                    realised_cal,
                    "yes" if realised_cal >= 0.8 else "no",
                ]
            )
    print_table(
        f"schedule saving per step, batch 1, {args.steps} steps, {args.repeats} paired repeats",
        [
            "scenario",
            "schedule",
            "conv. ms/step",
            "measured (wall)",
            "measured (steps)",
            "predicted (ref)",
            "predicted (host)",
            "realised (ref)",
            "realised (host)",
            ">= 80% (host)",
        ],
        rows,
    )
    subset = len(scenarios) < len(SCENARIOS) or len(schedules) < len(SCHEDULES)
    path = write_result(
        "schedule_speed_subset" if subset else "schedule_speed",
        {
            "steps": args.steps,
            "repeats": args.repeats,
            "steady_heap": steady_heap,
            "records": records,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Layer schedules: measured wall-clock saving per cycle vs the cost model's prediction.

Scenario 1 (vgg_small, 1x32x32) and scenario 2 (kws_cnn, 1x32x32) at batch 1, plain SGD:
training epochs of 256 steps run through the Trainer with the `LayerSchedule` callback,
alternating each schedule with the conventional run of the same rows (every row every
step) in one process; the measured saving 1 - t(schedule)/t(conventional) is compared
with the predicted saving 1 - ops(schedule)/ops(conventional), from the raw counts and
from a profile calibrated on this machine in the same run.

Usage: python benchmarks/schedule_speed.py [--repeats 3] [--steps 256]
Target: the measured saving realises at least 80% of the predicted saving, every schedule.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import median_ratio, print_table, write_result

from edgetrain.cost.calibrate import calibrate
from edgetrain.data import ArrayDataset, DatasetInfo
from edgetrain.engine import Trainer
from edgetrain.finetune import LayerSchedule, Schedule, schedule_cost
from edgetrain.models import create

SCENARIOS = {"1 vgg_small": ("vgg_small", {"in_channels": 1}), "2 kws_cnn": ("kws_cnn", {})}
SCHEDULES = ["4442", "4432", "4422", "4422_m", "4421", "4211_m"]


def epoch_seconds(name: str, options: dict, schedule: str, data: ArrayDataset) -> float:
    """Training time of one epoch (no evaluation) under ``schedule``."""
    torch.manual_seed(0)
    model = create(name, **options)
    trainer = Trainer(
        model,
        data,
        batch_size=1,
        progress=False,
        device="cpu",
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-4),
        callbacks=[LayerSchedule(schedule)],
    )
    return trainer.fit(1).history[-1]["epoch_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=256)
    args = parser.parse_args()
    host = calibrate(quick=True)
    rows, records = [], []
    for scenario, (name, options) in SCENARIOS.items():
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
        for text in SCHEDULES:
            schedule = Schedule.parse(text)
            conventional = schedule.in_mode("conventional")
            ours, base = [], []
            for _ in range(args.repeats):
                base.append(epoch_seconds(name, options, str(conventional), data))
                ours.append(epoch_seconds(name, options, text, data))
            measured = 1 - median_ratio(ours, base)
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
                    "predicted_saving_reference": predicted_ref,
                    "predicted_saving_calibrated": predicted_cal,
                    "realised_reference": realised,
                    "realised_calibrated": realised_cal,
                    "schedule_seconds": ours,
                    "conventional_seconds": base,
                }
            )
            rows.append(
                [
                    scenario,
                    text,
                    1e3 * statistics.median(base) / args.steps,
                    measured,
                    predicted_ref,
                    predicted_cal,
                    realised,
                    realised_cal,
                    "yes" if realised >= 0.8 else "no",
                ]
            )
    print_table(
        f"schedule saving per step, batch 1, {args.steps} steps, {args.repeats} paired repeats",
        [
            "scenario",
            "schedule",
            "conv. ms/step",
            "measured",
            "predicted (ref)",
            "predicted (host)",
            "realised (ref)",
            "realised (host)",
            ">= 80% (ref)",
        ],
        rows,
    )
    path = write_result(
        "schedule_speed", {"steps": args.steps, "repeats": args.repeats, "records": records}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

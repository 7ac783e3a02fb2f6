"""One schedule's steps timed in a plain PyTorch loop: each column's plan alone, and the
schedule cycling through its columns, against the cost model's per-step prediction.

This separates what `schedule_speed.py` measures through the Trainer into (1) how well
the calibrated cost model predicts each step's plan, (2) whether switching plans from
step to step costs anything, and (3) what the Trainer's per-step work outside the
model's forward/backward/update (data loading, metric accumulation, callbacks) takes
from the saving. Batch 1, plain SGD, one thread, glibc trimming off (as there).

Usage: python benchmarks/schedule_steps.py [--model vgg_small] [--schedule 4422_m]
       [--repeats 9] [--steps 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import print_table, write_result
from torch import nn

from edgetrain.cost.calibrate import calibrate
from edgetrain.engine import keep_freed_memory
from edgetrain.finetune import Schedule, schedule_cost
from edgetrain.finetune.costing import optimise_placement, schedule_layers
from edgetrain.models import create

OPTIONS = {"vgg_small": {"in_channels": 1}, "kws_cnn": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vgg_small", choices=sorted(OPTIONS))
    parser.add_argument("--schedule", default="4422_m")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    host = calibrate()
    torch.manual_seed(0)
    model = create(args.model, **OPTIONS[args.model])
    shape = tuple(model.input_shape)
    schedule = Schedule.parse(args.schedule)
    if schedule.memory_optimised:
        schedule = optimise_placement(schedule, model, shape)
    layers = schedule_layers(model, schedule)
    modules = dict(model.named_modules())
    params = {name: list(modules[name].parameters()) for name in layers}
    for p in model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for name in layers for p in params[name]], lr=1e-6)
    x, y = torch.randn(1, *shape), torch.randint(0, 8, (1,))
    columns = [
        frozenset(n for n, row in zip(layers, schedule.pattern, strict=True) if row[c])
        for c in range(schedule.cycle_length)
    ]

    def loop(plans: list[frozenset[str]], steps: int) -> float:
        started = time.perf_counter()
        for i in range(steps):
            active = plans[i % len(plans)]
            for name in layers:
                for p in params[name]:
                    p.requires_grad_(name in active)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    arms = {"conventional": [frozenset(layers)], "schedule": columns}
    arms.update({f"column {c}": [plan] for c, plan in enumerate(columns)})
    for plans in arms.values():
        loop(plans, 32)
    seconds: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(args.repeats):
        for name, plans in arms.items():
            seconds[name].append(loop(plans, args.steps))
    median = {k: statistics.median(v) for k, v in seconds.items()}
    cal = schedule_cost(model, shape, schedule, profile=host)
    ref = schedule_cost(model, shape, schedule)
    predicted = [s.estimated_ops / cal.conventional.estimated_ops for s in cal.steps]
    raw = [s.step_macs / ref.conventional.step_macs for s in ref.steps]
    rows = []
    for c, plan in enumerate(columns):
        measured = median[f"column {c}"] / median["conventional"]
        rows.append([f"column {c}", ",".join(sorted(plan)), measured, predicted[c], raw[c]])
    static = statistics.mean(median[f"column {c}"] for c in range(len(columns)))
    cycling = median["schedule"] / median["conventional"]
    rows.append(["cycle (mean of columns)", "", static / median["conventional"], None, None])
    rows.append(["cycle (switching plans)", "", cycling, statistics.mean(predicted), None])
    print_table(
        f"{args.model} {schedule}: step time relative to conventional, batch 1, 1 thread "
        f"(conventional {1e6 * median['conventional']:.0f} us/step)",
        ["step", "trained", "measured", "predicted (host)", "predicted (ref)"],
        [[("-" if v is None else v) for v in row] for row in rows],
    )
    saving, predicted_saving = 1 - cycling, 1 - statistics.mean(predicted)
    print(f"realised (host): {saving / predicted_saving:.2f}")
    path = write_result(
        f"schedule_steps-{args.model}-{args.schedule}",
        {
            "model": args.model,
            "schedule": str(schedule),
            "seconds": seconds,
            "predicted_host": predicted,
            "predicted_reference": raw,
            "realised_host": saving / predicted_saving,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

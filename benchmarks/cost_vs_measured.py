"""Cost model vs measured training-step times on this machine.

For vgg_small, kws_cnn and resnet20 at batch 1 and 32, time real PyTorch training steps
(requires_grad set per plan before the forward; SGD) for plans that train the last 1, 2,
3, 4 and all weight layers, and compare the measured step-time ratios (plan / all) with
the ratios the cost model predicts, with the raw `reference` counts and with a profile
calibrated on this machine (`edgetrain cost calibrate`, run in-process first). Also
times the analysis of resnet56.

Usage: python benchmarks/cost_vs_measured.py [--quick-calibration]
Target: mean absolute error of the ratios <= 0.10 with the calibrated profile.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import RESULTS, print_table, write_result
from torch import nn

from edgetrain.cost import ALL, analyze, load_profile, resolve_plan, timed_analyze
from edgetrain.cost.calibrate import calibrate
from edgetrain.models import create

MODELS = {"vgg_small": (3, 32, 32), "kws_cnn": (1, 32, 32), "resnet20": (3, 32, 32)}
PLANS = ["last:1", "last:2", "last:3", "last:4", ALL]


def step_seconds(model: nn.Module, params: frozenset[str], x, y, repeats: int = 7) -> float:
    """Median seconds of one SGD training step that updates ``params`` only."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in params)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    samples = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            step()
            n += 1
            if time.perf_counter() - start > 0.15:
                break
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick-calibration", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    host = calibrate(quick=args.quick_calibration)
    calibration_seconds = time.perf_counter() - started
    host.save(RESULTS / "host-cpu.yaml")
    reference = load_profile("reference")
    rows, records = [], []
    for name, shape in MODELS.items():
        for batch in (1, 32):
            model = create(name)
            model.train()
            x = torch.randn(batch, *shape)
            y = torch.randint(0, 8, (batch,))
            ref = analyze(model, shape, plans=PLANS, profile=reference, batch_size=batch)
            cal = analyze(model, shape, plans=PLANS, profile=host, batch_size=batch)
            # resolve every plan before timing: ALL means "what requires grad now"
            param_sets = [resolve_plan(model, plan, ref.layer_order) for plan in PLANS]
            measured = [step_seconds(model, params, x, y) for params in param_sets]
            for i, plan in enumerate(PLANS):
                m = measured[i] / measured[-1]
                r = ref.steps()[i].step_macs / ref.steps()[-1].step_macs
                c = cal.steps()[i].estimated_ops / cal.steps()[-1].estimated_ops
                records.append(
                    {
                        "model": name,
                        "batch": batch,
                        "plan": plan,
                        "seconds": measured[i],
                        "measured_ratio": m,
                        "reference_ratio": r,
                        "calibrated_ratio": c,
                        "predicted_seconds": cal.steps()[i].estimated_seconds,
                    }
                )
                rows.append([name, batch, plan, measured[i] * 1e3, m, r, c])
    print_table(
        "step time ratio plan/all: measured vs cost model",
        ["model", "batch", "plan", "step ms", "measured", "reference", "calibrated"],
        rows,
    )
    mae_ref = statistics.mean(abs(r["reference_ratio"] - r["measured_ratio"]) for r in records)
    mae_cal = statistics.mean(abs(r["calibrated_ratio"] - r["measured_ratio"]) for r in records)
    _, seconds56 = timed_analyze(create("resnet56", device="meta"), (3, 32, 32))
    print_table(
        "summary",
        ["MAE reference", "MAE calibrated", "target", "resnet56 analysis s", "calibration s"],
        [[mae_ref, mae_cal, 0.10, seconds56, calibration_seconds]],
    )
    path = write_result(
        "cost_vs_measured",
        {
            "mae_reference": mae_ref,
            "mae_calibrated": mae_cal,
            "target": 0.10,
            "resnet56_analysis_seconds": seconds56,
            "calibration_seconds": calibration_seconds,
            "records": records,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
